//! `rwkv-score` flags.

use super::ModelArgs;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

impl Color {
    /// Whether `--view` colours its text: `auto` when stdout is a terminal and `NO_COLOR` is
    /// not set.
    pub fn enabled(self) -> bool {
        match self {
            Color::Always => true,
            Color::Never => false,
            Color::Auto => {
                use std::io::IsTerminal;
                std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
            }
        }
    }
}

/// Score text with an RWKV model: log-likelihood, perplexity, bits per byte, per-token
/// log-probabilities, continuations and multiple-choice ranking. One JSON object per
/// document on stdout, in input order.
///
/// Every token of a document is predicted from the state after token 0 (the document
/// separator World models are trained with); --no-bos makes the first token context only.
/// With --state, documents start from that state, token 0 still first unless --no-bos, and
/// with --no-bos a state that carries logits scores the first token from them. A `context`
/// follows token 0 the same way, and its own tokens are not scored.
#[derive(Debug, Parser)]
#[command(
    name = "rwkv-score",
    version,
    args_override_self = true,
    allow_negative_numbers = true,
    after_help = concat!(
        "Output fields: source, tokens, bytes, nll (nats), ppl (exp of nll per token), \
bits_per_byte; continuations: logprob, logprob_per_byte, greedy; choices: choices[], best, \
best_per_byte (correct with a label); --per-token: per_token[] of token, text, bytes, \
logprob, right after source (written as the document is scored; a document that fails part \
way ends its record with error).\n\n",
        "--jsonl input, one object per line:\n",
        "  {\"text\": \"...\"}  {\"ids\": [1, 2]}  {\"context\": \"...\", \"continuation\": \"...\"}\n",
        "  {\"context\": \"...\", \"choices\": [\"...\", \"...\"], \"label\": 0}\n\n",
        "Examples:\n",
        "  rwkv-score -m model.pth --summary book1.txt book2.txt\n",
        "  rwkv-score -m model.pth --jsonl < lambada.jsonl\n",
        "  rwkv-score -m model.pth --view < essay.txt\n",
        "  cat part.*.jsonl | rwkv-score --merge\n\n",
        "An unreadable file is reported and the other files are still scored; a bad line \
stops the run after the records before it. A repeated flag takes its last value.\n\n",
        super::exit_status_help!()
    )
)]
pub struct Args {
    /// Documents, one per file; none or `-` reads stdin
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Every input line is a document
    #[arg(long, conflicts_with = "jsonl")]
    pub lines: bool,

    /// Every input line is a JSON object with `text`, `ids`, `context` + `continuation` or
    /// `context` + `choices`
    #[arg(long)]
    pub jsonl: bool,

    /// Add a final object with the totals over all documents
    #[arg(long)]
    pub summary: bool,

    /// Add every token with its text, bytes and log-probability
    #[arg(long)]
    pub per_token: bool,

    /// With --per-token: the K most likely alternatives at each position
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_logprobs: usize,

    /// Show the text for a person, each character shaded by its surprisal
    #[arg(long, conflicts_with_all = ["jsonl", "tokenize", "merge"])]
    pub view: bool,

    /// Colours for --view [auto: when stdout is a terminal and NO_COLOR is unset]; without
    /// colour the text is the same, unshaded
    #[arg(long, value_enum, default_value_t = Color::Auto)]
    pub color: Color,

    /// Do not feed token 0 first: the first token is context only
    #[arg(long)]
    pub no_bos: bool,

    /// Start every document from this state file or state-tuning file
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,

    /// Use --state even when it was made with other weights of the same shape
    #[arg(long)]
    pub force: bool,

    /// Print each document's token ids and counts (the model's tokenizer when -m is given,
    /// else --tokenizer, else World); with --jsonl, every text field's
    #[arg(long)]
    pub tokenize: bool,

    /// No model: read rwkv-score output (stdin or files) and print the totals, as one run
    /// over all of it would
    #[arg(long, conflicts_with_all = ["tokenize", "lines", "jsonl"])]
    pub merge: bool,

    /// Tokens per sequence call [default: about 64 MiB of logits, at most 512]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk: Option<u32>,

    /// The longest input line read with --lines and --jsonl; a longer one is an error
    #[arg(long, value_name = "BYTES", default_value_t = super::MAX_LINE_BYTES)]
    pub max_line_bytes: usize,

    /// With --lines and --jsonl: the number of the first line (each record's source), for
    /// a part of a longer file
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub first_line: u64,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Load time and scoring speed on stderr
    #[arg(short = 'v', long, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No progress bar and no hints (the bar shows only when stderr is a terminal)
    #[arg(short = 'q', long)]
    pub quiet: bool,
}
