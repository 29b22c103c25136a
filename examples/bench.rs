//! The CPU benchmark: for each weight format (bf16, int8, nf4) generation and prompt
//! tokens/s, peak resident memory and the fraction of the bandwidth limit (the bandwidth
//! read between rounds of generation, from the model's own weights); kernel throughput;
//! tokenizer throughput.
//!
//!     cargo run --release --example bench                  # 1.6B shape, 2 threads
//!     cargo run --release --example bench -- --arch v7     # RWKV-7 at the same shape
//!     cargo run --release --example bench -- --layers 61 --embd 4096 --formats nf4,int8
//!
//! The synthetic model is written with `synth-model` when missing. Each format runs in its
//! own process, so the peak resident size is that format's alone.

use clap::Parser;
use rayon::prelude::*;
use rwkv::backend::cpu::matmul_with;
use rwkv::isa::Isa;
use rwkv::model::{LoadOptions, Precision, Quant};
use rwkv::tensor::quant::quantize;
use rwkv::tensor::{Buf, Data, Matrix};
use rwkv::tokenizer::Tokenizer;
use rwkv::{Logits, Model};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// The synthetic model's generation: v4, v5 (RWKV-5.2), v6, v7 or v7a (RWKV-7 DeepEmbed)
    #[arg(long, default_value = "v6", value_parser = ["v4", "v5", "v6", "v7", "v7a"])]
    arch: String,
    #[arg(long, default_value_t = 24)]
    layers: usize,
    #[arg(long, default_value_t = 2048)]
    embd: usize,
    #[arg(long, default_value_t = 65536)]
    vocab: usize,
    /// Model file [default: bench-models/rwkv{4,5,6,7,7a}-L{layers}-D{embd}-bf16.st, written if
    /// missing]
    #[arg(long)]
    model: Option<PathBuf>,
    /// Formats to run: bf16 (the model as stored, for a bf16 file), int8, nf4 (`--quant`),
    /// or stored (as the file loads without --quant, its bytes counted as they lie: a GGUF
    /// model's decoded blocks)
    #[arg(long, default_value = "bf16,int8,nf4")]
    formats: String,
    #[arg(long, default_value_t = 512)]
    prompt: usize,
    #[arg(long, default_value_t = 64)]
    gen: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where to run the model: cpu, opencl[:P[:D]] or auto (build with --features opencl
    /// for a GPU: `cargo run --release --features opencl --example bench -- --device opencl`)
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Skip the kernel and tokenizer sections
    #[arg(long)]
    model_only: bool,
    /// Batched generation: streams decoded together, aggregate tokens/s for each count
    #[arg(long, default_value = "1,4,8,16,32", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Run only the kernel micro-benchmarks
    #[arg(long, conflicts_with = "model_only")]
    kernels_only: bool,
    /// Internal: measure one format in this process and print one JSON line
    #[arg(long, hide = true)]
    one: Option<String>,
}

fn quant_of(f: &str) -> Option<Quant> {
    match f {
        "int8" => Some(Quant::Int8),
        "nf4" => Some(Quant::Nf4),
        _ => None,
    }
}

/// Bytes per weight read per token: 2 for bf16, else the quantized format's (nf4 0.53125,
/// with bf16 scales).
fn bytes_per_weight(f: &str) -> f64 {
    quant_of(f).map_or(2.0, Quant::bytes_per_weight)
}

/// Bytes per weight the limit counts (issue #6): 2, 1.0625 and 0.5625, blocks of 64 with an
/// f32 scale. nf4 reads less than that here, so its share of this limit is 6 % above its
/// share of what it reads ("of read").
fn limit_bytes_per_weight(f: &str) -> f64 {
    match quant_of(f) {
        Some(Quant::Int8) => 1.0625,
        Some(Quant::Nf4) => 0.5625,
        None => 2.0,
    }
}

fn peak_rss_bytes() -> u64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as u64 * 1024
}

