//! rwkv-state: make, inspect, import and compare RNN state files.

mod common;

use rwkv::backend::StateShape;
use rwkv::cli::state::{Args, Command, Diff, Feed, Import, Info};
use rwkv::cli::{self, exit, CliError, Output};
use rwkv::model::{Model, Precision, PROMPT_CHUNK};
use rwkv::state_file::{self, Mapped, StateFile, StateMeta};
use serde_json::json;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn main() {
    common::main_with("rwkv-state", run)
}

fn run(args: &Args) -> Result<(), CliError> {
    match &args.command {
        Command::Feed(a) => feed(args, a),
        Command::Info(a) => info(a),
        Command::Import(a) => import(a),
        // like cmp and diff: 0 the same, 1 different, 2 trouble
        Command::Diff(a) => match diff(a) {
            Ok(false) => Ok(()),
            Ok(true) => Err(CliError::reported()),
            Err(mut e) => {
                e.code = e.code.max(exit::USAGE);
                Err(e)
            }
        },
    }
}

/// Where a state goes: a file (atomically, checked before any work) or stdout.
fn destination(output: Option<&PathBuf>) -> Result<Option<PathBuf>, CliError> {
    match output {
        Some(p) if p.as_os_str() != "-" => {
            rwkv::atomic::check_writable(p)?;
            Ok(Some(p.clone()))
        }
        Some(_) => Ok(None),
        None if std::io::stdout().is_terminal() => Err(CliError::usage(
            "will not write a binary state to a terminal: pass -o FILE or redirect stdout".into(),
        )),
        None => Ok(None),
    }
}

