//! Output held to a JSON Schema, a Lark grammar or a regular expression, by masking the
//! tokens that cannot continue it before each sampling step. The parsing and the masks
//! are `llguidance`'s (the library llama.cpp, vLLM and SGLang use; its token trie is built
//! here from the tokenizer's bytes, so a mask is exact over bytes: a character split across
//! tokens is allowed, an invalid one never is).

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::earley::SlicedBiasComputer;
use llguidance::toktrie::{ApproximateTokEnv, InferenceCapabilities, TokEnv, TokRxInfo, TokTrie};
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use std::sync::Arc;

/// The largest schema, grammar or pattern read (bytes).
pub const MAX_SPEC_BYTES: usize = 1 << 20;

/// What an answer is held to.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A JSON Schema.
    Schema(Value),
    /// Any JSON object.
    Json,
    /// A regular expression the whole answer matches.
    Regex(String),
    /// A context-free grammar in Lark syntax (llguidance's dialect).
    Lark(String),
}

impl Spec {
    /// A JSON Schema from its text, `what` naming where it came from in errors.
    pub fn schema(text: &str, what: &str) -> Result<Spec> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(too_big(what, text.len()));
        }
        serde_json::from_str(text)
            .map(Spec::Schema)
            .map_err(|e| Error::Invalid(format!("{what}: not JSON: {e}")))
    }

    /// A Lark grammar from its text.
    pub fn lark(text: &str, what: &str) -> Result<Spec> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(too_big(what, text.len()));
        }
        Ok(Spec::Lark(text.to_string()))
    }

    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Spec::Schema(v) => TopLevelGrammar::from_json_schema(compact(v.clone())),
            Spec::Json => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Spec::Regex(r) => TopLevelGrammar::from_regex(r),
            Spec::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
        }
    }

    /// `JSON Schema`, `regex`, ...: for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Schema(_) => "JSON Schema",
            Spec::Json => "JSON",
            Spec::Regex(_) => "regex",
            Spec::Lark(_) => "grammar",
        }
    }
}

/// `schema` written compact: no whitespace between tokens, `,` and `:` alone, so that an
/// answer is one line and a model cannot fill it with blanks (unless the schema's own
/// `x-guidance` options say otherwise).
fn compact(mut schema: Value) -> Value {
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance")
            .or_insert(json!({"whitespace_flexible": false}));
    }
    schema
}

fn too_big(what: &str, n: usize) -> Error {
    Error::Invalid(format!(
        "{what}: {n} bytes, more than the {MAX_SPEC_BYTES} a constraint may take"
    ))
}

/// What compiles constraints for one tokenizer: its token trie, built once.
pub struct Compiler {
    factory: ParserFactory,
}

impl Compiler {
    /// For `tok`'s first `vocab` token ids (token 0, the end of text, is the end).
    pub fn new(tok: &Tokenizer, vocab: usize) -> Result<Compiler> {
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| match id {
                // the end of text is a special token: no bytes of output
                0 => b"\xFF<|endoftext|>".to_vec(),
                _ => tok
                    .token_bytes(id)
                    .map(|b| b.into_owned())
                    .unwrap_or_default(),
            })
            .collect();
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, 0), &words);
        let env: TokEnv = Arc::new(ApproximateTokEnv::new(trie));
        let caps = InferenceCapabilities {
            ff_tokens: false,
            backtrack: false,
            conditional_ff_tokens: false,
            fork: false,
        };
        let mut factory = ParserFactory::new(&env, caps, &SlicedBiasComputer::general_slices())
            .map_err(|e| Error::Invalid(format!("constraints: {e}")))?;
        factory.quiet();
        // the library's limits bound the time and memory a hostile grammar or pattern can
        // take; its errors stay one line (no grammar or parser state in them)
        *factory.limits_mut() = ParserLimits {
            verbose_errors: false,
            ..ParserLimits::default()
        };
        Ok(Compiler { factory })
    }

    /// `spec` compiled, ready to hold one answer; `what` names it in errors.
    pub fn compile(&self, spec: &Spec, what: &str) -> Result<Constraint> {
        let parser = self
            .factory
            .create_parser(spec.grammar())
            .map_err(|e| uncompiled(what, e))?;
        let mut m = Matcher::new(Ok(parser));
        // a grammar that compiles may still fail on its first step
        m.compute_mask().map_err(|e| uncompiled(what, e))?;
        Ok(Constraint { m })
    }
}

fn uncompiled(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!(
        "{what}: cannot be compiled: {}",
        one_line(&e.to_string())
    ))
}

/// `s` as one line: its lines joined, runs of blanks one space, at most 300 characters
/// (without the library's `<non-verbose/>` marker, which says only that details were cut).
fn one_line(s: &str) -> String {
    let words: Vec<&str> = s
        .split_whitespace()
        .filter(|w| *w != "<non-verbose/>")
        .collect();
    let line = words.join(" ");
    match line.char_indices().nth(300) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    }
}

/// One answer's constraint, advanced token by token.
#[derive(Clone)]
pub struct Constraint {
    m: Matcher,
}

/// What the constraint allows next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Some tokens: the others' logits are now minus infinity (token 0, the end, among the
    /// allowed ones when the answer may end here).
    Tokens,
    /// Nothing more: the answer is complete.
    Done,
}

impl Constraint {
    /// Set the logits `[V]` of every token the constraint forbids to minus infinity.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<Next> {
        if self.m.is_stopped() {
            return Ok(Next::Done);
        }
        let mask = self.m.compute_mask().map_err(constraint_error)?;
        let mut any = false;
        for (i, l) in logits.iter_mut().enumerate() {
            if mask.is_allowed(i as u32) {
                any |= i != 0;
            } else {
                *l = f32::NEG_INFINITY;
            }
        }
        Ok(if any { Next::Tokens } else { Next::Done })
    }

    /// Advance past token `id` (one the mask allowed); whether the answer is then complete.
    pub fn accept(&mut self, id: u32) -> Result<bool> {
        self.m.consume_token(id).map_err(constraint_error)?;
        Ok(self.m.is_stopped())
    }
}

fn constraint_error(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("constraint: {}", one_line(&e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_become_one_line() {
        assert_eq!(
            one_line("NoExtensionBias <non-verbose/>"),
            "NoExtensionBias"
        );
        assert_eq!(one_line("a\n  b\t c\n"), "a b c");
        let long = one_line(&"é ".repeat(400));
        assert_eq!(long.chars().count(), 303);
        assert!(long.ends_with("..."));
    }
}
