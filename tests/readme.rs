//! Every command in the README runs as written: each `sh` block (but the cargo ones, whose
//! build, main command and tests `.ci/run` runs verbatim, and the Spark job, which needs a
//! cluster: `examples/spark/check.sh` runs it in local mode) runs under `bash -euo pipefail`
//! in a folder holding the files it names, the tools on PATH, and the bundled model under
//! each name the README gives a model. Then what the user would look at is checked.

mod common;

use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Stdio};

/// The README's `sh` blocks.
fn blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let (mut out, mut cur) = (Vec::new(), None::<String>);
    for line in readme.lines() {
        match (&mut cur, line.trim_start()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(b), "```") => {
                out.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            (None, _) => {}
        }
    }
    out
}

/// The files the README's commands name, made from the bundled model and short texts.
fn files(dir: &Path) {
    let model = common::root().join("models/shakespeare-rwkv6.safetensors");
    for name in ["model.pth", "RWKV-x070-World-1.5B.pth", "rwkv7-g1.pth"] {
        std::os::unix::fs::symlink(&model, dir.join(name)).unwrap();
    }
    let text = "ROMEO:\nBut soft, what light through yonder window breaks?\n";
    let write = |name: &str, s: &str| std::fs::write(dir.join(name), s).unwrap();
    for name in [
        "prompt.txt",
        "essay.txt",
        "chapter1.txt",
        "chapter2.txt",
        "system-prompt.txt",
    ] {
        write(name, text);
    }
    write("questions.txt", "Who is Romeo?\nWhere is Verona?\n");
    write("qs.txt", "Is the sky blue?\nIs fire cold?\n");
    write("lines.txt", "To be, or not to be.\nThat is the question.\n");
    write("descriptions.txt", "a red fox\nthe year 1600\n");
    write(
        "corpus.txt",
        &"Now is the winter of our discontent.\n".repeat(12),
    );
    write(
        "requests.jsonl",
        "{\"prompt\": \"ROMEO:\", \"max_tokens\": 8, \"id\": 1}\n{\"ids\": [10], \"id\": 2}\n",
    );
    write(
        "lambada.jsonl",
        "{\"context\": \"To be, or not\", \"continuation\": \" to be\"}\n",
    );
    write(
        "person.json",
        r#"{"type": "object", "properties": {"name": {"type": "string", "maxLength": 12}},
            "required": ["name"], "additionalProperties": false}"#,
    );
    tuning_file(&model, &dir.join("peft-state.pth"));
    lora_file(&dir.join("math-lora.pth"));
}

/// A LoRA adapter for the bundled model's layer-0 attention key (`[256, 256]`), rank 4, as
/// safetensors under RWKV-PEFT's names.
fn lora_file(dst: &Path) {
    let a: Vec<u8> = (0..4 * 256)
        .flat_map(|i| (((i % 11) as f32 - 5.0) * 0.01).to_le_bytes())
        .collect();
    let b: Vec<u8> = (0..256 * 4)
        .flat_map(|i| (((i % 5) as f32 - 2.0) * 0.01).to_le_bytes())
        .collect();
    let views = [
        (
            "blocks.0.att.key.lora_A",
            TensorView::new(Dtype::F32, vec![4, 256], &a).unwrap(),
        ),
        (
            "blocks.0.att.key.lora_B",
            TensorView::new(Dtype::F32, vec![256, 4], &b).unwrap(),
        ),
    ];
    std::fs::write(dst, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// A state-tuning file for `model`: `blocks.N.att.time_state` `[H, S, S]` per layer.
fn tuning_file(model: &Path, dst: &Path) {
    let m = rwkv::Model::load(model).unwrap();
    let (h, s) = (m.cfg.n_head, m.cfg.head_size);
    let data: Vec<u8> = (0..h * s * s)
        .flat_map(|i| ((i % 7) as f32 * 0.01).to_le_bytes())
        .collect();
    let names: Vec<String> = (0..m.cfg.n_layer)
        .map(|l| format!("blocks.{l}.att.time_state"))
        .collect();
    let views: Vec<(&str, TensorView)> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                TensorView::new(Dtype::F32, vec![h, s, s], &data).unwrap(),
            )
        })
        .collect();
    std::fs::write(dst, safetensors::serialize(views, &None).unwrap()).unwrap();
}

/// Run `block` in `dir`: its stdout.
fn run_block(dir: &Path, block: &str) -> String {
    let bins = Path::new(env!("CARGO_BIN_EXE_rwkv-gen")).parent().unwrap();
    let path = format!("{}:{}", bins.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", block])
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("RWKV_MODEL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{block}\nexit {}: {err}", out.status);
    assert!(!err.contains("panicked"), "{block}\n{err}");
    String::from_utf8(out.stdout).unwrap()
}

fn lines(dir: &Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join(name))
        .unwrap()
        .lines()
        .count()
}

#[test]
fn readme_commands_run_as_written() {
    let dir = common::temp_dir("readme");
    files(&dir);
    let mut ran = 0;
    let mut outputs = Vec::new();
    for block in blocks() {
        if block.contains("cargo ") || block.contains("spark-submit") {
            continue;
        }
        outputs.push((block.clone(), run_block(&dir, &block)));
        ran += 1;
    }
    assert_eq!(
        ran, 7,
        "gen, constraints, score, shards, state, GNU parallel, adapter"
    );
    // the adapter merged once, saved quantized, then loaded as it is
    let merged = rwkv::Model::load(&dir.join("math.st")).unwrap();
    let key = merged
        .matrices()
        .into_iter()
        .find(|(n, _)| n == "blocks.0.att.key.weight");
    assert_eq!(key.unwrap().1.dtype.name(), "int8");
    // What the user looks at after each block.
    assert!(!std::fs::read(dir.join("out.txt")).unwrap().is_empty());
    assert_eq!(lines(&dir, "answers.txt"), 2, "an answer a question");
    let results: Vec<Value> = std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0]["id"], 1);
    assert_eq!(results[0]["completion_tokens"], 8);
    assert_eq!(lines(&dir, "rows.csv"), 2, "a row a description");
    let shards = outputs
        .iter()
        .find(|(b, _)| b.contains("shard-example"))
        .unwrap();
    let merged: Value = serde_json::from_str(shards.1.lines().last().unwrap()).unwrap();
    assert_eq!(
        merged["documents"], 12,
        "every corpus line scored once: {merged}"
    );
    assert!(merged["nll"].as_f64().unwrap() > 0.0);
    assert!(dir.join("tuned.state").exists() && dir.join("next.state").exists());
    let records = std::fs::read_to_string(dir.join("records.jsonl")).unwrap();
    let sources: Vec<u64> = records
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["source"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        sources,
        (1..=12).collect::<Vec<_>>(),
        "GNU parallel: a record a line"
    );
    let summary: Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["nll"], merged["nll"], "the same totals both ways");
    std::fs::remove_dir_all(&dir).unwrap();
}
