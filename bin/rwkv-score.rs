//! rwkv-score: documents in, one JSON object of scores per document out.

mod common;

use rwkv::cli::progress::Progress;
use rwkv::cli::score::Args;
use rwkv::cli::{self, view, CliError, Line, Output};
use rwkv::model::Precision;
use rwkv::score::default_chunk;
use rwkv::score::docs::Scorer;
use rwkv::score::input::{self, Source};
use rwkv::score::summary::Summary;
use rwkv::state_file;
use serde_json::Value;
use std::time::Instant;

/// Lines scored in parallel before their records are written in order.
const LINE_BATCH: usize = 256;

fn main() {
    common::main_with("rwkv-score", run)
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
    let sources = Source::list(&args.files);
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
        rwkv::say!(
            "rwkv-score: loaded {} ({}, on {}) in {:.0} ms",
            model.path.display(),
            model.cfg.version.title,
            model.device(),
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let total = sources.iter().map(Source::known_size).sum();
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
    if args.view && args.color.enabled() {
        ctx.out.write(view::legend().as_bytes())?;
    }
    ctx.out.flush()?;
    if args.verbose {
        let s = t1.elapsed().as_secs_f64();
        let n = ctx.summary.tokens;
        rwkv::say!(
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
            view::render(rec, self.args.color.enabled())
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
        self.progress.suspend(|| rwkv::say!("rwkv-score: {msg}"));
        self.failed = true;
    }
}

/// Score each source as one document, in parallel, streaming each through blocks.
fn score_files(ctx: &mut Ctx, sources: &[Source]) -> Result<(), CliError> {
    let batch = rayon::current_num_threads().max(1);
    for group in sources.chunks(batch) {
        let progress = |b, t| ctx.progress.add(b, t);
        for r in input::score_sources(&ctx.scorer, group, &progress) {
            match r {
                Ok(rec) => ctx.emit(&rec)?,
                Err(e) => ctx.report(&e.to_string()),
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
                ctx.report(&e.to_string());
                continue;
            }
        };
        let mut reader = std::io::BufReader::new(reader);
        let (name, named) = (src.name(), sources.len() > 1);
        let mut n = 0u64;
        loop {
            let how = (max, jsonl, vocab);
            let batch = input::next_docs(&mut reader, &name, how, LINE_BATCH, &mut n)?;
            if batch.is_empty() {
                break;
            }
            let progress = |b, t| ctx.progress.add(b, t);
            let results = input::score_batch(&ctx.scorer, &name, named, &batch, &progress);
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

/// `--tokenize`: each document's ids, tokens and bytes. A whole file streams through the
/// tokenizer in blocks (its ids written as they come); a JSON line gives each text field's.
fn tokenize(args: &Args, sources: &[Source]) -> Result<(), CliError> {
    args.model.init_threads();
    let tok = args.model.tokenizer_alone()?;
    let mut out = Output::stdout(false);
    let mut failed = false;
    for src in sources {
        let (name, max) = (src.name(), args.max_line_bytes);
        let mut reader = match src.open() {
            Ok(r) => std::io::BufReader::new(r),
            Err(e) => {
                rwkv::say!("rwkv-score: {e}");
                failed = true;
                continue;
            }
        };
        if !(args.lines || args.jsonl) {
            input::tokenize_stream(&tok, &name, &mut reader, &mut out)?;
            continue;
        }
        let mut n = 0u64;
        while let Some(line) = cli::read_line(&mut reader, max)
            .map_err(|e| CliError::runtime(format!("{name}: {e}")))?
        {
            n += 1;
            let line = match line {
                Line::Text(l) => l,
                Line::TooLong(b) => {
                    let msg = format!("{b} bytes, longer than --max-line-bytes ({max})");
                    return Err(CliError::runtime(format!("{name}: line {n}: {msg}")));
                }
                Line::Unreadable(e) => return Err(CliError::runtime(e)),
            };
            let rec = input::token_record(&tok, n, &line, args.jsonl)
                .map_err(|e| CliError::runtime(format!("{name}: {e}")))?;
            out.write(format!("{rec}\n").as_bytes())?;
        }
    }
    out.flush()?;
    if failed {
        return Err(CliError::reported());
    }
    Ok(())
}
