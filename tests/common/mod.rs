//! Shared test helpers: where fixtures are, golden-file readers, running the binaries.
#![allow(dead_code)]

use rwkv::State;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The fuller reference material: `RWKV_SHARED` if set (empty: none), else `../shared`
/// beside the checkout when it is there.
pub fn shared() -> Option<PathBuf> {
    let p = match std::env::var_os("RWKV_SHARED") {
        Some(v) if v.is_empty() => return None,
        Some(v) => PathBuf::from(v),
        None => root().join("../shared"),
    };
    p.join("golden").is_dir().then_some(p)
}

/// A fixture: the demo model in `models/`, then `tests/fixtures/models`, then the shared
/// models. `None` when only `../shared` has it and it is absent.
pub fn fixture(name: &str) -> Option<PathBuf> {
    let here = [
        root().join("models").join(name),
        root().join("tests/fixtures/models").join(name),
    ];
    if let Some(p) = here.into_iter().find(|p| p.is_file()) {
        return Some(p);
    }
    shared()
        .map(|s| s.join("models").join(name))
        .filter(|p| p.is_file())
}

/// A fixture every checkout has (`tests/fixtures`, `models/`).
pub fn model_path(name: &str) -> PathBuf {
    fixture(name).unwrap_or_else(|| panic!("fixture {name} is missing from tests/fixtures"))
}

/// Say that a test's subject is only in `../shared`, which is absent: the test checks
/// nothing then (CI runs it with `../shared` too).
pub fn skip(what: &str) {
    eprintln!("skipped: {what} is only in ../shared, which is absent");
}

/// Golden file `stem`: `tests/fixtures/golden`, then the shared goldens.
fn golden_path(stem: &str) -> Option<PathBuf> {
    let name = format!("{stem}.golden.safetensors");
    let here = root().join("tests/fixtures/golden").join(&name);
    if here.is_file() {
        return Some(here);
    }
    shared()
        .map(|s| s.join("golden").join(name))
        .filter(|p| p.is_file())
}

/// One golden file: the tokens fed, the logits after each, the sequence logits and the
/// final state.
pub struct Golden {
    pub tokens: Vec<u32>,
    /// `[T][V]`
    pub logits: Vec<Vec<f32>>,
    pub seq_logits: Vec<f32>,
    pub state: HashMap<String, Vec<f32>>,
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Golden file `stem`, which every checkout has.
pub fn golden(stem: &str) -> Golden {
    try_golden(stem).unwrap_or_else(|| panic!("golden {stem} is missing from tests/fixtures"))
}

/// Golden file `stem`, if this checkout (or `../shared`) has it.
pub fn try_golden(stem: &str) -> Option<Golden> {
    let p = golden_path(stem)?;
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tokens: Vec<u32> = st
        .tensor("tokens")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let lt = st.tensor("logits").unwrap();
    let v = lt.shape()[1];
    let logits = f32s(lt.data()).chunks(v).map(|r| r.to_vec()).collect();
    let seq_logits = f32s(st.tensor("seq_logits").unwrap().data());
    let state = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.starts_with("state."))
        .map(|(n, t)| (n, f32s(t.data())))
        .collect();
    Some(Golden {
        tokens,
        logits,
        seq_logits,
        state,
    })
}

/// max |a - b| <= 1e-4 * max |b| (or 1e-3 absolute): golden/README.md's tolerance.
pub fn assert_logits_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = (1e-4 * scale).max(1e-3);
    let (i, err) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0.0f32), |m, (i, e)| if e > m.1 { (i, e) } else { m });
    assert!(
        err <= tol,
        "{what}: max |diff| {err} at {i} (got {}, want {}) exceeds {tol}",
        got[i],
        want[i]
    );
}

