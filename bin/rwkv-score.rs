//! rwkv-score: documents in, one JSON object of scores per document out.

mod common;

use rayon::prelude::*;
use rwkv::cli::score::{Args, Color};
use rwkv::cli::{CliError, Output};
use rwkv::model::{Model, Precision};
use rwkv::score::{self, Stream};
use rwkv::state_file::{self, Start};
use rwkv::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// Bytes read from a file per tokenizer step.
const BLOCK: usize = 1 << 20;
/// Lines scored in parallel before their records are written in order.
const LINE_BATCH: usize = 256;

fn main() {
    common::main_with("rwkv-score", run)
}

/// Where documents come from.
#[derive(Clone)]
enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Stdin => "-".into(),
            Source::File(p) => p.display().to_string(),
        }
    }

    fn open(&self) -> Result<Box<dyn Read + Send>, CliError> {
        match self {
            Source::Stdin => Ok(Box::new(std::io::stdin())),
            Source::File(p) => std::fs::File::open(p)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|e| CliError::runtime(format!("{}: {e}", p.display()))),
        }
    }
}

/// One line-sized document.
enum Doc {
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

/// Shared for every document.
struct Ctx<'a> {
    args: &'a Args,
    model: &'a Model,
    tok: &'a Tokenizer,
    start: Start,
    chunk: usize,
    progress: Progress,
}

fn run(args: &Args) -> Result<(), CliError> {
    if args.top_logprobs > 0 && !args.per_token {
        return Err(CliError::usage("--top-logprobs needs --per-token".into()));
    }
    let sources: Vec<Source> = if args.files.is_empty() {
        vec![Source::Stdin]
    } else {
        args.files
            .iter()
            .map(|p| {
                if p.as_os_str() == "-" {
                    Source::Stdin
                } else {
                    Source::File(p.clone())
                }
            })
            .collect()
    };
    if args.merge {
        return merge(&sources);
    }
    let state_on_stdin = args.state.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if state_on_stdin && sources.iter().any(|s| matches!(s, Source::Stdin)) {
        return Err(CliError::usage(
            "--state - reads the state from stdin: name the documents as FILE arguments".into(),
        ));
    }
    if args.tokenize {
        args.model.init_threads();
        let tok = Tokenizer::from_spec(args.model.tokenizer.as_deref().unwrap_or("world"))?;
        return tokenize(args, &tok, &sources);
    }
    // Scores are measurements: exact, and the same however the text is chunked.
    let (model, tok) = args.model.load(Precision::F32)?;
    let start = state_file::start_for(args.state.as_deref(), &model, args.force)?;
    let total_bytes = sources
        .iter()
        .map(|s| match s {
            Source::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            Source::Stdin => 0,
        })
        .sum();
    let ctx = Ctx {
        args,
        model: &model,
        tok: &tok,
        start,
        chunk: args
            .chunk
            .map_or_else(|| score::default_chunk(model.cfg.vocab), |c| c as usize),
        progress: Progress::new(!args.quiet && std::io::stderr().is_terminal(), total_bytes),
    };
    let mut out = Output::stdout(false);
    let mut summary = Summary::default();
    let mut failed = false;
    let result = if args.lines || args.jsonl {
        score_lines(&ctx, &sources, &mut out, &mut summary, &mut failed)
    } else {
        score_files(&ctx, &sources, &mut out, &mut summary, &mut failed)
    };
    ctx.progress.clear();
    result?;
    if args.summary {
        out.write(format!("{}\n", summary.to_json()).as_bytes())?;
    }
    if args.view {
        out.write(legend(use_color(args.color)).as_bytes())?;
    }
    out.flush()?;
    if failed {
        return Err(CliError::runtime(String::new()));
    }
    Ok(())
}

