//! Write a random-weight RWKV-4, RWKV-5.2, RWKV-6, RWKV-7 or RWKV-7a model of any shape, in BlinkDL names, as
//! safetensors, for benchmarks and size tests:
//!
//!     cargo run --release --example synth-model -- --layers 24 --embd 2048 \
//!         --vocab 65536 --dtype bf16 -o m.st
//!     cargo run --release --example synth-model -- --arch v7 --layers 24 --embd 2048 \
//!         -o m7.st
//!
//! Values follow the official initialisation (`shared/docs/RWKV6.md` and `RWKV7.md`, "Value
//! ranges"), so the forward pass stays in the ranges of a real model. The file is streamed:
//! the header first, then one tensor at a time, so the 14B shape (61 layers, width 4096) is
//! written without holding it in memory. The same arguments and seed give the same file.

mod v4;
mod v5;
mod v6;
mod v7;

use clap::{Parser, ValueEnum};
use half::{bf16, f16};
use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone, Copy, ValueEnum)]
enum DType {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum Arch {
    V4,
    V5,
    V6,
    V7,
    /// RWKV-7 with DeepEmbed
    V7a,
}

#[derive(Parser)]
#[command(
    about = "Write a random-weight RWKV-4, RWKV-5.2, RWKV-6, RWKV-7 or RWKV-7a model of any shape"
)]
pub struct Args {
    #[arg(long, value_enum, default_value_t = Arch::V6)]
    arch: Arch,
    #[arg(long, default_value_t = 24)]
    layers: usize,
    #[arg(long, default_value_t = 2048)]
    embd: usize,
    #[arg(long, default_value_t = 65536)]
    vocab: usize,
    #[arg(long, default_value_t = 64)]
    head_size: usize,
    /// FFN width [default: RWKV-5 and RWKV-6 3.5 x embd, rounded down to a multiple of 32;
    /// RWKV-4 and RWKV-7 4 x embd]
    #[arg(long)]
    ffn: Option<usize>,
    #[arg(long, value_enum, default_value_t = DType::Bf16)]
    dtype: DType,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// A per-channel formula: the value of element `c` of the tensor.
type Formula = Arc<dyn Fn(usize) -> f32 + Send + Sync>;

/// How a tensor's values are made.
#[derive(Clone)]
pub enum Init {
    /// Uniform with the variance of N(0, 1/fan_in).
    Linear { fan_in: usize },
    /// Uniform in [-a, a].
    Uniform(f32),
    /// Constant plus small noise (LayerNorm weights and biases).
    Near(f32),
    /// A per-channel formula, exactly.
    Channel(Formula),
    /// A per-channel formula plus small noise.
    Noisy(Formula),
}

impl Init {
    fn channel(f: impl Fn(usize) -> f32 + Send + Sync + 'static) -> Init {
        Init::Channel(Arc::new(f))
    }

    fn noisy(f: impl Fn(usize) -> f32 + Send + Sync + 'static) -> Init {
        Init::Noisy(Arc::new(f))
    }
}

pub struct Tensor {
    name: String,
    shape: Vec<usize>,
    init: Init,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-1, 1) from a counter: stateless, so rows generate in parallel.
fn unit(seed: u64, i: u64) -> f32 {
    (splitmix(seed ^ i.wrapping_mul(0xD6E8_FEB8_6659_FD93)) >> 40) as f32 / (1u64 << 23) as f32
        - 1.0
}

fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let ts = match a.arch {
        Arch::V4 => v4::tensors(&a),
        Arch::V5 => v5::tensors(&a),
        Arch::V6 => v6::tensors(&a),
        Arch::V7 => v7::tensors(&a),
        Arch::V7a => v7::with_deep_embed(&a),
    };
    let (dname, size) = match a.dtype {
        DType::F32 => ("F32", 4),
        DType::F16 => ("F16", 2),
        DType::Bf16 => ("BF16", 2),
    };
    // Header: every tensor's dtype, shape and byte range, in file order.
    let mut header = serde_json::Map::new();
    let mut off = 0usize;
    for t in &ts {
        let n: usize = t.shape.iter().product::<usize>() * size;
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": dname, "shape": t.shape, "data_offsets": [off, off + n]}),
        );
        off += n;
    }
    let mut h = serde_json::to_vec(&header)?;
    while !(8 + h.len()).is_multiple_of(64) {
        h.push(b' ');
    }
    let tmp = a.output.with_extension("partial");
    let mut w = BufWriter::with_capacity(8 << 20, std::fs::File::create(&tmp)?);
    w.write_all(&(h.len() as u64).to_le_bytes())?;
    w.write_all(&h)?;
    for (ti, t) in ts.iter().enumerate() {
        let cols = *t.shape.last().unwrap();
        let rows = t.shape.iter().product::<usize>() / cols;
        let seed = splitmix(a.seed ^ (ti as u64) << 32);
        // Generate and write in blocks of rows, each block in parallel.
        let block = (1 << 22) / cols.max(1) + 1;
        for r0 in (0..rows).step_by(block) {
            let r1 = (r0 + block).min(rows);
            let vals: Vec<f32> = (r0 * cols..r1 * cols)
                .into_par_iter()
                .map(|i| {
                    let u = unit(seed, i as u64);
                    match &t.init {
                        Init::Linear { fan_in } => u * (3.0 / *fan_in as f32).sqrt(),
                        Init::Uniform(s) => u * s,
                        Init::Near(c) => c + 0.05 * u,
                        Init::Channel(f) => f(i),
                        Init::Noisy(f) => f(i) + 0.02 * u,
                    }
                })
                .collect();
            let bytes: Vec<u8> = match a.dtype {
                DType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                DType::F16 => vals
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
                DType::Bf16 => vals
                    .iter()
                    .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            w.write_all(&bytes)?;
        }
    }
    w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&tmp, &a.output)?;
    let params: usize = ts.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    let arch = match a.arch {
        Arch::V4 => "RWKV-4",
        Arch::V5 => "RWKV-5.2",
        Arch::V6 => "RWKV-6",
        Arch::V7 => "RWKV-7",
        Arch::V7a => "RWKV-7a",
    };
    eprintln!(
        "wrote {} ({arch}, {} layers, width {}, vocab {}, {:.2}B parameters, {:.2} GB)",
        a.output.display(),
        a.layers,
        a.embd,
        a.vocab,
        params as f64 / 1e9,
        (8 + h.len() + off) as f64 / 1e9
    );
    Ok(())
}
