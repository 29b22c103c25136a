//! Generation: a prompt, then tokens sampled one at a time until a length, a stop string or
//! the end of text. A [`Generation`] is one stream; [`batch`] decodes many together, each
//! step one product per weight for all of them; [`request`] reads JSON-lines requests.
//!
//! A stream's tokens depend only on its own prompt, options and seed: a batched step sums
//! each stream's products in the order the stream alone sums them, so it gives its bits.

pub mod batch;
pub mod chat;
pub mod lines;
pub mod request;

use crate::constrain::{Constraint, Next};
use crate::error::{Error, Result};
use crate::model::{Model, PROMPT_CHUNK};
use crate::sample::{self, Sampler, SamplerConfig, StopMatcher};
use crate::state::State;
use crate::state_file::Start;
use crate::tokenizer::{Detokenizer, Tokenizer, Utf8Stream};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// How to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampler: SamplerConfig,
    /// Stop strings, matched on the output bytes across token boundaries, not output.
    pub stop: Vec<Vec<u8>>,
    /// Go on past token 0 (end of text).
    pub ignore_eos: bool,
    pub seed: u64,
    /// The `k` most likely alternatives of each token, kept in [`Generated::per_token`].
    pub top_logprobs: usize,
    /// Keep each token's record ([`Generated::per_token`]).
    pub per_token: bool,
    /// Feed the last token too, so that the state after the answer is complete (for saving
    /// it, or a conversation that goes on).
    pub keep_state: bool,
    /// Drop the newlines an answer starts with (they neither end it nor appear): for a
    /// record that a newline ends, as `rwkv-gen --lines` writes.
    pub skip_leading_newlines: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_tokens: 256,
            sampler: SamplerConfig::default(),
            stop: Vec::new(),
            ignore_eos: false,
            seed: 0,
            top_logprobs: 0,
            per_token: false,
            keep_state: false,
            skip_leading_newlines: false,
        }
    }
}

/// How an answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    Length,
    Stop,
    Eos,
    Interrupted,
}

impl Finish {
    pub fn name(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
            Finish::Eos => "eos",
            Finish::Interrupted => "interrupted",
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    /// The bytes this token adds to the output (possibly part of a character).
    pub bytes: Vec<u8>,
    /// Natural log of its probability under the model (before penalties).
    pub logprob: f64,
    /// The most likely alternatives, with their log-probabilities.
    pub top: Vec<(u32, f64)>,
}

/// What a step of a stream produced.
#[derive(Debug)]
pub struct Step {
    pub token: Token,
    /// The output bytes that can be written now: never a partial character, never a part
    /// of a stop string.
    pub emit: Vec<u8>,
}

/// One stream: a prompt fed, then tokens generated.
pub struct Generation<'a> {
    model: &'a Model,
    tok: &'a Tokenizer,
    opts: Options,
    pub state: State,
    /// The logits for the next token.
    logits: Option<Vec<f32>>,
    sampler: Sampler,
    /// What the answer is held to, if anything.
    constraint: Option<Constraint>,
    stop: StopMatcher,
    utf8: Utf8Stream,
    detok: Detokenizer<'a>,
    /// Tokens fed since the zero state (or since the state the stream started from).
    pub fed: u64,
    out: Generated,
    /// The token chosen last, still to be fed.
    pending: Option<u32>,
    started: Instant,
}

/// The answer to one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// The output bytes (stop strings left out).
    pub text: Vec<u8>,
    pub tokens: Vec<u32>,
    /// Each token's record, when asked for ([`Options::per_token`]).
    pub per_token: Vec<Token>,
    pub finish: Option<Finish>,
    pub prompt_tokens: usize,
    pub prompt_time: Duration,
    pub gen_time: Duration,
}

