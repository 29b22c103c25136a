//! Every version through the three tools, on its small trained model: greedy generation and
//! scores against the official package's outputs, the known continuation, state files fed
//! once and resumed, batches, quantized weights, parameters, and states of another version
//! refused. (The forward pass against the goldens: `golden.rs` and `opencl.rs`.)

mod common;
use common::*;
use rwkv::Model;

/// A version's trained fixture: file, golden stem, state-file arch name, and the start of
/// its greedy continuation of "The cat sat on the" (`shared/golden/README.md`).
struct Case {
    file: &'static str,
    stem: &'static str,
    arch: &'static str,
    cat: &'static str,
}

const CASES: [Case; 4] = [
    Case {
        file: "tiny-rwkv4-660k.safetensors",
        stem: "tiny-rwkv4-660k",
        arch: "rwkv4",
        cat: "",
    },
    Case {
        file: "tiny-rwkv5-730k.safetensors",
        stem: "tiny-rwkv5-730k",
        arch: "rwkv5",
        cat: " stress and the",
    },
    Case {
        file: "tiny-rwkv6-1m.safetensors",
        stem: "tiny-rwkv6-1m",
        arch: "rwkv6",
        cat: "",
    },
    Case {
        file: "tiny-rwkv7-834k.safetensors",
        stem: "tiny-rwkv7-834k",
        arch: "rwkv7",
        cat: " the the the",
    },
];

fn gen(m: &str, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let mut a = vec!["-m", m];
    a.extend_from_slice(args);
    let r = run("rwkv-gen", &a, stdin);
    assert_eq!(r.code, 0, "{m}: {}", r.stderr);
    r.stdout
}

/// Greedy decoding picks the official logits' argmax, and continues as the package does.
#[test]
fn greedy_generation_follows_the_official_logits() {
    for c in CASES {
        let (m, g) = (model_arg(c.file), golden(c.stem));
        let prompt: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
        let last = g.logits.last().unwrap();
        let argmax = (0..last.len())
            .max_by(|&a, &b| last[a].total_cmp(&last[b]))
            .unwrap();
        // Token 0 ends the text (the RWKV-6 model predicts it after every byte).
        let want = if argmax == 0 {
            vec![]
        } else {
            vec![argmax as u8]
        };
        assert_eq!(
            gen(&m, &["-t", "0", "-n", "1"], &prompt),
            want,
            "{}",
            c.file
        );
        let cat = gen(
            &m,
            &["-t", "0", "-n", "15", "-p", "The cat sat on the"],
            b"",
        );
        assert!(cat.starts_with(c.cat.as_bytes()), "{}: {cat:?}", c.file);
    }
}

/// Per-token log-probabilities are the official logits' log-softmax.
#[test]
fn scores_are_the_official_log_probabilities() {
    for c in CASES {
        let (m, g) = (model_arg(c.file), golden(c.stem));
        let text: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
        let r = run(
            "rwkv-score",
            &["-m", &m, "--per-token", "--no-bos", "-q"],
            &text,
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let per = r.json()[0]["per_token"].as_array().unwrap().clone();
        assert_eq!(per.len(), g.tokens.len() - 1);
        for (t, p) in per.iter().enumerate() {
            let want = log_softmax(&g.logits[t], g.tokens[t + 1] as usize);
            let got = p["logprob"].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-4,
                "{} token {t}: {got} vs {want}",
                c.file
            );
        }
    }
}

