//! `rwkv-score`'s records as the bytes it writes: JSON lines, or (`--view`) the text shaded
//! for a person. A document's per-token records are written as they are scored, so memory
//! does not grow with the document: `per_token` comes right after `source`, before the
//! totals, which are known only at the end.

use super::view::Shader;
use crate::score::TokenScore;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value};

/// How records are written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Form {
    Json,
    View { color: bool },
}

/// One document's record at a time, its bytes collected until [`Records::take`]n.
pub struct Records<'t> {
    tok: &'t Tokenizer,
    form: Form,
    buf: Vec<u8>,
    /// A record whose `per_token` array is open, and whether it holds a token yet.
    open: Option<bool>,
    shader: Shader,
}

impl<'t> Records<'t> {
    pub fn new(tok: &'t Tokenizer, form: Form) -> Records<'t> {
        Records {
            tok,
            form,
            buf: Vec::new(),
            open: None,
            shader: Shader::default(),
        }
    }

    /// Start the record of a document whose per-token records follow.
    pub fn begin(&mut self, source: &Value) {
        if self.form == Form::Json {
            self.buf
                .extend_from_slice(format!("{{\"source\":{source},\"per_token\":[").as_bytes());
        }
        self.open = Some(false);
    }

    /// The next scored tokens of the document begun.
    pub fn tokens(&mut self, scored: &[TokenScore]) {
        for ts in scored {
            match self.form {
                Form::Json => {
                    if self.open == Some(true) {
                        self.buf.push(b',');
                    }
                    self.buf
                        .extend_from_slice(self.token_record(ts).to_string().as_bytes());
                }
                Form::View { color } => {
                    let bytes = self.tok.token_bytes(ts.token).unwrap_or_default();
                    self.shader.push(&mut self.buf, &bytes, ts.logprob, color);
                }
            }
            self.open = Some(true);
        }
    }

    /// A whole record: the one begun, ended with `rec`'s fields, or `rec` alone.
    pub fn end(&mut self, rec: &Value) {
        match (self.form, self.open.take()) {
            (Form::Json, Some(_)) => {
                self.buf.push(b']');
                for (k, v) in rec.as_object().into_iter().flatten() {
                    if k != "source" {
                        self.buf
                            .extend_from_slice(format!(",{}:{v}", json!(k)).as_bytes());
                    }
                }
                self.buf.extend_from_slice(b"}\n");
            }
            (Form::Json, None) => self.buf.extend_from_slice(format!("{rec}\n").as_bytes()),
            (Form::View { color }, _) => self.shader.finish(&mut self.buf, rec, color),
        }
    }

    /// End the record begun with the error that stopped its document, so the output stays
    /// whole records: `"error"` in JSON, a line in the view.
    pub fn fail(&mut self, source: &Value, msg: &str) {
        let rec = json!({"source": source, "error": msg});
        match self.form {
            Form::Json => self.end(&rec),
            Form::View { .. } if self.open.take().is_some() => {
                self.shader = Shader::default();
                self.buf
                    .extend_from_slice(format!("\n-- {source}: {msg}\n").as_bytes());
            }
            Form::View { .. } => {}
        }
    }

    /// The bytes ready to write.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// `{"token", "text", "bytes", "logprob"}` (and `top_logprobs`) of a scored token.
    fn token_record(&self, ts: &TokenScore) -> Value {
        let mut v = self.token(ts.token);
        v["logprob"] = json!(ts.logprob);
        if !ts.top.is_empty() {
            v["top_logprobs"] = ts
                .top
                .iter()
                .map(|&(id, lp)| {
                    let mut t = self.token(id);
                    t["logprob"] = json!(lp);
                    t
                })
                .collect();
        }
        v
    }

    /// `{"token", "text", "bytes"}` of a token id: its bytes rebuild the text exactly, where
    /// `text` shows a part of a character as U+FFFD.
    fn token(&self, id: u32) -> Value {
        let b = self.tok.token_bytes(id).unwrap_or_default();
        json!({"token": id, "text": String::from_utf8_lossy(&b), "bytes": b.as_ref()})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(token: u32, logprob: f64) -> TokenScore {
        TokenScore {
            token,
            logprob,
            greedy: false,
            top: vec![(token, logprob)],
        }
    }

    /// A record streamed in two parts reads as one JSON object, its totals after the
    /// tokens; a record without per-token records is written as it is.
    #[test]
    fn streamed_records_are_whole_json_lines() {
        let tok = Tokenizer::from_spec("bytes").unwrap();
        let mut r = Records::new(&tok, Form::Json);
        r.begin(&json!("f"));
        r.tokens(&[scored(104, -0.5)]);
        let first = r.take();
        r.tokens(&[scored(105, -0.25)]);
        r.end(&json!({"source": "f", "tokens": 2, "nll": 0.75}));
        let text = [first, r.take()].concat();
        assert_eq!(text.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["tokens"], 2);
        assert_eq!(v["per_token"][1]["text"], "i");
        assert_eq!(v["per_token"][1]["top_logprobs"][0]["logprob"], -0.25);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["source", "per_token", "tokens", "nll"]);
        r.end(&json!({"source": 2, "best": 1}));
        assert_eq!(r.take(), b"{\"source\":2,\"best\":1}\n");
    }

    /// A document that fails part way still leaves one whole JSON line, with its error.
    #[test]
    fn a_failed_document_closes_its_record() {
        let tok = Tokenizer::from_spec("bytes").unwrap();
        let mut r = Records::new(&tok, Form::Json);
        r.begin(&json!("f"));
        r.tokens(&[scored(104, -0.5)]);
        r.fail(&json!("f"), "f: Input/output error");
        let v: Value = serde_json::from_slice(&r.take()).unwrap();
        assert_eq!(v["error"], "f: Input/output error");
        assert_eq!(v["per_token"].as_array().unwrap().len(), 1);
    }
}
