//! The CPU backend's tuning constants, in one place. Each was chosen by measurement on
//! the 1.6B shape; `docs/PERFORMANCE.md` has the runs.

use crate::tensor::panels::PANEL;

/// How far ahead of its reads a one-token kernel asks for weights, in bytes, into L2
/// (`prefetcht1`): far enough to cover the memory's latency, and into L2 so that L1's few
/// miss buffers stay with the kernel's own loads.
pub const PREFETCH_AHEAD: usize = 4096;

/// Weights one task of a one-token product covers: enough to amortise the task, few
/// enough to spread a 2048-row matrix over many cores.
pub const ONE_TOKEN_TASK_WEIGHTS: usize = 8192;

/// Weights one task of a sequence product covers (512 KiB as f32): each block of tokens
/// brought into L2 meets that many rows.
pub const SEQUENCE_TASK_WEIGHTS: usize = 128 * 1024;

/// The fewest rows a task takes.
pub const MIN_TASK_ROWS: usize = 16;

/// The fewest tasks a product is split into, so that a narrow LoRA factor's elementwise
/// step (its `Then`) is not one thread's.
pub const MIN_TASKS: usize = 8;

/// Tokens multiplied against a task's rows at a time: 64 tokens of width 2048 are 512 KiB
/// of activations, which stay in L2 while every row group passes over them.
pub const TOKENS_PER_BLOCK: usize = 64;

/// Columns of a block of the bf16 4x4 tiles (a multiple of 32): four rows' and sixteen
/// tokens' blocks, 20 KiB, stay in L1 while the tokens' groups pass.
pub const BF16_TILE_COLS: usize = 512;
const _: () = assert!(BF16_TILE_COLS.is_multiple_of(32), "a block ends on a step");

/// Rows a panel holds, for both panel kernels (bf16 and integer): two vector registers of
/// sixteen lanes. Stored int8 and nf4 panels are the same height ([`PANEL`]).
pub const PANEL_ROWS: usize = PANEL;

/// Tokens one bf16 panel call multiplies: 2 x 12 accumulators, two weight registers, the
/// rest for the broadcasts.
pub const BF16_PANEL_TOKENS: usize = 12;

/// Tokens from which int8 and nf4 matrices kept in rows (`LoadOptions::quant_panels`
/// false) pack their rows into panels: below it, packing a product's rows costs more than
/// dotting each row, from L1, with every token (the runs are in `docs/PERFORMANCE.md`).
/// Matrices stored in panels take the panel kernel at every token count.
pub const QUANT_PANELS_FROM: usize = 16;

/// Tokens one integer panel call multiplies: two integer sums each in registers, beside
/// two vectors of weights (twelve left too few registers for the broadcasts).
pub const QUANT_PANEL_TOKENS: usize = 8;

/// The widest matrix whose one-token products go sixteen rows at a time: the LoRA
/// factors' 32 and 64, whose rows are a cache line or two.
pub const NARROW: usize = 128;

/// Elements per piece of an elementwise pass over a prompt's rows: a prompt's passes are
/// spread over the threads, a token's stays whole.
pub const PIECE: usize = 16 * 1024;

/// Activations from which rounding them to integers goes parallel over tokens.
pub const QUANT_PARALLEL_FROM: usize = 64 * 1024;

/// Products of four tokens or more run the sequence kernels (bound by arithmetic); fewer
/// read every weight once per token (bound by memory).
pub const SEQUENCE_FROM: usize = 4;
