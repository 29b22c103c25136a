//! The OpenCL backend against the CPU: every kernel against its CPU twin, and whole models
//! against the golden files, one token at a time and in sequence mode, within 1e-3 of the
//! largest logit. Runs with `--features opencl` on any OpenCL platform (CI uses PoCL).
#![cfg(feature = "opencl")]

mod common;
use common::*;
use rwkv::backend::cpu::{layer_norm_scalar, matmul_scalar, wkv_scalar};
use rwkv::backend::opencl::{ops, DeviceSpec, Ocl};
use rwkv::tensor::quant::{quantize, Quant};
use rwkv::tensor::{Buf, Data, Matrix};
use rwkv::{Logits, Model};

fn device() -> Ocl {
    let spec: DeviceSpec = "opencl".parse().unwrap();
    Ocl::open(spec)
        .expect("an OpenCL platform (CI installs PoCL)")
        .unwrap()
}

fn close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what} at {i}: {x} vs {y}"
        );
    }
}

#[test]
fn matmul_matches_the_cpu_for_every_format() {
    let o = device();
    // 37 columns: a width that is no multiple of the work-group (float formats only).
    for (rows, cols) in [(19, 192), (7, 37)] {
        matmul_matches_the_cpu(&o, rows, cols);
    }
}

fn matmul_matches_the_cpu(o: &Ocl, rows: usize, cols: usize) {
    let v = vals(rows * cols, 1);
    let f32m = Matrix::from_f32(rows, cols, v.clone());
    // int8 and nf4 blocks are 64 wide.
    let mut mats = if cols.is_multiple_of(64) {
        vec![quantize(&f32m, Quant::Int8), quantize(&f32m, Quant::Nf4)]
    } else {
        vec![]
    };
    mats.extend([
        Matrix {
            rows,
            cols,
            data: Data::F16(Buf::Owned(
                v.iter().map(|&x| half::f16::from_f32(x)).collect(),
            )),
        },
        Matrix {
            rows,
            cols,
            data: Data::BF16(Buf::Owned(
                v.iter().map(|&x| half::bf16::from_f32(x)).collect(),
            )),
        },
        f32m,
    ]);
    // nf4 takes tokens in groups of 4: one partial group, one full, two and a partial.
    for t in [1, 3, 4, 9] {
        let x = vals(t * cols, 2);
        for m in &mats {
            let mut want = vec![0.0; t * rows];
            matmul_scalar(m, &x, t, &mut want);
            close(
                &format!("{:?} t={t}", m.dtype()),
                &ops::matmul(o, m, &x, t).unwrap(),
                &want,
                1e-4,
            );
        }
    }
}

#[test]
fn norms_wkv_shift_and_activations_match_the_cpu() {
    let o = device();
    let (d, t) = (128, 3);
    let x = vals(t * d, 3);
    let (w, b) = (vals(d, 4), vals(d, 5));
    let mut want = x.clone();
    layer_norm_scalar(&mut want, &w, &b, 1e-5);
    close(
        "layer norm",
        &ops::norm(&o, &x, &w, &b, d, 1e-5).unwrap(),
        &want,
        1e-4,
    );
    // group norm: groups of 64 normalised alone, then the affine part over the row
    let mut want = x.clone();
    for g in want.chunks_mut(64) {
        layer_norm_scalar(g, &[1.0; 64], &[0.0; 64], 64e-5);
    }
    for row in want.chunks_mut(d) {
        for ((v, wi), bi) in row.iter_mut().zip(&w).zip(&b) {
            *v = *v * wi + bi;
        }
    }
    close(
        "group norm",
        &ops::norm(&o, &x, &w, &b, 64, 64e-5).unwrap(),
        &want,
        1e-4,
    );

    let (h, s) = (2, 64);
    let (r, k, v) = (vals(t * d, 6), vals(t * d, 7), vals(t * d, 8));
    let wd: Vec<f32> = vals(t * d, 9).iter().map(|x| 0.5 + 0.4 * x).collect();
    let u = vals(d, 10);
    let st0 = vals(h * s * s, 11);
    let (mut st_cpu, mut st_dev) = (st0.clone(), st0);
    let mut out_cpu = vec![0.0; t * d];
    wkv_scalar(h, &r, &k, &v, &wd, &u, &mut st_cpu, &mut out_cpu);
    let out_dev = ops::wkv(&o, h, &r, &k, &v, &wd, &u, &mut st_dev).unwrap();
    close("wkv out", &out_dev, &out_cpu, 1e-4);
    close("wkv state", &st_dev, &st_cpu, 1e-4);

    let shift = vals(d, 12);
    let (maa, delta) = (vals(d, 13), vals(t * d, 14));
    let (sx, new_shift, mixed) = ops::shift_mix(&o, &x, &shift, &maa, &delta).unwrap();
    for ti in 0..t {
        for c in 0..d {
            let prev = if ti == 0 {
                shift[c]
            } else {
                x[(ti - 1) * d + c]
            };
            let i = ti * d + c;
            assert!((sx[i] - (prev - x[i])).abs() < 1e-6);
            assert!((mixed[i] - (x[i] + sx[i] * (maa[c] + delta[i]))).abs() < 1e-5);
        }
    }
    assert_eq!(new_shift, x[(t - 1) * d..]);
    for (name, f) in [
        ("act_tanh", (|v: f32| v.tanh()) as fn(f32) -> f32),
        ("act_silu", |v: f32| v / (1.0 + (-v).exp())),
        ("act_relu_sq", |v: f32| v.max(0.0) * v.max(0.0)),
    ] {
        let want: Vec<f32> = x.iter().map(|&v| f(v)).collect();
        close(name, &ops::activation(&o, name, &x).unwrap(), &want, 1e-5);
    }
}