/// Score each source as one document, in parallel, streaming each through blocks.
fn score_files(
    ctx: &Ctx,
    sources: &[Source],
    out: &mut Output,
    summary: &mut Summary,
    failed: &mut bool,
) -> Result<(), CliError> {
    let batch = rayon::current_num_threads().max(1);
    for group in sources.chunks(batch) {
        let results: Vec<Result<Value, CliError>> =
            group.par_iter().map(|s| score_stream(ctx, s)).collect();
        for r in results {
            match r {
                Ok(rec) => emit(ctx, out, summary, &rec)?,
                Err(e) if e.code == rwkv::cli::exit::RUNTIME => {
                    // Report it, score the rest, exit 1 at the end.
                    ctx.progress.clear();
                    eprintln!("rwkv-score: {}", e.msg);
                    *failed = true;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// One whole file (or stdin) as a document, read and scored block by block.
fn score_stream(ctx: &Ctx, src: &Source) -> Result<Value, CliError> {
    let mut reader = src.open()?;
    let mut stream = new_stream(ctx, true)?;
    let (mut buf, mut block) = (Vec::new(), vec![0u8; BLOCK]);
    let mut bytes = 0u64;
    loop {
        let n = read_full(&mut reader, &mut block)
            .map_err(|e| CliError::runtime(format!("{}: {e}", src.name())))?;
        buf.extend_from_slice(&block[..n]);
        let (ids, used) = ctx.tok.encode_prefix(&buf, n == 0)?;
        bytes += used as u64;
        buf.drain(..used);
        score_ids(ctx, &mut stream, &ids)?;
        ctx.progress.add(used as u64, ids.len() as u64);
        if n == 0 {
            break;
        }
    }
    Ok(doc_record(ctx, json!(src.name()), &stream, bytes))
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

fn new_stream<'m>(ctx: &Ctx<'m>, scored_doc: bool) -> Result<Stream<'m>, CliError> {
    let bos = !ctx.args.no_bos;
    let s = Stream::new(
        ctx.model,
        ctx.start.state.try_clone()?,
        ctx.start.logits.clone(),
        bos,
        ctx.chunk,
    )?;
    Ok(if scored_doc && (ctx.args.per_token || ctx.args.view) {
        s.keep_tokens(ctx.args.top_logprobs)
    } else {
        s
    })
}

fn score_ids(ctx: &Ctx, stream: &mut Stream, ids: &[u32]) -> Result<(), CliError> {
    if let Some(&bad) = ids.iter().find(|&&t| t as usize >= ctx.model.cfg.vocab) {
        return Err(CliError::runtime(format!(
            "token id {bad} is out of range for a model with vocab {}",
            ctx.model.cfg.vocab
        )));
    }
    stream.score(ids)?;
    Ok(())
}

/// Text of a token for output.
fn token_text(tok: &Tokenizer, id: u32) -> String {
    tok.token_bytes(id)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The record of a scored text (or ids) document.
fn doc_record(ctx: &Ctx, source: Value, s: &Stream, bytes: u64) -> Value {
    let t = s.totals;
    let mut rec = json!({
        "source": source,
        "tokens": t.tokens,
        "bytes": bytes,
        "nll": t.nll,
        "ppl": t.ppl(),
        "bits_per_byte": score::bits_per_byte(t.nll, bytes),
    });
    if ctx.args.per_token || ctx.args.view {
        let per: Vec<Value> = s
            .scored
            .iter()
            .map(|ts| {
                let mut v = json!({
                    "token": ts.token,
                    "text": token_text(ctx.tok, ts.token),
                    "logprob": ts.logprob,
                });
                if !ts.top.is_empty() {
                    v["top_logprobs"] = ts
                        .top
                        .iter()
                        .map(|&(id, lp)| json!({"token": id, "text": token_text(ctx.tok, id), "logprob": lp}))
                        .collect();
                }
                v
            })
            .collect();
        rec["per_token"] = Value::Array(per);
    }
    rec
}

/// Write a record (or its view) and add it to the summary.
fn emit(ctx: &Ctx, out: &mut Output, summary: &mut Summary, rec: &Value) -> Result<(), CliError> {
    summary.add(rec);
    if ctx.args.view {
        out.write(view(rec, use_color(ctx.args.color)).as_bytes())?;
    } else {
        out.write(format!("{rec}\n").as_bytes())?;
    }
    out.tick()?;
    Ok(())
}

/// Read lines from every source in batches; parse, score in parallel, write in order. The
/// first bad line stops the run after the records before it.
fn score_lines(
    ctx: &Ctx,
    sources: &[Source],
    out: &mut Output,
    summary: &mut Summary,
    failed: &mut bool,
) -> Result<(), CliError> {
    for src in sources {
        let reader = match src.open() {
            Ok(r) => r,
            Err(e) => {
                ctx.progress.clear();
                eprintln!("rwkv-score: {}", e.msg);
                *failed = true;
                continue;
            }
        };
        let mut reader = std::io::BufReader::new(reader);
        let mut n = 0u64;
        let prefix = if sources.len() > 1 {
            format!("{}:", src.name())
        } else {
            String::new()
        };
        loop {
            // One batch of lines.
            let mut batch: Vec<(u64, Result<Doc, CliError>, usize)> = Vec::new();
            let mut line = Vec::new();
            while batch.len() < LINE_BATCH {
                line.clear();
                let got = reader
                    .read_until(b'\n', &mut line)
                    .map_err(|e| CliError::runtime(format!("{}: {e}", src.name())))?;
                if got == 0 {
                    break;
                }
                n += 1;
                while matches!(line.last(), Some(b'\n' | b'\r')) {
                    line.pop();
                }
                let doc = parse_doc(ctx, &line)
                    .map_err(|m| CliError::runtime(format!("{}: line {n}: {m}", src.name())));
                let stop = doc.is_err();
                batch.push((n, doc, got));
                if stop {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            let results: Vec<Result<Value, CliError>> = batch
                .par_iter()
                .map(|(n, doc, len)| {
                    let doc = doc.as_ref().map_err(|e| CliError::runtime(e.msg.clone()))?;
                    let source = if prefix.is_empty() {
                        json!(n)
                    } else {
                        json!(format!("{prefix}{n}"))
                    };
                    let r = score_doc(ctx, source, doc).map_err(|e| {
                        CliError::runtime(format!("{}: line {n}: {}", src.name(), e.msg))
                    });
                    ctx.progress.add(*len as u64, 0);
                    r
                })
                .collect();
            for r in results {
                match r {
                    Ok(rec) => emit(ctx, out, summary, &rec)?,
                    Err(e) => {
                        out.flush()?;
                        return Err(e);
                    }
                }
            }
        }
    }
    Ok(())
}

fn parse_doc(ctx: &Ctx, line: &[u8]) -> Result<Doc, String> {
    if !ctx.args.jsonl {
        return Ok(Doc::Text(line.to_vec()));
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let text = |k: &str| -> Result<Option<Vec<u8>>, String> {
        match v.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_bytes().to_vec())),
            Some(_) => Err(format!("`{k}` is not a string")),
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
                    .ok_or("`ids` holds a non-id")
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= ctx.model.cfg.vocab) {
            return Err(format!(
                "token id {bad} is out of range for a model with vocab {}",
                ctx.model.cfg.vocab
            ));
        }
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
                    .ok_or("a choice is not a string")
            })
            .collect::<Result<Vec<_>, _>>()?;
        if choices.is_empty() || choices.iter().any(Vec::is_empty) {
            return Err("`choices` is empty or holds an empty choice".into());
        }
        let label = v.get("label").and_then(Value::as_u64);
        return Ok(Doc::Choices {
            context,
            choices,
            label,
        });
    }
    Err("the object has none of `text`, `ids`, `continuation`, `choices`".into())
}

/// The figures of a continuation scored after a context stream.
fn continuation(ctx: &Ctx, base: &Stream, cont: &[u8]) -> Result<Value, CliError> {
    let ids = ctx.tok.encode(cont)?;
    let mut s = base.fork()?;
    score_ids(ctx, &mut s, &ids)?;
    let t = s.totals;
    Ok(json!({
        "tokens": t.tokens,
        "bytes": cont.len(),
        "logprob": -t.nll,
        "logprob_per_byte": -t.nll / cont.len() as f64,
        "greedy": t.greedy,
    }))
}

fn score_doc(ctx: &Ctx, source: Value, doc: &Doc) -> Result<Value, CliError> {
    match doc {
        Doc::Text(text) => {
            let ids = ctx.tok.encode(text)?;
            let mut s = new_stream(ctx, true)?;
            score_ids(ctx, &mut s, &ids)?;
            Ok(doc_record(ctx, source, &s, text.len() as u64))
        }
        Doc::Ids(ids) => {
            let mut s = new_stream(ctx, true)?;
            score_ids(ctx, &mut s, ids)?;
            let bytes = ctx.tok.decode(ids).map(|b| b.len() as u64).unwrap_or(0);
            Ok(doc_record(ctx, source, &s, bytes))
        }
        Doc::Continuation {
            context,
            continuation: cont,
        } => {
            let mut base = new_stream(ctx, false)?;
            base.context(&ctx.tok.encode(context)?)?;
            if base.next_logits().is_none() {
                return Err(CliError::runtime(
                    "nothing predicts the continuation: give a context or drop --no-bos".into(),
                ));
            }
            let mut rec = continuation(ctx, &base, cont)?;
            rec["source"] = source;
            rec["nll"] = json!(-rec["logprob"].as_f64().unwrap_or(f64::NAN));
            Ok(rec)
        }
        Doc::Choices {
            context,
            choices,
            label,
        } => {
            let mut base = new_stream(ctx, false)?;
            base.context(&ctx.tok.encode(context)?)?;
            if base.next_logits().is_none() {
                return Err(CliError::runtime(
                    "nothing predicts the choices: give a context or drop --no-bos".into(),
                ));
            }
            let recs = choices
                .iter()
                .map(|c| continuation(ctx, &base, c))
                .collect::<Result<Vec<_>, _>>()?;
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
            let mut rec =
                json!({"source": source, "choices": recs, "best": best, "best_per_byte": best_pb});
            if let Some(l) = label {
                rec["label"] = json!(l);
                rec["correct"] = json!(best as u64 == *l);
                rec["correct_per_byte"] = json!(best_pb as u64 == *l);
            }
            Ok(rec)
        }
    }
}

/// Totals over records, added in input order: the same code sums a run and `--merge`.
#[derive(Default)]
struct Summary {
    documents: u64,
    tokens: u64,
    bytes: u64,
    nll: f64,
    labelled: u64,
    correct: u64,
    correct_per_byte: u64,
}

impl Summary {
    fn add(&mut self, r: &Value) {
        if r.get("summary").is_some() {
            return;
        }
        self.documents += 1;
        if let (Some(t), Some(n)) = (r["tokens"].as_u64(), r["nll"].as_f64()) {
            self.tokens += t;
            self.nll += n;
            self.bytes += r["bytes"].as_u64().unwrap_or(0);
        }
        if let Some(c) = r["correct"].as_bool() {
            self.labelled += 1;
            self.correct += c as u64;
            self.correct_per_byte += r["correct_per_byte"].as_bool().unwrap_or(false) as u64;
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "summary": true,
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nll": self.nll,
            "ppl": if self.tokens > 0 { (self.nll / self.tokens as f64).exp() } else { f64::NAN },
            "bits_per_byte": score::bits_per_byte(self.nll, self.bytes),
        });
        if self.labelled > 0 {
            v["accuracy"] = json!(self.correct as f64 / self.labelled as f64);
            v["accuracy_per_byte"] = json!(self.correct_per_byte as f64 / self.labelled as f64);
        }
        v
    }
}

fn merge(sources: &[Source]) -> Result<(), CliError> {
    let mut summary = Summary::default();
    for src in sources {
        let reader = std::io::BufReader::new(src.open()?);
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| CliError::runtime(format!("{}: {e}", src.name())))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&line).map_err(|e| {
                CliError::runtime(format!("{}: line {}: invalid JSON: {e}", src.name(), i + 1))
            })?;
            summary.add(&v);
        }
    }
    let mut out = Output::stdout(false);
    out.write(format!("{}\n", summary.to_json()).as_bytes())?;
    out.flush()?;
    Ok(())
}

