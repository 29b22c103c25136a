//! Shared test helpers: paths of the reference material and golden-file readers.
#![allow(dead_code)]

use rwkv::State;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::PathBuf;

/// `../shared` beside the checkout (CI lays it there too).
pub fn shared() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared")
}

pub fn model_path(name: &str) -> PathBuf {
    shared().join("models").join(name)
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

pub fn golden(stem: &str) -> Golden {
    let p = shared()
        .join("golden")
        .join(format!("{stem}.golden.safetensors"));
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
    Golden {
        tokens,
        logits,
        seq_logits,
        state,
    }
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
    for (l, ls) in got.layers().iter().enumerate() {
        for (name, v) in [
            ("att_shift", &ls.att_shift),
            ("wkv", &ls.wkv),
            ("ffn_shift", &ls.ffn_shift),
        ] {
            let want = &g.state[&format!("state.{l}.{name}")];
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