#[test]
fn the_other_elementwise_kernels_match_the_cpu() {
    let o = device();
    let (t, d) = (3, 16);
    let (a, b, c) = (vals(t * d, 20), vals(t * d, 21), vals(d, 22));
    let run = |name: &str, n: usize, bufs: &[&[f32]], ints: &[i32]| {
        ops::elementwise(&o, name, n, bufs, ints).unwrap()
    };
    let out = run("act_decay", t * d, &[&a, &c], &[d as i32]);
    let want: Vec<f32> = a
        .iter()
        .enumerate()
        .map(|(i, w)| (-(c[i % d] + w).exp()).exp())
        .collect();
    close("act_decay", &out[0], &want, 1e-5);
    let out = run("mul_into", t * d, &[&a, &b], &[]);
    close(
        "mul_into",
        &out[0],
        &a.iter().zip(&b).map(|(x, y)| x * y).collect::<Vec<_>>(),
        1e-6,
    );
    let out = run("add_into", t * d, &[&a, &b], &[]);
    close(
        "add_into",
        &out[0],
        &a.iter().zip(&b).map(|(x, y)| x + y).collect::<Vec<_>>(),
        1e-6,
    );
    let x0 = vals(t * d, 23);
    let out = run("ffn_out", t * d, &[&x0, &a, &b], &[]);
    let want: Vec<f32> = (0..t * d)
        .map(|i| x0[i] + b[i] / (1.0 + (-a[i]).exp()))
        .collect();
    close("ffn_out", &out[0], &want, 1e-5);
    let dst = vec![0.0; t * 4];
    let out = run("take_cols", t * 4, &[&a, &dst], &[d as i32, 5, 4]);
    let want: Vec<f32> = (0..t)
        .flat_map(|r| a[r * d + 5..r * d + 9].to_vec())
        .collect();
    assert_eq!(out[1], want);
    let dst = vec![0.0; d];
    let out = run("copy_range", d, &[&a, &dst], &[d as i32]);
    assert_eq!(out[1], a[d..2 * d]);
}

/// Whole models on the device against the golden files, both modes, and the state read
/// back through the host.
#[test]
fn models_match_the_golden_on_the_device() {
    for (file, stem) in [
        ("tiny-rwkv6-1m.safetensors", "tiny-rwkv6-1m"),
        ("shakespeare-rwkv6.safetensors", "shakespeare-rwkv6"),
        ("shakespeare-rwkv6.pth", "shakespeare-rwkv6"),
        ("rand-rwkv6-d256-bf16.safetensors", "rand-rwkv6-d256-bf16"),
        ("rand-rwkv6-d256-bf16.pth", "rand-rwkv6-d256-bf16"),
        ("rand-rwkv6-d256-fp16.safetensors", "rand-rwkv6-d256-fp16"),
        (
            "rand-rwkv6-d256-fp16.hf.safetensors",
            "rand-rwkv6-d256-fp16",
        ),
        ("rand-rwkv6-d256-fp16.ai00.st", "rand-rwkv6-d256-fp16"),
        (
            "rand-rwkv6-world-d64-bf16.safetensors",
            "rand-rwkv6-world-d64-bf16",
        ),
    ] {
        let g = golden(stem);
        let mut m = Model::load(&model_path(file)).unwrap();
        assert!(m.use_device("opencl".parse().unwrap()).unwrap().is_some());
        let close_to = |what: &str, got: &[f32], want: &[f32]| {
            let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
            let err = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                err <= 1e-3 * scale.max(1.0),
                "{file} {what}: {err} (scale {scale})"
            );
        };
        let mut st = m.new_state();
        for (t, (&tok, want)) in g.tokens.iter().zip(&g.logits).enumerate() {
            let got = m.forward(&[tok], &mut st, Logits::Last).unwrap();
            close_to(&format!("token {t}"), &got, want);
        }
        st.sync();
        for (l, ls) in st.layers().iter().enumerate() {
            for (name, v) in [
                ("att_shift", &ls.att_shift),
                ("wkv", &ls.wkv),
                ("ffn_shift", &ls.ffn_shift),
            ] {
                close_to(
                    &format!("state {l} {name}"),
                    v,
                    &g.state[&format!("state.{l}.{name}")],
                );
            }
        }
        let mut st = m.new_state();
        let seq = m.forward(&g.tokens, &mut st, Logits::Last).unwrap();
        close_to("sequence", &seq, &g.seq_logits);
        let copy = st.clone(); // read through the host without disturbing the device copy
        for (l, ls) in copy.layers().iter().enumerate() {
            close_to(
                &format!("sequence state {l} wkv"),
                &ls.wkv,
                &g.state[&format!("state.{l}.wkv")],
            );
        }
    }
}

