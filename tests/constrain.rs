//! Answers held to a JSON Schema, a Lark grammar or a regex (`rwkv-gen --json-schema`,
//! `--grammar`, `--regex`, `--json`): every answer parses and validates, on random-weight
//! models whose preferences mean nothing, so that the constraint alone makes it valid;
//! the same in a batch as alone; hostile constraints refused in one line, in bounded time.

mod common;
use common::*;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The schemas in `tests/data/schemas`: objects, arrays, enums, required and optional
/// properties, nesting, references, numbers with bounds, strings with lengths, patterns
/// and formats.
fn schemas() -> Vec<(String, PathBuf)> {
    let dir = root().join("tests/data/schemas");
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    v.sort();
    v
}

/// The models: the World-vocabulary ones (65536 tokens, some not UTF-8 alone) when
/// `../shared` is present, and the byte-level demo model always.
fn models() -> Vec<String> {
    let mut m = Vec::new();
    for world in [
        "rand-rwkv7-world-d64-bf16.safetensors",
        "rand-rwkv6-world-d64-bf16.safetensors",
    ] {
        match fixture(world) {
            Some(p) => m.push(p.to_string_lossy().into_owned()),
            None => skip(world),
        }
    }
    m.push(model_arg("shakespeare-rwkv6.safetensors"));
    m
}

fn gen(args: &[&str], stdin: &[u8]) -> Run {
    run("rwkv-gen", args, stdin)
}

/// Four prompts, one answer a line, held to `flag value`, each complete within -n.
fn answers(model: &str, flag: &[&str], sampling: &[&str], batch: &str) -> Vec<String> {
    let (lines, stderr) = some_cut(model, flag, sampling, batch);
    assert!(
        !stderr.contains("warning"),
        "{flag:?} {sampling:?}: {stderr}"
    );
    lines
}

/// [`answers`], some perhaps cut off by -n (the warning in the stderr returned).
fn some_cut(model: &str, flag: &[&str], sampling: &[&str], batch: &str) -> (Vec<String>, String) {
    let base = ["-m", model, "--lines", "--batch", batch, "-n", "400"];
    let args = [&base[..], flag, sampling].concat();
    let r = gen(&args, b"Give me JSON:\nAnswer\n{\"\nOnce upon a time\n");
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    let out = String::from_utf8(r.stdout).expect("answers are UTF-8");
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 4, "{args:?}: {out:?}");
    (lines, r.stderr)
}

const SAMPLINGS: [&[&str]; 4] = [
    &["-t", "0"],
    &["-t", "1", "--top-p", "1", "--seed", "1"],
    &["-t", "1", "--top-p", "1", "--seed", "2"],
    &["-t", "1.5", "--top-p", "1", "--seed", "3"],
];

#[test]
fn every_answer_validates_against_its_schema() {
    let all = schemas();
    assert!(all.len() >= 20, "{} schemas", all.len());
    for model in models() {
        for (name, path) in &all {
            let schema: serde_json::Value =
                serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let validator = jsonschema::validator_for(&schema).unwrap();
            let flag = ["--json-schema", path.to_str().unwrap()];
            for sampling in SAMPLINGS {
                // A number's digits are unbounded: the trained model may repeat one until
                // -n, and the number so far still validates.
                let (lines, stderr) = some_cut(&model, &flag, sampling, "4");
                let unbounded = name.starts_with("num_");
                assert!(unbounded || !stderr.contains("warning"), "{name}: {stderr}");
                for line in lines {
                    let v: serde_json::Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("{name} {sampling:?}: {e}: {line:?}"));
                    assert!(validator.is_valid(&v), "{name} {sampling:?}: {line}");
                }
            }
        }
    }
}

