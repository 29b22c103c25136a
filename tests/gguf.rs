//! GGUF models as llama.cpp's converter and quantizer write them (`tests/fixtures/make/
//! gguf_models.py`): their logits against the official package run on the weights each file
//! holds, the float ones bit for bit against the safetensors of the same weights, and the
//! ggml block decoders against the `gguf` package's.

mod common;
use common::*;
use rwkv::model::checkpoint::Checkpoint;
use rwkv::model::{LoadOptions, Quant};
use rwkv::{Logits, Model};
use safetensors::SafeTensors;

fn all_logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
    let mut st = m.new_state();
    m.forward(tokens, &mut st, Logits::All).unwrap()
}

#[test]
fn f32_gguf_gives_the_safetensors_logits_bit_for_bit() {
    // its layers 6-11 hold att.output and ffn.value halved (rescale_every 6), undone at load
    let g = golden("tiny-rwkv6-1m");
    let gguf = Model::load(&model_path("tiny-rwkv6-1m.F32.gguf")).unwrap();
    let st = Model::load(&model_path("tiny-rwkv6-1m.safetensors")).unwrap();
    assert_eq!(all_logits(&gguf, &g.tokens), all_logits(&st, &g.tokens));
    assert_eq!(gguf.fingerprint(), st.fingerprint());
    assert!(worst_error(&gguf, &g) < 1e-4);
}

