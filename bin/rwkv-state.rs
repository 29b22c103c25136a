//! rwkv-state: make, inspect, import and compare RNN state files.

mod common;

use rwkv::cli::state::{Args, Command, Diff, Feed, Import, Info};
use rwkv::cli::{self, CliError, Output};
use rwkv::model::{Model, Precision, PROMPT_CHUNK};
use rwkv::state_file::{self, StateFile};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

fn main() {
    common::main_with("rwkv-state", run)
}

fn run(args: &Args) -> Result<(), CliError> {
    match &args.command {
        Command::Feed(a) => feed(a),
        Command::Info(a) => info(a),
        Command::Import(a) => import(a),
        Command::Diff(a) => diff(a),
    }
}

/// Where a state goes: a file (atomically) or stdout.
fn destination(output: Option<&PathBuf>) -> Result<Option<PathBuf>, CliError> {
    match output {
        Some(p) if p.as_os_str() != "-" => Ok(Some(p.clone())),
        Some(_) => Ok(None),
        None if std::io::stdout().is_terminal() => Err(CliError::usage(
            "will not write a binary state to a terminal: pass -o FILE or redirect stdout".into(),
        )),
        None => Ok(None),
    }
}

fn write_state(sf: &StateFile, output: Option<&PathBuf>) -> Result<(), CliError> {
    match destination(output)? {
        Some(p) => sf.save(&p)?,
        None => {
            let mut out = Output::stdout(false);
            out.write(&sf.to_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

/// Token ids from text like `1 2, 3\n4`.
fn parse_ids(input: &[u8]) -> Result<Vec<u32>, CliError> {
    let text = std::str::from_utf8(input)
        .map_err(|_| CliError::runtime("--ids input is not UTF-8 text".into()))?;
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u32>().map_err(|_| {
                CliError::runtime(format!(
                    "--ids input: item {} (`{s}`) is not a token id",
                    i + 1
                ))
            })
        })
        .collect()
}

fn feed(a: &Feed) -> Result<(), CliError> {
    let state_from_stdin = a.state.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if state_from_stdin && a.text.is_none() && a.file.is_none() {
        return Err(CliError::usage(
            "--state - reads the state from stdin: give the text with -p or -f".into(),
        ));
    }
    // Check the destination before the work.
    destination(a.output.as_ref())?;
    let model = a.model.load_model(Precision::F32)?;
    // Token ids need no tokenizer; text does.
    let tok = match (a.ids, a.model.tokenizer(model.cfg.vocab)) {
        (_, Ok(t)) => Some(t),
        (true, Err(_)) => None,
        (false, Err(e)) => return Err(e),
    };
    let start = state_file::start_for(a.state.as_deref(), &model, a.force)?;
    let input = match (&a.text, &a.file) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some(f)) => {
            std::fs::read(f).map_err(|e| CliError::runtime(format!("{}: {e}", f.display())))?
        }
        (None, None) => cli::read_stdin()?,
    };
    let ids = match &tok {
        Some(t) if !a.ids => t.encode(&input)?,
        _ => parse_ids(&input)?,
    };
    let mut state = start.state;
    let logits = if ids.is_empty() {
        start.logits
    } else {
        Some(model.feed(&ids, &mut state, PROMPT_CHUNK)?)
    };
    let tokenizer = tok.map(|t| t.name()).unwrap_or_default();
    let sf = StateFile::of(
        &model,
        &state,
        logits,
        start.tokens + ids.len() as u64,
        tokenizer,
    )?;
    write_state(&sf, a.output.as_ref())
}

