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
    let p = shared().join("golden").join(format!("{stem}.golden.safetensors"));
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
    for (l, ls) in got.layers.iter().enumerate() {
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
