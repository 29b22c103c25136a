//! `rwkv-score`'s run once the model is loaded: documents from the sources scored into
//! records on stdout (in order, with the progress bar on stderr), and the modes that need
//! no model (`--tokenize`, `--merge`).

use super::progress::Progress;
use super::records::{Form, Records};
use super::score::Args;
use super::{read_line, view, CliError, Line, Output};
use crate::score::docs::{Scored, Scorer};
use crate::score::input::{self, Source};
use crate::score::summary::Summary;
use serde_json::json;
use std::time::Instant;

/// Lines scored in parallel before their records are written in order.
const LINE_BATCH: usize = 256;

/// What one run shares.
pub struct Run<'a> {
    args: &'a Args,
    scorer: Scorer<'a>,
    progress: Progress,
    records: Records<'a>,
    out: Output,
    summary: Summary,
    /// Some input failed (reported); exit 1 at the end.
    failed: bool,
}

impl<'a> Run<'a> {
    /// A run of `scorer` over sources of `total` bytes (0: unknown).
    pub fn new(args: &'a Args, scorer: Scorer<'a>, total: u64) -> Run<'a> {
        let form = match args.view {
            true => Form::View {
                color: args.color.enabled(),
            },
            false => Form::Json,
        };
        Run {
            args,
            progress: Progress::new(!args.quiet, total),
            records: Records::new(scorer.tok, form),
            scorer,
            out: Output::stdout(false),
            summary: Summary::default(),
            failed: false,
        }
    }

    /// Score every source (lines of them with `--lines`/`--jsonl`), then write the summary
    /// and legend asked for; `-v`'s figures on stderr. An input that failed is an error
    /// after the others are done.
    pub fn score(mut self, sources: &[Source]) -> Result<(), CliError> {
        let t1 = Instant::now();
        let result = if self.args.lines || self.args.jsonl {
            score_lines(&mut self, sources)
        } else {
            score_files(&mut self, sources)
        };
        self.progress.clear();
        result?;
        if self.args.summary {
            let s = self.summary.to_json();
            self.out.write(format!("{s}\n").as_bytes())?;
        }
        if self.args.view && self.args.color.enabled() {
            self.out.write(view::legend().as_bytes())?;
        }
        self.out.flush()?;
        if self.args.verbose {
            let s = t1.elapsed().as_secs_f64();
            let n = self.summary.tokens;
            crate::say!(
                "rwkv-score: {} documents, {n} tokens in {s:.1} s ({:.1} tokens/s){}",
                self.summary.documents,
                n as f64 / s.max(1e-9),
                super::peak_memory_note()
            );
        }
        if self.failed {
            return Err(CliError::reported());
        }
        Ok(())
    }

    /// Write a record (or its view) and add it to the summary.
    fn emit(&mut self, s: &Scored) -> Result<(), CliError> {
        self.summary.add(&s.record);
        if let Some(tokens) = &s.tokens {
            self.records.begin(&s.record["source"]);
            self.records.tokens(tokens);
        }
        self.records.end(&s.record);
        self.write()
    }

    /// Write what the records have ready.
    fn write(&mut self) -> Result<(), CliError> {
        let (bytes, out) = (self.records.take(), &mut self.out);
        self.progress
            .suspend(|| out.write(&bytes).and_then(|()| out.tick()))?;
        Ok(())
    }

    /// Report an input that failed; the run goes on and exits 1.
    fn report(&mut self, msg: &str) {
        self.progress.suspend(|| crate::say!("rwkv-score: {msg}"));
        self.failed = true;
    }
}

/// Score each source as one document, in parallel, streaming each through blocks; with
/// per-token records, one at a time, its records written as they are scored.
fn score_files(ctx: &mut Run, sources: &[Source]) -> Result<(), CliError> {
    if ctx.scorer.per_token {
        return sources.iter().try_for_each(|s| stream_file(ctx, s));
    }
    let batch = rayon::current_num_threads().max(1);
    for group in sources.chunks(batch) {
        let progress = |b, t| ctx.progress.add(b, t);
        for r in input::score_sources(&ctx.scorer, group, &progress) {
            match r {
                Ok(rec) => ctx.emit(&Scored::alone(rec))?,
                Err(e) => ctx.report(&e.to_string()),
            }
        }
    }
    Ok(())
}