fn write_state(sf: &StateFile, to: Option<PathBuf>) -> Result<(), CliError> {
    match to {
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

fn feed(args: &Args, a: &Feed) -> Result<(), CliError> {
    let state_from_stdin = a.state.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if state_from_stdin && a.prompt.is_none() && a.prompt_file.is_none() {
        return Err(CliError::usage(
            "--state - reads the state from stdin: give the text with -p or -f".into(),
        ));
    }
    let to = destination(a.output.as_ref())?;
    let t0 = Instant::now();
    let model = a.model.load_model(Precision::F32)?;
    // Token ids need no tokenizer; text does.
    let tok = match (a.ids, a.model.tokenizer(model.cfg.vocab)) {
        (_, Ok(t)) => Some(t),
        (true, Err(_)) => None,
        (false, Err(e)) => return Err(e),
    };
    let start = state_file::start_for(a.state.as_deref(), &model, a.force)?;
    let input = match (&a.prompt, &a.prompt_file) {
        (Some(t), _) => t.as_bytes().to_vec(),
        (None, Some(f)) => cli::read_input(f)?,
        (None, None) => {
            cli::stdin_hint("rwkv-state", "the text to feed", args.quiet);
            cli::read_stdin()?
        }
    };
    let ids = match &tok {
        Some(t) if !a.ids => t.encode(&input)?,
        _ => parse_ids(&input)?,
    };
    let mut state = start.state;
    let t1 = Instant::now();
    let logits = if ids.is_empty() {
        start.logits
    } else {
        Some(model.feed(&ids, &mut state, PROMPT_CHUNK)?)
    };
    if args.verbose {
        let s = t1.elapsed().as_secs_f64();
        eprintln!(
            "rwkv-state: loaded {} in {:.0} ms; fed {} tokens in {:.0} ms ({:.1} tokens/s)",
            model.path.display(),
            (t1 - t0).as_secs_f64() * 1e3,
            ids.len(),
            s * 1e3,
            ids.len() as f64 / s.max(1e-9)
        );
    }
    let tokenizer = tok.as_ref().map(|t| t.name()).unwrap_or_default();
    let sf = StateFile::of(
        &model,
        &state,
        logits,
        start.tokens + ids.len() as u64,
        tokenizer,
    )?;
    write_state(&sf, to)
}

/// A state file, or a state-tuning file read as one (no model: vocab and fingerprint
/// unknown); `-` reads stdin. Also whether it was a state-tuning file.
fn read_any(path: &Path) -> Result<(StateFile, bool), CliError> {
    if path.as_os_str() == "-" {
        let bytes = cli::read_stdin()?;
        return Ok((StateFile::from_bytes(Path::new("<stdin>"), &bytes)?, false));
    }
    match StateFile::load(path) {
        Ok(sf) => Ok((sf, false)),
        Err(first) => {
            let Ok((version, shape)) = state_file::tuning_shape(path) else {
                return Err(first.into());
            };
            let state = state_file::import_tuning(path, shape)?;
            let meta = StateMeta {
                arch: version.name.into(),
                shape,
                vocab: 0,
                fingerprint: String::new(),
                tokens: 0,
                tokenizer: String::new(),
            };
            let values = state.values()?;
            Ok((
                StateFile {
                    meta,
                    values,
                    logits: None,
                },
                true,
            ))
        }
    }
}

fn norm(v: impl Iterator<Item = f32>) -> f64 {
    v.map(|x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

/// What `info` shows, whichever kind of file it reads.
struct Shown {
    meta: StateMeta,
    kind: &'static str,
    has_logits: bool,
    norms: Vec<[f64; 3]>,
}

fn info(a: &Info) -> Result<(), CliError> {
    // A state file is mapped and read a layer at a time: memory stays what is shown.
    let shown = match (a.file.as_os_str() == "-", Mapped::open(&a.file)) {
        (false, Ok(m)) => Shown {
            kind: state_file::FORMAT,
            has_logits: m.has_logits(),
            norms: (0..m.meta().shape.layers)
                .map(|l| m.layer(l).map(norm))
                .collect(),
            meta: m.meta().clone(),
        },
        _ => {
            let (sf, tuning) = read_any(&a.file)?;
            let layers = sf.layers();
            Shown {
                kind: if tuning {
                    "state-tuning file"
                } else {
                    state_file::FORMAT
                },
                has_logits: sf.logits.is_some(),
                norms: layers
                    .iter()
                    .map(|l| {
                        let n = |v: &[f32]| norm(v.iter().copied());
                        [n(&l.att_shift), n(&l.wkv), n(&l.ffn_shift)]
                    })
                    .collect(),
                meta: sf.meta,
            }
        }
    };
    let (m, c) = (&shown.meta, shown.meta.shape);
    let mut out = Output::stdout(false);
    if a.json {
        let layers: Vec<_> = shown
            .norms
            .iter()
            .map(|n| json!({"att_shift": n[0], "wkv": n[1], "ffn_shift": n[2]}))
            .collect();
        let tuning = shown.kind != state_file::FORMAT;
        let rec = json!({
            "file": a.file.display().to_string(),
            "format": shown.kind,
            "format_version": if tuning { "" } else { state_file::VERSION },
            "arch": m.arch,
            "n_layer": c.layers,
            "n_embd": c.embd,
            "n_head": c.heads,
            "head_size": c.head_size,
            "vocab": m.vocab,
            "model_fingerprint": m.fingerprint,
            "tokens": m.tokens,
            "tokenizer": m.tokenizer,
            "has_logits": shown.has_logits,
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
        let vocab = if m.vocab == 0 {
            "unknown".into()
        } else {
            m.vocab.to_string()
        };
        let mut s = String::new();
        s += &format!("file         {}\n", a.file.display());
        s += &format!("format       {} ({})\n", shown.kind, m.arch);
        s += &format!("shape        {c}, vocab {vocab}\n");
        s += &format!("model        {}\n", unknown(&m.fingerprint));
        s += &format!("tokens fed   {}\n", m.tokens);
        s += &format!("tokenizer    {}\n", unknown(&m.tokenizer));
        s += &format!(
            "logits       {}\n",
            if shown.has_logits { "yes" } else { "no" }
        );
        s += "layer   |att_shift|       |wkv|   |ffn_shift|\n";
        for (l, n) in shown.norms.iter().enumerate() {
            s += &format!("{l:>5} {:>11.4} {:>11.4} {:>11.4}\n", n[0], n[1], n[2]);
        }
        out.write(s.as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn import(a: &Import) -> Result<(), CliError> {
    let to = destination(Some(&a.output))?;
    let sf = match &a.model {
        Some(m) => {
            let model = Model::load(m)?;
            let state = state_file::import_for(&a.file, &model)?;
            StateFile::of(&model, &state, None, 0, "")?
        }
        None => read_any(&a.file)?.0,
    };
    write_state(&sf, to)
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

/// Print the differences; whether there are any.
fn diff(a: &Diff) -> Result<bool, CliError> {
    if a.a.as_os_str() == "-" && a.b.as_os_str() == "-" {
        return Err(CliError::usage(
            "only one of the two states can be read from stdin".into(),
        ));
    }
    let (x, _) = read_any(&a.a)?;
    let (y, _) = read_any(&a.b)?;
    let shape = |s: StateShape| format!("{} layers of width {}", s.layers, s.embd);
    if x.meta.shape != y.meta.shape || x.meta.arch != y.meta.arch {
        return Err(CliError::runtime(format!(
            "{} and {} are states of different models ({} {} against {} {})",
            a.a.display(),
            a.b.display(),
            x.meta.arch,
            shape(x.meta.shape),
            y.meta.arch,
            shape(y.meta.shape)
        )));
    }
    let mut rows: Vec<(String, (f64, f64))> = Vec::new();
    for (l, (p, q)) in x.layers().iter().zip(y.layers()).enumerate() {
        rows.push((format!("{l}.att_shift"), delta(&p.att_shift, &q.att_shift)));
        rows.push((format!("{l}.wkv"), delta(&p.wkv, &q.wkv)));
        rows.push((format!("{l}.ffn_shift"), delta(&p.ffn_shift, &q.ffn_shift)));
    }
    let mut differ = x.values != y.values;
    match (&x.logits, &y.logits) {
        (Some(p), Some(q)) if p.len() == q.len() => {
            rows.push(("logits".into(), delta(p, q)));
            differ |= p != q;
        }
        (None, None) => {}
        _ => differ = true,
    }
    let mut out = Output::stdout(false);
    let mut s = String::new();
    if !a.json {
        s += "tensor           max|diff|    mean|diff|\n";
    }
    for (name, (max, mean)) in rows {
        if a.json {
            let rec = json!({"tensor": name, "max_abs_diff": max, "mean_abs_diff": mean});
            s += &format!("{rec}\n");
        } else {
            s += &format!("{name:<14} {max:>12.4e} {mean:>12.4e}\n");
        }
    }
    out.write(s.as_bytes())?;
    out.flush()?;
    Ok(differ)
}