/// A state fed once and resumed continues as the whole prompt does; `info` names the
/// version; a state of each other version is refused in one line that names both.
#[test]
fn state_files_resume_and_stay_with_their_version() {
    let dir = temp_dir("versions-state");
    let greedy = ["-t", "0", "-n", "16"];
    let mut states = Vec::new();
    for c in CASES {
        let m = model_arg(c.file);
        let st = dir.join(format!("{}.state", c.arch));
        let st_s = st.to_string_lossy().into_owned();
        let r = run(
            "rwkv-state",
            &["feed", "-m", &m, "-p", "The cat sat", "-o", &st_s],
            b"",
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let whole = gen(
            &m,
            &[&greedy[..], &["-p", "The cat sat on the"]].concat(),
            b"",
        );
        let resumed = gen(
            &m,
            &[&greedy[..], &["--state", &st_s, "-p", " on the"]].concat(),
            b"",
        );
        assert_eq!(resumed, whole, "{}", c.file);
        let info = run("rwkv-state", &["info", "--json", &st_s], b"");
        assert_eq!(info.code, 0, "{}", info.stderr);
        assert_eq!(info.json()[0]["arch"], c.arch);
        assert_eq!(info.json()[0]["tokens"], 11);
        states.push(st_s);
    }
    for (c, _) in CASES.iter().zip(&states) {
        for (other, st) in CASES.iter().zip(&states) {
            if other.arch == c.arch {
                continue;
            }
            let r = run(
                "rwkv-gen",
                &["-m", &model_arg(c.file), "--state", st, "-n", "1"],
                b"x",
            );
            assert_eq!(r.code, 1, "{} with {st}", c.file);
            assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
            assert!(r.stderr.contains(st.as_str()), "{}", r.stderr);
        }
    }
}

/// Prompts decoded together give what each gives alone, greedy and sampled.
#[test]
fn batched_lines_equal_one_at_a_time() {
    let prompts = b"The cat\nA dog sat on\nIn the beginning\nOnce\n";
    for c in CASES {
        let m = model_arg(c.file);
        for sampling in [&["-t", "0"][..], &["--seed", "5"][..]] {
            let out = |batch: &str| {
                let a = [&["--lines", "-n", "12", "--batch", batch][..], sampling].concat();
                gen(&m, &a, prompts)
            };
            let one = out("1");
            assert_eq!(one.iter().filter(|&&b| b == b'\n').count(), 4);
            assert_eq!(out("3"), one, "{} {sampling:?}", c.file);
            assert_eq!(out("16"), one, "{} {sampling:?}", c.file);
        }
    }
}

/// `--quant int8|nf4` cost each trained model little on its own golden text (these widths of
/// 64 are one block a row, nf4's worst case).
#[test]
fn quantized_scores_stay_close() {
    for c in CASES {
        let (m, g) = (model_arg(c.file), golden(c.stem));
        let text: Vec<u8> = g.tokens.iter().map(|&t| t as u8).collect();
        let bpb = |quant: &[&str]| {
            let a = [&["-m", m.as_str(), "-q"][..], quant].concat();
            let r = run("rwkv-score", &a, &text);
            assert_eq!(r.code, 0, "{}", r.stderr);
            r.json()[0]["bits_per_byte"].as_f64().unwrap()
        };
        let exact = bpb(&[]);
        for (q, bound) in [("int8", 0.02), ("nf4", 0.1)] {
            let got = bpb(&["--quant", q]);
            let d = (got - exact).abs();
            assert!(
                d > 0.0 && d < bound * exact,
                "{} {q}: {got} vs {exact}",
                c.file
            );
        }
    }
}

/// The parameter count a version reports is every value its file holds.
#[test]
fn parameters_are_the_files_values() {
    for c in CASES {
        let path = model_path(c.file);
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let values: usize = st
            .tensors()
            .iter()
            .map(|(_, t)| t.shape().iter().product::<usize>())
            .sum();
        assert_eq!(
            Model::load(&path).unwrap().cfg.n_params(),
            values,
            "{}",
            c.file
        );
    }
}

/// Streams stepped together give each stream's logits alone, to the bit (f32), on the
/// random models of every version (RWKV-7a's per-token tables included).
#[test]
fn streams_stepped_together_equal_each_alone() {
    for file in [
        "rand-rwkv5-d256-bf16.pth",
        "rand-rwkv6-d256-fp16.safetensors",
        "rand-rwkv7a-d256-bf16.safetensors",
        "rand-rwkv4-d256-bf16.safetensors",
    ] {
        let m = Model::load(&model_path(file)).unwrap();
        let prompts: [&[u32]; 3] = [&[10, 20, 30], &[40], &[50, 60, 70, 80]];
        let fed = |p: &[u32]| {
            let mut st = m.new_state();
            m.forward(p, &mut st, rwkv::Logits::Last).unwrap();
            st
        };
        let mut together: Vec<_> = prompts.iter().map(|p| fed(p)).collect();
        let mut refs: Vec<&mut rwkv::State> = together.iter_mut().collect();
        let next = [7u32, 8, 9];
        let all = m.step(&next, &mut refs).unwrap();
        let v = m.cfg.vocab;
        for (i, p) in prompts.iter().enumerate() {
            let mut st = fed(p);
            let alone = m
                .forward(&next[i..i + 1], &mut st, rwkv::Logits::Last)
                .unwrap();
            assert!(alone[..] == all[i * v..(i + 1) * v], "{file} stream {i}");
            assert!(
                st.values().unwrap() == refs[i].values().unwrap(),
                "{file} {i}"
            );
        }
    }
}