/// `--json`: an object. On random weights its keys and strings are unbounded, so -n cuts
/// the answers off (with the warning); what is written is an object's start, every byte
/// of it valid UTF-8.
#[test]
fn json_gives_objects() {
    for m in models() {
        for sampling in SAMPLINGS {
            let args = [&["-m", m.as_str(), "--json", "-n", "60"][..], sampling].concat();
            let r = gen(&args, b"{");
            assert_eq!(r.code, 0, "{}", r.stderr);
            let text = String::from_utf8(r.stdout.clone()).expect("UTF-8");
            assert!(text.starts_with('{'), "{text}");
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(v) => assert!(v.is_object(), "{v}"),
                Err(_) => assert!(r.stderr.contains("incomplete"), "{text:?}: {}", r.stderr),
            }
        }
    }
}

#[test]
fn regexes_and_grammars_hold() {
    let dir = temp_dir("constrain-grammar");
    let csv = dir.join("row.lark");
    std::fs::write(
        &csv,
        "start: field (\",\" field)~2\nfield: WORD | NUMBER\nWORD: /[a-z]{1,6}/\nNUMBER: /[0-9]{1,3}/\n",
    )
    .unwrap();
    let csv_s = csv.to_string_lossy().into_owned();
    let cases: [(&[&str], &str); 4] = [
        (&["--regex", "(yes|no)"], "^(yes|no)$"),
        (&["--regex", "[0-9]{3}-[0-9]{4}"], "^[0-9]{3}-[0-9]{4}$"),
        // a character of several bytes: split across tokens, never invalid
        (&["--regex", "[가-힣é]{2,4}"], "^[가-힣é]{2,4}$"),
        (
            &["--grammar", &csv_s],
            "^([a-z]{1,6}|[0-9]{1,3})(,([a-z]{1,6}|[0-9]{1,3})){2}$",
        ),
    ];
    for model in models() {
        for (flag, pattern) in &cases {
            let re = regex_lite(pattern);
            for sampling in SAMPLINGS {
                for line in answers(&model, flag, sampling, "4") {
                    assert!(re(&line), "{flag:?} {sampling:?}: {line:?}");
                }
            }
        }
    }
}

/// A pattern check without a regex crate: the patterns above, as Rust closures.
fn regex_lite(pattern: &str) -> Box<dyn Fn(&str) -> bool> {
    let word = |s: &str| (1..=6).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_lowercase());
    let num = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    match pattern {
        "^(yes|no)$" => Box::new(|s| s == "yes" || s == "no"),
        "^[0-9]{3}-[0-9]{4}$" => Box::new(|s| {
            let b = s.as_bytes();
            b.len() == 8
                && b[3] == b'-'
                && b.iter()
                    .enumerate()
                    .all(|(i, c)| i == 3 || c.is_ascii_digit())
        }),
        "^[가-힣é]{2,4}$" => Box::new(|s| {
            let n = s.chars().count();
            (2..=4).contains(&n) && s.chars().all(|c| c == 'é' || ('가'..='힣').contains(&c))
        }),
        _ => Box::new(move |s| {
            let f: Vec<&str> = s.split(',').collect();
            f.len() == 3 && f.iter().all(|x| word(x) || num(x))
        }),
    }
}

/// A stream's answer under a constraint is the same in a batch as alone.
#[test]
fn a_constrained_answer_is_the_same_in_a_batch() {
    let schema = root().join("tests/data/schemas/person.json");
    let flag = ["--json-schema", schema.to_str().unwrap()];
    for model in models() {
        for sampling in &SAMPLINGS[1..3] {
            let alone = answers(&model, &flag, sampling, "1");
            assert_eq!(answers(&model, &flag, sampling, "4"), alone, "{sampling:?}");
        }
    }
}

