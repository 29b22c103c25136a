//! What every model version's loader shares: tensors read by their BlinkDL name from the
//! checkpoint, checked against the shapes the version expects, quantized where asked, and
//! handed to the backend that will run them.

use super::checkpoint::Checkpoint;
use super::names::Names;
use crate::backend::{Backend, Norm};
use crate::error::Result;
use crate::tensor::quant::{self, Quant};
use crate::tensor::{DType, Matrix};

/// A LayerNorm's (or GroupNorm's) affine part on a backend: `[D]` each.
pub struct Affine<B: Backend> {
    pub w: B::Tensor,
    pub b: B::Tensor,
}

impl<B: Backend> Affine<B> {
    pub fn norm(&self, eps: f32) -> Norm<'_, B::Tensor> {
        Norm {
            w: &self.w,
            b: &self.b,
            eps,
        }
    }
}

/// What a matrix stored in ggml blocks becomes when no `--quant` is asked: the finest format
/// the integer kernels run, which adds int8's own rounding to the file's
/// (docs/QUANTIZATION.md has the figures).
pub const NEAREST: Quant = Quant::Int8;

/// Reads one checkpoint's tensors for one version onto one backend.
pub struct Loader<'a, B: Backend> {
    pub ck: &'a Checkpoint,
    pub names: &'a Names,
    pub be: &'a B,
    pub quant: Option<Quant>,
    /// Layers whose projections `quant` applies to (the head always).
    pub quant_layers: usize,
    /// Which matrices `--quant` quantizes (by BlinkDL name and layer count).
    pub quantizable: fn(&str, usize) -> bool,
}

impl<B: Backend> Loader<'_, B> {
    /// Matrix `canon` of `shape` on the host, as stored or quantized (then its mapped pages
    /// are released). GGUF's ggml blocks are decoded, then stored as [`NEAREST`] unless
    /// `quant` says otherwise; blocks being quantized are decoded a row at a time.
    pub fn host_matrix(&self, canon: &str, shape: &[usize]) -> Result<Matrix> {
        let stored = self.names.stored(canon);
        let decoded = self.ck.in_blocks(stored);
        let fits = shape.last().is_some_and(|&c| quant::fits(c));
        let quantizes = quantizes(self.quantizable, canon, self.quant_layers, decoded);
        let q = self
            .quant
            .or(decoded.then_some(NEAREST))
            .filter(|_| quantizes && fits);
        if let (Some(q), Some(rows)) = (q, self.ck.block_rows(stored, shape)?) {
            let qm = quant::quantize_from(shape[0], shape[1], q, rows);
            self.ck.release(stored);
            return Ok(qm);
        }
        let w = self.ck.matrix(stored, shape)?;
        match q {
            Some(q) if matches!(w.dtype(), DType::F32 | DType::F16 | DType::BF16) => {
                let qm = quant::quantize(&w, q);
                drop(w);
                self.ck.release(stored);
                Ok(qm)
            }
            _ => Ok(w),
        }
    }

    /// Matrix `canon` of `shape` on the backend.
    pub fn matrix(&self, canon: &str, shape: &[usize]) -> Result<B::Matrix> {
        self.be.matrix(self.host_matrix(canon, shape)?)
    }

    /// A LoRA matrix used as `x @ W` with `W [inp, out]`, as a `Linear` `[out, inp]` on the
    /// backend. Ai00 files store it `[out, inp]` already.
    pub fn lora(&self, canon: &str, inp: usize, out: usize) -> Result<B::Matrix> {
        self.be.matrix(self.host_lora(canon, inp, out)?)
    }

    /// [`Loader::lora`] on the host.
    pub fn host_lora(&self, canon: &str, inp: usize, out: usize) -> Result<Matrix> {
        if self.names.layout.lora_is_out_in() {
            self.host_matrix(canon, &[out, inp])
        } else {
            // An owned copy: the mapped original need not stay resident.
            let t = self.host_matrix(canon, &[inp, out])?.transposed();
            self.ck.release(self.names.stored(canon));
            Ok(t)
        }
    }

    /// Vector `canon` holding `shape`'s values (stored as `[n]` or `[1, 1, n]`), on the
    /// host in f32.
    pub fn host_vector(&self, canon: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.ck.vector(self.names.stored(canon), shape)
    }

    /// Vector `canon` of `n` values on the backend.
    pub fn vector(&self, canon: &str, n: usize) -> Result<B::Tensor> {
        self.be.vector(&self.host_vector(canon, &[n])?)
    }

    /// `prefix.weight` and `prefix.bias`, `[n]` each.
    pub fn affine(&self, prefix: &str, n: usize) -> Result<Affine<B>> {
        Ok(Affine {
            w: self.vector(&format!("{prefix}.weight"), n)?,
            b: self.vector(&format!("{prefix}.bias"), n)?,
        })
    }
}

/// Whether matrix `canon` is quantized at load (and by `--save-quantized`): those the
/// version names (`quantizable`, its first `layers` layers), and a decoded embedding, read a
/// row at a time, which would otherwise take 4 bytes a weight.
pub fn quantizes(
    quantizable: fn(&str, usize) -> bool,
    canon: &str,
    layers: usize,
    decoded: bool,
) -> bool {
    quantizable(canon, layers) || (decoded && canon == "emb.weight")
}

/// Whether `canon` is `blocks.N.TAIL` with `N < layers` and `TAIL` one of `tails`.
pub fn in_layers(canon: &str, layers: usize, tails: &[&str]) -> bool {
    let Some(rest) = canon.strip_prefix("blocks.") else {
        return false;
    };
    let Some((n, tail)) = rest.split_once('.') else {
        return false;
    };
    tails.contains(&tail) && n.parse::<usize>().is_ok_and(|n| n < layers)
}