fn tokenize(args: &Args, tok: &Tokenizer, sources: &[Source]) -> Result<(), CliError> {
    let mut out = Output::stdout(false);
    let record = |source: Value, text: &[u8]| -> Result<Value, CliError> {
        let ids = tok.encode(text)?;
        Ok(json!({"source": source, "ids": ids, "tokens": ids.len(), "bytes": text.len()}))
    };
    let mut failed = false;
    for src in sources {
        let mut reader = match src.open() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("rwkv-score: {}", e.msg);
                failed = true;
                continue;
            }
        };
        let mut all = Vec::new();
        reader
            .read_to_end(&mut all)
            .map_err(|e| CliError::runtime(format!("{}: {e}", src.name())))?;
        if args.lines || args.jsonl {
            let body = all.strip_suffix(b"\n").unwrap_or(&all);
            for (i, line) in body.split(|&b| b == b'\n').enumerate() {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let text = if args.jsonl {
                    let v: Value = serde_json::from_slice(line).map_err(|e| {
                        CliError::runtime(format!(
                            "{}: line {}: invalid JSON: {e}",
                            src.name(),
                            i + 1
                        ))
                    })?;
                    v["text"].as_str().unwrap_or_default().as_bytes().to_vec()
                } else {
                    line.to_vec()
                };
                out.write(format!("{}\n", record(json!(i + 1), &text)?).as_bytes())?;
            }
        } else {
            out.write(format!("{}\n", record(json!(src.name()), &all)?).as_bytes())?;
        }
    }
    out.flush()?;
    if failed {
        return Err(CliError::runtime(String::new()));
    }
    Ok(())
}

