//! Loader errors on checkpoints made here, a Hugging Face tokenizer.json, and the
//! synthetic model writer.

mod common;
use common::*;
use rwkv::Model;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Write a safetensors file of f32 zeros with these names and shapes.
fn write(path: &Path, tensors: &[(&str, Vec<usize>)]) {
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s)| {
            (
                n.to_string(),
                s.clone(),
                vec![0u8; s.iter().product::<usize>() * 4],
            )
        })
        .collect();
    let views: Vec<(String, TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F32, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let bytes = safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn load_err(path: &Path) -> String {
    Model::load(path).err().expect("the load fails").to_string()
}

/// Other generations and RWKV-7 variants are refused in one line that says what the file
/// is; a preview file carrying RWKV-6's marker is not taken for RWKV-6.
#[test]
fn other_rwkv_versions_are_named() {
    let dir = temp_dir("load-versions");
    let emb = ("emb.weight", vec![4, 8]);
    let cases = [
        (
            "v5.0",
            "an RWKV-5.0 model",
            vec![
                emb.clone(),
                ("blocks.0.att.ln_x.weight", vec![8]),
                ("blocks.0.att.time_faaaa", vec![1, 8]),
            ],
        ),
        (
            "v5.1",
            "an RWKV-5.1 model",
            vec![
                emb.clone(),
                ("blocks.0.att.ln_x.weight", vec![8]),
                ("blocks.0.att.gate.weight", vec![8, 8]),
                ("blocks.0.att.time_decay", vec![1]),
                ("blocks.0.att.time_faaaa", vec![1]),
            ],
        ),
        (
            "rc4a",
            "pre-release names",
            vec![emb.clone(), ("blocks.0.att.time_misc_kkk", vec![1, 1, 8])],
        ),
        (
            "early",
            "early RWKV-7 preview",
            vec![
                emb.clone(),
                ("blocks.0.att.time_maa_x", vec![1, 1, 8]),
                ("blocks.0.att.time_aaaaa", vec![1, 1, 8]),
            ],
        ),
    ];
    let runs = format!("these tools run {}", rwkv::model::registry::titles());
    assert_eq!(
        runs,
        "these tools run RWKV-4, RWKV-5.2, RWKV-6, RWKV-7a and RWKV-7"
    );
    for (file, says, tensors) in cases {
        let p = dir.join(format!("{file}.safetensors"));
        write(&p, &tensors);
        let e = load_err(&p);
        assert!(e.contains(says) && e.contains(&runs), "{e}");
        assert!(e.contains(&format!("{file}.safetensors")), "{e}");
    }
    let p = dir.join("fla.safetensors");
    write(&p, &[("model.layers.0.attn.k_k", vec![8])]);
    assert!(load_err(&p).contains("Hugging Face (flash-linear-attention) names"));
    let p = dir.join("other.safetensors");
    write(&p, &[("model.layers.0.weight", vec![2, 2])]);
    assert!(load_err(&p).contains("not an RWKV model"));
}

#[test]
fn missing_and_misshapen_tensors_are_named() {
    let dir = temp_dir("load-tensors");
    let src = std::fs::read(model_path("rand-rwkv6-d256-fp16.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let rebuild = |skip: &str, reshape: Option<(&str, Vec<usize>)>| {
        let mut views = Vec::new();
        for (n, t) in st.tensors() {
            if n == skip {
                continue;
            }
            let shape = match &reshape {
                Some((r, s)) if *r == n => s.clone(),
                _ => t.shape().to_vec(),
            };
            views.push((n, TensorView::new(t.dtype(), shape, t.data()).unwrap()));
        }
        safetensors::serialize(views, &None::<HashMap<String, String>>).unwrap()
    };
    let p = dir.join("missing.safetensors");
    std::fs::write(&p, rebuild("blocks.1.att.gate.weight", None)).unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("missing tensor `blocks.1.att.gate.weight`"),
        "{e}"
    );
    let p = dir.join("shape.safetensors");
    std::fs::write(
        &p,
        rebuild("", Some(("blocks.2.ffn.value.weight", vec![896, 256]))),
    )
    .unwrap();
    let e = load_err(&p);
    assert!(
        e.contains("blocks.2.ffn.value.weight")
            && e.contains("[896, 256]")
            && e.contains("[256, 896]"),
        "{e}"
    );
}

#[test]
fn hugging_face_tokenizer_json() {
    let dir = temp_dir("load-hf-tokenizer");
    let p = dir.join("tokenizer.json");
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "to": 1, "be": 2, "or": 3, "not": 4}, "unk_token": "[UNK]"}
    });
    std::fs::write(&p, json.to_string()).unwrap();
    let t = rwkv::tokenizer::Tokenizer::from_spec(p.to_str().unwrap()).unwrap();
    assert_eq!(
        t.encode(b"to be or not to be").unwrap(),
        vec![1, 2, 3, 4, 1, 2]
    );
    assert_eq!(t.token_bytes(4).unwrap().as_ref(), b"not");
    std::fs::write(&p, b"{\"not\": \"a tokenizer\"}").unwrap();
    let e = rwkv::tokenizer::Tokenizer::from_spec(p.to_str().unwrap())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not a Hugging Face tokenizer.json"),
        "{e}"
    );
}

