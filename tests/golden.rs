//! The forward pass against the official implementation's outputs (`tests/fixtures`, and
//! `../shared/golden` when present): logits after every token (one at a time),
//! sequence-mode logits and the final state, for every fixture model and every file form of
//! the same weights.

mod common;
use common::*;
use rwkv::model::{LoadOptions, Quant};
use rwkv::{Logits, Model};
use std::path::Path;

/// Feed the golden tokens one at a time and in one sequence call; compare everything.
fn check_file(path: &Path, g: &Golden) {
    let what = path.file_name().unwrap().to_string_lossy();
    let m = Model::load(path).unwrap();
    let mut st = m.new_state();
    for (t, (&tok, want)) in g.tokens.iter().zip(&g.logits).enumerate() {
        let got = m.forward(&[tok], &mut st, Logits::Last).unwrap();
        assert_logits_close(&format!("{what} token {t}"), &got, want);
    }
    assert_state_close(&format!("{what} one-token"), &st, g);

    let mut st = m.new_state();
    let seq = m.forward(&g.tokens, &mut st, Logits::Last).unwrap();
    assert_logits_close(&format!("{what} sequence"), &seq, &g.seq_logits);
    assert_state_close(&format!("{what} sequence"), &st, g);

    // All logits of one sequence call equal the one-at-a-time rows.
    let mut st = m.new_state();
    let all = m.forward(&g.tokens, &mut st, Logits::All).unwrap();
    for (t, want) in g.logits.iter().enumerate() {
        let row = &all[t * m.cfg.vocab..(t + 1) * m.cfg.vocab];
        assert_logits_close(&format!("{what} all-logits row {t}"), row, want);
    }
}

