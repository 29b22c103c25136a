//! Memory that must not grow with the input: each run's own peak resident memory (as its
//! `-v` line reports it), against the size of what it was given.

mod common;

use common::{model_arg, run, Run};

/// The peak memory a `-v` run reported, in bytes.
fn peak_of(r: &Run) -> usize {
    let at = r
        .stderr
        .find("peak memory ")
        .expect("-v names the peak memory")
        + 12;
    let mib: f64 = r.stderr[at..].split(' ').next().unwrap().parse().unwrap();
    (mib * (1 << 20) as f64) as usize
}

/// Text of `n` bytes with no newline, spelling many World tokens.
fn words(n: usize) -> Vec<u8> {
    let w = [
        "the ", "quick ", "brown ", "fox ", "jumps ", "over ", "lazy ", "dogs ",
    ];
    let mut s: Vec<u8> = (0..)
        .flat_map(|i: usize| w[i * 7 % 8].bytes())
        .take(n)
        .collect();
    s.truncate(n);
    s
}

/// `--tokenize --lines` and `--jsonl` hold the line and write its ids as they are encoded:
/// a 16 MB line peaks at about its own size, not at ids and JSON values many times it.
#[test]
fn tokenizing_a_long_line_holds_the_line_not_its_ids() {
    const LINE: usize = 16 << 20;
    let text = words(LINE);
    let mut line = text.clone();
    line.push(b'\n');
    let r = run(
        "rwkv-score",
        &["-v", "--tokenizer", "world", "--tokenize", "--lines"],
        &line,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rec = &r.json()[0];
    assert_eq!(rec["bytes"], LINE);
    assert_eq!(rec["ids"].as_array().unwrap().len() as u64, rec["tokens"]);
    let peak = peak_of(&r);
    assert!(
        peak < LINE * 5 / 2,
        "--lines: peak {peak} for a {LINE}-byte line"
    );

    let json = serde_json::to_vec(&serde_json::json!({ "text": String::from_utf8(text).unwrap() }))
        .unwrap();
    let r = run(
        "rwkv-score",
        &["-v", "--tokenizer", "world", "--tokenize", "--jsonl"],
        &json,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.json()[0]["text"]["bytes"], LINE);
    let peak = peak_of(&r);
    assert!(
        peak < LINE * 4,
        "--jsonl: peak {peak} for a {LINE}-byte line"
    );
}

/// Per-token records (with alternatives) and the view leave as the document is scored:
/// a document of 30,000 tokens peaks within a few MB of plain scoring.
#[test]
fn per_token_records_stream_in_bounded_memory() {
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let doc = words(30_000);
    let plain = run("rwkv-score", &["-v", "-m", &m], &doc);
    assert_eq!(plain.code, 0, "{}", plain.stderr);
    let base = plain.json()[0].clone();
    for how in [&["--per-token", "--top-logprobs", "5"][..], &["--view"]] {
        let r = run("rwkv-score", &[&["-v", "-m", &m], how].concat(), &doc);
        assert_eq!(r.code, 0, "{how:?}: {}", r.stderr);
        if how[0] == "--per-token" {
            let rec = &r.json()[0];
            assert_eq!(rec["tokens"], base["tokens"]);
            assert_eq!(rec["nll"], base["nll"]);
            let per = rec["per_token"].as_array().unwrap();
            assert_eq!(per.len() as u64, base["tokens"].as_u64().unwrap());
            assert_eq!(per[100]["top_logprobs"].as_array().unwrap().len(), 5);
        } else {
            assert!(
                r.stdout.starts_with(&doc[..1000]),
                "the view spells the text"
            );
        }
        let (peak, base) = (peak_of(&r), peak_of(&plain));
        assert!(
            peak < base + (8 << 20),
            "{how:?}: peak {peak} bytes, plain scoring {base}"
        );
    }
}

/// Every tool's `-v` names its peak memory, which for the tiny models is tens of MB.
#[test]
fn verbose_runs_name_their_peak_memory() {
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let out = common::temp_dir("memory-verbose").join("s.state");
    let runs = [
        run("rwkv-gen", &["-v", "-m", &m, "-p", "ab", "-n", "4"], b""),
        run(
            "rwkv-gen",
            &["-v", "-m", &m, "--lines", "-n", "4"],
            b"a\nb\n",
        ),
        run("rwkv-score", &["-v", "-m", &m], b"abc"),
        run(
            "rwkv-state",
            &[
                "feed",
                "-v",
                "-m",
                &m,
                "-p",
                "ab",
                "-o",
                out.to_str().unwrap(),
            ],
            b"",
        ),
    ];
    for r in &runs {
        assert_eq!(r.code, 0, "{}", r.stderr);
        let peak = peak_of(r);
        assert!((1 << 20..200 << 20).contains(&peak), "{peak}: {}", r.stderr);
    }
}
