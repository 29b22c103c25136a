//! rwkv-gen run as a program: exact greedy output, seeds, stop strings, --lines, --chat,
//! JSON lines, Unix manners and error messages.

mod common;
use common::*;

const SHAKESPEARE: &str = "shakespeare-rwkv6.safetensors";
const PROMPT: &str = "ROMEO:\nWhat light";
/// Greedy continuation of PROMPT: the first byte is the argmax of the golden sequence
/// logits; the rest came from a one-token-at-a-time library loop (argmax, fed back).
const GREEDY: &str = " is the matter?\n\nELBOW:\nI will not be a soldier ";

/// Plain argmax: temperature 0 and no repetition penalties (the official pipeline applies
/// penalties before the argmax too).
const GREEDY_ARGS: [&str; 6] = [
    "-t",
    "0",
    "--presence-penalty",
    "0",
    "--frequency-penalty",
    "0",
];

fn gen(args: &[&str], stdin: &[u8]) -> Run {
    let m = model_arg(SHAKESPEARE);
    let mut all = vec!["-m", m.as_str()];
    if args.contains(&"-t") && args.contains(&"0") {
        all.extend_from_slice(&GREEDY_ARGS[2..]);
    }
    all.extend_from_slice(args);
    run("rwkv-gen", &all, stdin)
}

#[test]
fn greedy_output_is_exact() {
    let r = gen(&["-p", PROMPT, "-t", "0", "-n", "48", "--ignore-eos"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.text(), GREEDY);
    assert!(r.stderr.is_empty());
    // The golden logits pick the first byte.
    let g = golden("shakespeare-rwkv6");
    assert_eq!(
        rwkv::sample::argmax(&g.seq_logits),
        GREEDY.as_bytes()[0] as u32
    );
    // Prompt from stdin and from a file give the same.
    let r2 = gen(&["-t", "0", "-n", "48", "--ignore-eos"], PROMPT.as_bytes());
    assert_eq!(r2.text(), GREEDY);
    let dir = temp_dir("gen-prompt-file");
    let f = dir.join("prompt.txt");
    std::fs::write(&f, PROMPT).unwrap();
    let r3 = gen(&["-f", f.to_str().unwrap(), "-t", "0", "-n", "48"], b"");
    assert_eq!(r3.text(), GREEDY);
    // The prompt's products in f32 (the default rounds them to bf16) pick the same bytes.
    let r4 = gen(
        &["-p", PROMPT, "-t", "0", "-n", "48", "--precision", "f32"],
        b"",
    );
    assert_eq!(r4.text(), GREEDY);
}

#[test]
fn tiny_model_greedy_and_end_of_text() {
    // The tiny model predicts byte 0 after every character (it was trained so).
    let g = golden("tiny-rwkv6-1m");
    let prompt: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let mut args = vec!["-m", m.as_str(), "-n", "10", "--ignore-eos"];
    args.extend_from_slice(&GREEDY_ARGS);
    let r = run("rwkv-gen", &args, &prompt);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, b"\0e\0n\0 \0t\0h");
    // Without --ignore-eos, token 0 ends the answer at once.
    let r = run(
        "rwkv-gen",
        &["-m", &m, "-t", "0", "-n", "10", "--format", "jsonl"],
        &prompt,
    );
    let recs = r.json();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["finish_reason"], "eos");
    assert_eq!(recs[0]["tokens"], 0);
}

#[test]
fn seed_repeats_on_any_thread_count() {
    let a = gen(
        &["-p", PROMPT, "-n", "60", "--seed", "7", "--threads", "1"],
        b"",
    );
    let b = gen(
        &["-p", PROMPT, "-n", "60", "--seed", "7", "--threads", "2"],
        b"",
    );
    let c = gen(&["-p", PROMPT, "-n", "60", "--seed", "8"], b"");
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_eq!(a.stdout.len(), 60);
    assert_eq!(a.stdout, b.stdout);
    assert_ne!(a.stdout, c.stdout);
}

