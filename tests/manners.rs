//! Shell manners: negative numbers parse as values, a tool without its subcommand is a
//! usage error, and a full or closed stdout/stderr never panics.

mod common;

use common::{assert_fails, children_stayed_small, model_arg, run};
use std::process::{Command, Stdio};

#[test]
fn negative_values_get_the_value_error_not_an_unknown_flag() {
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let r = run("rwkv-gen", &["-m", &m, "-t", "-1", "-p", "x"], b"");
    assert_eq!(r.code, 2);
    assert!(
        r.stderr
            .contains("invalid value '-1' for '--temperature <T>': `-1` is negative"),
        "{}",
        r.stderr
    );
    let r = run("rwkv-gen", &["-m", &m, "--seed", "-5", "-p", "x"], b"");
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("invalid value '-5' for '--seed <N>'"),
        "{}",
        r.stderr
    );
    let r = run("rwkv-score", &["-m", &m, "--chunk", "-3"], b"");
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains("invalid value '-3' for '--chunk <N>'"),
        "{}",
        r.stderr
    );
}

#[test]
fn rwkv_state_alone_is_a_usage_error_on_stderr() {
    let r = run("rwkv-state", &[], b"");
    assert_eq!(r.code, 2);
    assert!(r.stdout.is_empty());
    assert!(
        r.stderr.contains("Usage: rwkv-state [OPTIONS] <COMMAND>"),
        "{}",
        r.stderr
    );
    let help = run("rwkv-state", &["--help"], b"");
    assert_eq!(help.code, 0);
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: rwkv-state"));
}

/// Run `bin args` with stdout and stderr as given; the exit code.
fn run_to(bin: &str, args: &[&str], stdout: Stdio, stderr: Stdio) -> i32 {
    let exe = match bin {
        "rwkv-gen" => env!("CARGO_BIN_EXE_rwkv-gen"),
        "rwkv-score" => env!("CARGO_BIN_EXE_rwkv-score"),
        _ => env!("CARGO_BIN_EXE_rwkv-state"),
    };
    let status = Command::new(exe)
        .args(args)
        .env_remove("RWKV_MODEL")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .status()
        .unwrap();
    status.code().unwrap_or(-1)
}

fn full() -> Stdio {
    std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .map(Stdio::from)
        .expect("/dev/full")
}

#[test]
fn a_full_stdout_or_stderr_never_panics() {
    if !std::path::Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full here");
        return;
    }
    for bin in ["rwkv-gen", "rwkv-score", "rwkv-state"] {
        // help and version that cannot be written: a runtime error, said where it can be
        assert_eq!(run_to(bin, &["--help"], full(), Stdio::null()), 1, "{bin}");
        assert_eq!(run_to(bin, &["--version"], full(), full()), 1, "{bin}");
        // an error message that cannot be written: the documented status all the same
        let missing = ["-m", "/nonexistent/model.pth", "-p", "x"];
        let args: &[&str] = match bin {
            "rwkv-state" => &["info", "/nonexistent.state"],
            "rwkv-score" => &missing[..2],
            _ => &missing,
        };
        assert_eq!(run_to(bin, args, Stdio::null(), full()), 1, "{bin}");
        assert_eq!(
            run_to(bin, &["--no-such-flag"], Stdio::null(), full()),
            2,
            "{bin}"
        );
    }
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let verbose = ["-m", &m, "-p", "ROMEO:", "-n", "4", "-v", "--ignore-eos"];
    assert_eq!(run_to("rwkv-gen", &verbose, Stdio::null(), full()), 0);
    let r = run(
        "rwkv-gen",
        &["-m", "/nonexistent/model.pth", "-p", "x"],
        b"",
    );
    assert_fails(&r, 1, &["/nonexistent/model.pth"]);
}

