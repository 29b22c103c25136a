//! Documents and their records: a whole file or stdin streamed through the model, a line
//! of text, or a JSON object (`text`, `ids`, `context` + `continuation`, `context` +
//! `choices`), each scored into one JSON record.
//!
//! Records carry `source`, `tokens`, `bytes`, `nll` (nats), `ppl`, `bits_per_byte`;
//! continuations `logprob`, `logprob_per_byte`, `greedy`; choices the per-choice figures,
//! `best` and `best_per_byte` (and `correct` when the object has a `label`); with per-token
//! records, each token's `token`, `text`, `bytes`, `logprob` (and `top_logprobs`).

use super::{bits_per_byte, Stream, TokenScore};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::state_file::Start;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::io::Read;
use std::path::Path;

/// Bytes read from a stream per tokenizer step.
const READ_BLOCK: usize = 1 << 20;

/// One line-sized document.
#[derive(Debug, Clone, PartialEq)]
pub enum Doc {
    Text(Vec<u8>),
    Ids(Vec<u32>),
    Continuation {
        context: Vec<u8>,
        continuation: Vec<u8>,
    },
    Choices {
        context: Vec<u8>,
        choices: Vec<Vec<u8>>,
        label: Option<u64>,
    },
}

/// Parse a line as a document: the line itself as text, or (`jsonl`) a JSON object. Token
/// ids must be below `vocab`.
pub fn parse(line: &[u8], jsonl: bool, vocab: usize) -> std::result::Result<Doc, String> {
    if !jsonl {
        return Ok(Doc::Text(line.to_vec()));
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    if !v.is_object() {
        return Err("a document is a JSON object".into());
    }
    let text = |k: &str| -> std::result::Result<Option<Vec<u8>>, String> {
        match v.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_bytes().to_vec())),
            Some(x) => Err(format!("`{k}` is {x}, not a string")),
        }
    };
    if let Some(ids) = v.get("ids") {
        let ids = ids
            .as_array()
            .ok_or("`ids` is not an array")?
            .iter()
            .map(|x| {
                x.as_u64()
                    .and_then(|i| u32::try_from(i).ok())
                    .filter(|&i| (i as usize) < vocab)
                    .ok_or_else(|| {
                        format!("`ids` holds {x}, not a token id below the vocab of {vocab}")
                    })
            })
            .collect::<std::result::Result<Vec<u32>, _>>()?;
        return Ok(Doc::Ids(ids));
    }
    if let Some(t) = text("text")? {
        return Ok(Doc::Text(t));
    }
    let context = text("context")?.unwrap_or_default();
    if let Some(c) = text("continuation")? {
        if c.is_empty() {
            return Err("`continuation` is empty".into());
        }
        return Ok(Doc::Continuation {
            context,
            continuation: c,
        });
    }
    if let Some(ch) = v.get("choices") {
        let choices = ch
            .as_array()
            .ok_or("`choices` is not an array")?
            .iter()
            .map(|c| {
                c.as_str()
                    .map(|s| s.as_bytes().to_vec())
                    .ok_or_else(|| format!("a choice is {c}, not a string"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if choices.is_empty() || choices.iter().any(Vec::is_empty) {
            return Err("`choices` is empty or holds an empty choice".into());
        }
        let label = match v.get("label") {
            None => None,
            Some(l) => Some(
                l.as_u64()
                    .ok_or_else(|| format!("`label` is {l}, not an index"))?,
            ),
        };
        return Ok(Doc::Choices {
            context,
            choices,
            label,
        });
    }
    Err("the object has none of `text`, `ids`, `continuation`, `choices`".into())
}

/// Every text field of a JSON document (`text`, `context`, `continuation`, each choice),
/// by name, for `--tokenize`.
pub fn texts(v: &Value) -> Vec<(String, &[u8])> {
    let mut out = Vec::new();
    for k in ["text", "context", "continuation"] {
        if let Some(s) = v.get(k).and_then(Value::as_str) {
            out.push((k.to_string(), s.as_bytes()));
        }
    }
    if let Some(cs) = v.get("choices").and_then(Value::as_array) {
        for (i, c) in cs.iter().enumerate() {
            if let Some(s) = c.as_str() {
                out.push((format!("choices.{i}"), s.as_bytes()));
            }
        }
    }
    out
}

/// A scored document: its record and, when per-token records are kept and the document
/// is a text or ids, each token's score.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub record: Value,
    pub tokens: Option<Vec<TokenScore>>,
}

impl Scored {
    /// A record without per-token scores (a continuation's, choices', a whole file's).
    pub fn alone(record: Value) -> Scored {
        Scored {
            record,
            tokens: None,
        }
    }
}

/// How documents are scored: against which model, from which state, in what chunks, with
/// which records.
pub struct Scorer<'m> {
    pub model: &'m Model,
    pub tok: &'m Tokenizer,
    pub start: Start,
    /// Tokens per sequence call.
    pub chunk: usize,
    /// Feed token 0 first, so the first token is scored too.
    pub bos: bool,
    /// Keep per-token records (with `top_logprobs` alternatives).
    pub per_token: bool,
    pub top_logprobs: usize,
}

impl<'m> Scorer<'m> {
    /// A stream at the start; `doc`: scored tokens are kept when per-token records are.
    pub fn stream(&self, doc: bool) -> Result<Stream<'m>> {
        let s = Stream::new(
            self.model,
            self.start.state.try_clone()?,
            self.start.logits.clone(),
            self.bos,
            self.chunk,
        )?;
        Ok(if doc && self.per_token {
            s.keep_tokens(self.top_logprobs)
        } else {
            s
        })
    }

    /// Score everything `reader` gives as one document, read and scored in blocks (memory
    /// stays one block and one chunk's logits, whatever the length); `progress(bytes,
    /// tokens)` after each chunk, and with per-token records `per_token` hears each chunk's
    /// scores as they come (the record returned has none). `name` is the source in errors
    /// and the record.
    pub fn score_reader(
        &self,
        name: &str,
        reader: &mut dyn Read,
        progress: &dyn Fn(u64, u64),
        per_token: &mut dyn FnMut(&[TokenScore]),
    ) -> Result<Value> {
        let mut stream = self.stream(true)?;
        let (mut buf, mut block) = (Vec::new(), vec![0u8; READ_BLOCK]);
        let mut bytes = 0u64;
        loop {
            let n = read_full(reader, &mut block).map_err(|e| Error::io(Path::new(name), e))?;
            buf.extend_from_slice(&block[..n]);
            let (ids, used) = self.tok.encode_prefix(&buf, n == 0)?;
            buf.drain(..used);
            // Progress a chunk at a time (a block holds many): the block's bytes shared out
            // in proportion to its tokens, each update the bytes since the last.
            let (mut done, mut told) = (0, 0);
            for part in ids.chunks(self.chunk.max(1)) {
                self.score(&mut stream, part)?;
                per_token(&stream.scored);
                stream.scored.clear();
                done += part.len();
                let upto = used * done / ids.len();
                progress((upto - told) as u64, part.len() as u64);
                told = upto;
            }
            if used > told {
                progress((used - told) as u64, 0);
            }
            bytes += used as u64;
            if n == 0 {
                break;
            }
        }
        Ok(self.record(json!(name), stream, bytes).record)
    }

    /// Score `ids` in `stream`, checking that the model can read them.
    fn score(&self, stream: &mut Stream, ids: &[u32]) -> Result<()> {
        let v = self.model.cfg.vocab;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= v) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range for a model with vocab {v} (is the \
                 tokenizer the model's?)"
            )));
        }
        stream.score(ids)
    }

    /// The record of a scored text (or ids) document, and its tokens' scores.
    fn record(&self, source: Value, s: Stream, bytes: u64) -> Scored {
        let t = s.totals;
        let record = json!({
            "source": source,
            "tokens": t.tokens,
            "bytes": bytes,
            "nll": t.nll,
            "ppl": t.ppl(),
            "bits_per_byte": bits_per_byte(t.nll, bytes),
        });
        Scored {
            record,
            tokens: self.per_token.then_some(s.scored),
        }
    }

    /// Score one line-sized document.
    pub fn score_doc(&self, source: Value, doc: &Doc) -> Result<Scored> {
        match doc {
            Doc::Text(text) => {
                let ids = self.tok.encode(text)?;
                let mut s = self.stream(true)?;
                self.score(&mut s, &ids)?;
                Ok(self.record(source, s, text.len() as u64))
            }
            Doc::Ids(ids) => {
                let mut s = self.stream(true)?;
                self.score(&mut s, ids)?;
                let bytes = self.tok.decode(ids).map(|b| b.len() as u64).unwrap_or(0);
                Ok(self.record(source, s, bytes))
            }
            Doc::Continuation {
                context,
                continuation: cont,
            } => {
                let base = self.context(context, "the continuation")?;
                let mut rec = self.continuation(&base, cont)?;
                rec["source"] = source;
                rec["nll"] = json!(-rec["logprob"].as_f64().unwrap_or(f64::NAN));
                Ok(Scored::alone(rec))
            }
            Doc::Choices {
                context,
                choices,
                label,
            } => {
                let base = self.context(context, "the choices")?;
                let recs = choices
                    .iter()
                    .map(|c| self.continuation(&base, c))
                    .collect::<Result<Vec<_>>>()?;
                let best_by = |key: &str| {
                    let mut best = 0;
                    for (i, r) in recs.iter().enumerate() {
                        if r[key].as_f64() > recs[best][key].as_f64() {
                            best = i;
                        }
                    }
                    best
                };
                let (best, best_pb) = (best_by("logprob"), best_by("logprob_per_byte"));
                let mut rec = json!({"source": source, "choices": recs, "best": best,
                    "best_per_byte": best_pb});
                if let Some(l) = label {
                    rec["label"] = json!(l);
                    rec["correct"] = json!(best as u64 == *l);
                    rec["correct_per_byte"] = json!(best_pb as u64 == *l);
                }
                Ok(Scored::alone(rec))
            }
        }
    }

    /// A stream after `context`, which must leave logits to predict what follows.
    fn context(&self, context: &[u8], what: &str) -> Result<Stream<'m>> {
        let mut base = self.stream(false)?;
        let ids = self.tok.encode(context)?;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= self.model.cfg.vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range for a model with vocab {}",
                self.model.cfg.vocab
            )));
        }
        base.context(&ids)?;
        if base.next_logits().is_none() {
            return Err(Error::Invalid(format!(
                "nothing predicts {what}: give a context or drop --no-bos"
            )));
        }
        Ok(base)
    }

    /// The figures of a continuation scored after a context stream.
    fn continuation(&self, base: &Stream, cont: &[u8]) -> Result<Value> {
        let ids = self.tok.encode(cont)?;
        let mut s = base.fork()?;
        self.score(&mut s, &ids)?;
        let t = s.totals;
        Ok(json!({
            "tokens": t.tokens,
            "bytes": cont.len(),
            "logprob": -t.nll,
            "logprob_per_byte": -t.nll / cont.len() as f64,
            "greedy": t.greedy,
        }))
    }
}

