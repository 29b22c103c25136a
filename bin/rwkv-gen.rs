//! rwkv-gen: prompt in, generated text out.

mod common;

use rwkv::cli::gen::{Args, Format};
use rwkv::cli::{self, signal, CliError, Line, Output};
use rwkv::generate::batch::{self, InOrder, Next, Outcome};
use rwkv::generate::request::{self, Defaults, Prompt, Request};
use rwkv::generate::{Finish, Generation, Options, Step};
use rwkv::model::Precision;
use rwkv::state_file::{self, Start, StateFile};
use rwkv::tokenizer::Tokenizer;
use rwkv::Model;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::sync::mpsc::TryRecvError;
use std::time::Instant;

fn main() {
    common::main_with("rwkv-gen", run)
}

/// What one run shares.
struct Ctx<'a> {
    args: &'a Args,
    model: &'a Model,
    tok: &'a Tokenizer,
    seed: u64,
}

fn run(args: &Args) -> Result<(), CliError> {
    if args.list_devices {
        let mut out = Output::stdout(false);
        for line in rwkv::backend::opencl::list_devices()? {
            out.write(format!("{line}\n").as_bytes())?;
        }
        return Ok(out.flush()?);
    }
    let many = args.lines || args.jsonl;
    if args.save_state.is_some() && many {
        return Err(CliError::usage(
            "--save-state goes with one prompt or --chat (a --jsonl request has `save_state`)"
                .into(),
        ));
    }
    let state_on_stdin = args.state.as_ref().is_some_and(|p| p.as_os_str() == "-");
    let prompt_given = args.prompt.is_some() || args.prompt_file.is_some();
    if state_on_stdin && (many || args.chat || !prompt_given) {
        return Err(CliError::usage(
            "--state - reads the state from stdin: give the prompt with -p or -f".into(),
        ));
    }
    if args.top_logprobs > 0 && args.format != Format::Jsonl && !args.jsonl {
        return Err(CliError::usage(
            "--top-logprobs needs --format jsonl or --jsonl".into(),
        ));
    }
    if let Some(p) = &args.save_state {
        rwkv::atomic::check_writable(p)?;
    }
    let t0 = Instant::now();
    let (model, tok) = args.model.load(Precision::Bf16)?;
    if args.verbose {
        let c = &model.cfg;
        let prec = match model.sequence_precision() {
            Precision::F32 => "f32",
            Precision::Bf16 | Precision::Bf16Streams => "bf16",
        };
        eprintln!(
            "rwkv-gen: loaded {} ({}, {} names, {} layers, width {}, vocab {}, tokenizer {}, \
             {prec} products, on {}) in {:.0} ms",
            model.path.display(),
            c.version.title,
            model.layout.name(),
            c.n_layer,
            c.n_embd,
            c.vocab,
            tok.name(),
            model.device(),
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let start = state_file::start_for(args.state.as_deref(), &model, args.force)?;
    let seed = args.sampling.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    let ctx = Ctx {
        args,
        model: &model,
        tok: &tok,
        seed,
    };
    if many {
        many_prompts(&ctx, start)
    } else if args.chat {
        chat(&ctx, start)
    } else {
        let prompt = match (&args.prompt, &args.prompt_file) {
            (Some(p), _) => p.as_bytes().to_vec(),
            (None, Some(f)) => cli::read_input(f)?,
            (None, None) => {
                cli::stdin_hint("rwkv-gen", "the prompt", args.quiet);
                cli::read_stdin()?
            }
        };
        one_prompt(&ctx, start, &prompt)
    }
}

impl Ctx<'_> {
    /// The options of a prompt given on the command line.
    fn options(&self, chat: bool) -> Options {
        let a = self.args;
        Options {
            max_tokens: a.max_tokens,
            sampler: a.sampler().config(chat),
            stop: a.stop.iter().map(|s| s.as_bytes().to_vec()).collect(),
            ignore_eos: a.ignore_eos,
            seed: self.seed,
            top_logprobs: a.top_logprobs,
            per_token: a.format == Format::Jsonl || a.top_logprobs > 0,
            keep_state: a.save_state.is_some() || chat,
        }
    }

    /// One token's `--format jsonl` object.
    fn token_line(&self, step: &Step) -> Vec<u8> {
        format!("{}\n", step.token.record(self.tok)).into_bytes()
    }

    /// Say so when the model ended the text at once.
    fn hint_if_empty(&self, g: &Generation) {
        let out = g.generated();
        if !self.args.quiet && out.tokens.is_empty() && out.finish == Some(Finish::Eos) {
            eprintln!(
                "rwkv-gen: the model ended the text at once (end-of-text token); \
                 --ignore-eos goes on past it"
            );
        }
    }

    fn verbose(&self, g: &Generation) {
        if self.args.verbose {
            let o = g.generated();
            let rate = |n: usize, d: std::time::Duration| n as f64 / d.as_secs_f64().max(1e-9);
            eprintln!(
                "rwkv-gen: prompt {} tokens in {:.0} ms ({:.1} tokens/s); generated {} tokens \
                 in {:.0} ms ({:.2} tokens/s); {}",
                o.prompt_tokens,
                o.prompt_time.as_secs_f64() * 1e3,
                rate(o.prompt_tokens, o.prompt_time),
                o.tokens.len(),
                o.gen_time.as_secs_f64() * 1e3,
                rate(o.tokens.len(), o.gen_time),
                o.finish.unwrap_or(Finish::Length).name()
            );
        }
    }

    /// Stream one answer to `out` (each token as it comes), then its record (jsonl).
    fn answer(
        &self,
        g: &mut Generation,
        out: &mut Output,
        echo: Option<&[u8]>,
    ) -> Result<(), CliError> {
        let jsonl = self.args.format == Format::Jsonl;
        if let (Some(p), false) = (echo, jsonl) {
            out.write(p)?;
        }
        let _deferred = signal::defer();
        loop {
            if signal::interrupted() {
                g.interrupt();
            }
            let Some(step) = g.step()? else { break };
            out.write(&if jsonl {
                self.token_line(&step)
            } else {
                step.emit
            })?;
            out.tick()?;
        }
        let tail = g.drain();
        if jsonl {
            let mut rec = g.generated().record(self.tok);
            if let Some(p) = echo {
                rec["prompt"] = json!(String::from_utf8_lossy(p));
            }
            out.write(format!("{rec}\n").as_bytes())?;
        } else {
            out.write(&tail)?;
        }
        out.tick()?;
        self.hint_if_empty(g);
        self.verbose(g);
        Ok(())
    }

    fn save(&self, start: &Start) -> Result<(), CliError> {
        if let Some(p) = &self.args.save_state {
            let sf = StateFile::of(
                self.model,
                &start.state,
                start.logits.clone(),
                start.tokens,
                self.tok.name(),
            )?;
            sf.save(p)?;
        }
        Ok(())
    }
}

fn one_prompt(ctx: &Ctx, start: Start, prompt: &[u8]) -> Result<(), CliError> {
    let mut out = Output::stdout(true);
    let mut g = Generation::new(ctx.model, ctx.tok, start, ctx.options(false));
    g.prompt(&ctx.tok.encode(prompt)?)?;
    ctx.answer(&mut g, &mut out, ctx.args.echo.then_some(prompt))?;
    out.flush()?;
    let interrupted = g.generated().finish == Some(Finish::Interrupted);
    ctx.save(&g.finish().1)?;
    if interrupted {
        return Err(CliError::interrupted());
    }
    Ok(())
}

/// One conversation: each stdin line a user turn, each reply ending at a blank line.
fn chat(ctx: &Ctx, mut cur: Start) -> Result<(), CliError> {
    let mut out = Output::stdout(true);
    cli::stdin_hint("rwkv-gen", "chat turns, a line each,", ctx.args.quiet);
    let mut input = std::io::stdin().lock();
    let mut turn = 0u64;
    let max = ctx.args.max_line_bytes;
    while let Some(line) = cli::read_line(&mut input, max)
        .map_err(|e| CliError::runtime(format!("reading stdin: {e}")))?
    {
        let line = match line {
            Line::Text(l) => l,
            Line::TooLong(n) => {
                let msg = format!("a chat turn of {n} bytes, longer than --max-line-bytes ({max})");
                return Err(CliError::runtime(msg));
            }
            Line::Unreadable(e) => return Err(CliError::runtime(format!("reading stdin: {e}"))),
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let prompt = [b"User: ".as_slice(), &line, b"\n\nAssistant:"].concat();
        let mut opts = ctx.options(true);
        opts.stop.push(b"\n\n".to_vec());
        opts.seed = ctx.seed.wrapping_add(turn);
        turn += 1;
        let mut g = Generation::new(ctx.model, ctx.tok, cur, opts);
        g.prompt(&ctx.tok.encode(&prompt)?)?;
        ctx.answer(&mut g, &mut out, None)?;
        if ctx.args.format == Format::Text {
            out.write(b"\n\n")?;
        }
        out.flush()?;
        let interrupted = g.generated().finish == Some(Finish::Interrupted);
        cur = g.finish().1;
        if interrupted {
            ctx.save(&cur)?;
            return Err(CliError::interrupted());
        }
    }
    ctx.save(&cur)
}

/// Why an input line gives no answer (its request id and the message, on its record), or
/// why the run stops (writing stdout failed).
enum Failed {
    Input { id: Option<Value>, msg: String },
    Output(CliError),
}

impl Failed {
    fn input(id: Option<&Value>, msg: impl std::fmt::Display) -> Failed {
        Failed::Input {
            id: id.cloned(),
            msg: msg.to_string(),
        }
    }
}

impl From<rwkv::Error> for Failed {
    fn from(e: rwkv::Error) -> Self {
        Failed::input(None, e)
    }
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Output(e.into())
    }
}

/// `--lines` and `--jsonl`: every input line a prompt (or a request), up to `--batch` of
/// them decoded together; one record per line, each written as soon as it and every one
/// before it are complete.
fn many_prompts(ctx: &Ctx, initial: Start) -> Result<(), CliError> {
    let a = ctx.args;
    let text = a.lines && a.format == Format::Text;
    // One stream at a time, in input order: a text answer's bytes go out as they come.
    let streamed = text && a.batch == 1 && !a.echo;
    let record_end = a.record_end();
    let defaults = Defaults {
        max_tokens: a.max_tokens,
        sampler: a.sampler(),
        stop: a.stop.iter().map(|s| s.as_bytes().to_vec()).collect(),
        seed: ctx.seed,
        state: None,
        vocab: ctx.model.cfg.vocab,
    };
    cli::stdin_hint("rwkv-gen", "prompts, a line each,", a.quiet);
    let lines = cli::lines_of_stdin(a.max_line_bytes, 2 * a.batch as usize);
    // What each line asked for, kept until its record is written.
    let requests = RefCell::new(Vec::<Option<Request>>::new());
    let mut index = 0;
    let mut inputs = |wait: bool| {
        let line = match (wait, lines.try_recv()) {
            (_, Ok(l)) => l,
            (true, Err(TryRecvError::Empty)) => match lines.recv() {
                Ok(l) => l,
                Err(_) => return Next::End,
            },
            (false, Err(TryRecvError::Empty)) => return Next::Later,
            (_, Err(TryRecvError::Disconnected)) => return Next::End,
        };
        let i = index;
        index += 1;
        requests.borrow_mut().push(None);
        Next::Input((
            i,
            begin(ctx, &initial, &defaults, line, i, &record_end, &requests),
        ))
    };
    let out = RefCell::new(Output::stdout(true));
    let mut order = InOrder::<Vec<u8>>::default();
    let (mut failed, mut answered, mut generated) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    let mut on_step = |_: usize, step: &Step| -> Result<(), Failed> {
        if streamed {
            let mut out = out.borrow_mut();
            out.write(&step.emit)?;
            out.tick()?;
        }
        Ok(())
    };
    let mut done = |i: usize, o: Outcome<'_, Failed>| -> Result<(), Failed> {
        let req = requests.borrow_mut()[i].take();
        let rec = match o.and_then(|mut g| {
            answered += 1;
            generated += g.generated().tokens.len();
            finished(ctx, &mut g, req.as_ref(), i, streamed, &record_end)
        }) {
            Ok(rec) => rec,
            Err(Failed::Output(e)) => return Err(Failed::Output(e)),
            Err(Failed::Input { id, msg }) => {
                failed += 1;
                if a.jsonl {
                    format!("{}\n", request::error(id.as_ref(), &msg)).into_bytes()
                } else {
                    eprintln!("rwkv-gen: line {}: {msg}", i + 1);
                    if text {
                        record_end.clone()
                    } else {
                        Vec::new()
                    }
                }
            }
        };
        let mut out = out.borrow_mut();
        for r in order.put(i, rec) {
            out.write(&r)?;
        }
        out.tick()?;
        Ok(())
    };
    let _deferred = signal::defer();
    let result = batch::run(
        ctx.model,
        a.batch as usize,
        &mut inputs,
        &mut on_step,
        &mut done,
        &signal::interrupted,
    );
    out.borrow_mut().flush()?;
    match result {
        Ok(()) => {}
        Err(Failed::Output(e)) => return Err(e),
        Err(Failed::Input { msg, .. }) => return Err(CliError::runtime(msg)),
    }
    if a.verbose {
        let s = started.elapsed().as_secs_f64();
        eprintln!(
            "rwkv-gen: {answered} prompts, {generated} tokens in {s:.1} s ({:.2} tokens/s, \
             batch {})",
            generated as f64 / s.max(1e-9),
            a.batch
        );
    }
    if signal::interrupted() {
        return Err(CliError::interrupted());
    }
    match failed {
        0 => Ok(()),
        // each --jsonl error is in its result; stderr says how many
        n if a.jsonl => Err(CliError::runtime(format!(
            "{n} of {} requests failed (their results carry the error)",
            answered + n
        ))),
        _ => Err(CliError::reported()),
    }
}

