//! rwkv-state: make, inspect, import and compare RNN state files.

mod common;

use rwkv::cli::progress::Progress;
use rwkv::cli::state::{Args, Command, Diff, Feed, Import, Info};
use rwkv::cli::{self, exit, CliError, Output};
use rwkv::model::describe::Description;
use rwkv::model::{Model, Precision, PROMPT_CHUNK};
use rwkv::state_file::{self, StateFile};
use rwkv::{state_info, tokenizer};
use std::io::IsTerminal;
use std::path::PathBuf;
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
    let tok = match (
        a.ids,
        a.model.tokenizer(model.cfg.vocab, model.vocabulary.clone()),
    ) {
        (_, Ok(t)) => Some(t),
        (true, Err(_)) => None,
        (false, Err(e)) => return Err(e),
    };
    let start = state_file::start_for(a.state.as_deref(), &model, a.force)?;
    let how = ("rwkv-state", "the text to feed", args.quiet);
    let input = cli::read_prompt(a.prompt.as_deref(), a.prompt_file.as_deref(), how)?;
    let ids = match &tok {
        Some(t) if !a.ids => t.encode(&input)?,
        _ => tokenizer::parse_ids(&input)
            .map_err(|e| CliError::runtime(format!("--ids input: {e}")))?,
    };
    let mut state = start.state;
    let t1 = Instant::now();
    let logits = if ids.is_empty() {
        start.logits
    } else {
        let bar = Progress::tokens(!args.quiet, ids.len() as u64);
        let fed = model.feed_telling(&ids, &mut state, PROMPT_CHUNK, &mut |n| {
            bar.add(n as u64, n as u64)
        });
        bar.clear();
        Some(fed?)
    };
    if args.verbose {
        let s = t1.elapsed().as_secs_f64();
        rwkv::say!(
            "rwkv-state: loaded {} in {:.0} ms; fed {} tokens in {:.0} ms ({:.1} tokens/s){}",
            model.path.display(),
            (t1 - t0).as_secs_f64() * 1e3,
            ids.len(),
            s * 1e3,
            ids.len() as f64 / s.max(1e-9),
            cli::peak_memory_note()
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

fn info(a: &Info) -> Result<(), CliError> {
    let (json, text) = if a.file.as_os_str() != "-" && Description::is_model(&a.file) {
        let d = Description::read(&a.file)?;
        (d.json(&a.file), d.text(&a.file))
    } else {
        let info = state_info::Info::read(&a.file)?;
        (info.json(&a.file), info.text(&a.file))
    };
    let mut out = Output::stdout(false);
    match a.json {
        true => out.write(format!("{json}\n").as_bytes())?,
        false => out.write(text.as_bytes())?,
    }
    Ok(out.flush()?)
}

fn import(a: &Import) -> Result<(), CliError> {
    let to = destination(Some(&a.output))?;
    let sf = match &a.model {
        Some(m) => {
            let model = Model::load(m)?;
            let state = state_file::import_for(&a.file, &model)?;
            StateFile::of(&model, &state, None, 0, "")?
        }
        None => {
            let sf = StateFile::read_any(&a.file)?.0;
            if rwkv::model::registry::by_name(&sf.meta.arch).is_none() {
                return Err(CliError::runtime(format!(
                    "{}: a state-tuning file of {} (their files look alike): give the model \
                     with -m",
                    a.file.display(),
                    sf.meta.arch
                )));
            }
            sf
        }
    };
    write_state(&sf, to)
}

/// Print the differences; whether there are any.
fn diff(a: &Diff) -> Result<bool, CliError> {
    if a.a.as_os_str() == "-" && a.b.as_os_str() == "-" {
        return Err(CliError::usage(
            "only one of the two states can be read from stdin".into(),
        ));
    }
    let (x, _) = StateFile::read_any(&a.a)?;
    let (y, _) = StateFile::read_any(&a.b)?;
    let d = state_info::Diff::of(&x, &y, [&a.a, &a.b])?;
    let mut out = Output::stdout(false);
    out.write(d.render(a.json).as_bytes())?;
    out.flush()?;
    Ok(d.differ)
}