/// Fill `block` as far as the reader allows; 0 only at the end.
fn read_full(r: &mut dyn Read, block: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < block.len() {
        match r.read(&mut block[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_parse_or_say_why() {
        assert_eq!(
            parse(b"plain", false, 256),
            Ok(Doc::Text(b"plain".to_vec()))
        );
        assert_eq!(
            parse(br#"{"ids": [1, 2]}"#, true, 256),
            Ok(Doc::Ids(vec![1, 2]))
        );
        assert_eq!(
            parse(
                br#"{"context": "a", "choices": ["b", "c"], "label": 1}"#,
                true,
                256
            ),
            Ok(Doc::Choices {
                context: b"a".to_vec(),
                choices: vec![b"b".to_vec(), b"c".to_vec()],
                label: Some(1)
            })
        );
        let e = |l: &str| parse(l.as_bytes(), true, 256).unwrap_err();
        assert!(e(r#"{"ids": [999]}"#).contains("vocab of 256"));
        assert!(e(r#"{"text": 1}"#).contains("`text` is 1"));
        assert!(e(r#"{"continuation": ""}"#).contains("empty"));
        assert!(e(r#"{"choices": ["a", ""]}"#).contains("empty choice"));
        assert!(e(r#"{"other": 1}"#).contains("none of"));
        assert!(e("[]").contains("JSON object"));
        assert!(e(r#"{"context": "a", "choices": ["b"], "label": "x"}"#).contains("`label`"));
    }

    #[test]
    fn every_text_field_is_found() {
        let v = json!({"context": "a", "continuation": "b", "choices": ["c", "d"]});
        let names: Vec<String> = texts(&v).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["context", "continuation", "choices.0", "choices.1"]);
    }
}
