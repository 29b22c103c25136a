//! State files: round trips, state-tuning import, refusals, atomic writes.

mod common;
use common::*;
use rwkv::state_file::StateFile;
use rwkv::{Logits, Model};
use std::path::Path;

const SHAKESPEARE: &str = "shakespeare-rwkv6.safetensors";

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn assert_states_equal(a: &rwkv::State, b: &rwkv::State, tol: f32) {
    for (x, y) in a.layers().unwrap().iter().zip(b.layers().unwrap()) {
        assert!(max_diff(&x.att_shift, &y.att_shift) <= tol);
        assert!(max_diff(&x.wkv, &y.wkv) <= tol);
        assert!(max_diff(&x.ffn_shift, &y.ffn_shift) <= tol);
    }
}

#[test]
fn save_load_continue_equals_uninterrupted() {
    let m = Model::load(&model_path(SHAKESPEARE)).unwrap();
    let a: Vec<u32> = b"ROMEO:\nWhat light".iter().map(|&b| b as u32).collect();
    let b: Vec<u32> = b" through yonder window"
        .iter()
        .map(|&b| b as u32)
        .collect();
    let mut whole = m.new_state();
    let live_a = m.forward(&a, &mut whole, Logits::Last).unwrap();
    let st = whole.try_clone().unwrap();
    let logits_ab = m.forward(&b, &mut whole, Logits::Last).unwrap();

    let dir = temp_dir("state-roundtrip");
    let path = dir.join("a.state");
    let sf = StateFile::of(&m, &st, Some(live_a.clone()), a.len() as u64, "bytes").unwrap();
    sf.save(&path).unwrap();
    let back = StateFile::load(&path).unwrap();
    assert!(back == sf, "the state survives the file exactly");
    assert!(
        back.logits.as_deref() == Some(&live_a[..]),
        "the saved logits are the live ones"
    );
    let meta = &back.meta;
    assert_eq!(
        (
            meta.tokens,
            meta.fingerprint.as_str(),
            meta.tokenizer.as_str(),
            meta.arch.as_str()
        ),
        (17, m.fingerprint(), "bytes", "rwkv6")
    );
    assert!(back.shape_fits(&m));
    // The same state gives the same bytes, whenever it is written.
    assert_eq!(std::fs::read(&path).unwrap(), back.to_bytes());
    let mut st = back.state().unwrap();
    let got = m.forward(&b, &mut st, Logits::Last).unwrap();
    assert!(max_diff(&got, &logits_ab) <= 1e-6);
    assert_states_equal(&st, &whole, 1e-6);
}