/// The synthetic writer makes a model of the asked shape that loads and gives finite,
/// spread-out logits (built by `cargo test` as an example).
#[test]
fn synth_model_writes_a_working_model() {
    let exe = Path::new(env!("CARGO_BIN_EXE_rwkv-gen"))
        .parent()
        .unwrap()
        .join("examples/synth-model");
    if !exe.exists() {
        panic!(
            "{} is not built (cargo test builds examples)",
            exe.display()
        );
    }
    let dir = temp_dir("load-synth");
    // RWKV-4's recurrence is per channel: one "head" of the whole width
    for (arch, ffn, (heads, size)) in [
        ("v4", 512, (1, 128)),
        ("v5", 448, (2, 64)),
        ("v6", 448, (2, 64)),
        ("v7", 512, (2, 64)),
        ("v7a", 512, (2, 64)),
    ] {
        let out = dir.join(format!("{arch}.st"));
        let s = std::process::Command::new(&exe)
            .args([
                "--arch", arch, "--layers", "3", "--embd", "128", "--vocab", "512",
            ])
            .args(["--dtype", "f16", "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(s.status.success(), "{}", String::from_utf8_lossy(&s.stderr));
        let m = Model::load(&out).unwrap();
        let c = m.cfg;
        assert_eq!(c.version.name, format!("rwkv{}", &arch[1..]));
        assert_eq!(
            (c.n_layer, c.n_embd, c.n_head, c.head_size, c.ffn, c.vocab),
            (3, 128, heads, size, ffn, 512)
        );
        let mut st = m.new_state();
        let logits = m
            .forward(&[1, 2, 3, 4, 5], &mut st, rwkv::Logits::Last)
            .unwrap();
        assert!(logits.iter().all(|l| l.is_finite()));
        let mean = logits.iter().sum::<f32>() / 512.0;
        let sd = (logits.iter().map(|l| (l - mean).powi(2)).sum::<f32>() / 512.0).sqrt();
        assert!(sd > 0.05 && sd < 50.0, "{arch}: logit spread {sd}");
    }
}

/// A byte-level BPE tokenizer.json splits "é" into two tokens; the stream decoder gives the
/// character once it is whole, where decoding one id at a time could not.
#[test]
fn byte_level_tokens_decode_as_a_stream() {
    let dir = temp_dir("load-hf-bytelevel");
    let p = dir.join("tokenizer.json");
    let bl = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": bl, "post_processor": null, "decoder": bl,
        "model": {"type": "BPE", "vocab": {"\u{00c3}": 0, "\u{00a9}": 1, "a": 2}, "merges": [],
                  "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false}
    });
    std::fs::write(&p, json.to_string()).unwrap();
    let t = rwkv::tokenizer::Tokenizer::from_spec(p.to_str().unwrap()).unwrap();
    let ids = t.encode("aé".as_bytes()).unwrap();
    assert_eq!(ids, vec![2, 0, 1]);
    let mut d = rwkv::tokenizer::Detokenizer::new(&t);
    let out: Vec<Vec<u8>> = ids.iter().map(|&i| d.push(i).unwrap()).collect();
    assert_eq!(out, vec![b"a".to_vec(), vec![], "é".as_bytes().to_vec()]);
    assert!(d.push(99).is_err());
}
