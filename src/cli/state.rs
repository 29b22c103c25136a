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
    after_help = concat!(
        "Examples:\n",
        "  rwkv-state feed -m model.pth < system.txt > sys.state\n",
        "  rwkv-state feed -m model.pth --state sys.state -p 'More context' -o next.state\n",
        "  rwkv-state info sys.state\n",
        "  rwkv-state import rwkv-peft-state.pth -m model.pth -o tuned.state\n\n",
        super::exit_status_help!()
    )
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Feed text (stdin, -p or -f) or token ids to a model and write the state
    Feed(Feed),
    /// Show a state file: shape, model fingerprint, tokens fed, per-layer norms
    Info(Info),
    /// Convert a state-tuning file (RWKV-PEFT .pth, Ai00 .st) into a state file
    Import(Import),
    /// Per-tensor max and mean absolute difference of two state files
    Diff(Diff),
}

#[derive(Debug, clap::Args)]
pub struct Feed {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Start from this state (`-` reads it from stdin; then the text comes from -p or -f)
    #[arg(long, value_name = "PATH")]
    pub state: Option<PathBuf>,

    /// Use --state even when it was made with other weights of the same shape
    #[arg(long)]
    pub force: bool,

    /// Text to feed (instead of stdin)
    #[arg(short = 'p', long, value_name = "TEXT", conflicts_with = "file")]
    pub text: Option<String>,

    /// Feed this file's contents (instead of stdin)
    #[arg(short = 'f', long, value_name = "PATH")]
    pub file: Option<PathBuf>,

    /// The input is token ids (separated by spaces, commas or newlines), not text
    #[arg(long)]
    pub ids: bool,

    /// Output file; `-` is stdout, the default when stdout is not a terminal
    #[arg(short = 'o', long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct Info {
    /// A state file (or a state-tuning file)
    pub file: PathBuf,

    /// One JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct Import {
    /// State-tuning file: `blocks.N.att.time_state` in a RWKV-PEFT .pth or an Ai00 .st
    pub file: PathBuf,

    /// Check the state against this model and record its fingerprint
    #[arg(short = 'm', long, env = "RWKV_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Output file; `-` is stdout
    #[arg(short = 'o', long, value_name = "PATH")]
    pub output: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct Diff {
    pub a: PathBuf,
    pub b: PathBuf,

    /// JSON lines instead of a table
    #[arg(long)]
    pub json: bool,
}
