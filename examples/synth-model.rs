//! Write a random-weight RWKV-6 model of any shape, in BlinkDL names, as safetensors, for
//! benchmarks and size tests:
//!
//!     cargo run --release --example synth-model -- --layers 24 --embd 2048 \
//!         --vocab 65536 --dtype bf16 -o m.st
//!
//! Values follow the official initialisation (`shared/docs/RWKV6.md`, "Value ranges"), so
//! the forward pass stays in the ranges of a real model. The file is streamed: the header
//! first, then one tensor at a time, so the 14B shape (61 layers, width 4096) is written
//! without holding it in memory. The same arguments and seed give the same file.

use clap::{Parser, ValueEnum};
use half::{bf16, f16};
use rayon::prelude::*;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum DType {
    F32,
    F16,
    Bf16,
}

#[derive(Parser)]
#[command(about = "Write a random-weight RWKV-6 model of any shape")]
struct Args {
    #[arg(long, default_value_t = 24)]
    layers: usize,
    #[arg(long, default_value_t = 2048)]
    embd: usize,
    #[arg(long, default_value_t = 65536)]
    vocab: usize,
    #[arg(long, default_value_t = 64)]
    head_size: usize,
    /// FFN width [default: 3.5 x embd, rounded down to a multiple of 32]
    #[arg(long)]
    ffn: Option<usize>,
    #[arg(long, value_enum, default_value_t = DType::Bf16)]
    dtype: DType,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(short = 'o', long)]
    output: PathBuf,
}

/// How a tensor's values are made.
#[derive(Clone, Copy)]
enum Init {
    /// Uniform with the variance of N(0, 1/fan_in).
    Linear { fan_in: usize },
    /// Uniform in [-a, a].
    Uniform(f32),
    /// Constant plus small noise (LayerNorm weights and biases).
    Near(f32),
    /// One of the per-channel formulas; `c` is the channel index.
    Channel(fn(usize, usize, f32, f32) -> f32),
}

struct Tensor {
    name: String,
    shape: Vec<usize>,
    init: Init,
    /// Layer ratios r01 = i/(L-1), r10 = 1 - i/L.
    r01: f32,
    r10: f32,
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

fn tensors(a: &Args, ffn: usize) -> Vec<Tensor> {
    let (d, l, v) = (a.embd, a.layers, a.vocab);
    let m = if d >= 4096 { 64 } else { 32 };
    let k = if d >= 4096 { 128 } else { 64 };
    let h = d / a.head_size;
    let mut out = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, init: Init, i: usize| {
        let r01 = if l > 1 {
            i as f32 / (l - 1) as f32
        } else {
            0.0
        };
        let r10 = 1.0 - i as f32 / l as f32;
        out.push(Tensor {
            name,
            shape,
            init,
            r01,
            r10,
        });
    };
    push("emb.weight".into(), vec![v, d], Init::Uniform(0.5), 0);
    fn maa(c: usize, d: usize, _r01: f32, r10: f32) -> f32 {
        1.0 - (c as f32 / d as f32).powf(r10)
    }
    fn maa_v(c: usize, d: usize, r01: f32, r10: f32) -> f32 {
        1.0 - ((c as f32 / d as f32).powf(r10) + 0.3 * r01)
    }
    fn maa_rg(c: usize, d: usize, _r01: f32, r10: f32) -> f32 {
        1.0 - (c as f32 / d as f32).powf(0.5 * r10)
    }
    fn decay(c: usize, d: usize, r01: f32, _r10: f32) -> f32 {
        -6.0 + 5.0 * (c as f32 / (d - 1) as f32).powf(0.7 + 1.3 * r01)
    }
    fn faaaa(c: usize, d: usize, r01: f32, _r10: f32) -> f32 {
        r01 * (1.0 - c as f32 / (d - 1) as f32) + (((c + 1) % 3) as f32 - 1.0) * 0.1
    }
    for i in 0..l {
        let p = |s: &str| format!("blocks.{i}.{s}");
        if i == 0 {
            push(p("ln0.weight"), vec![d], Init::Near(1.0), i);
            push(p("ln0.bias"), vec![d], Init::Near(0.0), i);
        }
        for n in ["ln1", "ln2"] {
            push(p(&format!("{n}.weight")), vec![d], Init::Near(1.0), i);
            push(p(&format!("{n}.bias")), vec![d], Init::Near(0.0), i);
        }
        for (n, f) in [
            ("x", maa as fn(_, _, _, _) -> _),
            ("w", maa),
            ("k", maa),
            ("v", maa_v),
            ("r", maa_rg),
            ("g", maa_rg),
        ] {
            push(
                p(&format!("att.time_maa_{n}")),
                vec![1, 1, d],
                Init::Channel(f),
                i,
            );
        }
        push(p("att.time_maa_w1"), vec![d, 5 * m], Init::Uniform(0.01), i);
        push(p("att.time_maa_w2"), vec![5, m, d], Init::Uniform(0.01), i);
        push(p("att.time_decay"), vec![1, 1, d], Init::Channel(decay), i);
        push(p("att.time_decay_w1"), vec![d, k], Init::Uniform(0.01), i);
        push(p("att.time_decay_w2"), vec![k, d], Init::Uniform(0.01), i);
        push(
            p("att.time_faaaa"),
            vec![h, a.head_size],
            Init::Channel(faaaa),
            i,
        );
        for n in ["receptance", "key", "value", "gate", "output"] {
            push(
                p(&format!("att.{n}.weight")),
                vec![d, d],
                Init::Linear { fan_in: d },
                i,
            );
        }
        push(p("att.ln_x.weight"), vec![d], Init::Near(1.0), i);
        push(p("att.ln_x.bias"), vec![d], Init::Near(0.0), i);
        push(p("ffn.time_maa_k"), vec![1, 1, d], Init::Channel(maa), i);
        push(p("ffn.time_maa_r"), vec![1, 1, d], Init::Channel(maa), i);
        push(
            p("ffn.key.weight"),
            vec![ffn, d],
            Init::Linear { fan_in: d },
            i,
        );
        push(
            p("ffn.receptance.weight"),
            vec![d, d],
            Init::Linear { fan_in: d },
            i,
        );
        push(
            p("ffn.value.weight"),
            vec![d, ffn],
            Init::Linear { fan_in: ffn },
            i,
        );
    }
    push("ln_out.weight".into(), vec![d], Init::Near(1.0), l);
    push("ln_out.bias".into(), vec![d], Init::Near(0.0), l);
    push(
        "head.weight".into(),
        vec![v, d],
        Init::Linear { fan_in: d },
        l,
    );
    out
}

fn main() -> std::io::Result<()> {
    let a = Args::parse();
    let ffn = a.ffn.unwrap_or(a.embd * 7 / 2 / 32 * 32);
    let ts = tensors(&a, ffn);
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
                    match t.init {
                        Init::Linear { fan_in } => u * (3.0 / fan_in as f32).sqrt(),
                        Init::Uniform(s) => u * s,
                        Init::Near(c) => c + 0.05 * u,
                        Init::Channel(f) => f(
                            i % (t.shape.iter().product::<usize>()),
                            t.shape.iter().product(),
                            t.r01,
                            t.r10,
                        ),
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
    eprintln!(
        "wrote {} ({} layers, width {}, ffn {ffn}, vocab {}, {:.2}B parameters, {:.2} GB)",
        a.output.display(),
        a.layers,
        a.embd,
        a.vocab,
        params as f64 / 1e9,
        (8 + h.len() + off) as f64 / 1e9
    );
    Ok(())
}