/// The bytes of every matrix a token reads (all but the embedding), in pieces of 256 KiB.
fn weight_bytes(m: &Model) -> Vec<&[u8]> {
    fn bytes<T>(v: &[T]) -> &[u8] {
        // SAFETY: any initialised memory can be read as bytes.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
    }
    let mut out = Vec::new();
    for w in m.host_matrices() {
        let parts: [&[u8]; 2] = match &w.data {
            Data::F32(b) => [bytes(b), &[]],
            Data::F16(b) => [bytes(b), &[]],
            Data::BF16(b) => [bytes(b), &[]],
            Data::Q8(q) | Data::Q8Panels(q) => [bytes(&q.qs), bytes(&q.scales)],
            Data::Nf4(q) | Data::Nf4Panels(q) => [bytes(&q.packed), bytes(&q.scales)],
        };
        out.extend(parts.into_iter().flat_map(|p| p.chunks(256 * 1024)));
    }
    out
}

/// Read every piece once on the pool's threads; seconds.
fn read_all(pieces: &[&[u8]]) -> f64 {
    let t0 = Instant::now();
    let sum: u64 = pieces
        .par_iter()
        .map(|p| {
            // SAFETY: any bytes are valid u64s; the unaligned ends are counted apart.
            let (head, words, tail) = unsafe { p.align_to::<u64>() };
            let s = words.iter().fold(0u64, |a, &x| a.wrapping_add(x));
            s.wrapping_add((head.len() + tail.len()) as u64)
        })
        .reduce(|| 0, u64::wrapping_add);
    std::hint::black_box(sum);
    t0.elapsed().as_secs_f64()
}

/// Rounds of generation, each followed by a bandwidth reading.
fn rounds(gen: usize) -> usize {
    gen.clamp(1, 8)
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (v[(n - 1) / 2] + v[n / 2]) / 2.0
}