/// Score one source with its per-token records written a chunk at a time (a write that
/// fails ends the run; a document that fails ends its record with the error).
fn stream_file(ctx: &mut Run, src: &Source) -> Result<(), CliError> {
    let mut reader = match src.open() {
        Ok(r) => r,
        Err(e) => {
            ctx.report(&e.to_string());
            return Ok(());
        }
    };
    let source = json!(src.name());
    ctx.records.begin(&source);
    let mut lost = None;
    let scored = {
        let Run {
            scorer,
            progress,
            records,
            out,
            ..
        } = ctx;
        let mut sink = |ts: &[_]| {
            records.tokens(ts);
            let bytes = records.take();
            if lost.is_none() {
                if let Err(e) = progress.suspend(|| out.write(&bytes).and_then(|()| out.tick())) {
                    lost = Some(e);
                }
            }
        };
        let progress = |b, t| progress.add(b, t);
        scorer.score_reader(&src.name(), &mut reader, &progress, &mut sink)
    };
    if let Some(e) = lost {
        return Err(e.into());
    }
    match scored {
        Ok(rec) => {
            ctx.summary.add(&rec);
            ctx.records.end(&rec);
        }
        Err(e) => {
            ctx.records.fail(&source, &e.to_string());
            ctx.report(&e.to_string());
        }
    }
    ctx.write()
}

/// Read lines from every source in batches; parse, score in parallel, write in order. The
/// first bad line stops the run after the records before it.
fn score_lines(ctx: &mut Run, sources: &[Source]) -> Result<(), CliError> {
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
        let mut n = ctx.args.first_line - 1;
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
                    Ok(scored) => ctx.emit(&scored)?,
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

/// `--merge`: the records of many runs added up into one summary. No record at all is an
/// error (the runs failed, or their output went elsewhere), not a summary of zeros.
pub fn merge(sources: &[Source]) -> Result<(), CliError> {
    let mut summary = Summary::default();
    for src in sources {
        let mut reader = std::io::BufReader::new(src.open()?);
        summary.add_lines(&src.name(), &mut reader)?;
    }
    if summary.documents == 0 {
        let names: Vec<String> = sources.iter().map(Source::name).collect();
        return Err(CliError::runtime(format!(
            "--merge: no score records in {}",
            names.join(", ")
        )));
    }
    let mut out = Output::stdout(false);
    out.write(format!("{}\n", summary.to_json()).as_bytes())?;
    Ok(out.flush()?)
}

/// `--tokenize`: each document's ids, tokens and bytes. A whole file streams through the
/// tokenizer in blocks (its ids written as they come); a JSON line gives each text field's.
pub fn tokenize(args: &Args, sources: &[Source]) -> Result<(), CliError> {
    let t0 = Instant::now();
    args.model.init_threads();
    let tok = args.model.tokenizer_alone()?;
    let mut out = Output::stdout(false);
    let mut failed = false;
    for src in sources {
        let (name, max) = (src.name(), args.max_line_bytes);
        let mut reader = match src.open() {
            Ok(r) => std::io::BufReader::new(r),
            Err(e) => {
                crate::say!("rwkv-score: {e}");
                failed = true;
                continue;
            }
        };
        if !(args.lines || args.jsonl) {
            input::tokenize_stream(&tok, &name, &mut reader, &mut out)?;
            continue;
        }
        let mut n = args.first_line - 1;
        while let Some(line) =
            read_line(&mut reader, max).map_err(|e| CliError::runtime(format!("{name}: {e}")))?
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
            input::write_token_record(&tok, n, &line, args.jsonl, &mut out)
                .map_err(|e| CliError::runtime(format!("{name}: {e}")))?;
        }
    }
    out.flush()?;
    if args.verbose {
        let s = t0.elapsed().as_secs_f64();
        crate::say!(
            "rwkv-score: tokenized in {s:.1} s{}",
            super::peak_memory_note()
        );
    }
    if failed {
        return Err(CliError::reported());
    }
    Ok(())
}