#[test]
fn cli_feed_in_two_steps_equals_one() {
    let m = model_arg(SHAKESPEARE);
    let dir = temp_dir("state-cli-feed");
    let (one, a, ab) = (
        dir.join("one.state"),
        dir.join("a.state"),
        dir.join("ab.state"),
    );
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-o", &s(&one)],
        b"ROMEO:\nWhat light",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // stdout when it is not a terminal, and --state - piping
    let r = run("rwkv-state", &["feed", "-m", &m], b"ROMEO:\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::write(&a, &r.stdout).unwrap();
    let r = run(
        "rwkv-state",
        &[
            "feed",
            "-m",
            &m,
            "--state",
            "-",
            "-p",
            "What light",
            "-o",
            &s(&ab),
        ],
        &r.stdout,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (x, y) = (
        StateFile::load(&one).unwrap(),
        StateFile::load(&ab).unwrap(),
    );
    assert_eq!(y.meta.tokens, 17);
    // f32 sequence products do not depend on the chunking: the same bits
    assert_eq!(x.logits, y.logits);
    assert_eq!(x.values, y.values);
    // diff says so too (exit 0 when equal, 1 when not, as cmp and diff do)
    let r = run("rwkv-state", &["diff", &s(&one), &s(&ab), "--json"], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = r.json();
    assert_eq!(rows.len(), 6 * 3 + 1);
    assert!(rows
        .iter()
        .all(|r| r["max_abs_diff"].as_f64().unwrap() == 0.0));
    let r = run("rwkv-state", &["diff", &s(&a), &s(&ab)], b"");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.text().lines().skip(1).any(|l| !l.contains("0.0000e0")),
        "{}",
        r.text()
    );
    // `-` reads stdin
    let r = run(
        "rwkv-state",
        &["diff", "-", &s(&ab)],
        &std::fs::read(&one).unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run("rwkv-state", &["diff", &s(&a), "/nonexistent/x.state"], b"");
    assert_eq!(r.code, 2, "{}", r.stderr);
    // info, of a file or of stdin
    let r = run("rwkv-state", &["info", &s(&ab), "--json"], b"");
    let info = &r.json()[0];
    let piped = run(
        "rwkv-state",
        &["info", "-", "--json"],
        &std::fs::read(&ab).unwrap(),
    );
    assert_eq!(piped.code, 0, "{}", piped.stderr);
    assert_eq!(piped.json()[0]["layers"], info["layers"]);
    assert_eq!(info["tokens"], 17);
    assert_eq!(info["n_layer"], 6);
    assert_eq!(info["vocab"], 256);
    assert_eq!(info["tokenizer"], "bytes");
    assert_eq!(info["has_logits"], true);
    assert_eq!(info["layers"].as_array().unwrap().len(), 6);
}

#[test]
fn gen_continues_from_a_state_and_saves_in_place() {
    let m = model_arg(SHAKESPEARE);
    let dir = temp_dir("state-gen");
    let st = dir.join("s.state");
    let s = st.to_str().unwrap();
    let greedy = [
        "-t",
        "0",
        "--presence-penalty",
        "0",
        "--frequency-penalty",
        "0",
        "--ignore-eos",
    ];
    let r = run("rwkv-state", &["feed", "-m", &m, "-o", s], b"ROMEO:\n");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut args = vec![
        "-m",
        m.as_str(),
        "--state",
        s,
        "-p",
        "What light",
        "-n",
        "14",
    ];
    args.extend_from_slice(&greedy);
    let r = run("rwkv-gen", &args, b"");
    assert_eq!(r.text(), " is the matter");
    // --save-state onto the --state file itself; an empty prompt samples from the saved
    // logits, so the two halves continue exactly.
    args.extend_from_slice(&["--save-state", s]);
    args[7] = "6";
    let r = run("rwkv-gen", &args, b"");
    assert_eq!((r.code, r.text().as_str()), (0, " is th"), "{}", r.stderr);
    let mut args2 = vec!["-m", m.as_str(), "--state", s, "-p", "", "-n", "8"];
    args2.extend_from_slice(&greedy);
    let r = run("rwkv-gen", &args2, b"");
    assert_eq!(r.text(), "e matter");
    assert_eq!(StateFile::load(&st).unwrap().meta.tokens, 7 + 10 + 6);
}

/// RWKV-6 and RWKV-7 state-tuning files (RWKV-PEFT `.pth`, Ai00 `.st`),
/// imported and fed the golden's tokens, give the official package's outputs started from
/// that state.
#[test]
fn imported_tuning_states_reproduce_the_golden() {
    let dir = temp_dir("state-import");
    for (model, stem, file) in [
        (
            "rand-rwkv6-d256-fp16.safetensors",
            "rand-rwkv6-d256-fp16.state",
            "rand-rwkv6-d256-fp16.state.pth",
        ),
        (
            "rand-rwkv6-d256-fp16.safetensors",
            "rand-rwkv6-d256-fp16.state",
            "rand-rwkv6-d256-fp16.state.ai00.st",
        ),
        (
            "rand-rwkv7-d256-bf16.pth",
            "rand-rwkv7-d256-bf16.state",
            "rand-rwkv7-d256-bf16.state.pth",
        ),
        (
            "rand-rwkv7-d256-bf16.pth",
            "rand-rwkv7-d256-bf16.state",
            "rand-rwkv7-d256-bf16.state.ai00.st",
        ),
    ] {
        let g = golden(stem);
        let m = model_arg(model);
        let ids: Vec<String> = g.tokens.iter().map(|t| t.to_string()).collect();
        let ids = ids.join(" ");
        let out = dir.join(format!("{file}.state"));
        let o = out.to_str().unwrap();
        let r = run(
            "rwkv-state",
            &["import", &model_arg(file), "-m", &m, "-o", o],
            b"",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let fed = dir.join(format!("{file}.fed"));
        let f = fed.to_str().unwrap();
        let feed = [
            "feed",
            "-m",
            &m,
            "--tokenizer",
            "bytes",
            "--ids",
            "--state",
            o,
            "-o",
            f,
        ];
        let r = run("rwkv-state", &feed, ids.as_bytes());
        assert_eq!(r.code, 0, "{}", r.stderr);
        let sf = StateFile::load(&fed).unwrap();
        assert_logits_close(file, sf.logits.as_ref().unwrap(), &g.seq_logits);
        assert_state_close(file, &sf.state().unwrap(), &g);
        // rwkv-gen takes the tuning file directly.
        let gen = [
            "-m",
            &m,
            "--tokenizer",
            "bytes",
            "--state",
            &model_arg(file),
            "-p",
            "hi",
        ];
        let r = run(
            "rwkv-gen",
            &[&gen[..], &["-n", "0", "--format", "jsonl"]].concat(),
            b"",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.json()[0]["prompt_tokens"], 2);
    }
}

/// The order of RWKV-7's `time_state` matters: the tuned state with each head's matrix
/// transposed (the RWKV-6 `.pth` order) misses the golden by far more than its tolerance.
#[test]
fn rwkv7_tuning_order_is_checked_both_ways() {
    let g = golden("rand-rwkv7-d256-bf16.state");
    let model = rwkv::Model::load(&model_path("rand-rwkv7-d256-bf16.pth")).unwrap();
    let tuned = model_path("rand-rwkv7-d256-bf16.state.pth");
    let state = rwkv::state_file::import_for(&tuned, &model).unwrap();
    let shape = state.shape();
    let (h, n) = (shape.heads, shape.head_size);
    let mut values = state.values().unwrap();
    for l in 0..shape.layers {
        let wkv = &mut values[shape.wkv(l)];
        let orig = wkv.to_vec();
        for (i, x) in wkv.iter_mut().enumerate() {
            let (hh, r, c) = (i / (n * n), i / n % n, i % n);
            *x = orig[hh * n * n + c * n + r];
        }
        assert_eq!(h * n * n, orig.len());
    }
    let feed = |mut s: rwkv::State| model.forward(&g.tokens, &mut s, rwkv::model::Logits::Last);
    let right = feed(state).unwrap();
    assert_logits_close("as stored", &right, &g.seq_logits);
    let wrong = feed(rwkv::State::from_values(shape, values).unwrap()).unwrap();
    let scale = g.seq_logits.iter().fold(0f32, |a, x| a.max(x.abs()));
    let off = wrong
        .iter()
        .zip(&g.seq_logits)
        .fold(0f32, |a, (x, y)| a.max((x - y).abs()));
    assert!(
        off > 1e-2 * scale,
        "transposed: {off} against a largest logit of {scale}"
    );
}

/// A state-tuning file alone does not say whether it is RWKV-6's or RWKV-7's (the same
/// names and shapes): `info` says both, `import` without the model asks for it; with it,
/// an Ai00 `.st` and a RWKV-PEFT `.pth` of the same RWKV-7 state import alike.
#[test]
fn tuning_files_without_a_model_say_what_they_may_be() {
    let file = model_arg("rand-rwkv7-d256-bf16.state.pth");
    let r = run("rwkv-state", &["info", &file], b"");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.text().contains("(rwkv6 or rwkv7)"), "{}", r.text());
    let dir = temp_dir("state-import-alone");
    let o = dir.join("x.state");
    let r = run(
        "rwkv-state",
        &["import", &file, "-o", o.to_str().unwrap()],
        b"",
    );
    assert_fails(
        &r,
        1,
        &[
            "a state-tuning file of rwkv6 or rwkv7",
            "give the model with -m",
        ],
    );
    assert!(!o.exists());
    // an Ai00 file of RWKV-7 and RWKV-PEFT's give the same state, each read in its order
    let m = model_arg("rand-rwkv7-d256-bf16.pth");
    let imported = |file: &str| {
        let out = dir.join(format!("{file}.state"));
        let args = [
            "import",
            &model_arg(file),
            "-m",
            &m,
            "-o",
            out.to_str().unwrap(),
        ];
        let r = run("rwkv-state", &args, b"");
        assert_eq!(r.code, 0, "{}", r.stderr);
        StateFile::load(&out)
            .unwrap()
            .state()
            .unwrap()
            .values()
            .unwrap()
    };
    assert_eq!(
        imported("rand-rwkv7-d256-bf16.state.ai00.st"),
        imported("rand-rwkv7-d256-bf16.state.pth")
    );
}

#[test]
fn refusals() {
    let dir = temp_dir("state-refusals");
    let p = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let fp16 = model_arg("rand-rwkv6-d256-fp16.safetensors");
    let other = dir.join("other.safetensors");
    other_weights(&model_path("rand-rwkv6-d256-fp16.safetensors"), &other);
    let bf16 = other.to_str().unwrap().to_string();
    let r = run(
        "rwkv-state",
        &["feed", "-m", &fp16, "--ids", "-o", &p("fp16.state")],
        b"1 2 3",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Same shape, other weights: refused, then accepted with --force.
    let r = run(
        "rwkv-state",
        &[
            "feed",
            "-m",
            &bf16,
            "--ids",
            "--state",
            &p("fp16.state"),
            "-o",
            &p("x.state"),
        ],
        b"4",
    );
    assert_fails(&r, 1, &["fp16.state", "other weights", "--force"]);
    let r = run(
        "rwkv-state",
        &[
            "feed",
            "-m",
            &bf16,
            "--ids",
            "--state",
            &p("fp16.state"),
            "--force",
            "-o",
            &p("x.state"),
        ],
        b"4",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // Another shape: refused even with --force, naming both.
    let sh = model_arg(SHAKESPEARE);
    let r = run(
        "rwkv-gen",
        &["-m", &sh, "--state", &p("fp16.state"), "--force", "-p", "x"],
        b"",
    );
    assert_fails(
        &r,
        1,
        &[
            "fp16.state",
            "another model shape",
            "shakespeare-rwkv6.safetensors",
        ],
    );
    // Truncated and corrupt files.
    let full = std::fs::read(p("fp16.state")).unwrap();
    std::fs::write(p("cut.state"), &full[..full.len() - 100]).unwrap();
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &fp16,
            "--tokenizer",
            "bytes",
            "--state",
            &p("cut.state"),
            "-p",
            "x",
        ],
        b"",
    );
    assert_fails(&r, 1, &["cut.state"]);
    std::fs::write(p("junk.state"), b"\x10\0\0\0\0\0\0\0{not json at all}").unwrap();
    let r = run("rwkv-state", &["info", &p("junk.state")], b"");
    assert_fails(&r, 1, &["junk.state"]);
    // Missing and misshapen tensors.
    let sf = StateFile::load(Path::new(&p("fp16.state"))).unwrap();
    let mut bad = sf.clone();
    bad.meta.shape.layers -= 1;
    bad.values.truncate(bad.meta.shape.len());
    let mut bytes = bad.to_bytes();
    // say 3 layers again: the header now promises a tensor the file lacks
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let h = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let h = h.replace("\"n_layer\":\"2\"", "\"n_layer\":\"3\"");
    bytes.splice(8..8 + n, h.into_bytes());
    std::fs::write(p("missing.state"), &bytes).unwrap();
    let r = run("rwkv-state", &["info", &p("missing.state")], b"");
    assert_fails(&r, 1, &["missing.state", "larger than the file"]);
    // 1.wkv stored as [4, 64, 32]: rewrite that one tensor's shape in the header.
    let good = sf.to_bytes();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&good[8..8 + n]).unwrap();
    let key = "\"1.wkv\":{\"dtype\":\"F32\",\"shape\":[4,64,64]";
    assert!(header.contains(key), "{header}");
    let header = header.replace(key, "\"1.wkv\":{\"dtype\":\"F32\",\"shape\":[4,64,32]");
    let mut misshapen = good[..8].to_vec();
    misshapen.extend_from_slice(header.as_bytes());
    misshapen.extend_from_slice(&good[8 + n..]);
    std::fs::write(p("misshapen.state"), misshapen).unwrap();
    let r = run("rwkv-state", &["info", &p("misshapen.state")], b"");
    assert_fails(&r, 1, &["misshapen.state"]);
    // Bad ids are named, and nothing is written.
    let r = run(
        "rwkv-state",
        &["feed", "-m", &fp16, "--ids", "-o", &p("y.state")],
        b"1 two 3",
    );
    assert_fails(&r, 1, &["item 2", "two"]);
    let r = run(
        "rwkv-state",
        &["feed", "-m", &fp16, "--ids", "-o", &p("y.state")],
        b"1 5000",
    );
    assert_fails(&r, 1, &["5000", "vocab 1024"]);
    assert!(
        !Path::new(&p("y.state")).exists(),
        "no output after an error"
    );
    let r = run(
        "rwkv-state",
        &["feed", "-m", &fp16, "--state", "-", "-o", &p("y.state")],
        b"",
    );
    assert_fails(&r, 2, &["-p or -f"]);
    let r = run("rwkv-gen", &["-m", &fp16, "--state", "-"], b"");
    assert_fails(&r, 2, &["-p or -f"]);
    let r = run("rwkv-score", &["-m", &fp16, "--state", "-"], b"");
    assert_fails(&r, 2, &["FILE"]);
}

#[test]
fn an_interrupted_write_leaves_the_old_file() {
    use std::process::{Command, Stdio};
    use std::time::Duration;
    let dir = temp_dir("state-kill");
    let target = dir.join("s.state");
    let m = model_arg(SHAKESPEARE);
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-o", target.to_str().unwrap()],
        b"old",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let old = std::fs::read(&target).unwrap();
    let text = "To be, or not to be, that is the question. ".repeat(400);
    let input = dir.join("long.txt");
    std::fs::write(&input, &text).unwrap();
    for delay_ms in [5u64, 40, 120, 300] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rwkv-state"))
            .args([
                "feed",
                "-m",
                &m,
                "-f",
                input.to_str().unwrap(),
                "-o",
                target.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        let now = std::fs::read(&target).unwrap();
        let sf = StateFile::load(&target).expect("the state file is whole after a kill");
        assert!(now == old || sf.meta.tokens == text.len() as u64);
    }
    // nothing left behind: no temporary file, whatever the moment of the kill
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["long.txt", "s.state"]);
}

/// The same tuning state in a zip whose members carry zip64 records (as files past 4 GiB
/// do): read like the plain one.
#[test]
fn zip64_pth_reads_like_the_plain_one() {
    let m = Model::load(&model_path("rand-rwkv6-d256-fp16.safetensors")).unwrap();
    let shape = m.cfg.state_shape();
    let plain =
        rwkv::state_file::import_tuning(&model_path("rand-rwkv6-d256-fp16.state.pth"), shape)
            .unwrap();
    let z64 = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/state-zip64.pth"
    ));
    let zipped = rwkv::state_file::import_tuning(z64, shape).unwrap();
    assert_eq!(zipped.values().unwrap(), plain.values().unwrap());
}