#[test]
fn stop_string_spanning_tokens_is_cut() {
    // Every byte is a token here, so "matter?" spans seven tokens.
    let r = gen(
        &[
            "-p",
            PROMPT,
            "-t",
            "0",
            "-n",
            "48",
            "--stop",
            "matter?",
            "--ignore-eos",
        ],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.text(), " is the ");
    let r = gen(
        &[
            "-p", PROMPT, "-t", "0", "-n", "48", "--stop", "ELBOW", "--stop", "the", "--format",
            "jsonl",
        ],
        b"",
    );
    let recs = r.json();
    let last = recs.last().unwrap();
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["text"], " is ");
    // A stop string that never completes is printed in full at the end.
    let r = gen(
        &["-p", PROMPT, "-t", "0", "-n", "9", "--stop", "matter!"],
        b"",
    );
    assert_eq!(r.text(), &GREEDY[..9]);
}

#[test]
fn lines_answers_each_line_in_order() {
    let r = gen(&["--lines", "-t", "0", "-n", "12"], b"ROMEO:\nJULIET:\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let one = |p: &str| gen(&["-p", p, "-t", "0", "-n", "12"], b"").text();
    assert_eq!(r.text(), format!("{}\n{}\n", one("ROMEO:"), one("JULIET:")));
    let r = gen(
        &["--lines", "-t", "0", "-n", "5", "--format", "jsonl"],
        b"a\nb\nc\n",
    );
    let finals: Vec<_> = r
        .json()
        .into_iter()
        .filter(|v| v.get("finish_reason").is_some())
        .collect();
    assert_eq!(finals.len(), 3);
    assert_eq!(finals[2]["line"], 3);
}

#[test]
fn lines_answers_before_stdin_closes() {
    use std::io::{BufReader, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-gen"))
        .args([
            "-m",
            &model_arg(SHAKESPEARE),
            "--lines",
            "-t",
            "0",
            "-n",
            "5",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ROMEO:\n").unwrap();
    stdin.flush().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut answer = [0u8; 6];
    // Blocks until the first answer (5 bytes and a newline) while stdin is still open.
    std::io::Read::read_exact(&mut out, &mut answer).unwrap();
    assert_eq!(answer[5], b'\n');
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn jsonl_logprobs_are_log_softmax_of_the_logits() {
    let r = gen(
        &[
            "-p",
            PROMPT,
            "-t",
            "0",
            "-n",
            "3",
            "--format",
            "jsonl",
            "--top-logprobs",
            "3",
        ],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = r.json();
    assert_eq!(recs.len(), 4);
    let g = golden("shakespeare-rwkv6");
    let l = &g.seq_logits;
    let m = l.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let lse = m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    let want = l[32] as f64 - lse;
    assert_eq!(recs[0]["token"], 32);
    assert_eq!(recs[0]["text"], " ");
    let got = recs[0]["logprob"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    let top = recs[0]["top_logprobs"].as_array().unwrap();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0]["token"], 32);
    assert!(top[1]["logprob"].as_f64().unwrap() <= got);
    let fin = &recs[3];
    assert_eq!(fin["finish_reason"], "length");
    assert_eq!(fin["prompt_tokens"], PROMPT.len());
    assert_eq!(fin["tokens"], 3);
    assert_eq!(fin["text"], " is");
    assert!(fin["tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn echo_prints_the_prompt_first() {
    let r = gen(&["-p", PROMPT, "-t", "0", "-n", "8", "--echo"], b"");
    assert_eq!(r.text(), format!("{PROMPT}{}", &GREEDY[..8]));
}

#[test]
fn chat_carries_the_conversation() {
    let r = gen(&["--chat", "-t", "0", "-n", "30"], b"Hello\nWho are you?\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let text = r.text();
    let replies: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(replies.len(), 2, "{text:?}");
    // The second reply depends on the first turn: it differs from a fresh one.
    let fresh = gen(&["--chat", "-t", "0", "-n", "30"], b"Who are you?\n").text();
    assert_ne!(replies[1], fresh.trim_end_matches('\n'));
}

#[test]
fn closed_stdout_exits_quietly() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    // jsonl is flushed per token, so the long run meets the closed pipe mid-generation;
    // the short one only at its final flush.
    for (n, format) in [("100000", "jsonl"), ("3", "text")] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-gen"))
            .args([
                "-m",
                &model_arg(SHAKESPEARE),
                "-p",
                PROMPT,
                "-n",
                n,
                "--format",
                format,
                "--ignore-eos",
                "--seed",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut one = [0u8; 1];
        out.read_exact(&mut one).unwrap();
        drop(out); // like `| head -c 1`
        let status = child.wait().unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(status.code(), Some(0), "stderr: {err}");
        assert!(err.is_empty(), "{err}");
    }
}

#[test]
fn errors_are_one_line_with_the_documented_code() {
    let r = run(
        "rwkv-gen",
        &["-m", "/nonexistent/model.pth", "-p", "x"],
        b"",
    );
    assert_fails(&r, 1, &["/nonexistent/model.pth", "No such file"]);
    let r = gen(&["-p", "x", "--temperature", "hot"], b"");
    assert_fails(&r, 2, &["--temperature", "hot"]);
    let r = gen(&["-p", "x", "--top-p", "1.5"], b"");
    assert_fails(&r, 2, &["top-p", "1.5"]);
    let r = gen(&["-p", "x", "--precision", "f16"], b"");
    assert_fails(&r, 2, &["--precision", "f16"]);
    let r = run("rwkv-gen", &["-p", "x"], b"");
    assert_fails(&r, 2, &["RWKV_MODEL"]);
    // Not a model.
    let dir = temp_dir("gen-errors");
    let junk = dir.join("junk.safetensors");
    std::fs::write(&junk, b"hello, this is not a model").unwrap();
    let r = run("rwkv-gen", &["-m", junk.to_str().unwrap(), "-p", "x"], b"");
    assert_fails(&r, 1, &["junk.safetensors", "not a model"]);
    // Truncated model.
    let full = std::fs::read(model_path(SHAKESPEARE)).unwrap();
    let cut = dir.join("cut.safetensors");
    std::fs::write(&cut, &full[..full.len() / 2]).unwrap();
    let r = run("rwkv-gen", &["-m", cut.to_str().unwrap(), "-p", "x"], b"");
    assert_fails(&r, 1, &["cut.safetensors", "truncated"]);
    // Sampled ids above 255 have no byte form: said, not a crash.
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &model_arg("rand-rwkv6-d256-bf16.safetensors"),
            "--tokenizer",
            "bytes",
            "-p",
            "hi",
            "-n",
            "50",
            "--seed",
            "3",
        ],
        b"",
    );
    assert_fails(&r, 1, &["token id", "bytes tokenizer"]);
    // A vocab without a default tokenizer asks for one.
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &model_arg("rand-rwkv6-d256-bf16.safetensors"),
            "-p",
            "hi",
        ],
        b"",
    );
    assert_fails(&r, 1, &["--tokenizer"]);
}

#[test]
fn world_model_generates_text_from_text() {
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &model_arg("rand-rwkv6-world-d64-bf16.safetensors"),
            "-p",
            "User: hi\n\nAssistant:",
            "-n",
            "5",
            "--seed",
            "1",
            "--format",
            "jsonl",
        ],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let recs = r.json();
    assert_eq!(recs.last().unwrap()["prompt_tokens"], 7);
}

#[test]
fn ctrl_c_flushes_and_exits_130() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-gen"))
        .args([
            "-m",
            &model_arg(SHAKESPEARE),
            "-p",
            PROMPT,
            "-n",
            "1000000",
            "--ignore-eos",
            "--format",
            "jsonl",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap(); // generation is under way
                                        // SAFETY: sending SIGINT to our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    let records: Vec<serde_json::Value> = format!("{first}{rest}")
        .lines()
        .map(|l| serde_json::from_str(l).expect("every record is whole"))
        .collect();
    let last = records.last().unwrap();
    assert_eq!(last["finish_reason"], "interrupted");
    assert_eq!(last["tokens"].as_u64().unwrap() as usize, records.len() - 1);
}

/// Without the opencl feature, asking for OpenCL says how to get it; auto runs on the CPU.
#[cfg(not(feature = "opencl"))]
#[test]
fn opencl_without_the_feature_is_explained() {
    let r = gen(&["-p", "x", "-n", "2", "--device", "opencl"], b"");
    assert_fails(&r, 1, &["no OpenCL support", "--features opencl"]);
    let r = gen(&["-p", "x", "-n", "2", "--device", "auto"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run("rwkv-gen", &["--list-devices"], b"");
    assert_fails(&r, 1, &["no OpenCL support"]);
}
