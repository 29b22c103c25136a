//! rwkv-gen run as a program: exact greedy output, seeds, stop strings, --lines, --chat,
//! batches and JSON-lines requests, Unix manners and error messages.

mod common;
use common::*;

const SHAKESPEARE: &str = "shakespeare-rwkv6.safetensors";
const PROMPT: &str = "ROMEO:\nWhat light";
/// Greedy continuation of PROMPT: the first byte is the argmax of the golden sequence
/// logits; the rest came from a one-token-at-a-time library loop (argmax, fed back).
const GREEDY: &str = " is the matter?\n\nELBOW:\nI will not be a soldier ";

/// Plain argmax: at temperature 0 the penalties are 0 unless given.
const GREEDY_ARGS: [&str; 2] = ["-t", "0"];

fn gen(args: &[&str], stdin: &[u8]) -> Run {
    let m = model_arg(SHAKESPEARE);
    let mut all = vec!["-m", m.as_str()];
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

/// `-t 0` is the model's own argmax: penalties apply only when given.
#[test]
fn greedy_is_the_plain_argmax_unless_penalties_are_given() {
    let plain = gen(&["-p", PROMPT, "-t", "0", "-n", "48", "--ignore-eos"], b"");
    let zero = gen(
        &[
            "-p",
            PROMPT,
            "-t",
            "0",
            "-n",
            "48",
            "--ignore-eos",
            "--presence-penalty",
            "0",
            "--frequency-penalty",
            "0",
        ],
        b"",
    );
    assert_eq!(
        (plain.text(), zero.text()),
        (GREEDY.to_string(), GREEDY.to_string())
    );
    let penalised = gen(
        &[
            "-p",
            PROMPT,
            "-t",
            "0",
            "-n",
            "48",
            "--ignore-eos",
            "--presence-penalty",
            "2",
        ],
        b"",
    );
    assert_ne!(penalised.text(), GREEDY);
}

#[test]
fn tiny_model_greedy_and_end_of_text() {
    // The tiny model predicts byte 0 after every character (it was trained so).
    let g = golden("tiny-rwkv6-1m");
    let prompt: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let mut args = vec!["-m", m.as_str(), "-n", "10", "--ignore-eos"];
    args.extend_from_slice(&GREEDY_ARGS);
    args.push("-q");
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

/// `--lines`: one record per line. In text format an answer ends at its first newline
/// (the record separator); `-0` and `--separator` keep newlines and end records otherwise.
#[test]
fn lines_answers_each_line_in_order() {
    let prompts = "What light\nIt is the east\nAnd Juliet is\n";
    let r = gen(&["--lines", "-t", "0", "-n", "24"], prompts.as_bytes());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let one = |p: &str| gen(&["-p", p, "-t", "0", "-n", "24"], b"").text();
    let cut = |s: String| s.split('\n').next().unwrap().to_string();
    let want: Vec<String> = prompts.lines().map(|p| cut(one(p))).collect();
    assert_eq!(r.text(), format!("{}\n", want.join("\n")));
    assert_eq!(r.text().lines().count(), 3);
    // NUL-separated, answers whole
    let r = gen(
        &["--lines", "-t", "0", "-n", "24", "-0"],
        prompts.as_bytes(),
    );
    let recs: Vec<&[u8]> = r.stdout.split(|&b| b == 0).collect();
    assert_eq!(recs.len(), 4);
    let whole: Vec<String> = prompts.lines().map(one).collect();
    for (got, want) in recs.iter().zip(&whole) {
        assert_eq!(String::from_utf8_lossy(got), *want);
    }
    // a chosen separator, which also ends an answer
    let r = gen(
        &["--lines", "-t", "0", "-n", "24", "--separator", "\\n--\\n"],
        b"What light\n",
    );
    assert_eq!(r.text(), format!("{}\n--\n", whole[0]));
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
            "-0",
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
    // Blocks until the first answer (5 bytes and a NUL) while stdin is still open.
    std::io::Read::read_exact(&mut out, &mut answer).unwrap();
    assert_eq!(answer[5], 0);
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

/// The turn format: a system turn once before the first user turn, blank lines in a turn
/// made single newlines, and the think cue of the G1 models; each chat reply is the
/// model's answer to the same text given as one prompt (penalties as chat sets them).
#[test]
fn chat_turns_are_the_trained_format() {
    let flags = [
        "-t",
        "0",
        "-n",
        "12",
        "--presence-penalty",
        "0",
        "--frequency-penalty",
        "0",
    ];
    let as_prompt = |p: &str| {
        let r = gen(&[&flags[..], &["-p", p, "--stop", "\n\n"]].concat(), b"");
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.text()
    };
    let chat = |extra: &[&str]| {
        let r = gen(&[&flags[..], &["--chat"], extra].concat(), b"ROMEO:\n");
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.text()
    };
    let system = "Speak\n\n\nas a king.";
    let want = as_prompt("System: Speak\nas a king.\n\nUser: ROMEO:\n\nAssistant:");
    assert_eq!(chat(&["--system", system]), format!("{want}\n\n"));
    let dir = temp_dir("chat-system");
    let file = dir.join("system.txt");
    std::fs::write(&file, format!("{system}\n")).unwrap();
    assert_eq!(
        chat(&["--system-file", file.to_str().unwrap()]),
        format!("{want}\n\n")
    );
    let thought = as_prompt("User: ROMEO:\n\nAssistant: <think");
    assert_eq!(chat(&["--think"]), format!("<think{thought}\n\n"));
    let answer = thought
        .split_once("</think>")
        .map_or("", |(_, a)| a.trim_start());
    assert_eq!(chat(&["--think", "hide"]), format!("{answer}\n\n"));
    let r = gen(&["--system", "x", "-p", "y"], b"");
    assert_usage(
        &r,
        &["--system, --system-file and --think shape --chat's turns"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
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
    let d256 = model_arg("rand-rwkv6-d256-fp16.safetensors");
    // Sampled ids above 255 have no byte form: said, not a crash.
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &d256,
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
    let r = run("rwkv-gen", &["-m", &d256, "-p", "hi"], b"");
    assert_fails(&r, 1, &["--tokenizer"]);
}

/// Usage errors print clap's whole message: the missing arguments, the similar flag, the
/// allowed values; exit 2.
#[test]
fn usage_errors_keep_claps_detail() {
    assert_usage(
        &gen(&["-p", "x", "--temprature", "0"], b""),
        &["--temperature"],
    );
    assert_usage(
        &gen(&["-p", "x", "--format", "json"], b""),
        &["text", "jsonl"],
    );
    assert_usage(
        &gen(&["-p", "x", "--temperature", "hot"], b""),
        &["--temperature", "hot"],
    );
    assert_usage(&gen(&["-p", "x", "--top-p", "1.5"], b""), &["top-p", "1.5"]);
    assert_usage(
        &gen(&["-p", "x", "--precision", "f16"], b""),
        &["--precision", "f16"],
    );
    let r = run("rwkv-state", &["diff", "a.state"], b"");
    assert_usage(&r, &["<B>"]);
}

/// As with ripgrep and fd, a repeated flag takes its last value (shell aliases rely on it).
#[test]
fn the_last_repeat_of_a_flag_wins() {
    let r = gen(
        &["-p", PROMPT, "-t", "1", "-t", "0", "-n", "9", "-n", "5"],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.text(), &GREEDY[..5]);
}

/// Things that would fail late are checked before any work, and named in our words.
#[test]
fn checks_come_first_and_name_the_thing() {
    let dir = temp_dir("gen-early");
    // a folder given as a model
    let r = run("rwkv-gen", &["-m", "models", "-p", "x"], b"");
    assert_fails(&r, 1, &["models", "is a folder"]);
    // a text file given as a state
    let txt = dir.join("notes.txt");
    std::fs::write(&txt, "hello").unwrap();
    let r = gen(&["--state", txt.to_str().unwrap(), "-p", "x"], b"");
    assert_fails(
        &r,
        1,
        &[
            "notes.txt",
            "neither a state file",
            "nor a state-tuning file",
        ],
    );
    // an unwritable --save-state, before generating anything
    let r = gen(
        &[
            "-p",
            "x",
            "-n",
            "5",
            "--save-state",
            "/nonexistent/dir/x.state",
        ],
        b"",
    );
    assert_fails(&r, 1, &["/nonexistent/dir/x.state"]);
    assert!(r.stdout.is_empty());
    // a tokenizer the model cannot read, at load
    let r = gen(&["--tokenizer", "world", "-p", "x"], b"");
    assert_fails(&r, 1, &["world tokenizer", "vocab of 65536", "256"]);
}

/// Each token's bytes reach a pipe as soon as they are complete, not when a buffer fills.
#[test]
fn tokens_reach_a_pipe_as_they_come() {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-gen"))
        .args([
            "-m",
            &model_arg(SHAKESPEARE),
            "-p",
            PROMPT,
            "-t",
            "0",
            "-n",
            "100000",
        ])
        .args(["--ignore-eos"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    // A watchdog: if the bytes wait for a full buffer (64 KiB, minutes of generation), the
    // read fails instead of hanging.
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(60));
        // SAFETY: signalling our own child (gone already, if the test passed).
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut first = [0u8; 20];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    assert_eq!(&first, &GREEDY.as_bytes()[..20]);
    let _ = child.kill();
    let _ = child.wait();
    drop(watchdog);
}

/// A stream's tokens depend on its own prompt and seed only: whatever the batch, the same
/// records, sampled or greedy (each the bits of that stream alone).
#[test]
fn batched_lines_equal_one_at_a_time() {
    let prompts = "What light\nIt is the east\nAnd Juliet is the sun\nArise, fair sun\nROMEO:\n";
    for extra in [&["--seed", "7"][..], &["-t", "0"][..]] {
        let mut outs = Vec::new();
        for b in ["1", "2", "3", "16"] {
            let mut args = vec!["--lines", "-0", "-n", "24", "--batch", b, "--ignore-eos"];
            args.extend_from_slice(extra);
            let r = gen(&args, prompts.as_bytes());
            assert_eq!(r.code, 0, "{}", r.stderr);
            outs.push(r.stdout);
        }
        assert!(outs.iter().all(|o| o == &outs[0]), "{extra:?}");
        // and each record is that prompt run alone
        let recs: Vec<&[u8]> = outs[0].split(|&b| b == 0).collect();
        for (p, rec) in prompts.lines().zip(recs) {
            let mut args = vec!["-p", p, "-n", "24", "--ignore-eos"];
            args.extend_from_slice(extra);
            assert_eq!(gen(&args, b"").stdout, rec, "{p}");
        }
    }
}

/// `--jsonl`: a result per request in order, fields defaulting to the flags, the id copied;
/// a bad request gets an error object on its line, the others go on, and the exit status
/// says some failed.
#[test]
fn jsonl_requests_answer_in_order() {
    let dir = temp_dir("gen-jsonl");
    let st = dir.join("romeo.state");
    let r = run(
        "rwkv-state",
        &[
            "feed",
            "-m",
            &model_arg(SHAKESPEARE),
            "-o",
            st.to_str().unwrap(),
        ],
        b"ROMEO:\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let other = dir.join("other.state");
    let d256 = model_arg("rand-rwkv6-d256-fp16.safetensors");
    let r = run(
        "rwkv-state",
        &["feed", "-m", &d256, "--ids", "-o", other.to_str().unwrap()],
        b"1 2",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let saved = dir.join("saved.state");
    let requests = format!(
        "{}\n{}\n{}\n{}\n{}\n{}\n",
        r#"{"id": "a", "prompt": "ROMEO:\nWhat light", "max_tokens": 9, "temperature": 0}"#,
        r#"{"id": 2, "prompt": 7}"#,
        r#"{"prompt": "What light", "state": "STATE", "temperature": 0, "max_tokens": 5, "save_state": "SAVED"}"#,
        r#"{"id": "x", "prompt": "a", "state": "OTHER"}"#,
        r#"{"ids": [87, 104, 97, 116], "max_tokens": 3, "temperature": 0, "stop": ["x"]}"#,
        r#"{"prompt": "b", "colour": 1}"#,
    )
    .replace("STATE", st.to_str().unwrap())
    .replace("SAVED", saved.to_str().unwrap())
    .replace("OTHER", other.to_str().unwrap());
    for batch in ["1", "4"] {
        let r = gen(
            &[
                "--jsonl",
                "--batch",
                batch,
                "-n",
                "50",
                "--top-logprobs",
                "2",
            ],
            requests.as_bytes(),
        );
        assert_eq!(r.code, 1, "{}", r.stderr);
        let recs = r.json();
        assert_eq!(recs.len(), 6);
        assert_eq!(recs[0]["id"], "a");
        assert_eq!(recs[0]["text"], &GREEDY[..9]);
        assert_eq!(recs[0]["completion_tokens"], 9);
        assert_eq!(recs[0]["tokens"].as_array().unwrap().len(), 9);
        assert_eq!(recs[0]["finish_reason"], "length");
        assert_eq!(recs[0]["prompt_tokens"], PROMPT.len());
        assert_eq!(
            recs[0]["logprobs"][0]["top_logprobs"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(recs[1]["id"], 2);
        assert!(
            recs[1]["error"].as_str().unwrap().contains("`prompt` is 7"),
            "{}",
            recs[1]
        );
        // from a state: the same as the whole prompt from zero
        assert_eq!(recs[2]["text"], &GREEDY[..5]);
        assert!(recs[2].get("id").is_none());
        assert!(
            recs[3]["error"]
                .as_str()
                .unwrap()
                .contains("another model shape"),
            "{}",
            recs[3]
        );
        assert_eq!(recs[3]["id"], "x");
        assert_eq!(recs[4]["completion_tokens"], 3);
        assert!(recs[5]["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"));
        let sf = rwkv::state_file::StateFile::load(&saved).unwrap();
        assert_eq!(sf.meta.tokens, 7 + 10 + 5);
    }
}

/// Per-token records carry the token's bytes, which rebuild the text exactly.
#[test]
fn per_token_records_carry_bytes() {
    let r = gen(
        &["-p", PROMPT, "-n", "30", "--seed", "3", "--format", "jsonl"],
        b"",
    );
    let recs = r.json();
    let (tokens, fin) = recs.split_at(recs.len() - 1);
    let bytes: Vec<u8> = tokens
        .iter()
        .flat_map(|t| {
            t["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8)
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&bytes),
        fin[0]["text"].as_str().unwrap()
    );
}

/// When the model ends the text at once, stderr says so (unless -q).
#[test]
fn an_answer_that_ends_at_once_is_explained() {
    // The tiny model predicts byte 0, its end of text, after every character.
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let r = run("rwkv-gen", &["-m", &m, "-p", "a", "-t", "0"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.is_empty());
    assert!(
        r.stderr.contains("ended the text at once") && r.stderr.contains("--ignore-eos"),
        "{}",
        r.stderr
    );
    let r = run("rwkv-gen", &["-m", &m, "-p", "a", "-t", "0", "-q"], b"");
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn world_model_generates_text_from_text() {
    let Some(world) = fixture("rand-rwkv6-world-d64-bf16.safetensors") else {
        return skip("rand-rwkv6-world-d64-bf16.safetensors");
    };
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            world.to_str().unwrap(),
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