/// With --no-bos, a state that carries logits scores the first token from them: scoring
/// "What light" from the state after "ROMEO:\n" equals the tail of scoring the whole text.
#[test]
fn score_from_a_state_with_logits() {
    let m = model_arg(SHAKESPEARE);
    let dir = temp_dir("state-score");
    let st = dir.join("romeo.state");
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-o", st.to_str().unwrap()],
        b"ROMEO:\n",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tail = run(
        "rwkv-score",
        &[
            "-m",
            &m,
            "-q",
            "--no-bos",
            "--state",
            st.to_str().unwrap(),
            "--per-token",
        ],
        b"What light",
    );
    let whole = run(
        "rwkv-score",
        &["-m", &m, "-q", "--no-bos", "--per-token"],
        b"ROMEO:\nWhat light",
    );
    let (t, w) = (&tail.json()[0], &whole.json()[0]);
    assert_eq!(t["tokens"], 10);
    let tp = t["per_token"].as_array().unwrap();
    let wp = &w["per_token"].as_array().unwrap()[6..];
    for (a, b) in tp.iter().zip(wp) {
        assert_eq!(a["token"], b["token"]);
        assert!((a["logprob"].as_f64().unwrap() - b["logprob"].as_f64().unwrap()).abs() < 1e-4);
    }
}