impl<'a> Generation<'a> {
    /// A stream from `start`, ready for [`Generation::prompt`].
    pub fn new(
        model: &'a Model,
        tok: &'a Tokenizer,
        start: Start,
        opts: Options,
    ) -> Generation<'a> {
        let seed = opts.seed;
        Generation {
            model,
            tok,
            sampler: Sampler::new(opts.sampler.clone(), model.cfg.vocab, seed),
            constraint: None,
            stop: StopMatcher::new(opts.stop.clone()),
            opts,
            state: start.state,
            logits: start.logits,
            utf8: Utf8Stream::default(),
            detok: Detokenizer::new(tok),
            fed: start.tokens,
            out: Generated {
                text: Vec::new(),
                tokens: Vec::new(),
                per_token: Vec::new(),
                finish: None,
                prompt_tokens: 0,
                prompt_time: Duration::ZERO,
                gen_time: Duration::ZERO,
            },
            pending: None,
            started: Instant::now(),
        }
    }

    /// Hold the answer to `c`: each step samples among the tokens it allows, and the answer
    /// ends (`Finish::Stop`) when it is complete.
    pub fn constrain(&mut self, c: Constraint) {
        self.constraint = Some(c);
    }

    /// Whether the answer is held to a constraint.
    pub fn constrained(&self) -> bool {
        self.constraint.is_some()
    }

    /// This stream held to a copy of `c`, if any ([`Generation::constrain`]).
    pub fn held_to(mut self, c: Option<&Constraint>) -> Self {
        self.constraint = c.cloned();
        self
    }

    /// Feed the prompt `ids` (in chunks, sequence mode). With no ids and nothing to go on
    /// from, token 0 starts a document, as the models are trained.
    pub fn prompt(&mut self, ids: &[u32]) -> Result<()> {
        let t0 = Instant::now();
        if !ids.is_empty() {
            self.logits = Some(self.model.feed(ids, &mut self.state, PROMPT_CHUNK)?);
            self.fed += ids.len() as u64;
        } else if self.logits.is_none() {
            self.logits = Some(self.model.feed(&[0], &mut self.state, 1)?);
            self.fed += 1;
        }
        self.out.prompt_tokens = ids.len();
        self.out.prompt_time = t0.elapsed();
        self.started = Instant::now();
        Ok(())
    }

    /// Whether the answer has ended.
    pub fn done(&self) -> bool {
        self.out.finish.is_some()
    }

    /// Choose the next token from the current logits; the token is then to be fed
    /// ([`Generation::pending`], [`Generation::accept`]) before the next choice. `None` once
    /// the answer has ended ([`Generation::drain`] gives what is left to write).
    pub fn choose(&mut self) -> Result<Option<Step>> {
        if self.done() {
            return Ok(None);
        }
        if self.out.tokens.len() >= self.opts.max_tokens {
            self.end(Finish::Length);
            return Ok(None);
        }
        let raw = self
            .logits
            .take()
            .ok_or_else(|| Error::Invalid("generation: no logits to sample from".into()))?;
        if let Some(i) = raw.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "the model gave a non-finite logit (token id {i}) after {} tokens",
                self.fed
            )));
        }
        let mut logits = raw.clone();
        if let Some(c) = &mut self.constraint {
            if c.mask(&mut logits)? == Next::Done {
                self.logits = Some(raw);
                self.end(Finish::Stop);
                return Ok(None);
            }
        }
        let may_end = logits[0] > f32::NEG_INFINITY;
        let id = self.sampler.sample(&mut logits);
        if self.constraint.is_some() && logits[id as usize] == f32::NEG_INFINITY && !may_end {
            return Err(Error::Invalid(
                "the constraint allows only tokens that --ban-token rules out".into(),
            ));
        }
        if id == 0 && (self.constraint.is_some() || !self.opts.ignore_eos) {
            // under a constraint the end is allowed only where the answer is complete
            let how = match self.constraint {
                Some(_) => Finish::Stop,
                None => Finish::Eos,
            };
            self.logits = Some(raw);
            self.end(how);
            return Ok(None);
        }
        let complete = match &mut self.constraint {
            Some(c) => c.accept(id)?,
            None => false,
        };
        let bytes = self.detok.push(id)?;
        self.sampler.observe(id, &bytes);
        let lse = sample::log_sum_exp(&raw);
        let token = Token {
            id,
            logprob: raw[id as usize] as f64 - lse,
            top: if self.opts.top_logprobs > 0 {
                sample::top_logprobs(&raw, self.opts.top_logprobs)
            } else {
                Vec::new()
            },
            bytes,
        };
        self.out.tokens.push(id);
        let mut fresh = &token.bytes[..];
        if self.opts.skip_leading_newlines && self.out.text.is_empty() && !self.stop.holds() {
            let lead = fresh
                .iter()
                .take_while(|b| matches!(b, b'\n' | b'\r'))
                .count();
            fresh = &fresh[lead..];
        }
        let step = self.stop.push(fresh);
        self.out.text.extend_from_slice(&step.emit);
        let emit = self.utf8.push(&step.emit);
        let last = step.stopped || complete || self.out.tokens.len() == self.opts.max_tokens;
        if step.stopped || complete {
            self.end(Finish::Stop);
        } else if last {
            self.end(Finish::Length);
        }
        if last && !self.opts.keep_state {
            // Nobody reads what the last token would give: keep the logits it was chosen
            // from.
            self.logits = Some(raw);
        } else {
            self.pending = Some(id);
        }
        if self.opts.per_token {
            self.out.per_token.push(token.clone());
        }
        Ok(Some(Step { token, emit }))
    }

    /// The token chosen and not yet fed.
    pub fn pending(&self) -> Option<u32> {
        self.pending
    }

    /// The logits after the pending token was fed (by [`Generation::step`] or a batch).
    pub fn accept(&mut self, logits: Vec<f32>) {
        if self.pending.take().is_some() {
            self.fed += 1;
            self.logits = Some(logits);
        }
    }

    /// Choose a token and feed it: one step of a single stream.
    pub fn step(&mut self) -> Result<Option<Step>> {
        let step = self.choose()?;
        if let Some(tok) = self.pending {
            let logits = self
                .model
                .forward(&[tok], &mut self.state, crate::Logits::Last)?;
            self.accept(logits);
        }
        Ok(step)
    }

    /// Stop generating (Ctrl-C).
    pub fn interrupt(&mut self) {
        self.end(Finish::Interrupted);
    }

    /// Once the answer has ended: the bytes still held back (the start of a stop string
    /// that did not follow, a last partial character), to write after the last step's.
    pub fn drain(&mut self) -> Vec<u8> {
        let rest = self.stop.finish();
        self.out.text.extend_from_slice(&rest);
        let mut emit = self.utf8.push(&rest);
        emit.extend(self.utf8.finish());
        emit
    }

    fn end(&mut self, f: Finish) {
        if self.out.finish.is_none() {
            self.out.finish = Some(f);
            self.out.gen_time = self.started.elapsed();
        }
    }

    /// What was generated so far.
    pub fn generated(&self) -> &Generated {
        &self.out
    }

    /// The logits for the token after the answer (for a state file).
    pub fn logits(&self) -> Option<&[f32]> {
        self.logits.as_deref()
    }

    /// The answer, and the state and logits after it.
    pub fn finish(mut self) -> (Generated, Start) {
        if self.out.finish.is_none() {
            self.end(Finish::Length);
        }
        let start = Start {
            state: self.state,
            logits: self.logits,
            tokens: self.fed,
        };
        (self.out, start)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        self.tok
    }
}

