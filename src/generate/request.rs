//! JSON-lines generation requests (`rwkv-gen --jsonl`): one object a line, every field
//! defaulting to the command line's options, and one result object for each.
//!
//! A request: `prompt` (text) or `ids` (token ids), `max_tokens`, `temperature`, `top_p`,
//! `top_k`, `presence_penalty`, `frequency_penalty`, `penalty_decay`, `stop` (a list of
//! strings), `seed`, `state` (a state file to start from), `save_state` (where to write the
//! state after the answer), `id` (any JSON value, copied to the result), and what the answer
//! is held to: `response_format` as the common APIs spell it (`{"type": "json_object"}`,
//! `{"type": "json_schema", "json_schema": {"schema": {...}}}`), `grammar` (Lark) or
//! `regex`. The requests of one run may not read or write each other's state files
//! ([`Claims`]).

use super::Generated;
use crate::constrain::{Spec, MAX_SPEC_BYTES};
use crate::sample::SamplerArgs;
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// What a request feeds.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(Vec<u8>),
    Ids(Vec<u32>),
}

/// One request, its fields resolved against the defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub prompt: Prompt,
    pub max_tokens: usize,
    pub sampler: SamplerArgs,
    pub stop: Vec<Vec<u8>>,
    pub seed: u64,
    pub state: Option<PathBuf>,
    pub save_state: Option<PathBuf>,
    /// What the answer is held to (else the command line's).
    pub constraint: Option<Spec>,
}

/// The command line's options, which a request's absent fields take.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub max_tokens: usize,
    pub sampler: SamplerArgs,
    pub stop: Vec<Vec<u8>>,
    pub seed: u64,
    /// The model's vocabulary: ids must be below it.
    pub vocab: usize,
}

/// A request that cannot run: its `id` (when the line had one) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<Value>,
    pub error: String,
}

const FIELDS: [&str; 17] = [
    "id",
    "prompt",
    "ids",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "presence_penalty",
    "frequency_penalty",
    "penalty_decay",
    "stop",
    "seed",
    "state",
    "save_state",
    "response_format",
    "grammar",
    "regex",
];

/// The state files a run's requests read and write, so that no request depends on
/// another's: a request that reads a file an earlier one writes, or writes one an earlier
/// one reads or writes, is refused (whatever the batch, the answers are those of the
/// requests run alone). A request reads and writes regular files only: a FIFO with no
/// writer would stall the batch.
#[derive(Debug, Default)]
pub struct Claims {
    reads: HashSet<PathBuf>,
    writes: HashSet<PathBuf>,
}

impl Claims {
    /// Claim a request's `state` (read) and `save_state` (written), or say why not.
    pub fn claim(&mut self, state: Option<&Path>, save: Option<&Path>) -> Result<(), String> {
        let read = state.map(|p| identity(p).map(|id| (p, id))).transpose()?;
        let write = save.map(|p| identity(p).map(|id| (p, id))).transpose()?;
        if let Some((p, id)) = &read {
            if self.writes.contains(id) {
                return Err(format!(
                    "`state` {}: an earlier request of this run saves it (requests in one run \
                     may not depend on each other's states)",
                    p.display()
                ));
            }
        }
        if let Some((p, id)) = &write {
            if self.writes.contains(id) || self.reads.contains(id) {
                return Err(format!(
                    "`save_state` {}: an earlier request of this run reads or saves it \
                     (requests in one run may not depend on each other's states)",
                    p.display()
                ));
            }
        }
        self.reads.extend(read.map(|r| r.1));
        self.writes.extend(write.map(|w| w.1));
        Ok(())
    }
}

/// A path as the file it names: absolute, its folder's links resolved; an error for one
/// that exists and is not a regular file (or a link to one).
fn identity(p: &Path) -> Result<PathBuf, String> {
    if let Ok(m) = std::fs::metadata(p) {
        if !m.is_file() {
            return Err(format!(
                "{}: not a regular file (a request reads and writes regular files only)",
                p.display()
            ));
        }
        return std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
    }
    let abs = std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()))?;
    match (abs.parent().map(std::fs::canonicalize), abs.file_name()) {
        (Some(Ok(dir)), Some(name)) => Ok(dir.join(name)),
        _ => Ok(abs),
    }
}

/// Parse one request line.
pub fn parse(line: &[u8], d: &Defaults) -> Result<Request, Rejected> {
    let v: Value = serde_json::from_slice(line).map_err(|e| Rejected {
        id: None,
        error: format!("invalid JSON: {e}"),
    })?;
    let Value::Object(o) = v else {
        return Err(Rejected {
            id: None,
            error: "a request is a JSON object".into(),
        });
    };
    let id = o.get("id").cloned();
    fields(&o, d).map_err(|error| Rejected { id, error })
}

