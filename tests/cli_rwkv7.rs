//! The three tools on RWKV-7 models: generation and scores against the official package's
//! outputs, state files, and states of the other version refused.

mod common;
use common::*;

const TINY: &str = "tiny-rwkv7-834k.safetensors";

fn tiny() -> String {
    model_arg(TINY)
}

/// Greedy decoding picks the official logits' argmax; the tiny model's known continuation.
#[test]
fn greedy_generation_follows_the_official_logits() {
    let g = golden("tiny-rwkv7-834k");
    let prompt: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
    let last = g.logits.last().unwrap();
    let argmax = (0..last.len())
        .max_by(|&a, &b| last[a].total_cmp(&last[b]))
        .unwrap();
    let r = run("rwkv-gen", &["-m", &tiny(), "-t", "0", "-n", "1"], &prompt);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, [argmax as u8]);
    // "It knows a little English" (shared/golden/README.md)
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &tiny(),
            "-t",
            "0",
            "-n",
            "12",
            "-p",
            "The cat sat on the",
        ],
        b"",
    );
    assert_eq!(r.text(), " the the the");
}

/// Per-token log-probabilities are the official logits' log-softmax.
#[test]
fn scores_are_the_official_log_probabilities() {
    let g = golden("tiny-rwkv7-834k");
    let text: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
    let r = run(
        "rwkv-score",
        &["-m", &tiny(), "--per-token", "--no-bos", "-q"],
        &text,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rec = &r.json()[0];
    let per = rec["per_token"].as_array().unwrap();
    // with --no-bos the first token is context; token t+1 is predicted by row t
    assert_eq!(per.len(), g.tokens.len() - 1);
    for (t, p) in per.iter().enumerate() {
        let want = log_softmax(&g.logits[t], g.tokens[t + 1] as usize);
        let got = p["logprob"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-4, "token {t}: {got} vs {want}");
    }
}

/// A state fed once and reused continues exactly as the whole prompt does; `info` and
/// `diff` read it; a state of the other version is refused in one line.
#[test]
fn state_files_of_rwkv7() {
    let dir = temp_dir("cli-rwkv7-state");
    let st = dir.join("cat.state");
    let st_s = st.to_string_lossy().into_owned();
    let r = run(
        "rwkv-state",
        &["feed", "-m", &tiny(), "-p", "The cat sat", "-o", &st_s],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let whole = run(
        "rwkv-gen",
        &[
            "-m",
            &tiny(),
            "-t",
            "0",
            "-n",
            "16",
            "-p",
            "The cat sat on the",
        ],
        b"",
    );
    let resumed = run(
        "rwkv-gen",
        &[
            "-m",
            &tiny(),
            "-t",
            "0",
            "-n",
            "16",
            "--state",
            &st_s,
            "-p",
            " on the",
        ],
        b"",
    );
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    assert_eq!(resumed.stdout, whole.stdout);

    let info = run("rwkv-state", &["info", "--json", &st_s], b"");
    assert_eq!(info.code, 0, "{}", info.stderr);
    let j = &info.json()[0];
    assert_eq!(j["arch"], "rwkv7");
    assert_eq!(j["n_layer"], 12);
    assert_eq!(j["layers"].as_array().unwrap().len(), 12);
    assert_eq!(j["tokens"], 11);

    let other = dir.join("other.state");
    let other_s = other.to_string_lossy().into_owned();
    let r = run(
        "rwkv-state",
        &["feed", "-m", &tiny(), "-p", "The dog sat", "-o", &other_s],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(run("rwkv-state", &["diff", &st_s, &st_s], b"").code, 0);
    assert_eq!(run("rwkv-state", &["diff", &st_s, &other_s], b"").code, 1);

    // across versions, both ways
    let v6 = model_arg("rand-rwkv6-d256-fp16.safetensors");
    let v6_state = dir.join("v6.state");
    let v6_state_s = v6_state.to_string_lossy().into_owned();
    let r = run(
        "rwkv-state",
        &[
            "feed",
            "-m",
            &v6,
            "--tokenizer",
            "bytes",
            "-p",
            "abc",
            "-o",
            &v6_state_s,
        ],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        "rwkv-gen",
        &["-m", &tiny(), "--state", &v6_state_s, "-p", "x"],
        b"",
    );
    assert_fails(&r, 1, &["v6.state", "RWKV-6", "RWKV-7"]);
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &v6,
            "--tokenizer",
            "bytes",
            "--state",
            &st_s,
            "-p",
            "x",
        ],
        b"",
    );
    assert_fails(&r, 1, &["cat.state", "RWKV-7", "RWKV-6"]);
    let tuning = model_arg("rand-rwkv6-d256-fp16.state.pth");
    let out = dir.join("tuned.state").to_string_lossy().into_owned();
    let r = run(
        "rwkv-state",
        &["import", "-m", &tiny(), &tuning, "-o", &out],
        b"",
    );
    // RWKV-7 reads RWKV-PEFT files; this one is another model's shape
    let want = [
        "a state-tuning file for 3 layers",
        "the model has 12 layers",
    ];
    assert_fails(&r, 1, &want);
    assert!(!dir.join("tuned.state").exists());
}

/// `--quant int8|nf4` run RWKV-7, and cost the tiny model little on its own golden text.
#[test]
fn quantized_rwkv7_scores_close() {
    let g = golden("tiny-rwkv7-834k");
    let text: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
    let bpb = |quant: &[&str]| {
        let mut a = vec!["-m", TINY, "-q"];
        let m = tiny();
        a[1] = &m;
        a.extend_from_slice(quant);
        let r = run("rwkv-score", &a, &text);
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.json()[0]["bits_per_byte"].as_f64().unwrap()
    };
    let exact = bpb(&[]);
    for q in ["int8", "nf4"] {
        let got = bpb(&["--quant", q]);
        assert!((got - exact).abs() < 0.05 * exact, "{q}: {got} vs {exact}");
    }
}

/// Prompts decoded together give what each gives alone, greedy and sampled.
#[test]
fn batched_lines_equal_one_at_a_time() {
    let prompts = b"The cat\nA dog sat on\nIn the beginning\nOnce\n";
    for sampling in [&["-t", "0"][..], &["--seed", "5"][..]] {
        let out = |batch: &str| {
            let mut a = vec!["-m", TINY, "--lines", "-n", "12", "--batch", batch];
            let m = tiny();
            a[1] = &m;
            a.extend_from_slice(sampling);
            let r = run("rwkv-gen", &a, prompts);
            assert_eq!(r.code, 0, "{}", r.stderr);
            r.stdout
        };
        let one = out("1");
        assert_eq!(one.iter().filter(|&&b| b == b'\n').count(), 4);
        assert_eq!(out("3"), one, "{sampling:?}");
        assert_eq!(out("16"), one, "{sampling:?}");
    }
}