/// [`check_file`] for a fixture, when this checkout has it and its golden.
fn check(model_file: &str, golden_stem: &str) {
    match (fixture(model_file), try_golden(golden_stem)) {
        (Some(p), Some(g)) => check_file(&p, &g),
        _ => skip(model_file),
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

/// The Hugging Face and Ai00 layouts, written here from the fp16 fixture as the official
/// converters lay them out, give the golden outputs too.
#[test]
fn converted_layouts_match_the_golden() {
    let dir = temp_dir("layouts");
    let g = golden("rand-rwkv6-d256-fp16");
    for layout in ["hf", "ai00"] {
        let p = dir.join(format!("d256.{layout}.safetensors"));
        convert_layout(&model_path("rand-rwkv6-d256-fp16.safetensors"), &p, layout);
        check_file(&p, &g);
        assert_eq!(
            Model::load(&p).unwrap().layout.name(),
            if layout == "hf" {
                "Hugging Face"
            } else {
                "Ai00"
            }
        );
    }
}

/// RWKV-7 in the Ai00 / web-rwkv `.st` layout: BlinkDL's names, the LoRA matrices (`w1`
/// to `g2`) stored `[out, in]` as web-rwkv's loader reads them.
#[test]
fn rwkv7_in_the_ai00_layout_matches_the_golden() {
    let dir = temp_dir("layouts-v7");
    let p = dir.join("tiny7.ai00.st");
    convert_layout(&model_path("tiny-rwkv7-834k.safetensors"), &p, "ai00");
    check_file(&p, &golden("tiny-rwkv7-834k"));
    assert_eq!(Model::load(&p).unwrap().layout.name(), "Ai00");
    let plain = Model::load(&model_path("tiny-rwkv7-834k.safetensors")).unwrap();
    assert_eq!(plain.layout.name(), "BlinkDL");
    assert_eq!(Model::load(&p).unwrap().fingerprint(), plain.fingerprint());
}

#[test]
fn world_vocab_random_bf16() {
    check(
        "rand-rwkv6-world-d64-bf16.safetensors",
        "rand-rwkv6-world-d64-bf16",
    );
}

#[test]
fn v7_tiny_trained_fp32() {
    check("tiny-rwkv7-834k.safetensors", "tiny-rwkv7-834k");
}

#[test]
fn v7_random_bf16_pth() {
    check("rand-rwkv7-d256-bf16.pth", "rand-rwkv7-d256-bf16");
}

#[test]
fn v7_random_bf16_safetensors() {
    check("rand-rwkv7-d256-bf16.safetensors", "rand-rwkv7-d256-bf16");
}

#[test]
fn v7_random_fp16_safetensors() {
    check("rand-rwkv7-d256-fp16.safetensors", "rand-rwkv7-d256-fp16");
}

#[test]
fn v7_world_vocab_random_bf16() {
    check(
        "rand-rwkv7-world-d64-bf16.safetensors",
        "rand-rwkv7-world-d64-bf16",
    );
}

/// Feeding in chunks of 1, 7 and 64 tokens gives the logits and state of one call (both
/// versions: RWKV-7 carries its state across chunks, and recomputes `v_first` in each).
#[test]
fn chunked_feeding_equals_one_call() {
    for stem in [
        "shakespeare-rwkv6",
        "tiny-rwkv7-834k",
        "tiny-rwkv5-730k",
        "rand-rwkv7a-d256-bf16",
        "tiny-rwkv4-660k",
    ] {
        let g = golden(stem);
        let m = Model::load(&model_path(&format!("{stem}.safetensors"))).unwrap();
        let tokens: Vec<u32> = g.tokens.iter().cycle().take(150).copied().collect();
        let mut st = m.new_state();
        let whole = m.forward(&tokens, &mut st, Logits::Last).unwrap();
        for chunk in [1, 7, 64] {
            let mut st2 = m.new_state();
            let got = m.feed(&tokens, &mut st2, chunk).unwrap();
            assert_logits_close(&format!("{stem} chunk {chunk}"), &got, &whole);
            for (a, b) in st.layers().unwrap().iter().zip(st2.layers().unwrap()) {
                assert_logits_close(&format!("{stem} chunk {chunk} wkv"), &a.wkv, &b.wkv);
            }
        }
    }
}

/// `Logits::Last` and `Logits::None` compute only the rows of the last layer that the
/// logits or the state read (its receptance, gate, output and FFN products skip the rest),
/// in both versions:
/// the logits and the whole state are exactly those of a call that computes every row, for
/// stored and quantized weights, and however the sequence ends (1 to 3 tokens are
/// products of under 4 rows all along).
#[test]
fn skipped_rows_change_no_bit() {
    let text = b"ROMEO:\nWhat light through yonder window breaks?";
    let all_tokens: Vec<u32> = text.iter().map(|&b| b as u32).collect();
    let models = [
        "shakespeare-rwkv6.safetensors",
        "tiny-rwkv7-834k.safetensors",
        "tiny-rwkv5-730k.safetensors",
        "rand-rwkv7a-d256-bf16.safetensors",
        "tiny-rwkv4-660k.safetensors",
    ];
    for (quant, file) in [None, Some(Quant::Int8), Some(Quant::Nf4)]
        .into_iter()
        .flat_map(|q| models.map(|f| (q, f)))
    {
        let opts = LoadOptions {
            quant,
            ..LoadOptions::default()
        };
        let m = Model::load_with(&model_path(file), opts).unwrap();
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
                "{file} {quant:?}, {n} tokens: logits"
            );
            let values = |s: &rwkv::State| s.values().unwrap();
            assert!(
                values(&last) == values(&all),
                "{file} {quant:?}, {n} tokens: state after Last"
            );
            assert!(
                values(&none) == values(&all),
                "{file} {quant:?}, {n} tokens: state after None"
            );
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
        let start =
            rwkv::state_file::import_tuning(&model_path(file), m.cfg.state_shape()).unwrap();
        let mut st = start.try_clone().unwrap();
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
    let fp = |p: &Path| Model::load(p).unwrap().fingerprint().to_string();
    let fp16 = model_path("rand-rwkv6-d256-fp16.safetensors");
    let a = fp(&fp16);
    assert_eq!(a.len(), 16);
    let dir = temp_dir("fingerprint");
    for layout in ["hf", "ai00"] {
        let p = dir.join(format!("d256.{layout}.safetensors"));
        convert_layout(&fp16, &p, layout);
        assert_eq!(fp(&p), a, "{layout}");
    }
    assert_ne!(fp(&model_path("shakespeare-rwkv6.safetensors")), a);
    // A fingerprint is the same on every build: it is written into state files.
    assert_eq!(
        fp(&model_path("shakespeare-rwkv6.safetensors")),
        "c33be754d99796ec"
    );
    for (x, y) in [
        (
            "rand-rwkv6-d256-fp16.hf.safetensors",
            "rand-rwkv6-d256-fp16.safetensors",
        ),
        (
            "rand-rwkv6-d256-fp16.ai00.st",
            "rand-rwkv6-d256-fp16.safetensors",
        ),
        (
            "rand-rwkv6-d256-bf16.pth",
            "rand-rwkv6-d256-bf16.safetensors",
        ),
    ] {
        match (fixture(x), fixture(y)) {
            (Some(p), Some(q)) => assert_eq!(fp(&p), fp(&q), "{x}"),
            _ => skip(x),
        }
    }
}

#[test]
fn v5_tiny_trained_fp32() {
    check("tiny-rwkv5-730k.safetensors", "tiny-rwkv5-730k");
}

#[test]
fn v5_random_bf16_safetensors() {
    check("rand-rwkv5-d256-bf16.safetensors", "rand-rwkv5-d256-bf16");
}

#[test]
fn v5_random_bf16_pth() {
    check("rand-rwkv5-d256-bf16.pth", "rand-rwkv5-d256-bf16");
}

#[test]
fn v7a_deepembed_random_bf16() {
    check("rand-rwkv7a-d256-bf16.safetensors", "rand-rwkv7a-d256-bf16");
}

#[test]
fn v4_tiny_trained_fp32() {
    check("tiny-rwkv4-660k.safetensors", "tiny-rwkv4-660k");
}

#[test]
fn v4_random_bf16_safetensors() {
    check("rand-rwkv4-d256-bf16.safetensors", "rand-rwkv4-d256-bf16");
}