fn fields(o: &Map<String, Value>, d: &Defaults) -> Result<Request, String> {
    if let Some(k) = o.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{k}` (known: {})",
            FIELDS.join(", ")
        ));
    }
    let num = |k: &str, ok: &dyn Fn(f64) -> bool, what: &str| -> Result<Option<f32>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && ok(x) => Ok(Some(x as f32)),
                _ => Err(format!("`{k}` is {v}, not {what}")),
            },
        }
    };
    let int = |k: &str| -> Result<Option<u64>, String> {
        match o.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("`{k}` is {v}, not a non-negative integer")),
        }
    };
    let path = |k: &str| -> Result<Option<PathBuf>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(PathBuf::from(s))),
            Some(v) => Err(format!("`{k}` is {v}, not a file path")),
        }
    };
    let prompt = match (o.get("prompt"), o.get("ids")) {
        (Some(_), Some(_)) => return Err("give `prompt` or `ids`, not both".into()),
        (Some(Value::String(s)), None) => Prompt::Text(s.as_bytes().to_vec()),
        (Some(v), None) => return Err(format!("`prompt` is {v}, not a string")),
        (None, Some(Value::Array(a))) => {
            let ids = a
                .iter()
                .map(|x| {
                    x.as_u64()
                        .and_then(|i| u32::try_from(i).ok())
                        .filter(|&i| (i as usize) < d.vocab)
                        .ok_or_else(|| {
                            format!(
                                "`ids` holds {x}, not a token id below the vocab of {}",
                                d.vocab
                            )
                        })
                })
                .collect::<Result<Vec<u32>, String>>()?;
            Prompt::Ids(ids)
        }
        (None, Some(v)) => return Err(format!("`ids` is {v}, not an array of token ids")),
        (None, None) => return Err("no `prompt` (text) or `ids` (token ids)".into()),
    };
    let stop = match o.get("stop") {
        None => d.stop.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| {
                s.as_str()
                    .map(|s| s.as_bytes().to_vec())
                    .ok_or_else(|| format!("`stop` holds {s}, not a string"))
            })
            .collect::<Result<_, _>>()?,
        Some(v) => return Err(format!("`stop` is {v}, not a list of strings")),
    };
    let mut sampler = d.sampler.clone();
    if let Some(t) = num("temperature", &|x| x >= 0.0, "a number >= 0")? {
        sampler.temperature = t;
    }
    if let Some(p) = num("top_p", &|x| x > 0.0 && x <= 1.0, "a number in (0, 1]")? {
        sampler.top_p = p;
    }
    if let Some(k) = int("top_k")? {
        sampler.top_k = k as usize;
    }
    if let Some(p) = num("presence_penalty", &|_| true, "a number")? {
        sampler.presence_penalty = Some(p);
    }
    if let Some(p) = num("frequency_penalty", &|_| true, "a number")? {
        sampler.frequency_penalty = Some(p);
    }
    if let Some(p) = num(
        "penalty_decay",
        &|x| (0.0..=1.0).contains(&x),
        "a number in [0, 1]",
    )? {
        sampler.penalty_decay = p;
    }
    Ok(Request {
        id: o.get("id").cloned(),
        prompt,
        max_tokens: int("max_tokens")?.map_or(d.max_tokens, |n| n as usize),
        sampler,
        stop,
        seed: int("seed")?.unwrap_or(d.seed),
        state: path("state")?,
        save_state: path("save_state")?,
        constraint: constraint(o)?,
    })
}

/// The request's `response_format`, `grammar` or `regex` (at most one).
fn constraint(o: &Map<String, Value>) -> Result<Option<Spec>, String> {
    let text = |k: &str| -> Result<Option<String>, String> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= MAX_SPEC_BYTES => Ok(Some(s.clone())),
            Some(Value::String(s)) => Err(format!(
                "`{k}` is {} bytes, more than the {MAX_SPEC_BYTES} a constraint may take",
                s.len()
            )),
            Some(v) => Err(format!("`{k}` is {}, not a string", kind(v))),
        }
    };
    let format = match o.get("response_format") {
        None | Some(Value::Null) => None,
        Some(f) => match (f.get("type").and_then(Value::as_str), f.get("json_schema")) {
            (Some("text"), _) => None,
            (Some("json_object"), _) => Some(Spec::Json),
            (Some("json_schema"), Some(js)) => match js.get("schema") {
                Some(s @ (Value::Object(_) | Value::Bool(_))) => Some(Spec::Schema(s.clone())),
                _ => return Err("`response_format.json_schema.schema` is not a schema".into()),
            },
            _ => {
                return Err(
                    "`response_format` is not {\"type\": \"text\" | \"json_object\" | \"json_schema\", ...}"
                        .into(),
                )
            }
        },
    };
    let all = [
        format,
        text("grammar")?.map(Spec::Lark),
        text("regex")?.map(Spec::Regex),
    ];
    let mut given = all.into_iter().flatten();
    let first = given.next();
    if given.next().is_some() {
        return Err("give one of `response_format`, `grammar` and `regex`".into());
    }
    Ok(first)
}

/// `an object`, `a number`, ...: a JSON value's kind, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The result object of an answer: `id` (when the request had one), `text`, `tokens` (the
/// ids), `finish_reason`, `prompt_tokens`, `completion_tokens`, and with per-token records
/// `logprobs` (each token's `token`, `text`, `bytes`, `logprob`, `top_logprobs`).
pub fn result(id: Option<&Value>, g: &Generated, tok: &Tokenizer) -> Value {
    let mut rec = Map::new();
    if let Some(id) = id {
        rec.insert("id".into(), id.clone());
    }
    rec.insert("text".into(), String::from_utf8_lossy(&g.text).into());
    rec.insert("tokens".into(), json!(g.tokens));
    let finish = g.finish.unwrap_or(super::Finish::Length);
    rec.insert("finish_reason".into(), finish.name().into());
    rec.insert("prompt_tokens".into(), g.prompt_tokens.into());
    rec.insert("completion_tokens".into(), g.tokens.len().into());
    if !g.per_token.is_empty() {
        let per: Vec<Value> = g.per_token.iter().map(|t| t.record(tok)).collect();
        rec.insert("logprobs".into(), per.into());
    }
    Value::Object(rec)
}

/// The error object of a request that could not run.
pub fn error(id: Option<&Value>, msg: &str) -> Value {
    let mut rec = Map::new();
    if let Some(id) = id {
        rec.insert("id".into(), id.clone());
    }
    rec.insert("error".into(), msg.into());
    Value::Object(rec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            max_tokens: 16,
            sampler: SamplerArgs::default(),
            stop: vec![b"\n".to_vec()],
            seed: 7,
            vocab: 256,
        }
    }

    #[test]
    fn fields_default_to_the_command_line() {
        let r = parse(
            br#"{"prompt": "hi", "temperature": 0, "id": [1, "a"]}"#,
            &defaults(),
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Text(b"hi".to_vec()));
        assert_eq!((r.max_tokens, r.seed, r.sampler.temperature), (16, 7, 0.0));
        assert_eq!(r.stop, vec![b"\n".to_vec()]);
        assert_eq!(r.id, Some(json!([1, "a"])));
        let r = parse(
            br#"{"ids": [1, 2], "stop": [], "max_tokens": 3, "seed": 1, "top_p": 0.5, "save_state": "x.state"}"#,
            &defaults(),
        )
        .unwrap();
        assert_eq!(r.prompt, Prompt::Ids(vec![1, 2]));
        assert!(r.stop.is_empty());
        assert_eq!((r.max_tokens, r.seed, r.sampler.top_p), (3, 1, 0.5));
        assert_eq!(r.save_state, Some(PathBuf::from("x.state")));
    }

    #[test]
    fn bad_requests_say_why_and_keep_their_id() {
        let bad = |line: &str, needle: &str| {
            let e = parse(line.as_bytes(), &defaults()).unwrap_err();
            assert!(e.error.contains(needle), "{line}: {}", e.error);
            e
        };
        assert_eq!(
            bad(r#"{"id": 5, "prompt": 3}"#, "`prompt` is 3").id,
            Some(json!(5))
        );
        bad("{nope", "invalid JSON");
        bad("[1]", "a JSON object");
        bad(
            r#"{"prompt": "x", "temprature": 1}"#,
            "unknown field `temprature`",
        );
        bad(r#"{"prompt": "x", "max_tokens": -1}"#, "`max_tokens` is -1");
        bad(r#"{"prompt": "x", "top_p": 2}"#, "(0, 1]");
        bad(r#"{"ids": [1, 300]}"#, "vocab of 256");
        bad(r#"{"prompt": "x", "ids": [1]}"#, "not both");
        bad(r#"{"prompt": "x", "stop": "\n"}"#, "not a list");
        bad(r#"{"seed": 1}"#, "no `prompt`");
    }

    /// Requests that read or write a state another one of the run writes are refused,
    /// whatever the spelling of the path; reads alone share a file.
    #[test]
    fn requests_may_not_depend_on_each_others_states() {
        let dir = std::env::temp_dir().join(format!("rwkv-claims-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = dir.join("a.state");
        std::fs::write(&a, b"x").unwrap();
        let a_too = dir.join(".").join("a.state");
        let b = dir.join("b.state");
        let mut c = Claims::default();
        c.claim(Some(&a), Some(&a))
            .expect("a request may read and save one file");
        let e = c.claim(Some(&a_too), None).unwrap_err();
        assert!(e.contains("an earlier request of this run saves it"), "{e}");
        c.claim(None, Some(&b)).unwrap();
        let e = c.claim(None, Some(&b)).unwrap_err();
        assert!(e.starts_with("`save_state`"), "{e}");
        let mut c = Claims::default();
        c.claim(Some(&a), None).unwrap();
        c.claim(Some(&a), None).expect("reads share a file");
        let e = c.claim(None, Some(&a)).unwrap_err();
        assert!(e.contains("reads or saves it"), "{e}");
        let e = Claims::default().claim(Some(&dir), None).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
