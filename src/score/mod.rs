//! Scoring: log-likelihood of token streams, continuations and choices. [`Stream`] runs a
//! document; [`docs`] turns input (files, lines, JSON objects) into documents and records;
//! [`summary`] adds records up, as one run or `--merge` over many.
//!
//! A [`Stream`] carries the state through a document of any length in chunks: each chunk is
//! fed in sequence mode with the logits of every position, position `i` is scored with the
//! logits after token `i - 1` (the first with the logits held from before the chunk), and
//! only the last row is kept. Memory is one chunk of logits, whatever the document's length.
//!
//! Convention: a document is scored from the state after token 0, the separator World
//! models are trained with, so every token including the first is predicted; without it
//! (`bos = false`) the first token is context only, unless the starting state carries
//! logits, which then predict it.

pub mod docs;
pub mod input;
pub mod summary;

use crate::error::Result;
use crate::model::{Logits, Model};
use crate::sample::{log_sum_exp, top_logprobs};
use crate::state::State;

/// One scored position.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenScore {
    pub token: u32,
    /// Natural log of the probability the model gave it.
    pub logprob: f64,
    /// It was the most likely token.
    pub greedy: bool,
    /// The `k` most likely tokens with their log-probabilities (empty unless asked).
    pub top: Vec<(u32, f64)>,
}

/// Totals over scored tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub tokens: u64,
    /// Negative log-likelihood in nats.
    pub nll: f64,
    /// Every scored token was the argmax.
    pub greedy: bool,
}

impl Totals {
    /// `exp(nll / tokens)`.
    pub fn ppl(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            (self.nll / self.tokens as f64).exp()
        }
    }
}

/// Bits per byte of `nll` nats over `bytes` bytes.
pub fn bits_per_byte(nll: f64, bytes: u64) -> f64 {
    if bytes == 0 {
        f64::NAN
    } else {
        nll / std::f64::consts::LN_2 / bytes as f64
    }
}

/// Tokens fed per sequence call for a model of vocab `v`: about 64 MiB of logits.
pub fn default_chunk(v: usize) -> usize {
    ((16usize << 20) / v.max(1)).clamp(16, 512)
}

/// A running score through one document.
pub struct Stream<'m> {
    model: &'m Model,
    pub state: State,
    /// Logits predicting the next token, if any.
    next: Option<Vec<f32>>,
    chunk: usize,
    /// Keep every [`TokenScore`] (with `top_k` alternatives) in `tokens`.
    keep: bool,
    top_k: usize,
    pub totals: Totals,
    pub scored: Vec<TokenScore>,
}

impl<'m> Stream<'m> {
    /// Start from `state` (and the logits it carries, if any); with `bos`, feed token 0 first.
    pub fn new(
        model: &'m Model,
        state: State,
        logits: Option<Vec<f32>>,
        bos: bool,
        chunk: usize,
    ) -> Result<Stream<'m>> {
        let mut s = Stream {
            model,
            state,
            next: logits,
            chunk: chunk.max(1),
            keep: false,
            top_k: 0,
            totals: Totals {
                greedy: true,
                ..Totals::default()
            },
            scored: Vec::new(),
        };
        if bos {
            s.context(&[0])?;
        }
        Ok(s)
    }

    /// Keep per-token scores with `top_k` alternatives.
    pub fn keep_tokens(mut self, top_k: usize) -> Self {
        self.keep = true;
        self.top_k = top_k;
        self
    }

    /// Feed `ids` without scoring them (a context).
    pub fn context(&mut self, ids: &[u32]) -> Result<()> {
        if !ids.is_empty() {
            self.next = Some(self.model.feed(ids, &mut self.state, self.chunk)?);
        }
        Ok(())
    }

    /// Feed and score `ids` (every one below the model's vocabulary).
    pub fn score(&mut self, ids: &[u32]) -> Result<()> {
        let v = self.model.cfg.vocab;
        for part in ids.chunks(self.chunk) {
            let all = self.model.forward(part, &mut self.state, Logits::All)?;
            let prev = self.next.take();
            for (i, &tok) in part.iter().enumerate() {
                let logits = if i == 0 {
                    match &prev {
                        Some(l) => l.as_slice(),
                        None => continue, // first token, nothing predicts it
                    }
                } else {
                    &all[(i - 1) * v..i * v]
                };
                self.add(tok, logits)?;
            }
            self.next = Some(all[(part.len() - 1) * v..].to_vec());
        }
        Ok(())
    }

    fn add(&mut self, tok: u32, logits: &[f32]) -> Result<()> {
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(crate::Error::Invalid(format!(
                "the model gave a non-finite logit (token id {i}) at token {}",
                self.totals.tokens + 1
            )));
        }
        let lp = logits[tok as usize] as f64 - log_sum_exp(logits);
        let greedy = crate::sample::argmax(logits) == tok;
        self.totals.tokens += 1;
        self.totals.nll -= lp;
        self.totals.greedy &= greedy;
        if self.keep {
            let top = if self.top_k > 0 {
                top_logprobs(logits, self.top_k)
            } else {
                Vec::new()
            };
            self.scored.push(TokenScore {
                token: tok,
                logprob: lp,
                greedy,
                top,
            });
        }
        Ok(())
    }

    /// A stream at the same position with fresh totals: one context, several continuations.
    pub fn fork(&self) -> Result<Stream<'m>> {
        Ok(Stream {
            model: self.model,
            state: self.state.try_clone()?,
            next: self.next.clone(),
            chunk: self.chunk,
            keep: self.keep,
            top_k: self.top_k,
            totals: Totals {
                greedy: true,
                ..Totals::default()
            },
            scored: Vec::new(),
        })
    }

    /// Logits predicting the token after everything fed.
    pub fn next_logits(&self) -> Option<&[f32]> {
        self.next.as_deref()
    }
}
