//! rwkv-score run as a program. Expected figures come from the golden logits
//! (log-softmax of `../shared/golden` rows), not from the code under test.

mod common;
use common::*;

const SHAKESPEARE: &str = "shakespeare-rwkv6.safetensors";
/// The text of the Shakespeare golden: its tokens are these bytes.
const TEXT: &str = "ROMEO:\nWhat light";

/// Sum of golden log-probabilities of tokens `from..` (each predicted by the row before).
fn golden_logprob(g: &Golden, from: usize) -> f64 {
    (from..g.tokens.len())
        .map(|t| log_softmax(&g.logits[t - 1], g.tokens[t] as usize))
        .sum()
}

fn score(args: &[&str], stdin: &[u8]) -> Run {
    let m = model_arg(SHAKESPEARE);
    let mut all = vec!["-m", m.as_str(), "-q"];
    all.extend_from_slice(args);
    run("rwkv-score", &all, stdin)
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() <= 1e-3 * (1.0 + b.abs()), "{a} vs {b}");
}

#[test]
fn document_nll_and_bits_per_byte_match_the_golden() {
    let g = golden("shakespeare-rwkv6");
    assert_eq!(g.tokens, TEXT.bytes().map(u32::from).collect::<Vec<_>>());
    let want = -golden_logprob(&g, 1);
    let r = score(&["--no-bos"], TEXT.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rec = &r.json()[0];
    assert_eq!(rec["source"], "-");
    assert_eq!(rec["tokens"], 16);
    assert_eq!(rec["bytes"], 17);
    close(rec["nll"].as_f64().unwrap(), want);
    close(rec["ppl"].as_f64().unwrap(), (want / 16.0).exp());
    close(
        rec["bits_per_byte"].as_f64().unwrap(),
        want / std::f64::consts::LN_2 / 17.0,
    );
    // Per token, from the zero state: each position matches its golden row.
    let r = score(&["--no-bos", "--per-token"], TEXT.as_bytes());
    let per = r.json()[0]["per_token"].as_array().unwrap().clone();
    assert_eq!(per.len(), 16);
    for (i, t) in per.iter().enumerate() {
        assert_eq!(t["token"], g.tokens[i + 1]);
        close(
            t["logprob"].as_f64().unwrap(),
            log_softmax(&g.logits[i], g.tokens[i + 1] as usize),
        );
    }
    // With token 0 first (the default) the first byte is scored too; the state after 0
    // differs from the zero state, so the figures are its own, and they add up.
    let r = score(&["--per-token"], TEXT.as_bytes());
    let rec = &r.json()[0];
    assert_eq!(rec["tokens"], 17);
    let per = rec["per_token"].as_array().unwrap();
    assert_eq!(per[0]["text"], "R");
    let sum: f64 = per.iter().map(|t| t["logprob"].as_f64().unwrap()).sum();
    close(-sum, rec["nll"].as_f64().unwrap());
}

#[test]
fn continuation_and_choices_match_the_golden() {
    let g = golden("shakespeare-rwkv6");
    // context "ROMEO:\nWhat" (11 bytes), continuation " light" (tokens 11..17)
    let want = golden_logprob(&g, 11);
    let greedy = (11..17).all(|t| rwkv::sample::argmax(&g.logits[t - 1]) == g.tokens[t]);
    let alt = (11..16)
        .map(|t| log_softmax(&g.logits[t - 1], g.tokens[t] as usize))
        .sum::<f64>()
        + log_softmax(&g.logits[15], b'X' as usize);
    let input = format!(
        "{}\n{}\n",
        serde_json::json!({"context": "ROMEO:\nWhat", "continuation": " light"}),
        serde_json::json!({"context": "ROMEO:\nWhat", "choices": [" lighX", " light"], "label": 1}),
    );
    let r = score(&["--jsonl", "--no-bos", "--summary"], input.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = r.json();
    close(recs[0]["logprob"].as_f64().unwrap(), want);
    assert_eq!(recs[0]["greedy"], greedy);
    assert_eq!(recs[0]["tokens"], 6);
    let ch = recs[1]["choices"].as_array().unwrap();
    close(ch[0]["logprob"].as_f64().unwrap(), alt);
    close(ch[1]["logprob"].as_f64().unwrap(), want);
    let best = if want > alt { 1 } else { 0 };
    assert_eq!(recs[1]["best"], best);
    assert_eq!(recs[1]["correct"], best == 1);
    assert_eq!(recs[2]["summary"], true);
    assert_eq!(recs[2]["accuracy"], if best == 1 { 1.0 } else { 0.0 });
}

#[test]
fn same_numbers_for_any_thread_count_and_chunk_size() {
    let text = "ROMEO:\nWhat light through yonder window breaks?\nIt is the east.\n".repeat(3);
    let dir = temp_dir("score-threads");
    let f = dir.join("doc.txt");
    std::fs::write(&f, &text).unwrap();
    let f = f.to_str().unwrap();
    let a = score(&["--threads", "1", "--chunk", "1", f, "--per-token"], b"");
    let b = score(&["--threads", "2", "--chunk", "64", f, "--per-token"], b"");
    let c = score(&["--threads", "2", f, "--per-token"], b"");
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(a.stdout, b.stdout);
    assert_eq!(a.stdout, c.stdout);
    let l1 = score(&["--threads", "1", "--lines"], text.as_bytes());
    let l2 = score(
        &["--threads", "2", "--lines", "--chunk", "5"],
        text.as_bytes(),
    );
    assert_eq!(l1.stdout, l2.stdout);
    assert_eq!(l1.json().len(), 9);
}

#[test]
fn ids_documents_and_tokenize() {
    let r = score(
        &["--jsonl"],
        b"{\"ids\": [82, 79, 77]}\n{\"text\": \"ROM\"}\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = r.json();
    assert_eq!(recs[0]["nll"], recs[1]["nll"]);
    assert_eq!(recs[0]["bytes"], 3);
    let r = run(
        "rwkv-score",
        &["--tokenize", "--lines"],
        "Hello, world!\nThe quick brown fox jumps over the lazy dog.\n".as_bytes(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = r.json();
    assert_eq!(recs[0]["ids"], serde_json::json!([33155, 45, 40213, 34]));
    assert_eq!(recs[1]["tokens"], 10);
    assert_eq!(recs[1]["bytes"], 44);
}

#[test]
fn bad_lines_stop_with_the_line_named() {
    let input =
        b"{\"text\": \"ROMEO\"}\n{\"text\": \"JULIET\"}\n{not json\n{\"text\": \"never\"}\n";
    let r = score(&["--jsonl"], input);
    assert_fails(&r, 1, &["line 3", "invalid JSON"]);
    assert_eq!(
        r.json().len(),
        2,
        "the records before the bad line, complete"
    );
    let r = score(
        &["--jsonl"],
        b"{\"context\": \"a\", \"continuation\": \"\"}\n",
    );
    assert_fails(&r, 1, &["line 1", "continuation", "empty"]);
    let r = score(&["--jsonl"], b"{\"ids\": [1, 2]}\n{\"ids\": [1, 999]}\n");
    assert_fails(&r, 1, &["line 2", "999", "vocab of 256"]);
    assert_eq!(r.json().len(), 1);
    // a line past --max-line-bytes is refused, in bounded memory
    let long = format!("{{\"text\": \"{}\"}}\n", "x".repeat(5000));
    let r = score(&["--jsonl", "--max-line-bytes", "1000"], long.as_bytes());
    assert_fails(&r, 1, &["line 1", "longer than --max-line-bytes (1000)"]);
}

#[test]
fn an_unreadable_file_is_reported_and_the_rest_scored() {
    let dir = temp_dir("score-files");
    let a = dir.join("a.txt");
    let b = dir.join("b.txt");
    std::fs::write(&a, "ROMEO:").unwrap();
    std::fs::write(&b, "JULIET:").unwrap();
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    let r = score(&[a, "/nonexistent/x.txt", b, "--summary"], b"");
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/x.txt"));
    let recs = r.json();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["source"], a);
    assert_eq!(recs[1]["source"], b);
    assert_eq!(recs[2]["documents"], 2);
}

/// `--view` shades the text; without colour (a pipe, NO_COLOR, --color never) it is the
/// same text unshaded; a character split across tokens prints whole.
#[test]
fn view_shades_tokens_and_honours_no_color() {
    let text = "ROMEO: 😀 ok";
    let r = score(&["--view", "--color", "always"], text.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.text().contains("\x1b[48;5;"), "{}", r.text());
    assert!(r.text().contains("surprisal"));
    assert!(!r.text().contains('\u{FFFD}'));
    let strip = |s: String| {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                chars.by_ref().take_while(|&c| c != 'm').for_each(drop);
            } else {
                out.push(c);
            }
        }
        out
    };
    let shaded = strip(r.text());
    let plain = score(&["--view"], text.as_bytes()); // not a terminal: no colour
    assert!(!plain.text().contains('\x1b'));
    assert!(
        plain.text().starts_with(&format!("{text}\n-- ")),
        "{}",
        plain.text()
    );
    let never = score(&["--view", "--color", "never"], text.as_bytes());
    assert_eq!(never.text(), plain.text());
    // the same text with and without colour: the legend line is all it adds
    assert_eq!(
        shaded.lines().take(2).collect::<Vec<_>>(),
        plain.text().lines().collect::<Vec<_>>()
    );
}

/// `--per-token` records carry each token's bytes: they rebuild the text exactly, even
/// where a token holds part of a character.
#[test]
fn per_token_bytes_rebuild_the_text() {
    let text = "naïve 😀 café";
    let r = score(&["--per-token"], text.as_bytes());
    let rec = &r.json()[0];
    let bytes: Vec<u8> = rec["per_token"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(bytes, text.as_bytes());
    assert!(rec["per_token"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["text"] == "\u{FFFD}"));
}

/// `--tokenize` uses the model's tokenizer when one is given (here bytes, not World), and
/// tokenizes every text field of a JSON line.
#[test]
fn tokenize_follows_the_model_and_every_field() {
    let m = model_arg(SHAKESPEARE);
    let r = run(
        "rwkv-score",
        &["--tokenize", "-m", &m, "--lines"],
        b"Hello\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        r.json()[0]["ids"],
        serde_json::json!([72, 101, 108, 108, 111])
    );
    let r = run(
        "rwkv-score",
        &["--tokenize", "--jsonl"],
        br#"{"context": "Hello,", "continuation": " world!", "choices": ["a", "b c"]}"#,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rec = &r.json()[0];
    assert_eq!(rec["context"]["ids"], serde_json::json!([33155, 45]));
    assert_eq!(rec["continuation"]["tokens"], 2);
    assert_eq!(rec["choices.1"]["bytes"], 3);
    // a whole document streams through in blocks: the same ids as one call
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(3000);
    let r = run("rwkv-score", &["--tokenize"], text.as_bytes());
    let want = rwkv::tokenizer::Tokenizer::from_spec("world")
        .unwrap()
        .encode(text.as_bytes())
        .unwrap();
    assert_eq!(r.json()[0]["ids"], serde_json::json!(want));
    assert_eq!(r.json()[0]["bytes"], text.len());
}

/// The README's sharding example, run as written (its model the demo one): split, score
/// the parts in parallel, merge; the totals equal one run's.
#[test]
fn readme_shard_example_gives_the_totals_of_one_run() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("# shard-example")
        .expect("README has the shard example");
    let end = start + readme[start..].find("```").unwrap();
    let script = &readme[start..end];
    let dir = temp_dir("score-shard");
    let corpus: String = (0..40)
        .map(|i| format!("Line {i}: what light through yonder window breaks?\n"))
        .collect();
    std::fs::write(dir.join("corpus.txt"), &corpus).unwrap();
    std::os::unix::fs::symlink(model_path(SHAKESPEARE), dir.join("model.pth")).unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_rwkv-score"))
        .parent()
        .unwrap();
    let out = std::process::Command::new("bash")
        .arg("-ec")
        .arg(script)
        .current_dir(&dir)
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env_remove("RWKV_MODEL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let merged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let one = score(&["--lines", "--summary"], corpus.as_bytes());
    let whole = one.json().pop().unwrap();
    assert_eq!(merged, whole);
    assert_eq!(merged["documents"], 40);
}
