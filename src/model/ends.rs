//! What every version's forward pass shares around its layers: the embedding with ln0,
//! which rows each layer computes, and the head.

use super::load::{Affine, Loader};
use crate::backend::{Backend, Norm, Precision, Product, Rows, RowsMut, Then};
use crate::error::Result;
use crate::tensor::Matrix;
use std::ops::Range;

/// LayerNorm epsilon of ln0 and ln_out (every version).
pub const LN_EPS: f32 = 1e-5;

/// Which logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None: only the state advances (prompt prefixes).
    None,
    /// `[V]` after the last token (of each stream: `[N, V]`).
    Last,
    /// `[T, V]` after every token (scoring).
    All,
}

/// A model's embedding and head on a backend.
pub struct Ends<B: Backend> {
    /// `[V, D]`, on the host: a call looks up its rows.
    pub emb: Matrix,
    /// ln0's affine part, on the host: applied to the rows looked up.
    pub ln0: (Vec<f32>, Vec<f32>),
    pub ln_out: Affine<B>,
    /// `[V, D]`
    pub head: B::Matrix,
}

impl<B: Backend> Ends<B> {
    /// The head, read first: quantizing it holds its mapped pages for a moment, best done
    /// while little else is resident.
    pub fn head(l: &Loader<B>, vocab: usize, d: usize) -> Result<B::Matrix> {
        l.matrix("head.weight", &[vocab, d])
    }

    /// The rest, once the layers are loaded.
    pub fn load(l: &Loader<B>, head: B::Matrix, vocab: usize, d: usize) -> Result<Ends<B>> {
        Ok(Ends {
            emb: l.host_matrix("emb.weight", &[vocab, d])?,
            ln0: (
                l.host_vector("blocks.0.ln0.weight", &[d])?,
                l.host_vector("blocks.0.ln0.bias", &[d])?,
            ),
            ln_out: l.affine("ln_out", d)?,
            head,
        })
    }

    /// `x [T, D]` = LayerNorm(the embedding rows of `tokens`; ln0).
    pub fn embed(&self, be: &B, tokens: &[u32], x: &mut B::Tensor) -> Result<()> {
        let ln0 = Norm {
            w: &self.ln0.0,
            b: &self.ln0.1,
            eps: LN_EPS,
        };
        let (t, d) = (tokens.len(), self.emb.cols);
        be.embed(&self.emb, Some(ln0), tokens, RowsMut::new(x, 0, t, d))
    }

    /// The logits `want`s into `out`, from the last layer's `x [T, D]` (normed in place);
    /// `logits` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn logits(
        &self,
        be: &B,
        x: &mut B::Tensor,
        logits: &mut B::Tensor,
        spans: &[Range<usize>],
        prec: Precision,
        want: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (d, v) = (self.emb.cols, self.emb.rows);
        let t = spans.last().map_or(0, |s| s.end);
        let one = spans.len() == 1;
        let rows = match want {
            Logits::None => return Ok(()),
            Logits::Last if one => t - 1..t,
            Logits::Last | Logits::All => 0..t,
        };
        let n = rows.len();
        be.reserve(logits, n * v)?;
        be.layer_norm(RowsMut::new(x, rows.start, n, d), self.ln_out.norm(LN_EPS))?;
        be.products(
            prec,
            &mut [Product {
                w: &self.head,
                x: Rows::new(x, rows.start, n, d),
                y: RowsMut::new(logits, 0, n, v),
                then: Then::None,
            }],
        )?;
        be.read(Rows::new(logits, 0, n, v), out)?;
        if want == Logits::Last && !one {
            last_rows(out, spans, v);
        }
        Ok(())
    }
}

/// The per-channel vectors a model fingerprint hashes, in order: ln0's and ln_out's,
/// then each of `layers` layers' `tails` (`blocks.N.TAIL`).
pub fn fingerprinted(layers: usize, tails: &[&str]) -> Vec<String> {
    let ends = ["blocks.0.ln0.weight", "blocks.0.ln0.bias"];
    let ends = ends.into_iter().chain(["ln_out.weight", "ln_out.bias"]);
    let per_layer = (0..layers).flat_map(|i| tails.iter().map(move |t| format!("blocks.{i}.{t}")));
    ends.map(String::from).chain(per_layer).collect()
}

/// The first rows layer `i` of `layers` computes in its time mix and its channel mix. With
/// one stream the last layer computes only the rows that the logits read (the state takes
/// every token all the same); its channel mix also reads, through its token shift, the
/// row before.
pub fn rows_from(i: usize, layers: usize, t: usize, spans: usize, want: Logits) -> (usize, usize) {
    let need = match want {
        _ if i + 1 < layers || spans != 1 => t,
        Logits::None => 0,
        Logits::Last => 1,
        Logits::All => t,
    };
    (t - (need + 1).min(t), t - need)
}

/// Keep the last row of each stream of `logits [T, V]`: `[N, V]`.
fn last_rows(logits: &mut Vec<f32>, spans: &[Range<usize>], v: usize) {
    for (i, s) in spans.iter().enumerate() {
        logits.copy_within((s.end - 1) * v..s.end * v, i * v);
    }
    logits.truncate(spans.len() * v);
}