fn use_color(c: Color) -> bool {
    match c {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal(),
    }
}

/// Surprisal bands in bits and their 256-color backgrounds.
const BANDS: [(f64, u8, &str); 5] = [
    (1.0, 22, "1-2"),
    (2.0, 58, "2-4"),
    (4.0, 94, "4-8"),
    (8.0, 124, "8-12"),
    (12.0, 160, ">12"),
];

fn band(bits: f64) -> Option<u8> {
    let mut color = None;
    for (lo, c, _) in BANDS {
        if bits >= lo {
            color = Some(c);
        }
    }
    color
}

/// A document for a person: colored text, or a table of surprisals without color.
fn view(rec: &Value, color: bool) -> String {
    let mut s = String::new();
    let per = rec["per_token"].as_array().cloned().unwrap_or_default();
    for t in &per {
        let bits = -t["logprob"].as_f64().unwrap_or(0.0) / std::f64::consts::LN_2;
        let text = t["text"].as_str().unwrap_or("");
        if color {
            // Shade each line piece, so a newline does not paint the rest of the row.
            for (i, piece) in text.split('\n').enumerate() {
                if i > 0 {
                    s.push('\n');
                }
                match band(bits) {
                    Some(c) if !piece.is_empty() => s += &format!("\x1b[48;5;{c}m{piece}\x1b[0m"),
                    _ => s += piece,
                }
            }
        } else {
            s += &format!("{bits:7.2}  {text:?}\n");
        }
    }
    if color {
        s.push('\n');
    }
    s += &format!(
        "-- {}: {} tokens, {:.4} bits per byte, perplexity {:.3}\n",
        rec["source"],
        rec["tokens"],
        rec["bits_per_byte"].as_f64().unwrap_or(f64::NAN),
        rec["ppl"].as_f64().unwrap_or(f64::NAN)
    );
    s
}

