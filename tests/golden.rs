//! The forward pass against the official implementation's outputs in `../shared/golden`:
//! logits after every token (one at a time), sequence-mode logits and the final state, for
//! every fixture model and every file form of the same weights.

mod common;
use common::*;
use rwkv::model::{LoadOptions, Quant};
use rwkv::{Logits, Model};

/// Feed the golden tokens one at a time and in one sequence call; compare everything.
fn check(model_file: &str, golden_stem: &str) {
    let g = golden(golden_stem);
    let m = Model::load(&model_path(model_file)).unwrap();
    let mut st = m.new_state();
    for (t, (&tok, want)) in g.tokens.iter().zip(&g.logits).enumerate() {
        let got = m.forward(&[tok], &mut st, Logits::Last).unwrap();
        assert_logits_close(&format!("{model_file} token {t}"), &got, want);
    }
    assert_state_close(&format!("{model_file} one-token"), &st, &g);

    let mut st = m.new_state();
    let seq = m.forward(&g.tokens, &mut st, Logits::Last).unwrap();
    assert_logits_close(&format!("{model_file} sequence"), &seq, &g.seq_logits);
    assert_state_close(&format!("{model_file} sequence"), &st, &g);

    // All logits of one sequence call equal the one-at-a-time rows.
    let mut st = m.new_state();
    let all = m.forward(&g.tokens, &mut st, Logits::All).unwrap();
    for (t, want) in g.logits.iter().enumerate() {
        let row = &all[t * m.cfg.vocab..(t + 1) * m.cfg.vocab];
        assert_logits_close(&format!("{model_file} all-logits row {t}"), row, want);
    }
}

#[test]
fn tiny_trained_fp32() {
    check("tiny-rwkv6-1m.safetensors", "tiny-rwkv6-1m");
}

#[test]
fn shakespeare_bf16_safetensors() {
    check("shakespeare-rwkv6.safetensors", "shakespeare-rwkv6");
}

#[test]
fn shakespeare_bf16_pth() {
    check("shakespeare-rwkv6.pth", "shakespeare-rwkv6");
}

#[test]
fn random_bf16_safetensors() {
    check("rand-rwkv6-d256-bf16.safetensors", "rand-rwkv6-d256-bf16");
}

#[test]
fn random_bf16_pth() {
    check("rand-rwkv6-d256-bf16.pth", "rand-rwkv6-d256-bf16");
}

#[test]
fn random_fp16_safetensors() {
    check("rand-rwkv6-d256-fp16.safetensors", "rand-rwkv6-d256-fp16");
}

#[test]
fn random_fp16_hugging_face_names() {
    check(
        "rand-rwkv6-d256-fp16.hf.safetensors",
        "rand-rwkv6-d256-fp16",
    );
}

#[test]
fn random_fp16_ai00_layout() {
    check("rand-rwkv6-d256-fp16.ai00.st", "rand-rwkv6-d256-fp16");
}

#[test]
fn world_vocab_random_bf16() {
    check(
        "rand-rwkv6-world-d64-bf16.safetensors",
        "rand-rwkv6-world-d64-bf16",
    );
}

/// Feeding in chunks of 1, 7 and 64 tokens gives the logits and state of one call.
#[test]
fn chunked_feeding_equals_one_call() {
    let g = golden("shakespeare-rwkv6");
    let m = Model::load(&model_path("shakespeare-rwkv6.safetensors")).unwrap();
    let tokens: Vec<u32> = g.tokens.iter().cycle().take(150).copied().collect();
    let mut st = m.new_state();
    let whole = m.forward(&tokens, &mut st, Logits::Last).unwrap();
    for chunk in [1, 7, 64] {
        let mut st2 = m.new_state();
        let got = m.feed(&tokens, &mut st2, chunk).unwrap();
        assert_logits_close(&format!("chunk {chunk}"), &got, &whole);
        for (a, b) in st.layers().iter().zip(st2.layers()) {
            assert_logits_close(&format!("chunk {chunk} wkv"), &a.wkv, &b.wkv);
        }
    }
}

/// `Logits::Last` and `Logits::None` compute only the rows of the last layer that the
/// logits or the state read (its receptance, gate, output and FFN products skip the rest):
/// the logits and the whole state are exactly those of a call that computes every row, for
/// stored and quantized weights, and however the sequence ends (1 to 3 tokens are
/// products of under 4 rows all along).
#[test]
fn skipped_rows_change_no_bit() {
    let text = b"ROMEO:\nWhat light through yonder window breaks?";
    let all_tokens: Vec<u32> = text.iter().map(|&b| b as u32).collect();
    for quant in [None, Some(Quant::Int8), Some(Quant::Nf4)] {
        let opts = LoadOptions {
            quant,
            quant_layers: None,
        };
        let m = Model::load_with(&model_path("shakespeare-rwkv6.safetensors"), opts).unwrap();
        let v = m.cfg.vocab;
        for n in [1, 2, 3, 5, all_tokens.len()] {
            let tokens = &all_tokens[..n];
            let mut all = m.new_state();
            let every = m.forward(tokens, &mut all, Logits::All).unwrap();
            let mut last = m.new_state();
            let got = m.forward(tokens, &mut last, Logits::Last).unwrap();
            let mut none = m.new_state();
            assert!(m
                .forward(tokens, &mut none, Logits::None)
                .unwrap()
                .is_empty());
            assert!(
                got[..] == every[(n - 1) * v..],
                "{quant:?}, {n} tokens: logits"
            );
            assert!(last == all, "{quant:?}, {n} tokens: state after Last");
            assert!(none == all, "{quant:?}, {n} tokens: state after None");
        }
    }
}

/// The golden run that starts from the state-tuning state, imported from both file forms.
#[test]
fn from_imported_tuning_state() {
    let g = golden("rand-rwkv6-d256-fp16.state");
    let m = Model::load(&model_path("rand-rwkv6-d256-fp16.safetensors")).unwrap();
    for file in [
        "rand-rwkv6-d256-fp16.state.pth",
        "rand-rwkv6-d256-fp16.state.ai00.st",
    ] {
        let start = rwkv::state_file::import_tuning(&model_path(file), &m.cfg).unwrap();
        let mut st = start.clone();
        for (t, (&tok, want)) in g.tokens.iter().zip(&g.logits).enumerate() {
            let got = m.forward(&[tok], &mut st, Logits::Last).unwrap();
            assert_logits_close(&format!("{file} token {t}"), &got, want);
        }
        assert_state_close(file, &st, &g);
        let mut st = start;
        let seq = m.forward(&g.tokens, &mut st, Logits::Last).unwrap();
        assert_logits_close(&format!("{file} sequence"), &seq, &g.seq_logits);
    }
}

/// The same weights in every layout share a fingerprint; other weights do not.
#[test]
fn fingerprint_follows_the_weights_not_the_file() {
    let fp = |f: &str| {
        Model::load(&model_path(f))
            .unwrap()
            .fingerprint()
            .to_string()
    };
    let a = fp("rand-rwkv6-d256-fp16.safetensors");
    assert_eq!(a.len(), 16);
    assert_eq!(fp("rand-rwkv6-d256-fp16.hf.safetensors"), a);
    assert_eq!(fp("rand-rwkv6-d256-fp16.ai00.st"), a);
    assert_eq!(
        fp("rand-rwkv6-d256-bf16.pth"),
        fp("rand-rwkv6-d256-bf16.safetensors")
    );
    assert_ne!(fp("shakespeare-rwkv6.safetensors"), a);
}