/// -n before the constraint is complete: the answer so far, a warning on stderr, exit 0;
/// with --strict, exit 1.
#[test]
fn a_cut_off_answer_warns_and_strict_fails() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let m = m.as_str();
    let schema = root().join("tests/data/schemas/person.json");
    let s = schema.to_str().unwrap();
    let r = gen(&["-m", m, "--json-schema", s, "-n", "3", "-t", "0"], b"x");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // three byte tokens of the object so far
    assert_eq!(r.stdout.len(), 3, "{}", r.text());
    assert!(r.text().starts_with("{\""), "{}", r.text());
    assert!(
        r.stderr
            .contains("reached -n 3 before the constraint was complete"),
        "{}",
        r.stderr
    );
    let r = gen(&["-m", m, "--json-schema", s, "-n", "3", "--strict"], b"x");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    // --lines: one warning for all the answers cut off
    let lines = ["-m", m, "--lines", "--json-schema", s, "-n", "3"];
    let r = gen(&lines, b"a\nb\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.text().lines().count(), 2, "{}", r.text());
    assert!(r.stderr.contains("2 answers reached -n 3"), "{}", r.stderr);
    let r = gen(&[&lines[..], &["--strict"]].concat(), b"a\nb\n");
    assert_eq!(r.code, 1, "{}", r.stderr);
    // complete within -n: no warning, exit 0 with --strict
    let r = gen(&["-m", m, "--regex", "(yes|no)", "--strict"], b"x");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.text() == "yes" || r.text() == "no", "{}", r.text());
}

/// Constraints that cannot be read or compiled: a one-line usage error naming the flag's
/// file or pattern, exit 2, in bounded time.
#[test]
fn hostile_constraints_are_refused_in_one_line() {
    let dir = temp_dir("constrain-hostile");
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let m = m.as_str();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let huge = format!(
        "{{\"enum\": [{}]}}",
        vec!["\"abcdefghij\""; 120_000].join(",")
    );
    let recursive = r##"{"$ref": "#/$defs/a", "$defs": {"a": {"$ref": "#/$defs/a"}}}"##;
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--json-schema".into(), write("bad.json", "{not json")],
            "not JSON",
        ),
        (
            vec![
                "--json-schema".into(),
                dir.join("absent.json").to_string_lossy().into(),
            ],
            "absent.json",
        ),
        (
            vec!["--json-schema".into(), write("huge.json", &huge)],
            "huge.json",
        ),
        (
            vec!["--json-schema".into(), write("loop.json", recursive)],
            "loop.json",
        ),
        (
            vec![
                "--json-schema".into(),
                write(
                    "unsat.json",
                    r#"{"type": "integer", "minimum": 5, "maximum": 1}"#,
                ),
            ],
            "unsat.json",
        ),
        (
            vec!["--grammar".into(), write("bad.lark", "start: (")],
            "bad.lark",
        ),
        (vec!["--regex".into(), "(a".into()], "--regex"),
    ];
    for (flag, names) in cases {
        let mut args = vec!["-m", m, "-n", "5"];
        args.extend(flag.iter().map(String::as_str));
        let t0 = Instant::now();
        let r = gen(&args, b"x");
        let took = t0.elapsed();
        assert_eq!(r.code, 2, "{flag:?}: {}", r.stderr);
        assert_eq!(
            r.stderr.trim_end().lines().count(),
            1,
            "{flag:?}: {}",
            r.stderr
        );
        assert!(r.stderr.contains(names), "{flag:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
        assert!(took < Duration::from_secs(5), "{flag:?}: {took:?}");
    }
    // Every token the constraint allows banned: an error, not an answer that looks complete
    let r = gen(&["-m", m, "--regex", "ab", "--ban-token", "97"], b"x");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.is_empty() && r.stderr.contains("--ban-token"),
        "{}",
        r.stderr
    );
    // Patterns whose automata explode are built lazily, a state at a time: they run, in
    // bounded time, and hold.
    for rx in ["(a|b)*a(a|b){40}", "((a|b)*c{1,1000}){1,1000}", "(x+x+)+y"] {
        let t0 = Instant::now();
        let r = gen(&["-m", m, "--regex", rx, "-n", "60", "--seed", "1"], b"x");
        assert_eq!(r.code, 0, "{rx}: {}", r.stderr);
        let ok = |b: &u8| b"abcxy".contains(b);
        assert!(
            !r.stdout.is_empty() && r.stdout.iter().all(ok),
            "{rx}: {}",
            r.text()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{rx}: {:?}",
            t0.elapsed()
        );
    }
}