#[test]
fn device_output_equals_cpu_output_through_the_cli() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let greedy = [
        "-t",
        "0",
        "--presence-penalty",
        "0",
        "--frequency-penalty",
        "0",
        "-n",
        "24",
    ];
    // The device multiplies in f32: so does the CPU here.
    let mut a = vec![
        "-m",
        m.as_str(),
        "-p",
        "ROMEO:\nWhat light",
        "--precision",
        "f32",
    ];
    a.extend_from_slice(&greedy);
    let cpu = run("rwkv-gen", &a, b"");
    a.extend_from_slice(&["--device", "opencl"]);
    let dev = run("rwkv-gen", &a, b"");
    assert_eq!(dev.code, 0, "{}", dev.stderr);
    assert_eq!(cpu.stdout, dev.stdout);
    let list = run("rwkv-gen", &["--list-devices"], b"");
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.text().contains("opencl:0:0"), "{}", list.text());
}

#[test]
fn auto_falls_back_and_bad_devices_are_named() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    // PoCL is a CPU device: auto finds no GPU and runs on the CPU.
    let r = run(
        "rwkv-gen",
        &["-m", &m, "--device", "auto", "-p", "x", "-n", "3"],
        b"",
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        "rwkv-gen",
        &["-m", &m, "--device", "opencl:7", "-p", "x"],
        b"",
    );
    assert_fails(&r, 1, &["no OpenCL platform 7"]);
    let r = run("rwkv-gen", &["-m", &m, "--device", "gpu", "-p", "x"], b"");
    assert_fails(&r, 2, &["gpu"]);
}

/// The golden run from the state-tuning state, on the device: the imported state is
/// uploaded, advanced there, and read back.
#[test]
fn tuned_state_golden_on_the_device() {
    let g = golden("rand-rwkv6-d256-fp16.state");
    let path = model_path("rand-rwkv6-d256-fp16.safetensors");
    let mut m = Model::load(&path).unwrap();
    m.use_device("opencl".parse().unwrap()).unwrap();
    let start =
        rwkv::state_file::import_tuning(&model_path("rand-rwkv6-d256-fp16.state.pth"), &m.cfg)
            .unwrap();
    let mut st = start.clone();
    let seq = m.forward(&g.tokens, &mut st, Logits::Last).unwrap();
    let scale = g.seq_logits.iter().fold(0f32, |a, v| a.max(v.abs()));
    let err = seq
        .iter()
        .zip(&g.seq_logits)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(err <= 1e-3 * scale.max(1.0), "{err}");
    // A copy of a device state is current: it equals the CPU's state after the same run.
    let copy = st.clone();
    let cpu = Model::load(&path).unwrap();
    let mut st_cpu = start;
    cpu.forward(&g.tokens, &mut st_cpu, Logits::None).unwrap();
    for (a, b) in copy.layers().iter().zip(st_cpu.layers()) {
        close("copied wkv", &a.wkv, &b.wkv, 1e-3);
    }
}

/// States fed on the device are written through the host; scores on the device (documents
/// in parallel on one queue) equal the CPU's.
#[test]
fn state_files_and_scores_from_the_device_equal_the_cpus() {
    let m = model_arg("shakespeare-rwkv6.safetensors");
    let dir = temp_dir("opencl-tools");
    let (cpu_st, dev_st) = (dir.join("cpu.state"), dir.join("dev.state"));
    let text = b"ROMEO:\nWhat light through yonder window breaks?";
    let r = run(
        "rwkv-state",
        &["feed", "-m", &m, "-o", cpu_st.to_str().unwrap()],
        text,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        "rwkv-state",
        &[
            "feed",
            "-m",
            &m,
            "--device",
            "opencl",
            "-o",
            dev_st.to_str().unwrap(),
        ],
        text,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = run(
        "rwkv-state",
        &[
            "diff",
            cpu_st.to_str().unwrap(),
            dev_st.to_str().unwrap(),
            "--json",
        ],
        b"",
    );
    for row in r.json() {
        assert!(row["max_abs_diff"].as_f64().unwrap() < 2e-3, "{row}");
    }
    let lines = b"ROMEO:\nJULIET:\nWhat light through yonder window breaks?\nIt is the east.\n";
    let cpu = run("rwkv-score", &["-m", &m, "-q", "--lines"], lines).json();
    let dev = run(
        "rwkv-score",
        &["-m", &m, "-q", "--lines", "--device", "opencl"],
        lines,
    )
    .json();
    assert_eq!(cpu.len(), 4);
    for (a, b) in cpu.iter().zip(&dev) {
        assert_eq!(a["tokens"], b["tokens"]);
        let (x, y) = (a["nll"].as_f64().unwrap(), b["nll"].as_f64().unwrap());
        assert!((x - y).abs() < 1e-3 * x.abs().max(1.0), "{x} vs {y}");
    }
}