fn one(args: &Args, path: &std::path::Path, format: &str) {
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .unwrap();
    let t0 = Instant::now();
    let opts = LoadOptions {
        quant: quant_of(format),
        device: args.device.parse().unwrap(),
        ..LoadOptions::default()
    };
    let mut m = Model::load_with(path, opts).unwrap();
    let load_s = t0.elapsed().as_secs_f64();
    // ids 1 .. V - 1: any token but end-of-text, whatever the vocabulary
    let v = m.cfg.vocab.max(2) as u32;
    let prompt: Vec<u32> = (0..args.prompt as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 7) % (v - 1) + 1)
        .collect();
    let mut st = m.new_state();
    // warm-up: one token pages the weights in
    let _ = m.forward(&prompt[..1], &mut st, Logits::Last).unwrap();
    // bf16 prompts where they run (not on a device, nor on a CPU without AVX-512 BF16).
    m.set_precision(Precision::Bf16);
    let prompt_bf16_tps = (m.sequence_precision() == Precision::Bf16).then(|| {
        let mut st = m.new_state();
        let t1 = Instant::now();
        m.feed(&prompt, &mut st, 512).unwrap();
        args.prompt as f64 / t1.elapsed().as_secs_f64()
    });
    m.set_precision(Precision::F32);
    let mut st = m.new_state();
    let t1 = Instant::now();
    let mut logits = m.feed(&prompt, &mut st, 512).unwrap();
    let prompt_s = t1.elapsed().as_secs_f64();
    // Generation in rounds, each followed by reads of every weight a token reads (on the
    // CPU), so that each round's speed meets the bandwidth of the same moment.
    let pieces = weight_bytes(&m);
    let on_cpu = args.device == "cpu";
    let rounds = rounds(args.gen);
    let (mut gen_s, mut measured) = (0.0, Vec::new());
    let counted_from = m.counters();
    for r in 0..rounds {
        let n = args.gen * (r + 1) / rounds - args.gen * r / rounds;
        let t2 = Instant::now();
        for _ in 0..n {
            let tok = rwkv::sample::argmax(&logits);
            logits = m.forward(&[tok], &mut st, Logits::Last).unwrap();
        }
        let s = t2.elapsed().as_secs_f64();
        gen_s += s;
        if on_cpu {
            let read_s = (0..2).map(|_| read_all(&pieces)).fold(f64::MAX, f64::min);
            let bytes: usize = pieces.iter().map(|p| p.len()).sum();
            measured.push(serde_json::json!({
                "tps": n as f64 / s, "bw": bytes as f64 / read_s / 1e9,
            }));
        }
    }
    // A device's launches and transfers per generated token.
    let device = counted_from.zip(m.counters()).map(|(a, b)| {
        let per = |x: u64, y: u64| (y - x) as f64 / args.gen as f64;
        serde_json::json!({
            "launches": per(a.launches, b.launches),
            "transfers": per(a.uploads + a.downloads, b.uploads + b.downloads),
            "layers": m.cfg.n_layer,
            "weight_bytes": m.weight_bytes(),
        })
    });
    // Batched generation: n streams, each from its own first token, one step for all, at
    // rwkv-gen's precision (bf16 products where the CPU has them).
    m.set_precision(Precision::Bf16);
    let batched: Vec<serde_json::Value> = args
        .batch
        .iter()
        .map(|&n| {
            let mut states: Vec<rwkv::State> = (0..n).map(|_| m.new_state()).collect();
            let mut toks: Vec<u32> = (0..n as u32)
                .map(|i| prompt[i as usize % prompt.len()])
                .collect();
            let mut step = |toks: &mut Vec<u32>| {
                let mut refs: Vec<&mut rwkv::State> = states.iter_mut().collect();
                let logits = m.step(toks, &mut refs).unwrap();
                for (i, t) in toks.iter_mut().enumerate() {
                    *t = rwkv::sample::argmax(&logits[i * v as usize..(i + 1) * v as usize]);
                }
            };
            step(&mut toks); // sizes the scratch
            let steps = (args.gen / 4).max(4);
            let t = Instant::now();
            for _ in 0..steps {
                step(&mut toks);
            }
            let tps = (n * steps) as f64 / t.elapsed().as_secs_f64();
            let state_bytes = m.cfg.state_shape().len() * 4 * n;
            serde_json::json!({"n": n, "tps": tps, "state_bytes": state_bytes})
        })
        .collect();
    // Generation held to a JSON Schema beside the same streams unconstrained: what the
    // masks cost, at one stream and at the largest batch asked for (16 by default).
    let largest = args.batch.iter().copied().filter(|&n| n <= 16).max();
    let constrained: Vec<serde_json::Value> = largest
        .map(|big| if big > 1 { vec![1, big] } else { vec![1] })
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let plain = held_tps(&m, None, n, args.gen);
            let schema = held_tps(&m, Some(long_schema(&m)), n, args.gen);
            serde_json::json!({"n": n, "plain": plain, "schema": schema})
        })
        .collect();
    let peak_rss = peak_rss_bytes();
    // Every matrix but the embedding (and RWKV-7a's tables), which are looked up, not read;
    // the vectors, a thousandth of the rest, are left out.
    let matrices = m.matrices().into_iter().filter(|(n, _)| n != "emb.weight");
    let (read_weights, read_bytes) =
        matrices.fold((0, 0), |(w, b), (_, i)| (w + i.rows * i.cols, b + i.bytes));
    println!(
        "{}",
        serde_json::json!({
            "format": format, "load_s": load_s,
            "prompt_tps": args.prompt as f64 / prompt_s,
            "prompt_bf16_tps": prompt_bf16_tps, "gen_tps": args.gen as f64 / gen_s,
            "peak_rss": peak_rss, "read_weights": read_weights, "read_bytes": read_bytes,
            "rounds": measured,
            "batched": batched, "device": device, "constrained": constrained,
        })
    );
}

/// A JSON Schema that no answer completes within the bench's tokens (an array of 10000
/// short strings), compiled for `m`'s tokenizer.
fn long_schema(m: &Model) -> rwkv::constrain::Constraint {
    use rwkv::constrain::{Compiler, Spec};
    let tok = Tokenizer::for_vocab(m.cfg.vocab).unwrap();
    let schema = serde_json::json!({
        "type": "array", "items": {"type": "string", "maxLength": 6}, "minItems": 10000
    });
    let c = Compiler::new(&tok, m.cfg.vocab).unwrap();
    c.compile(&Spec::Schema(schema), "the bench's schema")
        .unwrap()
}