/// A state file, or a state-tuning file read as one (no model: vocab and fingerprint unknown).
fn read_any(path: &Path) -> Result<(StateFile, bool), CliError> {
    match StateFile::load(path) {
        Ok(sf) => Ok((sf, false)),
        Err(first) => {
            let Ok(shape) = state_file::tuning_shape(path) else {
                return Err(first.into());
            };
            let state = state_file::import_tuning(path, shape)?;
            Ok((
                StateFile {
                    meta: state_file::StateMeta {
                        arch: "rwkv6".into(),
                        shape,
                        vocab: 0,
                        fingerprint: String::new(),
                        tokens: 0,
                        tokenizer: String::new(),
                    },
                    values: state.values()?,
                    logits: None,
                },
                true,
            ))
        }
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt()
}

fn info(a: &Info) -> Result<(), CliError> {
    let (sf, tuning) = read_any(&a.file)?;
    let c = &sf.meta.shape;
    let norms: Vec<[f64; 3]> = sf
        .layers()
        .iter()
        .map(|l| [norm(&l.att_shift), norm(&l.wkv), norm(&l.ffn_shift)])
        .collect();
    let kind = if tuning {
        "state-tuning file"
    } else {
        state_file::FORMAT
    };
    let mut out = Output::stdout(false);
    if a.json {
        let layers: Vec<_> = norms
            .iter()
            .map(|n| json!({"att_shift": n[0], "wkv": n[1], "ffn_shift": n[2]}))
            .collect();
        let rec = json!({
            "file": a.file.display().to_string(),
            "format": kind,
            "format_version": if tuning { "" } else { state_file::VERSION },
            "arch": sf.meta.arch,
            "n_layer": c.layers,
            "n_embd": c.embd,
            "n_head": c.heads,
            "head_size": c.head_size,
            "vocab": sf.meta.vocab,
            "model_fingerprint": sf.meta.fingerprint,
            "tokens": sf.meta.tokens,
            "tokenizer": sf.meta.tokenizer,
            "has_logits": sf.logits.is_some(),
            "layers": layers,
        });
        out.write(format!("{rec}\n").as_bytes())?;
    } else {
        let unknown = |s: &str| {
            if s.is_empty() {
                "unknown".to_string()
            } else {
                s.to_string()
            }
        };
        let mut s = String::new();
        s += &format!("file         {}\n", a.file.display());
        s += &format!("format       {kind} ({})\n", sf.meta.arch);
        s += &format!(
            "shape        {} layers, width {}, {} heads of {}, vocab {}\n",
            c.layers,
            c.embd,
            c.heads,
            c.head_size,
            if sf.meta.vocab == 0 {
                "unknown".into()
            } else {
                sf.meta.vocab.to_string()
            }
        );
        s += &format!("model        {}\n", unknown(&sf.meta.fingerprint));
        s += &format!("tokens fed   {}\n", sf.meta.tokens);
        s += &format!("tokenizer    {}\n", unknown(&sf.meta.tokenizer));
        s += &format!(
            "logits       {}\n",
            if sf.logits.is_some() { "yes" } else { "no" }
        );
        s += "layer   |att_shift|       |wkv|   |ffn_shift|\n";
        for (l, n) in norms.iter().enumerate() {
            s += &format!("{l:>5} {:>11.4} {:>11.4} {:>11.4}\n", n[0], n[1], n[2]);
        }
        out.write(s.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn import(a: &Import) -> Result<(), CliError> {
    let sf = match &a.model {
        Some(m) => {
            let model = Model::load(m)?;
            let state = state_file::import_tuning(&a.file, model.cfg.state_shape())?;
            StateFile::of(&model, &state, None, 0, "")?
        }
        None => read_any(&a.file)?.0,
    };
    write_state(&sf, Some(&a.output))
}

/// max and mean |a - b|.
fn delta(a: &[f32], b: &[f32]) -> (f64, f64) {
    let mut max = 0.0f64;
    let mut sum = 0.0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (*x as f64 - *y as f64).abs();
        max = max.max(d);
        sum += d;
    }
    (
        max,
        if a.is_empty() {
            0.0
        } else {
            sum / a.len() as f64
        },
    )
}

fn diff(a: &Diff) -> Result<(), CliError> {
    let (x, _) = read_any(&a.a)?;
    let (y, _) = read_any(&a.b)?;
    let (cx, cy) = (&x.meta.shape, &y.meta.shape);
    if cx != cy {
        return Err(CliError::runtime(format!(
            "{} and {} have different shapes ({} layers of width {} vs {} of {})",
            a.a.display(),
            a.b.display(),
            cx.layers,
            cx.embd,
            cy.layers,
            cy.embd
        )));
    }
    let mut rows: Vec<(String, (f64, f64))> = Vec::new();
    for (l, (p, q)) in x.layers().iter().zip(y.layers()).enumerate() {
        rows.push((format!("{l}.att_shift"), delta(&p.att_shift, &q.att_shift)));
        rows.push((format!("{l}.wkv"), delta(&p.wkv, &q.wkv)));
        rows.push((format!("{l}.ffn_shift"), delta(&p.ffn_shift, &q.ffn_shift)));
    }
    if let (Some(p), Some(q)) = (&x.logits, &y.logits) {
        if p.len() == q.len() {
            rows.push(("logits".into(), delta(p, q)));
        }
    }
    let mut out = Output::stdout(false);
    let mut s = String::new();
    if !a.json {
        s += "tensor           max|diff|    mean|diff|\n";
    }
    for (name, (max, mean)) in rows {
        if a.json {
            s += &format!(
                "{}\n",
                json!({"tensor": name, "max_abs_diff": max, "mean_abs_diff": mean})
            );
        } else {
            s += &format!("{name:<14} {max:>12.4e} {mean:>12.4e}\n");
        }
    }
    out.write(s.as_bytes())?;
    out.flush()?;
    Ok(())
}
