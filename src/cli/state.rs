//! `rwkv-state` flags.

use super::ModelArgs;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Make, inspect and convert RNN state files: a prompt of any length becomes a fixed-size
/// state that later commands (`rwkv-gen --state`, `rwkv-score --state`) start from.
#[derive(Debug, Parser)]
#[command(
    name = "rwkv-state",
    version,
    args_override_self = true,
    disable_help_subcommand = true,
    after_help = concat!(
        "Examples:\n",
        "  rwkv-state feed -m model.pth < system.txt > sys.state\n",
        "  rwkv-state feed -m model.pth --state sys.state -p 'More context' -o next.state\n",
        "  rwkv-state info sys.state\n",
        "  rwkv-state import rwkv-peft-state.pth -m model.pth -o tuned.state\n",
        "  rwkv-state diff a.state b.state && echo same\n\n",
        "`diff` exits 0 when the states are equal, 1 when they differ. ",
        super::exit_status_help!()
    )
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,

    /// Load time and speed on stderr
    #[arg(short = 'v', long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,

    /// No hints on stderr (only errors)
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Feed text (stdin, -p or -f) or token ids to a model and write the state
    Feed(Feed),
    /// Show a state file (shape, model fingerprint, tokens fed, per-layer norms) or a model file
    Info(Info),
    /// Convert a state-tuning file (RWKV-PEFT .pth, Ai00 .st) into a state file
    Import(Import),
    /// Per-tensor max and mean absolute difference of two state files
    Diff(Diff),
}

#[derive(Debug, clap::Args)]
#[command(allow_negative_numbers = true)]
pub struct Feed {
    /// Text to feed (instead of stdin)
    #[arg(
        short = 'p',
        long,
        alias = "text",
        value_name = "TEXT",
        conflicts_with = "prompt_file"
    )]
    pub prompt: Option<String>,

    /// Feed this file's contents (instead of stdin; `-` is stdin); at most 64 MiB
    #[arg(short = 'f', long, alias = "file", value_name = "PATH")]
    pub prompt_file: Option<PathBuf>,

    /// The input is token ids (separated by spaces, commas or newlines), not text
    #[arg(long)]
    pub ids: bool,

    /// Output file; `-` is stdout, the default when stdout is not a terminal
    #[arg(short = 'o', long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Start from this state (`-` reads it from stdin; then the text comes from -p or -f)
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,

    /// Use --state even when it was made with other weights of the same shape
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub model: ModelArgs,
}

#[derive(Debug, clap::Args)]
pub struct Info {
    /// A state file, a state-tuning file (`-` reads stdin), or a model file: its format,
    /// version, shape, fingerprint and stored types
    pub file: PathBuf,

    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Import {
    /// State-tuning file: `blocks.N.att.time_state` in a RWKV-PEFT .pth or an Ai00 .st
    pub file: PathBuf,

    /// The model the state is for: checked against it, its fingerprint recorded (needed
    /// for a RWKV-PEFT file, whose tensors look alike for RWKV-6 and RWKV-7)
    #[arg(short = 'm', long, env = "RWKV_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Output file; `-` is stdout
    #[arg(short = 'o', long, value_name = "PATH")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct Diff {
    /// A state file (`-` reads stdin)
    pub a: PathBuf,
    /// Another state file (`-` reads stdin)
    pub b: PathBuf,

    /// JSON lines instead of a table
    #[arg(long)]
    pub json: bool,
}