/// `--jsonl`: each request's own constraint (`response_format`, `grammar`, `regex`), several
/// in one batch; a constraint that cannot be compiled is an error on its own result, and
/// the others go on (exit 1).
#[test]
fn requests_carry_their_own_constraints() {
    let Some(world) = fixture("rand-rwkv7-world-d64-bf16.safetensors") else {
        return skip("rand-rwkv7-world-d64-bf16.safetensors");
    };
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"a": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["a", "n"],
        "additionalProperties": false
    });
    let reqs = [
        serde_json::json!({"id": 1, "prompt": "a", "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}),
        serde_json::json!({"id": 2, "prompt": "b", "regex": "(yes|no)"}),
        serde_json::json!({"id": 3, "prompt": "c", "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "integer", "minimum": 5, "maximum": 1}}}}),
        serde_json::json!({"id": 4, "prompt": "d", "grammar": "start: \"x\" | \"y\""}),
        serde_json::json!({"id": 5, "prompt": "e", "regex": "[0-9]{2}", "grammar": "start: \"x\""}),
        serde_json::json!({"id": 6, "prompt": "f", "max_tokens": 5}),
    ];
    let input: String = reqs.iter().map(|r| format!("{r}\n")).collect();
    let m = world.to_string_lossy().into_owned();
    let validator = jsonschema::validator_for(&schema).unwrap();
    for batch in ["1", "4"] {
        let r = gen(
            &["-m", &m, "--jsonl", "--batch", batch, "-n", "50"],
            input.as_bytes(),
        );
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert!(r.stderr.contains("2 of 6 requests failed"), "{}", r.stderr);
        let out = r.json();
        assert_eq!(out.len(), 6);
        let text = |i: usize| out[i]["text"].as_str().unwrap().to_string();
        let v: serde_json::Value = serde_json::from_str(&text(0)).unwrap();
        assert!(validator.is_valid(&v), "{v}");
        assert!(["yes", "no"].contains(&text(1).as_str()), "{}", text(1));
        assert!(
            out[2]["error"].as_str().unwrap().contains("Unsatisfiable"),
            "{}",
            out[2]
        );
        assert!(["x", "y"].contains(&text(3).as_str()), "{}", text(3));
        assert!(
            out[4]["error"].as_str().unwrap().contains("one of"),
            "{}",
            out[4]
        );
        for i in [0, 1, 3] {
            assert_eq!(out[i]["finish_reason"], "stop", "{}", out[i]);
        }
        assert_eq!(out[5]["finish_reason"], "length");
    }
}

/// A constrained answer after a saved prompt: the state file as before, the answer held.
#[test]
fn a_constrained_answer_follows_a_saved_state() {
    let dir = temp_dir("constrain-state");
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let st = dir.join("romeo.state");
    let st_s = st.to_string_lossy().into_owned();
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-p", "ROMEO:\nIs it", "-o", &st_s],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let answer = |args: &[&str]| {
        let r = gen(&[&["-m", m.as_str(), "-t", "0"][..], args].concat(), b"");
        assert_eq!(r.code, 0, "{}", r.stderr);
        r.text()
    };
    let resumed = answer(&[
        "--state",
        &st_s,
        "-p",
        " day?",
        "--regex",
        "(yes|no|ay|nay)",
    ]);
    let whole = answer(&["-p", "ROMEO:\nIs it day?", "--regex", "(yes|no|ay|nay)"]);
    assert_eq!(resumed, whole);
    assert!(
        ["yes", "no", "ay", "nay"].contains(&whole.as_str()),
        "{whole}"
    );
}
