//! RWKV-PEFT adapters merged at load (`tests/fixtures/make/lora_adapter.py`): LoRA, PiSSA
//! and DiSHA give the logits of the weights merged in f32 by RWKV-PEFT's rules, through
//! every tool and through `--save-quantized`.

mod common;
use common::*;
use rwkv::model::adapter::AdapterSpec;
use rwkv::model::{LoadOptions, Quant};
use rwkv::{Logits, Model};

const BASE: &str = "rand-rwkv7-d256-bf16.pth";
const ADAPTER: &str = "rand-rwkv7-d256-bf16.lora.pth";

fn with_adapters(files: &[(&str, f32)], quant: Option<Quant>) -> Model {
    let adapters = files
        .iter()
        .map(|&(f, scale)| AdapterSpec {
            path: model_path(f),
            scale,
        })
        .collect();
    let opts = LoadOptions {
        quant,
        adapters,
        ..LoadOptions::default()
    };
    Model::load_with(&model_path(BASE), opts).unwrap()
}

fn adapted(scale: f32, quant: Option<Quant>) -> Model {
    with_adapters(&[(ADAPTER, scale)], quant)
}

#[test]
fn pissa_and_disha_give_the_official_logits_of_their_merges() {
    // PiSSA: its init file's product taken away, then the trained pair added unscaled
    let pissa = with_adapters(
        &[
            ("rand-rwkv7-d256-bf16.pissa-init.pth", 1.0),
            ("rand-rwkv7-d256-bf16.pissa.pth", 1.0),
        ],
        None,
    );
    let g = golden("rand-rwkv7-d256-bf16.pissa");
    assert!(
        worst_error(&pissa, &g) < 1e-4,
        "{}",
        worst_error(&pissa, &g)
    );
    let trained_only = with_adapters(&[("rand-rwkv7-d256-bf16.pissa.pth", 1.0)], None);
    assert!(worst_error(&trained_only, &g) > 1e-2);
    // DiSHA: the shared [r, out] form and the [in / r, r, r] block form
    let disha = with_adapters(&[("rand-rwkv7-d256-bf16.disha.pth", 1.0)], None);
    let g = golden("rand-rwkv7-d256-bf16.disha");
    assert!(
        worst_error(&disha, &g) < 1e-4,
        "{}",
        worst_error(&disha, &g)
    );
    assert!(worst_error(&Model::load(&model_path(BASE)).unwrap(), &g) > 1e-2);
}

#[test]
fn a_merged_adapter_gives_the_official_logits_of_the_merged_weights() {
    let g = golden("rand-rwkv7-d256-bf16.lora");
    // RWKV-PEFT's lora_alpha 16 over rank 8
    let m = adapted(2.0, None);
    let mut st = m.new_state();
    for (t, (&tok, want)) in g.tokens.iter().zip(&g.logits).enumerate() {
        let got = m.forward(&[tok], &mut st, Logits::Last).unwrap();
        assert_logits_close(&format!("token {t}"), &got, want);
    }
    assert!(worst_error(&m, &g) < 1e-4);
    // the base model is far from it, and so is another scale
    assert!(worst_error(&Model::load(&model_path(BASE)).unwrap(), &g) > 0.1);
    assert!(worst_error(&adapted(1.0, None), &g) > 0.01);
    // quantized after the merge: int8's usual cost (1.9 % on the base, tests/quant.rs)
    let e = worst_error(&adapted(2.0, Some(Quant::Int8)), &g);
    assert!(e > 1e-4 && e < 0.03, "{e}");
}

#[test]
fn the_cli_merges_once_and_the_saved_model_loads_merged() {
    let dir = temp_dir("adapters-cli");
    let (m, a) = (model_arg(BASE), model_arg(ADAPTER));
    let adapter = format!("{a}:2");
    let saved = dir.join("merged.st");
    let saved = saved.to_str().unwrap();
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &m,
            "--adapter",
            &adapter,
            "--tokenizer",
            "bytes",
            "-v",
            "-n",
            "0",
            "-p",
            "x",
        ],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(", adapters rand-rwkv7-d256-bf16.lora.pth (18 matrices, rank 8),"),
        "{}",
        r.stderr
    );
    // log-likelihoods: the same with the adapter merged at load and from the saved file
    let nll = |model: &str, extra: &[&str]| {
        let args = [&["-m", model, "--tokenizer", "bytes", "-q"][..], extra].concat();
        let r = run("rwkv-score", &args, b"hello there");
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()[0]["nll"].as_f64().unwrap()
    };
    let quant = ["--adapter", &adapter, "--quant", "int8"];
    let in_place = nll(&m, &quant);
    let first = nll(&m, &[&quant[..], &["--save-quantized", saved]].concat());
    assert_eq!(first, in_place);
    assert_eq!(nll(saved, &[]), in_place);
    assert_ne!(nll(&m, &[]), in_place);
    // the saved model is the merged one, quantized
    let g = golden("rand-rwkv7-d256-bf16.lora");
    let e = worst_error(&Model::load(std::path::Path::new(saved)).unwrap(), &g);
    assert!(e < 0.03, "{e}");
}

#[test]
fn adapters_that_do_not_fit_are_refused() {
    let dir = temp_dir("adapters-bad");
    let other = model_arg("tiny-rwkv7-834k.safetensors");
    let a = model_arg(ADAPTER);
    let r = run("rwkv-gen", &["-m", &other, "--adapter", &a, "-p", "x"], b"");
    assert_fails(
        &r,
        1,
        &[ADAPTER, "do not adapt `blocks.0.att.key.weight` [64, 64]"],
    );
    let model = model_arg(BASE);
    let tuning = model_arg("rand-rwkv7-d256-bf16.state.pth");
    let r = run(
        "rwkv-gen",
        &["-m", &model, "--adapter", &tuning, "-p", "x"],
        b"",
    );
    assert_fails(
        &r,
        1,
        &["tensor `blocks.0.att.time_state` replaces one the model does not have"],
    );
    let missing = dir.join("none.pth");
    let missing = missing.to_str().unwrap();
    let r = run(
        "rwkv-gen",
        &["-m", &model, "--adapter", missing, "-p", "x"],
        b"",
    );
    assert_fails(&r, 1, &["none.pth"]);
    let r = run(
        "rwkv-gen",
        &["-m", &model, "--adapter", &format!("{a}:nan"), "-p", "x"],
        b"",
    );
    assert_usage(&r, &["--adapter", "not a finite number"]);
}