/// A stream for input line `i`, its prompt fed.
fn begin<'a>(
    ctx: &Ctx<'a>,
    initial: &Start,
    defaults: &Defaults,
    line: Line,
    i: usize,
    record_end: &[u8],
    requests: &RefCell<Vec<Option<Request>>>,
) -> Outcome<'a, Failed> {
    let a = ctx.args;
    let line = match line {
        Line::Text(l) => l,
        Line::TooLong(n) => {
            let msg = format!(
                "{n} bytes, longer than --max-line-bytes ({})",
                a.max_line_bytes
            );
            return Err(Failed::input(None, msg));
        }
        Line::Unreadable(e) => return Err(Failed::input(None, format!("reading stdin: {e}"))),
    };
    let mut opts = ctx.options(false);
    let (start, ids) = if a.jsonl {
        let r =
            request::parse(&line, defaults).map_err(|r| Failed::input(r.id.as_ref(), r.error))?;
        let fail = |e: rwkv::Error| Failed::input(r.id.as_ref(), e);
        if let Some(p) = &r.save_state {
            rwkv::atomic::check_writable(p).map_err(fail)?;
        }
        let start = match &r.state {
            Some(p) => state_file::load_for(p, ctx.model, a.force).map_err(fail)?,
            None => initial.try_clone().map_err(fail)?,
        };
        let ids = match &r.prompt {
            Prompt::Text(t) => ctx.tok.encode(t).map_err(fail)?,
            Prompt::Ids(ids) => ids.clone(),
        };
        opts.max_tokens = r.max_tokens;
        opts.sampler = r.sampler.config(false);
        opts.stop = r.stop.clone();
        opts.seed = r.seed;
        opts.keep_state = r.save_state.is_some();
        requests.borrow_mut()[i] = Some(r);
        (start, ids)
    } else {
        if a.format == Format::Text {
            opts.stop.push(record_end.to_vec());
        }
        let prompt = if a.echo { line.clone() } else { Vec::new() };
        requests.borrow_mut()[i] = Some(Request {
            id: None,
            prompt: Prompt::Text(prompt),
            max_tokens: 0,
            sampler: a.sampler(),
            stop: Vec::new(),
            seed: 0,
            state: None,
            save_state: None,
        });
        (initial.try_clone()?, ctx.tok.encode(&line)?)
    };
    let mut g = Generation::new(ctx.model, ctx.tok, start, opts);
    g.prompt(&ids).map_err(|e| {
        let reqs = requests.borrow();
        Failed::input(reqs[i].as_ref().and_then(|r| r.id.as_ref()), e)
    })?;
    Ok(g)
}