impl Generated {
    /// What `-v` says of the answer: the prompt's and the answer's tokens, times and rates,
    /// and how it ended.
    pub fn timing(&self) -> String {
        let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
        format!(
            "prompt {} tokens in {:.0} ms ({:.1} tokens/s); generated {} tokens in {:.0} ms \
             ({:.2} tokens/s); {}",
            self.prompt_tokens,
            self.prompt_time.as_secs_f64() * 1e3,
            rate(self.prompt_tokens, self.prompt_time),
            self.tokens.len(),
            self.gen_time.as_secs_f64() * 1e3,
            rate(self.tokens.len(), self.gen_time),
            self.finish.unwrap_or(Finish::Length).name()
        )
    }

    /// The answer's JSON record: `finish_reason`, `prompt_tokens`, `tokens`, `text`, the
    /// timings, and with `per_token` records each token's `token`, `text`, `bytes`,
    /// `logprob` and `top_logprobs`.
    pub fn record(&self, tok: &Tokenizer) -> Value {
        let secs = |d: Duration| d.as_secs_f64();
        let rate = |n: usize, d: Duration| {
            if d.is_zero() {
                0.0
            } else {
                n as f64 / secs(d)
            }
        };
        let mut rec = json!({
            "finish_reason": self.finish.unwrap_or(Finish::Length).name(),
            "prompt_tokens": self.prompt_tokens,
            "tokens": self.tokens.len(),
            "text": String::from_utf8_lossy(&self.text),
            "prompt_ms": secs(self.prompt_time) * 1e3,
            "gen_ms": secs(self.gen_time) * 1e3,
            "prompt_tokens_per_s": rate(self.prompt_tokens, self.prompt_time),
            "tokens_per_s": rate(self.tokens.len(), self.gen_time),
        });
        if !self.per_token.is_empty() {
            rec["per_token"] = self.per_token.iter().map(|t| t.record(tok)).collect();
        }
        rec
    }
}

impl Token {
    /// `{"token", "text", "bytes", "logprob"}`, and `top_logprobs` when kept.
    pub fn record(&self, tok: &Tokenizer) -> Value {
        let mut rec = json!({
            "token": self.id,
            "text": String::from_utf8_lossy(&self.bytes),
            "bytes": self.bytes,
            "logprob": self.logprob,
        });
        if !self.top.is_empty() {
            rec["top_logprobs"] = self
                .top
                .iter()
                .map(|&(id, lp)| {
                    let b = tok.token_bytes(id).map(|b| b.into_owned()).unwrap_or_default();
                    json!({"token": id, "text": String::from_utf8_lossy(&b), "bytes": b, "logprob": lp})
                })
                .collect();
        }
        rec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_gives_counts_times_and_rates() {
        let g = Generated {
            text: Vec::new(),
            tokens: vec![1, 2, 3, 4],
            per_token: Vec::new(),
            finish: Some(Finish::Stop),
            prompt_tokens: 10,
            prompt_time: Duration::from_millis(500),
            gen_time: Duration::from_secs(2),
        };
        assert_eq!(
            g.timing(),
            "prompt 10 tokens in 500 ms (20.0 tokens/s); generated 4 tokens in 2000 ms \
             (2.00 tokens/s); stop"
        );
    }
}
