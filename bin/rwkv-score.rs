//! rwkv-score: documents in, one JSON object of scores per document out.

mod common;

use rayon::prelude::*;
use rwkv::cli::progress::Progress;
use rwkv::cli::score::{Args, Color};
use rwkv::cli::{self, view, CliError, Line, Output};
use rwkv::model::{Model, Precision};
use rwkv::score::default_chunk;
use rwkv::score::docs::{self, Scorer};
use rwkv::score::summary::Summary;
use rwkv::state_file;
use rwkv::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;
use std::time::Instant;

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
            Source::File(p) if p.is_dir() => Err(CliError::runtime(format!(
                "{}: is a folder, not a file",
                p.display()
            ))),
            Source::File(p) => std::fs::File::open(p)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|e| CliError::runtime(format!("{}: {e}", p.display()))),
        }
    }
}

/// What one run shares.
struct Ctx<'a> {
    args: &'a Args,
    scorer: Scorer<'a>,
    progress: Progress,
    out: Output,
    summary: Summary,
    /// Some input failed (reported); exit 1 at the end.
    failed: bool,
}

fn run(args: &Args) -> Result<(), CliError> {
    if args.top_logprobs > 0 && !args.per_token {
        return Err(CliError::usage("--top-logprobs needs --per-token".into()));
    }
    let sources: Vec<Source> = if args.files.is_empty() {
        vec![Source::Stdin]
    } else {
        let src = |p: &PathBuf| match p.as_os_str() == "-" {
            true => Source::Stdin,
            false => Source::File(p.clone()),
        };
        args.files.iter().map(src).collect()
    };
    let reads_stdin = sources.iter().any(|s| matches!(s, Source::Stdin));
    if args.merge {
        return merge(&sources);
    }
    if args.state.as_ref().is_some_and(|p| p.as_os_str() == "-") && reads_stdin {
        return Err(CliError::usage(
            "--state - reads the state from stdin: name the documents as FILE arguments".into(),
        ));
    }
    if reads_stdin {
        cli::stdin_hint("rwkv-score", "a document", args.quiet);
    }
    if args.tokenize {
        return tokenize(args, &sources);
    }
    // Scores are measurements: exact, and the same however the text is chunked.
    let t0 = Instant::now();
    let (model, tok) = args.model.load(Precision::F32)?;
    let start = state_file::start_for(args.state.as_deref(), &model, args.force)?;
    if args.verbose {
        eprintln!(
            "rwkv-score: loaded {} ({}, on {}) in {:.0} ms",
            model.path.display(),
            model.cfg.version.title,
            model.device(),
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let total = sources
        .iter()
        .map(|s| match s {
            Source::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
            Source::Stdin => 0,
        })
        .sum();
    let mut ctx = Ctx {
        args,
        scorer: Scorer {
            model: &model,
            tok: &tok,
            start,
            chunk: args
                .chunk
                .map_or_else(|| default_chunk(model.cfg.vocab), |c| c as usize),
            bos: !args.no_bos,
            per_token: args.per_token || args.view,
            top_logprobs: args.top_logprobs,
        },
        progress: Progress::new(!args.quiet, total),
        out: Output::stdout(false),
        summary: Summary::default(),
        failed: false,
    };
    let t1 = Instant::now();
    let result = if args.lines || args.jsonl {
        score_lines(&mut ctx, &sources)
    } else {
        score_files(&mut ctx, &sources)
    };
    ctx.progress.clear();
    result?;
    if args.summary {
        let s = ctx.summary.to_json();
        ctx.out.write(format!("{s}\n").as_bytes())?;
    }
    if args.view && use_color(args.color) {
        ctx.out.write(view::legend().as_bytes())?;
    }
    ctx.out.flush()?;
    if args.verbose {
        let s = t1.elapsed().as_secs_f64();
        let n = ctx.summary.tokens;
        eprintln!(
            "rwkv-score: {} documents, {n} tokens in {s:.1} s ({:.1} tokens/s)",
            ctx.summary.documents,
            n as f64 / s.max(1e-9)
        );
    }
    if ctx.failed {
        return Err(CliError::reported());
    }
    Ok(())
}

impl Ctx<'_> {
    /// Write a record (or its view) and add it to the summary.
    fn emit(&mut self, rec: &Value) -> Result<(), CliError> {
        self.summary.add(rec);
        let bytes = if self.args.view {
            view::render(rec, use_color(self.args.color))
        } else {
            format!("{rec}\n").into_bytes()
        };
        let out = &mut self.out;
        self.progress
            .suspend(|| out.write(&bytes).and_then(|()| out.tick()))?;
        Ok(())
    }

    /// Report an input that failed; the run goes on and exits 1.
    fn report(&mut self, msg: &str) {
        self.progress.suspend(|| eprintln!("rwkv-score: {msg}"));
        self.failed = true;
    }
}

/// Score each source as one document, in parallel, streaming each through blocks.
fn score_files(ctx: &mut Ctx, sources: &[Source]) -> Result<(), CliError> {
    let batch = rayon::current_num_threads().max(1);
    for group in sources.chunks(batch) {
        let results: Vec<Result<Value, CliError>> = group
            .par_iter()
            .map(|s| {
                let mut reader = s.open()?;
                let progress = |b, t| ctx.progress.add(b, t);
                Ok(ctx.scorer.score_reader(&s.name(), &mut reader, &progress)?)
            })
            .collect();
        for r in results {
            match r {
                Ok(rec) => ctx.emit(&rec)?,
                Err(e) if e.code == cli::exit::RUNTIME => ctx.report(&e.msg),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Read lines from every source in batches; parse, score in parallel, write in order. The
/// first bad line stops the run after the records before it.
fn score_lines(ctx: &mut Ctx, sources: &[Source]) -> Result<(), CliError> {
    let (jsonl, max) = (ctx.args.jsonl, ctx.args.max_line_bytes);
    let vocab = ctx.scorer.model.cfg.vocab;
    for src in sources {
        let reader = match src.open() {
            Ok(r) => r,
            Err(e) => {
                ctx.report(&e.msg);
                continue;
            }
        };
        let mut reader = std::io::BufReader::new(reader);
        let prefix = if sources.len() > 1 {
            format!("{}:", src.name())
        } else {
            String::new()
        };
        let mut n = 0u64;
        loop {
            let mut batch: Vec<(u64, Result<docs::Doc, String>)> = Vec::new();
            while batch.len() < LINE_BATCH {
                let Some(line) = cli::read_line(&mut reader, max)
                    .map_err(|e| CliError::runtime(format!("{}: {e}", src.name())))?
                else {
                    break;
                };
                n += 1;
                let doc = match line {
                    Line::Text(l) => docs::parse(&l, jsonl, vocab),
                    Line::TooLong(b) => {
                        Err(format!("{b} bytes, longer than --max-line-bytes ({max})"))
                    }
                    Line::Unreadable(e) => Err(e),
                };
                let stop = doc.is_err();
                batch.push((n, doc));
                if stop {
                    break;
                }
            }
            if batch.is_empty() {
                break;
            }
            let scorer = &ctx.scorer;
            let progress = &ctx.progress;
            let results: Vec<Result<Value, String>> = batch
                .par_iter()
                .map(|(n, doc)| {
                    let doc = doc
                        .as_ref()
                        .map_err(|e| format!("{}: line {n}: {e}", src.name()))?;
                    let source = match prefix.is_empty() {
                        true => json!(n),
                        false => json!(format!("{prefix}{n}")),
                    };
                    let rec = scorer.score_doc(source, doc);
                    let tokens = rec
                        .as_ref()
                        .map_or(0, |r| r["tokens"].as_u64().unwrap_or(0));
                    progress.add(0, tokens);
                    rec.map_err(|e| format!("{}: line {n}: {e}", src.name()))
                })
                .collect();
            for r in results {
                match r {
                    Ok(rec) => ctx.emit(&rec)?,
                    Err(msg) => {
                        ctx.out.flush()?;
                        return Err(CliError::runtime(msg));
                    }
                }
            }
        }
    }
    Ok(())
}

fn merge(sources: &[Source]) -> Result<(), CliError> {
    let mut summary = Summary::default();
    for src in sources {
        let mut reader = std::io::BufReader::new(src.open()?);
        summary.add_lines(&src.name(), &mut reader)?;
    }
    let mut out = Output::stdout(false);
    out.write(format!("{}\n", summary.to_json()).as_bytes())?;
    Ok(out.flush()?)
}

/// The tokenizer `--tokenize` uses: the model's (its vocab read from the file's header)
/// when a model is given, else `--tokenizer`, else World.
fn tokenizer_for(args: &Args) -> Result<Tokenizer, CliError> {
    if args.model.model.is_some() {
        let cfg = Model::inspect(args.model.path()?)?;
        return args.model.tokenizer(cfg.vocab);
    }
    Ok(Tokenizer::from_spec(
        args.model.tokenizer.as_deref().unwrap_or("world"),
    )?)
}

/// `--tokenize`: each document's ids, tokens and bytes. A whole file streams through the
/// tokenizer in blocks (its ids written as they come); a JSON line gives each text field's.
fn tokenize(args: &Args, sources: &[Source]) -> Result<(), CliError> {
    args.model.init_threads();
    let tok = tokenizer_for(args)?;
    let mut out = Output::stdout(false);
    let mut failed = false;
    let record = |text: &[u8]| -> Result<Value, CliError> {
        let ids = tok.encode(text)?;
        Ok(json!({"ids": ids, "tokens": ids.len(), "bytes": text.len()}))
    };
    for src in sources {
        let mut reader = match src.open() {
            Ok(r) => std::io::BufReader::new(r),
            Err(e) => {
                eprintln!("rwkv-score: {}", e.msg);
                failed = true;
                continue;
            }
        };
        if !(args.lines || args.jsonl) {
            tokenize_stream(&tok, &src.name(), &mut reader, &mut out)?;
            continue;
        }
        let mut n = 0u64;
        while let Some(line) = cli::read_line(&mut reader, args.max_line_bytes)
            .map_err(|e| CliError::runtime(format!("{}: {e}", src.name())))?
        {
            n += 1;
            let line = match line {
                Line::Text(l) => l,
                Line::TooLong(b) => {
                    let max = args.max_line_bytes;
                    let msg = format!("{b} bytes, longer than --max-line-bytes ({max})");
                    return Err(CliError::runtime(format!(
                        "{}: line {n}: {msg}",
                        src.name()
                    )));
                }
                Line::Unreadable(e) => return Err(CliError::runtime(e)),
            };
            let mut rec = json!({"source": n});
            if args.jsonl {
                let v: Value = serde_json::from_slice(&line).map_err(|e| {
                    CliError::runtime(format!("{}: line {n}: invalid JSON: {e}", src.name()))
                })?;
                for (field, text) in docs::texts(&v) {
                    rec[field] = record(&text)?;
                }
            } else if let Value::Object(m) = record(&line)? {
                rec.as_object_mut().expect("an object").extend(m);
            }
            out.write(format!("{rec}\n").as_bytes())?;
        }
    }
    out.flush()?;
    if failed {
        return Err(CliError::reported());
    }
    Ok(())
}

/// One whole document's `{"source", "ids", "tokens", "bytes"}`, encoded and written a
/// block at a time.
fn tokenize_stream(
    tok: &Tokenizer,
    name: &str,
    reader: &mut dyn BufRead,
    out: &mut Output,
) -> Result<(), CliError> {
    out.write(format!("{{\"source\":{},\"ids\":[", json!(name)).as_bytes())?;
    let (mut buf, mut tokens, mut bytes) = (Vec::new(), 0u64, 0u64);
    loop {
        let block = reader
            .fill_buf()
            .map_err(|e| CliError::runtime(format!("{name}: {e}")))?;
        let end = block.is_empty();
        buf.extend_from_slice(block);
        let n = block.len();
        reader.consume(n);
        let (ids, used) = tok.encode_prefix(&buf, end)?;
        buf.drain(..used);
        bytes += used as u64;
        let mut s = String::new();
        for id in ids {
            if tokens > 0 {
                s.push(',');
            }
            s += &id.to_string();
            tokens += 1;
        }
        out.write(s.as_bytes())?;
        if end {
            break;
        }
    }
    out.write(format!("],\"tokens\":{tokens},\"bytes\":{bytes}}}\n").as_bytes())?;
    Ok(())
}

fn use_color(c: Color) -> bool {
    match c {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal(),
    }
}