/// Compare a state against the golden `state.L.*` tensors.
pub fn assert_state_close(what: &str, got: &State, g: &Golden) {
    for (l, ls) in got.layers().unwrap().iter().enumerate() {
        // RWKV-4's goldens hold its recurrence's three vectors apart: `wkv` is them in order
        let wkv = match g.state.get(&format!("state.{l}.att_aa")) {
            Some(_) => ["aa", "bb", "pp"]
                .iter()
                .flat_map(|n| g.state[&format!("state.{l}.att_{n}")].clone())
                .collect(),
            None => g.state[&format!("state.{l}.wkv")].clone(),
        };
        for (name, v, want) in [
            (
                "att_shift",
                &ls.att_shift,
                &g.state[&format!("state.{l}.att_shift")],
            ),
            ("wkv", &ls.wkv, &wkv),
            (
                "ffn_shift",
                &ls.ffn_shift,
                &g.state[&format!("state.{l}.ffn_shift")],
            ),
        ] {
            assert_logits_close(&format!("{what} state.{l}.{name}"), v, want);
        }
    }
}

/// What a run of one of the binaries gave.
pub struct Run {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Run {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// stdout as JSON lines.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }
}

/// Run binary `bin` (`rwkv-gen`, ...) with `args`, `stdin` on its standard input.
pub fn run(bin: &str, args: &[&str], stdin: &[u8]) -> Run {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let exe = match bin {
        "rwkv-gen" => env!("CARGO_BIN_EXE_rwkv-gen"),
        "rwkv-score" => env!("CARGO_BIN_EXE_rwkv-score"),
        "rwkv-state" => env!("CARGO_BIN_EXE_rwkv-state"),
        other => panic!("no binary {other}"),
    };
    let mut child = Command::new(exe)
        .args(args)
        .env_remove("RWKV_MODEL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A path string for a fixture model.
pub fn model_arg(name: &str) -> String {
    model_path(name).to_string_lossy().into_owned()
}

/// Assert a failed run: `code`, and one stderr line containing every `needles`.
pub fn assert_fails(r: &Run, code: i32, needles: &[&str]) {
    assert_eq!(r.code, code, "stderr: {}", r.stderr);
    assert_eq!(r.stderr.lines().count(), 1, "not one line: {:?}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "{:?} lacks {n:?}", r.stderr);
    }
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// A usage error: exit 2 and clap's whole message (it may span lines), naming what is wrong.
pub fn assert_usage(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, 2, "{}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "{:?} lacks {n:?}", r.stderr);
    }
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}

/// A fresh temporary folder under target/.
pub fn temp_dir(name: &str) -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic values in [-1, 1) (xorshift), for kernel tests.
pub fn vals(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(7);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Worst |logit - golden| over the positions of one sequence call from the zero state,
/// relative to each golden row's largest |logit|.
pub fn worst_error(m: &rwkv::Model, g: &Golden) -> f32 {
    let mut st = m.new_state();
    let all = m.forward(&g.tokens, &mut st, rwkv::Logits::All).unwrap();
    let v = m.cfg.vocab;
    g.logits
        .iter()
        .enumerate()
        .map(|(t, want)| {
            let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
            let row = &all[t * v..(t + 1) * v];
            let worst = row.iter().zip(want).map(|(a, b)| (a - b).abs());
            worst.fold(0f32, f32::max) / scale
        })
        .fold(0f32, f32::max)
}

/// Bits per byte of `tests/data/heldout.txt` (a public-domain King James passage, outside
/// the Shakespeare model's training set) under `m`, scored in chunks of 256 bytes.
pub fn heldout_bits_per_byte(m: &rwkv::Model) -> f64 {
    let text = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/heldout.txt"
    ))
    .unwrap();
    let ids: Vec<u32> = text.iter().map(|&b| b as u32).collect();
    let mut s = rwkv::score::Stream::new(m, m.new_state(), None, true, 256).unwrap();
    s.score(&ids).unwrap();
    rwkv::score::bits_per_byte(s.totals.nll, text.len() as u64)
}

/// Write the safetensors `src` again under another naming layout: `hf` (Hugging Face:
/// `rwkv.embeddings`, `rwkv.blocks.N.attention`, `feed_forward`, `pre_ln`) or `ai00` (names
/// lower-cased, `time_maa` -> `time_mix`, `time_faaaa` -> `time_first`, and the last two
/// dimensions of the four RWKV-6 LoRA matrices transposed), as `shared/golden/README.md`
/// describes the official converters' output.
pub fn convert_layout(src: &Path, dst: &Path, layout: &str) {
    use safetensors::tensor::TensorView;
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        let (mut shape, mut data) = (t.shape().to_vec(), t.data().to_vec());
        let new = match layout {
            "hf" => {
                let n = name
                    .replace("emb.weight", "embeddings.weight")
                    .replace(".att.", ".attention.")
                    .replace(".ffn.", ".feed_forward.")
                    .replace(".ln0.", ".pre_ln.");
                if n == "head.weight" {
                    n
                } else {
                    format!("rwkv.{n}")
                }
            }
            "ai00" => {
                let lora = [
                    "time_maa_w1",
                    "time_maa_w2",
                    "time_decay_w1",
                    "time_decay_w2",
                    // RWKV-7's, under BlinkDL's names
                    ".att.w1",
                    ".att.w2",
                    ".att.a1",
                    ".att.a2",
                    ".att.v1",
                    ".att.v2",
                    ".att.g1",
                    ".att.g2",
                ];
                if lora.iter().any(|l| name.ends_with(l)) {
                    let es = data.len() / shape.iter().product::<usize>();
                    let (r, c) = (shape[shape.len() - 2], shape[shape.len() - 1]);
                    let mut tr = vec![0u8; data.len()];
                    for (m, chunk) in data.chunks(r * c * es).enumerate() {
                        for i in 0..r {
                            for j in 0..c {
                                let from = (i * c + j) * es;
                                let to = m * r * c * es + (j * r + i) * es;
                                tr[to..to + es].copy_from_slice(&chunk[from..from + es]);
                            }
                        }
                    }
                    data = tr;
                    let n = shape.len();
                    shape.swap(n - 2, n - 1);
                }
                name.to_lowercase()
                    .replace("time_maa", "time_mix")
                    .replace("time_faaaa", "time_first")
            }
            other => panic!("no layout {other}"),
        };
        out.push((new, t.dtype(), shape, data));
    }
    let views: Vec<(String, TensorView)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap();
    std::fs::write(dst, bytes).unwrap();
}

/// Write `src` again with other weights of the same shape (one norm's weights negated), so
/// that its fingerprint differs.
pub fn other_weights(src: &Path, dst: &Path) {
    use safetensors::tensor::TensorView;
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in st.tensors() {
        let mut data = t.data().to_vec();
        if name == "blocks.0.ln1.weight" {
            // flip the sign bit of every f16/bf16/f32 value (little-endian: the last byte)
            let es = data.len() / t.shape().iter().product::<usize>();
            data.chunks_mut(es).for_each(|v| v[es - 1] ^= 0x80);
        }
        out.push((name, t.dtype(), t.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView)> = out
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap();
    std::fs::write(dst, bytes).unwrap();
}

/// `log_softmax(row)[i]`, in f64.
pub fn log_softmax(row: &[f32], i: usize) -> f64 {
    let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row[i] as f64 - max - sum.ln()
}

/// Every child this test binary has waited for peaked under 300 MB of resident memory
/// (the tools on the tiny fixtures need a few tens).
pub fn children_stayed_small() {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let kib = ru.ru_maxrss;
    assert!(kib < 300 * 1024, "a child's peak RSS: {kib} KiB");
}

/// One tensor of [`gguf_bytes`]: name, ggml `ne`, ggml type, offset from the data start,
/// data appended.
pub type GgufTensor<'a> = (&'a str, Vec<u64>, u32, u64, Vec<u8>);

/// A GGUF file written by hand: `meta` as (key, value type, value bytes), `tensors` as
/// (name, ggml `ne`, ggml type, offset from the data start, data appended), data aligned
/// to 32. For crafted files the `gguf` package would refuse to write.
pub fn gguf_bytes(meta: &[(&str, u32, Vec<u8>)], tensors: &[GgufTensor]) -> Vec<u8> {
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, ty, v) in meta {
        s(&mut b, k);
        b.extend(ty.to_le_bytes());
        b.extend(v);
    }
    for (name, ne, ty, off, _) in tensors {
        s(&mut b, name);
        b.extend((ne.len() as u32).to_le_bytes());
        for d in ne {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(off.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    for (_, _, _, _, data) in tensors {
        b.extend(data);
    }
    b
}

/// A GGUF string value's bytes.
pub fn gguf_str(x: &str) -> Vec<u8> {
    let mut v = (x.len() as u64).to_le_bytes().to_vec();
    v.extend(x.as_bytes());
    v
}