/// Aggregate tokens/s of `n` streams generating `gen` tokens each (sampled, seeds 0..n),
/// each held to `c` if given, decoded together as `rwkv-gen --lines` does.
fn held_tps(m: &Model, c: Option<rwkv::constrain::Constraint>, n: usize, gen: usize) -> f64 {
    use rwkv::generate::{Generation, Options};
    let tok = Tokenizer::for_vocab(m.cfg.vocab).unwrap();
    let v = m.cfg.vocab;
    let mut streams: Vec<Generation> = (0..n)
        .map(|i| {
            let opts = Options {
                max_tokens: gen,
                ignore_eos: true,
                seed: i as u64,
                ..Options::default()
            };
            let start = rwkv::state_file::Start {
                state: m.new_state(),
                logits: None,
                tokens: 0,
            };
            let mut g = Generation::new(m, &tok, start, opts).held_to(c.as_ref());
            g.prompt(&[1 + i as u32]).unwrap();
            g
        })
        .collect();
    let (t, mut made) = (Instant::now(), 0);
    loop {
        for g in streams.iter_mut() {
            made += g.choose().unwrap().is_some() as usize;
        }
        let mut live: Vec<&mut Generation> = streams
            .iter_mut()
            .filter(|g| g.pending().is_some())
            .collect();
        if live.is_empty() {
            break;
        }
        let toks: Vec<u32> = live.iter().map(|g| g.pending().unwrap()).collect();
        let mut states: Vec<&mut rwkv::State> = live.iter_mut().map(|g| &mut g.state).collect();
        let mut logits = m.step(&toks, &mut states).unwrap();
        drop(states);
        for g in live.iter_mut() {
            g.accept(logits.drain(..v).collect());
        }
    }
    made as f64 / t.elapsed().as_secs_f64()
}

/// The state memory of one stream, in MB, from the first batched row.
fn rows_state_mb(rows: &[(String, serde_json::Value)]) -> f64 {
    rows.iter()
        .find_map(|(_, r)| {
            let first = r.as_array()?.first()?;
            Some(first["state_bytes"].as_f64()? / first["n"].as_f64()? / 1e6)
        })
        .unwrap_or(f64::NAN)
}

fn kernels(threads: usize) {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let (rows, cols) = (8192, 2048);
    let vals: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 % 2001) as f32 / 1000.0 - 1.0) * 0.05)
        .collect();
    let bf = Matrix {
        rows,
        cols,
        data: Data::BF16(Buf::Owned(
            vals.iter().map(|&x| half::bf16::from_f32(x)).collect(),
        )),
    };
    let f32m = Matrix::from_f32(rows, cols, vals);
    let mats = [
        ("f32", f32m),
        ("int8", quantize(&bf, Quant::Int8)),
        ("nf4", quantize(&bf, Quant::Nf4)),
        ("bf16", bf),
    ];
    let isa = Isa::detect();
    println!("\narithmetic peak of one core (registers only):");
    for (name, g) in peak_per_core() {
        match g {
            Some(g) => println!("  {name:<22} {g:6.1} GFLOP/s"),
            None => println!("  {name:<22} not on this CPU"),
        }
    }
    println!("\nkernels ({isa:?}, {threads} threads, W [{rows}, {cols}]):");
    // 256 tokens: the prompt chunk of rwkv-gen and of rwkv-score on a 65536 vocab.
    const T: usize = 256;
    let x: Vec<f32> = (0..T * cols).map(|i| (i % 17) as f32 * 0.01).collect();
    for (name, m) in &mats {
        let mut y = vec![0.0; rows];
        let reps = 50;
        let t0 = Instant::now();
        for _ in 0..reps {
            matmul_with(isa, Precision::F32, m, &x[..cols], 1, &mut y);
        }
        let s = t0.elapsed().as_secs_f64() / reps as f64;
        let mut y = vec![0.0; T * rows];
        let mut gflops = |prec| {
            let best = (0..3)
                .map(|_| {
                    let t1 = Instant::now();
                    matmul_with(isa, prec, m, &x, T, &mut y);
                    t1.elapsed().as_secs_f64()
                })
                .fold(f64::MAX, f64::min);
            2.0 * (rows * cols * T) as f64 / best / 1e9
        };
        let (f, b) = (gflops(Precision::F32), gflops(Precision::Bf16));
        println!(
            "  {name:>5}  matvec {:6.1} GB/s of weights   matmul ({T} tokens) {f:6.1} GFLOP/s, \
             bf16 activations {b:6.1}",
            m.byte_len() as f64 / s / 1e9,
        );
    }
}