/// The worst error of `file` against its golden, with the tokens fed one at a time and in
/// one call.
fn error(file: &str, quant: Option<Quant>) -> f32 {
    let stem = file.trim_end_matches(".gguf");
    let g = golden(stem);
    let opts = LoadOptions {
        quant,
        ..LoadOptions::default()
    };
    let m = Model::load_with(&model_path(file), opts).unwrap();
    let mut st = m.new_state();
    let mut worst = 0f32;
    for (&tok, want) in g.tokens.iter().zip(&g.logits) {
        let got = m.forward(&[tok], &mut st, Logits::Last).unwrap();
        let scale = want.iter().fold(0f32, |a, x| a.max(x.abs()));
        let e = got
            .iter()
            .zip(want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        worst = worst.max(e / scale);
    }
    worst.max(worst_error(&m, &g))
}

#[test]
fn half_precision_ggufs_match_the_official_package() {
    for file in ["tiny-rwkv6-1m.F16.gguf", "tiny-rwkv7-834k.BF16.gguf"] {
        let e = error(file, None);
        assert!(e < 1e-4, "{file}: {e}");
    }
}

/// Blocks decoded to int8 add int8's rounding to the file's own: the worst logit error
/// relative to the largest, measured at (in order) 3.21e-2, 2.69e-2, 2.27e-3, 3.99e-3 and
/// 1.93e-2, bounded at 1.25 times that. int8 from the safetensors alone measures 3.03e-2
/// (tiny RWKV-6), 4.04e-3 (tiny RWKV-7) and 1.92e-2 (the random RWKV-7, tests/quant.rs).
#[test]
fn quantized_ggufs_stay_within_measured_bounds() {
    for (file, bound) in [
        ("tiny-rwkv6-1m.Q8_0.gguf", 3.21e-2),
        ("tiny-rwkv6-1m.Q4_0.gguf", 2.69e-2),
        ("tiny-rwkv7-834k.Q8_0.gguf", 2.27e-3),
        ("tiny-rwkv7-834k.Q4_0.gguf", 3.99e-3),
        ("rand-rwkv7-d256-bf16.Q6_K.gguf", 1.93e-2),
    ] {
        let e = error(file, None);
        eprintln!("{file}: {e:.2e}");
        assert!(e > 0.0 && e <= 1.25 * bound, "{file}: {e} against {bound}");
    }
}

#[test]
fn quant_on_a_gguf_requantizes_the_decoded_values() {
    let e = error("rand-rwkv7-d256-bf16.Q6_K.gguf", Some(Quant::Nf4));
    let m = Model::load_with(
        &model_path("rand-rwkv7-d256-bf16.Q6_K.gguf"),
        LoadOptions {
            quant: Some(Quant::Nf4),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let key = m
        .matrices()
        .into_iter()
        .find(|(n, _)| n == "blocks.0.att.key.weight");
    assert_eq!(key.unwrap().1.dtype.name(), "nf4");
    // nf4 from this model's safetensors measures 0.420 (tests/quant.rs)
    assert!(e > 1.93e-2 && e < 1.25 * 0.420, "{e}");
}

#[test]
fn block_decoders_match_the_gguf_package() {
    let ck = Checkpoint::open(&model_path("ggml-types.gguf")).unwrap();
    let path = root().join("tests/fixtures/golden/ggml-types.golden.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let gold = SafeTensors::deserialize(&bytes).unwrap();
    let names = [
        "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K", "Q2_K", "Q3_K",
    ];
    assert_eq!(ck.block_types().len(), names.len());
    for name in names {
        let got = ck.matrix(name, &[2, 512]).unwrap().to_f32();
        let want: Vec<f32> = gold
            .tensor(name)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn the_cli_names_what_it_loaded_and_uses_the_file_vocabulary() {
    let m = model_arg("rand-rwkv7-d256-bf16.Q6_K.gguf");
    let r = run(
        "rwkv-gen",
        &["-m", &m, "-v", "-n", "3", "--temperature", "0", "-p", "Hi"],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains("(GGUF file, RWKV-7, llama.cpp names, 3 layers")
            && r.stderr.contains("tokenizer the model file's")
            && r.stderr.contains("(Q6_K blocks decoded at load)"),
        "{}",
        r.stderr
    );
    // the file's first 1024 World tokens: " the" and " beginning" are not among them (World
    // gives 1136 22590 59220)
    let r = run("rwkv-score", &["-m", &m, "--tokenize"], b"In the beginning");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let ids: Vec<u64> = r.json()[0]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(ids.iter().all(|&i| i < 1024), "{ids:?}");
    assert_eq!(ids.len(), 14, "{ids:?}");
}

#[test]
fn rwkv_state_info_describes_a_model_file() {
    let gguf = model_arg("rand-rwkv7-d256-bf16.Q6_K.gguf");
    let r = run("rwkv-state", &["info", &gguf], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = r.text();
    for line in [
        "format       GGUF model, llama.cpp names\n",
        "version      RWKV-7\n",
        "shape        3 layers, width 256, 4 heads of 64, FFN 1024, vocab 1024\n",
        "types        Q6_K (17 tensors, 2.2 MB), F16 (21 tensors, 0.8 MB), F32",
        "vocabulary   the file's (1024 ids)\n",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    // the same weights' fingerprint in every file form: a state fed by one runs on the other
    let fp = |m: &str| {
        let r = run("rwkv-state", &["info", "--json", m], b"");
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()[0]["model_fingerprint"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(fp(&gguf), fp(&model_arg("rand-rwkv7-d256-bf16.pth")));
    let j = run(
        "rwkv-state",
        &["info", "--json", &model_arg("tiny-rwkv6-1m.F32.gguf")],
        b"",
    )
    .json();
    assert_eq!(j[0]["arch"], "rwkv6");
    assert_eq!(j[0]["parameters"], 1028352);
    assert_eq!(j[0]["vocabulary"], "the file's (256 ids)");
}

#[test]
fn a_gguf_model_saved_quantized_loads_to_the_same_logits() {
    let dir = temp_dir("gguf-save");
    let int8 = LoadOptions {
        quant: Some(Quant::Int8),
        ..LoadOptions::default()
    };
    // RWKV-6 with rescaled layers and fused mixes; RWKV-7 with its LoRA [out, in]
    for (file, stem) in [
        ("tiny-rwkv6-1m.Q8_0.gguf", "tiny-rwkv6-1m"),
        ("tiny-rwkv7-834k.Q4_0.gguf", "tiny-rwkv7-834k"),
    ] {
        let dst = dir.join(format!("{file}.st"));
        rwkv::model::quant_file::quantize_file(&model_path(file), &dst, Quant::Int8, None).unwrap();
        let g = golden(stem);
        let direct = Model::load_with(&model_path(file), int8.clone()).unwrap();
        let saved = Model::load(&dst).unwrap();
        assert_eq!(
            all_logits(&saved, &g.tokens),
            all_logits(&direct, &g.tokens),
            "{file}"
        );
        assert_eq!(saved.fingerprint(), direct.fingerprint());
    }
    // a vocabulary of the file's own would be lost
    let dst = dir.join("own-vocab.st");
    let q6k = model_path("rand-rwkv7-d256-bf16.Q6_K.gguf");
    let e = rwkv::model::quant_file::quantize_file(&q6k, &dst, Quant::Int8, None).unwrap_err();
    assert!(e.to_string().contains("its own vocabulary"), "{e}");
    assert!(!dst.exists());
}
