//! rwkv-score: documents in, one JSON object of scores per document out.

mod common;

use rwkv::cli::score::Args;
use rwkv::cli::scoring::{merge, tokenize, Run};
use rwkv::cli::{self, CliError};
use rwkv::model::Precision;
use rwkv::score::default_chunk;
use rwkv::score::docs::Scorer;
use rwkv::score::input::Source;
use rwkv::state_file;
use std::time::Instant;

fn main() {
    common::main_with("rwkv-score", run)
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
    let scorer = Scorer {
        model: &model,
        tok: &tok,
        start,
        chunk: args
            .chunk
            .map_or_else(|| default_chunk(model.cfg.vocab), |c| c as usize),
        bos: !args.no_bos,
        per_token: args.per_token || args.view,
        top_logprobs: args.top_logprobs,
    };
    Run::new(args, scorer, total).score(&sources)
}