/// The arithmetic ceiling of one core: twelve independent chains of one instruction on
/// registers, in GFLOP/s (a multiply-add is two). `None` where the CPU lacks it.
#[cfg(target_arch = "x86_64")]
fn peak_per_core() -> Vec<(&'static str, Option<f64>)> {
    use std::arch::x86_64::*;
    const STEPS: usize = 20_000_000;
    let rate =
        |t: Instant, flops: f64| (12 * STEPS) as f64 * flops / t.elapsed().as_secs_f64() / 1e9;

    #[target_feature(enable = "avx512f")]
    unsafe fn fma(steps: usize) -> __m512 {
        let (x, y) = std::hint::black_box((_mm512_set1_ps(1.0), _mm512_set1_ps(1e-7)));
        let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        for _ in 0..steps {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(x, y, *a);
            }
        }
        acc.iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a))
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn dpbf16(steps: usize) -> __m512 {
        let x = std::hint::black_box(_mm512_cvtne2ps_pbh(
            _mm512_set1_ps(1.0),
            _mm512_set1_ps(1e-7),
        ));
        let mut acc: [__m512; 12] = std::array::from_fn(|i| _mm512_set1_ps(i as f32));
        for _ in 0..steps {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, x);
            }
        }
        acc.iter()
            .fold(_mm512_setzero_ps(), |s, &a| _mm512_add_ps(s, a))
    }

    /// `vpdpbusd` (`WORDS` false: 64 byte products) or `vpdpwssd` (32 word products).
    #[target_feature(enable = "avx512f,avx512vnni")]
    unsafe fn dp_int<const WORDS: bool>(steps: usize) -> __m512i {
        let x = std::hint::black_box(_mm512_set1_epi32(0x0101_0101));
        let mut acc: [__m512i; 12] = std::array::from_fn(|i| _mm512_set1_epi32(i as i32));
        for _ in 0..steps {
            for a in acc.iter_mut() {
                *a = if WORDS {
                    _mm512_dpwssd_epi32(*a, x, x)
                } else {
                    _mm512_dpbusd_epi32(*a, x, x)
                };
            }
        }
        acc.iter()
            .fold(_mm512_setzero_si512(), |s, &a| _mm512_add_epi32(s, a))
    }

    let mut out = vec![];
    let t = Instant::now();
    // SAFETY: each kernel runs only where the CPU reports its instructions.
    let f = is_x86_feature_detected!("avx512f").then(|| {
        std::hint::black_box(unsafe { fma(STEPS) });
        rate(t, 32.0)
    });
    out.push(("f32 FMA (AVX-512)", f));
    let t = Instant::now();
    let d = is_x86_feature_detected!("avx512bf16").then(|| {
        std::hint::black_box(unsafe { dpbf16(STEPS) });
        rate(t, 64.0)
    });
    out.push(("bf16 dot (vdpbf16ps)", d));
    let vnni = is_x86_feature_detected!("avx512vnni");
    let t = Instant::now();
    let w = vnni.then(|| {
        std::hint::black_box(unsafe { dp_int::<true>(STEPS) });
        rate(t, 64.0)
    });
    out.push(("int16 dot (vpdpwssd)", w));
    let t = Instant::now();
    let b = vnni.then(|| {
        std::hint::black_box(unsafe { dp_int::<false>(STEPS) });
        rate(t, 128.0)
    });
    out.push(("int8 dot (vpdpbusd)", b));
    out
}