/// The record of a finished line: the answer (text, or its jsonl objects), or the
/// request's result (`--jsonl`), its state saved when asked.
fn finished(
    ctx: &Ctx,
    g: &mut Generation,
    req: Option<&Request>,
    i: usize,
    streamed: bool,
    record_end: &[u8],
) -> Result<Vec<u8>, Failed> {
    let a = ctx.args;
    let tail = g.drain();
    let out = g.generated();
    if a.jsonl {
        let id = req.and_then(|r| r.id.as_ref());
        if let Some(p) = req.and_then(|r| r.save_state.as_ref()) {
            let (state, logits) = (&g.state, g.logits().map(<[f32]>::to_vec));
            StateFile::of(ctx.model, state, logits, g.fed, ctx.tok.name())
                .and_then(|sf| sf.save(p))
                .map_err(|e| Failed::input(id, e))?;
        }
        return Ok(format!("{}\n", request::result(id, out, ctx.tok)).into_bytes());
    }
    let echo = req.map(|r| match &r.prompt {
        Prompt::Text(t) => t.clone(),
        Prompt::Ids(_) => Vec::new(),
    });
    if a.format == Format::Jsonl {
        let mut s = String::new();
        for t in &out.per_token {
            s += &format!("{}\n", t.record(ctx.tok));
        }
        let mut rec = out.record(ctx.tok);
        rec.as_object_mut()
            .expect("a record is an object")
            .remove("per_token");
        rec["line"] = json!(i + 1);
        if a.echo {
            rec["prompt"] = json!(String::from_utf8_lossy(&echo.unwrap_or_default()));
        }
        s += &format!("{rec}\n");
        return Ok(s.into_bytes());
    }
    let mut rec = Vec::new();
    if !streamed {
        rec.extend(echo.unwrap_or_default());
        rec.extend_from_slice(&out.text);
    } else {
        rec.extend(tail);
    }
    rec.extend_from_slice(record_end);
    Ok(rec)
}