/// A state file for `model` (its shape and fingerprint) holding `values`, written as is.
fn state_file_of(
    model: &rwkv::Model,
    shape: rwkv::backend::StateShape,
    values: Vec<f32>,
) -> Vec<u8> {
    use rwkv::state_file::{StateFile, StateMeta};
    let sf = StateFile {
        meta: StateMeta {
            arch: model.cfg.version.name.into(),
            shape,
            vocab: model.cfg.vocab,
            fingerprint: model.fingerprint().into(),
            tokens: 1,
            tokenizer: String::new(),
        },
        values,
        logits: None,
    };
    sf.to_bytes()
}

#[test]
fn a_state_that_overflows_is_an_error_and_nothing_is_written() {
    let path = common::model_path("tiny-rwkv6-1m.safetensors");
    let model = rwkv::Model::load(&path).unwrap();
    let shape = model.cfg.state_shape();
    let dir = std::env::temp_dir().join(format!("rwkv-manners-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let huge = dir.join("huge.state");
    std::fs::write(&huge, state_file_of(&model, shape, vec![3e38; shape.len()])).unwrap();
    let out = dir.join("out.state");
    let (m, h, o) = (
        model_arg("tiny-rwkv6-1m.safetensors"),
        huge.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "--state", h, "-p", "abc", "-o", o],
        b"",
    );
    assert_fails(&r, 1, &["non-finite value", "nothing written"]);
    assert!(!out.exists(), "no state file is left behind");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_state_of_another_shape_is_refused_before_it_is_read() {
    let path = common::model_path("tiny-rwkv6-1m.safetensors");
    let model = rwkv::Model::load(&path).unwrap();
    // 256 layers of width 16384: 1.06 GB of values, sparse on disk
    let shape = rwkv::backend::StateShape {
        layers: 256,
        embd: 16384,
        heads: 256,
        head_size: 64,
        recurrence: Default::default(),
    };
    let one = rwkv::backend::StateShape { layers: 1, ..shape };
    let head = state_file_of(&model, one, vec![0.0; one.len()]);
    let n = u64::from_le_bytes(head[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(head[8..8 + n].to_vec()).unwrap();
    let big = header.replace("\"n_layer\":\"1\"", "\"n_layer\":\"256\"");
    let mut sf = serde_json::from_str::<serde_json::Value>(&big).unwrap();
    let per = 4 * shape.layer_len();
    for l in 0..256 {
        let at = l * per;
        sf[format!("{l}.att_shift")] =
            serde_json::json!({"dtype": "F32", "shape": [16384], "data_offsets": [at, at + 65536]});
        let w = at + 65536;
        sf[format!("{l}.wkv")] = serde_json::json!({"dtype": "F32", "shape": [256, 64, 64], "data_offsets": [w, w + 4 * 256 * 64 * 64]});
        let f = w + 4 * 256 * 64 * 64;
        sf[format!("{l}.ffn_shift")] =
            serde_json::json!({"dtype": "F32", "shape": [16384], "data_offsets": [f, f + 65536]});
    }
    let mut h = serde_json::to_vec(&sf).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let dir = std::env::temp_dir().join(format!("rwkv-shape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("big.state");
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    std::fs::write(&p, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len((bytes.len() + 256 * per) as u64).unwrap();
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &m,
            "--state",
            p.to_str().unwrap(),
            "-p",
            "x",
            "-n",
            "1",
        ],
        b"",
    );
    assert_fails(&r, 1, &["state of another model shape", "256 layers"]);
    // the 1 GB of values were never decoded
    children_stayed_small();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_verbose_load_line_names_the_weights_formats() {
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let r = run(
        "rwkv-gen",
        &["-m", &m, "--quant", "nf4", "-p", "A", "-n", "1", "-v"],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let line = r.stderr.lines().find(|l| l.contains("loaded")).unwrap();
    // the tiny model's f32 LoRA factors outweigh its nf4 projections
    assert!(
        line.contains("tokenizer bytes, f32, nf4 weights, "),
        "{line}"
    );
}

fn scratch(what: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("rwkv-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn outputs_that_are_not_regular_files_are_written_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let dir = scratch("special");
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    // a link to /dev/null stays a link to a device
    let null = dir.join("null");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-p", "ab", "-o", null.to_str().unwrap()],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(std::fs::symlink_metadata(&null)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    // a FIFO gets the bytes and stays a FIFO
    let fifo = dir.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let f = fifo.clone();
    let reader = std::thread::spawn(move || std::fs::read(f).unwrap());
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-p", "ab", "-o", fifo.to_str().unwrap()],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let bytes = reader.join().unwrap();
    let sf = rwkv::state_file::StateFile::from_bytes(&fifo, &bytes).unwrap();
    assert_eq!(sf.meta.tokens, 2);
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_quantized_save_that_does_not_load_leaves_the_destination_as_it_was() {
    let dir = scratch("save-quantized");
    // the FFN key reshaped (same values): the file quantizes, but no model loads from it
    let src = std::fs::read(common::model_path("tiny-rwkv6-1m.safetensors")).unwrap();
    let n = u64::from_le_bytes(src[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(src[8..8 + n].to_vec()).unwrap();
    let mut h: serde_json::Value = serde_json::from_str(&header).unwrap();
    h["blocks.0.ffn.key.weight"]["shape"] = serde_json::json!([112, 128]);
    let mut hb = serde_json::to_vec(&h).unwrap();
    while !hb.len().is_multiple_of(8) {
        hb.push(b' ');
    }
    let mut bad = (hb.len() as u64).to_le_bytes().to_vec();
    bad.extend_from_slice(&hb);
    bad.extend_from_slice(&src[8 + n..]);
    let bad_path = dir.join("bad.safetensors");
    std::fs::write(&bad_path, &bad).unwrap();
    let dst = dir.join("saved.st");
    std::fs::write(&dst, b"the old contents").unwrap();
    let (b, d) = (bad_path.to_str().unwrap(), dst.to_str().unwrap());
    let r = run(
        "rwkv-gen",
        &["-m", b, "--quant", "int8", "--save-quantized", d, "-p", "x"],
        b"",
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("blocks.0.ffn"), "{}", r.stderr);
    assert_eq!(std::fs::read(&dst).unwrap(), b"the old contents");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "no temporary file left: {left:?}");
    // and a good one is written, loaded and used in one run
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let r = run(
        "rwkv-gen",
        &[
            "-m",
            &m,
            "--quant",
            "int8",
            "--save-quantized",
            d,
            "-p",
            "x",
            "-n",
            "2",
        ],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let saved = rwkv::Model::load(&dst).unwrap();
    let key = saved
        .matrices()
        .into_iter()
        .find(|(n, _)| n == "blocks.0.att.key.weight");
    assert_eq!(key.unwrap().1.dtype.name(), "int8");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn files_of_other_kinds_say_what_they_are() {
    let dir = scratch("kinds");
    let gguf = dir.join("m.gguf");
    std::fs::write(
        &gguf,
        b"GGUF\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    )
    .unwrap();
    let ggml = dir.join("m.bin");
    std::fs::write(
        &ggml,
        b"fmgg\x65\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    )
    .unwrap();
    let tuning = model_arg("rand-rwkv6-d256-fp16.state.pth");
    let cases = [
        (
            gguf.to_str().unwrap(),
            "GGUF: truncated: the file ends inside the metadata count",
        ),
        (ggml.to_str().unwrap(), "an rwkv.cpp (ggml) model file"),
        (
            tuning.as_str(),
            "a state-tuning file, not a model: give it with --state",
        ),
    ];
    for (file, says) in cases {
        let r = run("rwkv-gen", &["-m", file, "-p", "x"], b"");
        assert_fails(&r, 1, &[file, says]);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn merge_reads_a_bounded_line_and_stops() {
    let r = run("rwkv-score", &["--merge", "/dev/zero"], b"");
    assert_fails(
        &r,
        1,
        &["/dev/zero: line 1: longer than", "not a score record"],
    );
    let r = run(
        "rwkv-score",
        &["--merge"],
        b"{\"source\": 1, \"tokens\": -1, \"bytes\": 2, \"nll\": 1}\n",
    );
    assert_fails(&r, 1, &["line 1", "`tokens` is -1, not a count"]);
    // no records at all (the runs failed): an error, not a summary of zeros
    let r = run("rwkv-score", &["--merge"], b"");
    assert_fails(&r, 1, &["--merge: no score records in -"]);
    children_stayed_small();
}

#[test]
fn names_from_files_reach_stderr_escaped() {
    let dir = scratch("escapes");
    let p = dir.join("evil\u{1b}[31m\nname.safetensors");
    std::fs::write(&p, b"not a model at all, just bytes").unwrap();
    let r = run("rwkv-gen", &["-m", p.to_str().unwrap(), "-p", "x"], b"");
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), 1, "{:?}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}'), "{:?}", r.stderr);
    assert!(
        r.stderr.contains("evil\\u{1b}[31m\\nname.safetensors"),
        "{:?}",
        r.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_answer_on_a_terminal_ends_its_line_and_a_pipe_gets_the_bytes() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let args = ["-m", &m, "-p", "ROMEO:", "-n", "5", "-t", "0"];
    let r = run("rwkv-gen", &args, b"");
    assert_eq!(
        r.stdout, b"\nI wi",
        "a pipe gets the answer's bytes, no more"
    );
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` to run a terminal");
        return;
    }
    // `script` runs the command on a pseudo-terminal (which writes \n as \r\n)
    let line = format!("{} {}", env!("CARGO_BIN_EXE_rwkv-gen"), args.join(" "));
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("I wi\r\n"), "{text:?}");
}

#[test]
fn inputs_read_whole_are_bounded_by_what_a_valid_one_can_be() {
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let zeros = vec![0u8; 20 << 20];
    let r = run("rwkv-gen", &["-m", &m, "--state", "-", "-p", "x"], &zeros);
    assert_fails(
        &r,
        1,
        &[
            "<stdin>: more than",
            "larger than a state file of this model can be",
        ],
    );
    let r = run(
        "rwkv-gen",
        &["-m", &m, "--tokenizer", "/dev/zero", "-p", "x"],
        b"",
    );
    assert_fails(
        &r,
        1,
        &["/dev/zero: more than 67108864 bytes: not a tokenizer.json"],
    );
    // a prompt: -f FILE, -f - and stdin, for both tools that read one whole
    let r = run("rwkv-gen", &["-m", &m, "-f", "/dev/zero", "-n", "1"], b"");
    assert_fails(&r, 1, &["/dev/zero: longer than 64 MiB, the most a prompt"]);
    let dir = scratch("prompt");
    let out = dir.join("s.state");
    let big = vec![b'a'; (64 << 20) + 1];
    for args in [&["-f", "-"][..], &[]] {
        let feed = [&["feed", "-m", &m, "-o", out.to_str().unwrap()], args].concat();
        let r = run("rwkv-state", &feed, &big);
        assert_fails(&r, 1, &["stdin: longer than 64 MiB, the most a prompt"]);
        assert!(!out.exists(), "no state written");
    }
    children_stayed_small();
}

/// A shape error says what shape was expected in the model's own terms (`[H, S, S]`, not
/// `[0, 64, 64]`), and a layer's tensor that is absent is missing, not of shape `[]`.
#[test]
fn shape_errors_name_the_shape_expected() {
    use safetensors::tensor::{Dtype, TensorView};
    let m = model_arg("tiny-rwkv6-1m.safetensors");
    let model = rwkv::Model::load(std::path::Path::new(&m)).unwrap();
    let (h, s, layers) = (model.cfg.n_head, model.cfg.head_size, model.cfg.n_layer);
    let dir = scratch("shapes");
    let write = |name: &str, tensors: &[(String, Vec<usize>)]| {
        let data = vec![0u8; 4 * h * s * s];
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, shape)| {
                let len = 4 * shape.iter().product::<usize>();
                (
                    n.clone(),
                    TensorView::new(Dtype::F32, shape.clone(), &data[..len]).unwrap(),
                )
            })
            .collect();
        let p = dir.join(name);
        std::fs::write(&p, safetensors::serialize(views, &None).unwrap()).unwrap();
        p.to_string_lossy().into_owned()
    };
    let flat = write(
        "flat.st",
        &[("blocks.0.att.time_state".to_string(), vec![h, s * s])],
    );
    let out = dir.join("o.state");
    let o = out.to_str().unwrap();
    let r = run("rwkv-state", &["import", &flat, "-m", &m, "-o", o], b"");
    assert_fails(
        &r,
        1,
        &["`blocks.0.att.time_state` has shape", "expected [H, S, S]"],
    );
    // every layer but one, and one past the last: as many tensors as layers
    let gap: Vec<(String, Vec<usize>)> = (0..=layers)
        .filter(|&l| l != 1)
        .map(|l| (format!("blocks.{l}.att.time_state"), vec![h, s, s]))
        .collect();
    let gap = write("gap.st", &gap);
    let r = run("rwkv-state", &["import", &gap, "-m", &m, "-o", o], b"");
    assert_fails(&r, 1, &["missing tensor `blocks.1.att.time_state`"]);
    assert!(!out.exists());
}

/// `cmd` run by bash in a terminal of 60 columns (util-linux `script`): what the terminal
/// was sent.
fn in_terminal(cmd: &str) -> String {
    let bins = std::path::Path::new(env!("CARGO_BIN_EXE_rwkv-gen"))
        .parent()
        .unwrap();
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("stty cols 60 rows 20; {cmd}; echo rc=$?"),
            "/dev/null",
        ])
        .env(
            "PATH",
            format!("{}:{}", bins.display(), std::env::var("PATH").unwrap()),
        )
        .env_remove("RWKV_MODEL")
        .stdin(Stdio::null())
        .output()
        .expect("script (util-linux) runs a command in a terminal");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The bars as drawn: each draw fits one row of the terminal (a bar that wrapped left its
/// first row on screen after Ctrl-C), and Ctrl-C erases the last.
#[test]
fn progress_bars_fit_a_row_and_ctrl_c_erases_them() {
    let dir = scratch("bars");
    let doc = dir.join("doc.txt");
    std::fs::write(&doc, "Now is the winter of our discontent. ".repeat(40_000)).unwrap();
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let d = doc.display();
    let score = in_terminal(&format!(
        "timeout -s INT 2 rwkv-score -m {m} {d} >/dev/null"
    ));
    let feed = in_terminal(&format!(
        "timeout -s INT 2 rwkv-state feed -m {m} -f {d} -o {d}.s"
    ));
    for (what, t) in [("rwkv-score", &score), ("rwkv-state feed", &feed)] {
        let draws: Vec<&str> = t.split("\r\x1b[2K").skip(1).collect();
        assert!(draws.len() > 2, "{what}: the bar is drawn: {t:?}");
        for d in &draws[..draws.len() - 1] {
            assert!(
                d.chars().count() <= 60,
                "{what}: a draw wider than the terminal: {d:?}"
            );
        }
        assert!(
            t.ends_with("\r\x1b[Krc=124\r\n"),
            "{what}: erased at Ctrl-C: {t:?}"
        );
    }
    assert!(score.contains(" KiB of 1.41 MiB, "), "{score:?}");
    assert!(feed.contains(" of 1480000 tokens, "), "{feed:?}");
    assert!(
        !dir.join("doc.txt.s").exists(),
        "an interrupted feed writes no state"
    );
}