#[cfg(not(target_arch = "x86_64"))]
fn peak_per_core() -> Vec<(&'static str, Option<f64>)> {
    vec![]
}

fn tokenizer_speed() {
    let t = Tokenizer::from_spec("world").unwrap();
    let mixed = "The quick brown fox jumps over the lazy dog. RWKV-6 是一种 RNN 语言模型。\n\
                 fn main() { println!(\"{}\", 1 + 2); }  // code\n\tDas ist ein Test, ça va? 1234567890\n";
    let text = mixed.repeat(4 << 20 >> 7); // about 4 MB
    let t0 = Instant::now();
    let ids = t.encode(text.as_bytes()).unwrap();
    let s = t0.elapsed().as_secs_f64();
    println!(
        "\ntokenizer: World encode {:.1} MB/s ({:.1} MB of mixed text, {} tokens)",
        text.len() as f64 / s / 1e6,
        text.len() as f64 / 1e6,
        ids.len()
    );
}

fn main() {
    let args = Args::parse();
    let path = args.model.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "bench-models/rwkv{}-L{}-D{}-bf16.st",
            &args.arch[1..],
            args.layers,
            args.embd
        ))
    });
    if let Some(f) = &args.one {
        return one(&args, &path, f);
    }
    if args.kernels_only {
        return kernels(args.threads);
    }
    if !path.exists() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        eprintln!("writing {} ...", path.display());
        let ok = Command::new("cargo")
            .args(["run", "--release", "--example", "synth-model", "--"])
            .args(["--arch", &args.arch])
            .args([
                "--layers",
                &args.layers.to_string(),
                "--embd",
                &args.embd.to_string(),
            ])
            .args(["--vocab", &args.vocab.to_string(), "--dtype", "bf16", "-o"])
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "synth-model failed");
    }
    let cfg = Model::load(&path).unwrap().cfg;
    println!(
        "model {} ({}, {} layers, width {}), {} threads, {}-token prompt, {} generated",
        path.display(),
        cfg.version.title,
        cfg.n_layer,
        cfg.n_embd,
        args.threads,
        args.prompt,
        args.gen
    );
    println!(
        "generation runs in {} rounds, each followed by {} threads reading every weight a \
         token reads (best of two); a round's share of the limit is its speed over what that \
         bandwidth allows at 2, 1.0625 and 0.5625 bytes per weight (\"of read\": at the bytes \
         it reads, nf4 0.53125), and the table gives the medians (the bandwidth of a shared \
         host moves by a third within minutes)\n",
        rounds(args.gen),
        args.threads
    );
    println!("device: {}", args.device);
    println!(
        "format   gen tok/s   bandwidth   limit   of limit   of read   prompt tok/s f32  bf16   \
         peak RSS    load   achieved"
    );
    // The children run this very binary, even when a build has replaced its file since.
    let me = if cfg!(target_os = "linux") {
        std::path::PathBuf::from("/proc/self/exe")
    } else {
        std::env::current_exe().unwrap()
    };
    let mut batch_rows = Vec::new();
    let mut held_rows: Vec<(String, serde_json::Value)> = Vec::new();
    for f in args.formats.split(',') {
        let out = Command::new(&me)
            .args([
                "--one",
                f,
                "--prompt",
                &args.prompt.to_string(),
                "--gen",
                &args.gen.to_string(),
            ])
            .args([
                "--threads",
                &args.threads.to_string(),
                "--device",
                &args.device,
                "--batch",
                &args
                    .batch
                    .iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                "--model",
            ])
            .arg(&path)
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout);
        let Ok(r) = serde_json::from_str::<serde_json::Value>(line.trim()) else {
            println!("{f}: failed: {}", String::from_utf8_lossy(&out.stderr));
            continue;
        };
        let gen = r["gen_tps"].as_f64().unwrap();
        let weights = r["read_weights"].as_f64().unwrap();
        let (bytes, counted) = match f {
            // what the matrices take where they run
            "stored" => {
                let b = r["read_bytes"].as_f64().unwrap();
                (b, b)
            }
            _ => (
                weights * bytes_per_weight(f),
                weights * limit_bytes_per_weight(f),
            ),
        };
        let achieved = gen * bytes / 1e9;
        let rounds = r["rounds"].as_array().unwrap();
        let field = |k: &'static str| rounds.iter().map(move |x| x[k].as_f64().unwrap());
        // The limit is the host's: on a device it says nothing.
        let (bw, limit, share, of_read) = if rounds.is_empty() {
            ("-".into(), "-".into(), "-".into(), "-".into())
        } else {
            let bw = median(field("bw").collect());
            let share = |bytes: f64| {
                let shares = field("tps")
                    .zip(field("bw"))
                    .map(|(g, b)| g * bytes / 1e9 / b);
                format!("{:.0}%", 100.0 * median(shares.collect()))
            };
            (
                format!("{bw:.1} GB/s"),
                format!("{:.2}", bw * 1e9 / counted),
                share(counted),
                share(bytes),
            )
        };
        println!(
            "{f:<6} {gen:>11.2} {bw:>11} {limit:>7} {share:>10} {of_read:>9} {:>18.1} {:>5} \
             {:>8.2} GB {:>6.1} s {achieved:>6.1} GB/s",
            r["prompt_tps"].as_f64().unwrap(),
            r["prompt_bf16_tps"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}")),
            r["peak_rss"].as_f64().unwrap() / 1e9,
            r["load_s"].as_f64().unwrap()
        );
        batch_rows.push((f.to_string(), r["batched"].clone()));
        held_rows.push((f.to_string(), r["constrained"].clone()));
        if let Some(d) = r["device"].as_object() {
            let num = |k: &str| d[k].as_f64().unwrap_or(f64::NAN);
            let per_token = num("launches");
            // the head is two launches: its norm and its product
            println!("       launches per token: {per_token:.0}");
            println!(
                "       launches per layer: {:.0}",
                (per_token - 2.0) / num("layers")
            );
            println!("       transfers per token: {:.0}", num("transfers"));
            println!("       weight bytes per token: {:.0}", num("weight_bytes"));
        }
    }
    if !args.batch.is_empty() {
        println!("\nbatched generation (--lines --batch N): aggregate tokens/s, and x one stream");
        let head: String = args
            .batch
            .iter()
            .map(|n| format!("{:>16}", format!("N={n}")))
            .collect();
        println!("format{head}");
        for (f, rows) in &batch_rows {
            let rows = rows.as_array().cloned().unwrap_or_default();
            let one = rows
                .first()
                .and_then(|r| r["tps"].as_f64())
                .unwrap_or(f64::NAN);
            let cells: String = rows
                .iter()
                .map(|r| {
                    let t = r["tps"].as_f64().unwrap_or(f64::NAN);
                    format!("{:>16}", format!("{t:.1} ({:.1}x)", t / one))
                })
                .collect();
            println!("{f:<6}{cells}");
        }
        let per = rows_state_mb(&batch_rows);
        println!("state memory: {per:.1} MB a stream");
    }
    if held_rows
        .iter()
        .any(|(_, r)| r.as_array().is_some_and(|a| !a.is_empty()))
    {
        println!(
            "\nheld to a JSON Schema (--json-schema): aggregate tokens/s, against unconstrained"
        );
        for (f, rows) in &held_rows {
            let cells: String = rows
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    let (n, p, s) = (
                        r["n"].as_u64().unwrap_or(0),
                        r["plain"].as_f64().unwrap_or(f64::NAN),
                        r["schema"].as_f64().unwrap_or(f64::NAN),
                    );
                    format!("   N={n}: {s:.2} against {p:.2} ({:.1} %)", 100.0 * s / p)
                })
                .collect();
            println!("{f:<6}{cells}");
        }
    }
    if !args.model_only {
        kernels(args.threads);
        tokenizer_speed();
    }
}
