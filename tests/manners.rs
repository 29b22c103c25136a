//! Shell manners: negative numbers parse as values, a tool without its subcommand is a
//! usage error, and a full or closed stdout/stderr never panics.

mod common;

use common::{assert_fails, model_arg, run};
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
