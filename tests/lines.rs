//! `rwkv-gen --lines` and `--jsonl` through the library: the records, their order, the
//! failures a run counts and reports, the same bytes whatever the batch.

mod common;

use clap::Parser;
use rwkv::cli::gen::Args;
use rwkv::cli::Line;
use rwkv::generate::lines::{Failed, Sinks, Tally};
use rwkv::model::Precision;
use rwkv::state_file;

/// Run `rwkv-gen ARGS` over `input` lines: the bytes written, the notes, the tally.
fn run(flags: &[&str], input: Vec<Line>) -> (Vec<u8>, Vec<String>, Tally) {
    let model = common::model_path("tiny-rwkv6-1m.safetensors");
    let argv = [
        "rwkv-gen",
        "-m",
        model.to_str().unwrap(),
        "-t",
        "0",
        "--ignore-eos",
    ];
    let args = Args::try_parse_from(argv.iter().chain(flags)).unwrap();
    args.check().unwrap();
    let (model, tok) = args.model.load(Precision::F32).unwrap();
    let lines = args.lines(7, model.cfg.vocab, None);
    let start = state_file::start_for(None, &model, false).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    for l in input {
        tx.send(l).unwrap();
    }
    drop(tx);
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    let sinks = Sinks {
        write: &mut |b| {
            out.extend_from_slice(b);
            Ok(())
        },
        note: &mut |m| notes.push(m),
    };
    let tally = match lines.run(&model, &tok, &start, &rx, sinks, &|| false) {
        Ok(t) => t,
        Err(Failed::Input { msg, .. }) => panic!("{msg}"),
        Err(Failed::Output(e)) => panic!("{e}"),
    };
    (out, notes, tally)
}

fn text(s: &str) -> Line {
    Line::Text(s.as_bytes().to_vec())
}

#[test]
fn text_lines_answer_in_order_and_a_bad_line_is_counted() {
    let input = || vec![text("ROMEO:"), Line::TooLong(20), text("JULIET:")];
    let flags = [
        "--lines",
        "-n",
        "6",
        "--max-line-bytes",
        "8",
        "--separator",
        "|",
    ];
    let (one, notes, tally) = run(&[&flags[..], &["--batch", "1"]].concat(), input());
    let (two, _, _) = run(&[&flags[..], &["--batch", "2"]].concat(), input());
    assert_eq!(one, two, "the bytes do not depend on --batch");
    let records: Vec<&[u8]> = one.split(|&b| b == b'|').collect();
    assert_eq!(
        records.len(),
        4,
        "three records, each ended by the separator"
    );
    assert!(records[1].is_empty(), "the long line's record is empty");
    assert!(!records[0].is_empty() && !records[2].is_empty());
    assert_eq!(
        tally,
        Tally {
            answered: 2,
            failed: 1,
            generated: tally.generated,
            cut: 0,
        }
    );
    assert!(tally.generated <= 12);
    assert_eq!(
        notes,
        vec!["line 2: 20 bytes, longer than --max-line-bytes (8)"]
    );
}

#[test]
fn requests_carry_their_ids_and_errors_in_order() {
    let input = vec![
        text(r#"{"prompt": "ROMEO:", "max_tokens": 3, "id": "a"}"#),
        text("{not json"),
        text(r#"{"ids": [1, 2], "max_tokens": 2, "id": 9}"#),
    ];
    let (out, notes, tally) = run(&["--jsonl", "--batch", "4"], input);
    let recs: Vec<serde_json::Value> = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["id"], "a");
    assert_eq!(recs[0]["completion_tokens"], 3);
    assert!(recs[1]["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid JSON"));
    assert_eq!(recs[2]["id"], 9);
    assert_eq!(recs[2]["prompt_tokens"], 2);
    assert!(notes.is_empty(), "a request's error is on its record");
    assert_eq!((tally.answered, tally.failed), (2, 1));
}

#[test]
fn flag_rules_are_usage_errors() {
    let bad = [
        &["--lines", "--save-state", "s"][..],
        &["--state", "-"][..],
        &["--top-logprobs", "2"][..],
    ];
    for flags in bad {
        let argv = ["rwkv-gen", "-m", "m"].iter().chain(flags);
        let e = Args::try_parse_from(argv).unwrap().check().unwrap_err();
        assert_eq!(e.code, rwkv::cli::exit::USAGE, "{flags:?}: {}", e.msg);
    }
    let ok = Args::try_parse_from(["rwkv-gen", "-m", "m", "--jsonl", "--top-logprobs", "2"]);
    assert!(ok.unwrap().check().is_ok());
}

#[test]
fn an_answer_that_starts_on_a_new_line_is_not_empty() {
    // the Shakespeare model answers `ROMEO:` with a newline first, as in a play
    let m = common::model_arg("shakespeare-rwkv6.safetensors");
    let r = common::run(
        "rwkv-gen",
        &["-m", &m, "--lines", "-t", "0", "-n", "30"],
        b"ROMEO:\nJULIET:\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out = r.text();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "a record a prompt: {out:?}");
    assert!(lines.iter().all(|l| !l.trim().is_empty()), "{out:?}");
    // with -0 every newline is kept, the leading one too
    let r = common::run(
        "rwkv-gen",
        &["-m", &m, "--lines", "-0", "-t", "0", "-n", "5"],
        b"ROMEO:\n",
    );
    assert!(r.stdout.starts_with(b"\n"), "{:?}", r.text());
}

/// Requests of one run that read or write each other's state files: the later one is
/// refused, the same at every batch (at --batch 16 a request once read a state an earlier
/// one had not yet saved); a FIFO as a request's state is refused, not waited on.
#[test]
fn requests_that_depend_on_each_others_states_are_refused_at_any_batch() {
    let dir = common::temp_dir("lines-claims");
    let s = dir.join("s.state").to_string_lossy().into_owned();
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let req = |fields: &str| text(&format!(r#"{{"ids": [1], "max_tokens": 2, {fields}}}"#));
    let input = || {
        vec![
            req(&format!(r#""id": 1, "save_state": "{s}""#)),
            req(&format!(r#""id": 2, "save_state": "{s}""#)),
            req(&format!(r#""id": 3, "state": "{s}""#)),
            req(&format!(r#""id": 4, "state": "{}""#, fifo.display())),
            req(r#""id": 5"#),
        ]
    };
    let mut outs = Vec::new();
    for batch in ["1", "16"] {
        let _ = std::fs::remove_file(&s);
        let (out, _, tally) = run(&["--jsonl", "--batch", batch], input());
        assert_eq!((tally.answered, tally.failed), (2, 3), "--batch {batch}");
        outs.push((out, std::fs::read(&s).unwrap()));
    }
    assert_eq!(
        outs[0], outs[1],
        "records and saved state the same at every batch"
    );
    let recs: Vec<serde_json::Value> = outs[0]
        .0
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    let err = |i: usize| recs[i]["error"].as_str().unwrap_or("").to_string();
    assert_eq!(err(0), "");
    assert!(err(1).contains("`save_state`") && err(1).contains("earlier request"));
    assert!(
        err(2).contains("`state`") && err(2).contains("an earlier request of this run saves it")
    );
    assert!(err(3).contains("not a regular file"), "{}", err(3));
    assert_eq!(recs[4]["id"], 5);
    std::fs::remove_dir_all(&dir).unwrap();
}