fn legend(color: bool) -> String {
    if !color {
        return "surprisal in bits per token (-log2 p), one token per line\n".into();
    }
    let mut s = String::from("surprisal (bits):  <1 ");
    for (_, c, label) in BANDS {
        s += &format!(" \x1b[48;5;{c}m {label} \x1b[0m");
    }
    s.push('\n');
    s
}

/// A progress line on stderr, redrawn at most 5 times a second, only on a terminal.
struct Progress {
    on: bool,
    total: u64,
    bytes: AtomicU64,
    tokens: AtomicU64,
    start: Instant,
    last: Mutex<Instant>,
}

impl Progress {
    fn new(on: bool, total: u64) -> Progress {
        Progress {
            on,
            total,
            bytes: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            start: Instant::now(),
            last: Mutex::new(Instant::now()),
        }
    }

    fn add(&self, bytes: u64, tokens: u64) {
        if !self.on {
            return;
        }
        let b = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let t = self.tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        let Ok(mut last) = self.last.try_lock() else {
            return;
        };
        if last.elapsed().as_millis() < 200 {
            return;
        }
        *last = Instant::now();
        let secs = self.start.elapsed().as_secs_f64();
        let mb = |x: u64| x as f64 / 1e6;
        let left = if self.total > b && b > 0 {
            format!(", {:.0} s left", secs * (self.total - b) as f64 / b as f64)
        } else {
            String::new()
        };
        let of = if self.total > 0 {
            format!(" of {:.1}", mb(self.total))
        } else {
            String::new()
        };
        eprint!(
            "\r\x1b[K{:.1}{of} MB, {:.0} tokens/s{left}",
            mb(b),
            t as f64 / secs.max(1e-9)
        );
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}
