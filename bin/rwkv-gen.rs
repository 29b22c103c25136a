//! rwkv-gen: prompt in, generated text out.

mod common;

use rwkv::cli::gen::{self, Args, Format};
use rwkv::cli::{self, signal, CliError, Line, Output};
use rwkv::constrain::Constraint;
use rwkv::generate::lines::{Failed, Sinks};
use rwkv::generate::{chat, Finish, Generation};
use rwkv::model::Precision;
use rwkv::state_file::{self, Start, StateFile};
use rwkv::tokenizer::Tokenizer;
use rwkv::Model;
use serde_json::json;
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
    /// What every answer is held to.
    constraint: Option<Constraint>,
}

fn run(args: &Args) -> Result<(), CliError> {
    if args.list_devices {
        let mut out = Output::stdout(false);
        for line in rwkv::backend::opencl::list_devices()? {
            out.write(format!("{line}\n").as_bytes())?;
        }
        return Ok(out.flush()?);
    }
    args.check()?;
    let t0 = Instant::now();
    let (model, tok) = args.model.load(Precision::Bf16)?;
    if args.verbose {
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        rwkv::say!(
            "rwkv-gen: loaded {} in {ms:.0} ms",
            gen::loaded(&model, &tok)
        );
    }
    let start = state_file::start_for(args.state.as_deref(), &model, args.force)?;
    let ctx = Ctx {
        args,
        model: &model,
        tok: &tok,
        seed: args.seed(),
        constraint: args.constraint(&tok, model.cfg.vocab)?,
    };
    if args.lines || args.jsonl {
        many_prompts(&ctx, start)
    } else if args.chat {
        chat(&ctx, start)
    } else {
        let how = ("rwkv-gen", "the prompt", args.quiet);
        let prompt = cli::read_prompt(args.prompt.as_deref(), args.prompt_file.as_deref(), how)?;
        one_prompt(&ctx, start, &prompt)
    }
}

impl Ctx<'_> {
    /// Say so when the model ended the text at once.
    fn hint_if_empty(&self, g: &Generation) {
        let out = g.generated();
        if !self.args.quiet && out.tokens.is_empty() && out.finish == Some(Finish::Eos) {
            rwkv::say!(
                "rwkv-gen: the model ended the text at once (end-of-text token); \
                 --ignore-eos goes on past it"
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
                format!("{}\n", step.token.record(self.tok)).into_bytes()
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
        Ok(())
    }

    /// What stderr says after an answer: the hint when it is empty, a cut-off constraint,
    /// `-v`'s figures; with --strict a cut-off constraint is an error.
    fn report(&self, g: &Generation) -> Result<(), CliError> {
        self.hint_if_empty(g);
        if self.args.verbose {
            rwkv::say!("rwkv-gen: {}", g.generated().timing());
        }
        let cut = self.constraint.is_some() && g.generated().finish == Some(Finish::Length);
        gen::cut_off(self.args, cut as usize)
    }

    fn save(&self, start: &Start) -> Result<(), CliError> {
        let Some(p) = &self.args.save_state else {
            return Ok(());
        };
        let (state, logits) = (&start.state, start.logits.clone());
        Ok(StateFile::of(self.model, state, logits, start.tokens, self.tok.name())?.save(p)?)
    }
}

fn one_prompt(ctx: &Ctx, start: Start, prompt: &[u8]) -> Result<(), CliError> {
    let mut out = Output::stdout(true);
    let mut g = Generation::new(ctx.model, ctx.tok, start, ctx.args.options(ctx.seed, false))
        .held_to(ctx.constraint.as_ref());
    g.prompt(&ctx.tok.encode(prompt)?)?;
    ctx.answer(&mut g, &mut out, ctx.args.echo.then_some(prompt))?;
    if ctx.args.format == Format::Text {
        out.end_line_on_terminal()?;
    }
    out.flush()?;
    let reported = ctx.report(&g);
    let interrupted = g.generated().finish == Some(Finish::Interrupted);
    ctx.save(&g.finish().1)?;
    if interrupted {
        return Err(CliError::interrupted());
    }
    reported
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
        let Some(prompt) = chat::user_turn(&line) else {
            continue;
        };
        let opts = chat::reply_options(&ctx.args.options(ctx.seed, true), turn);
        turn += 1;
        let mut g = Generation::new(ctx.model, ctx.tok, cur, opts).held_to(ctx.constraint.as_ref());
        g.prompt(&ctx.tok.encode(&prompt)?)?;
        ctx.answer(&mut g, &mut out, None)?;
        if ctx.args.format == Format::Text {
            out.write(chat::TURN_END)?;
        }
        out.flush()?;
        ctx.report(&g)?;
        let interrupted = g.generated().finish == Some(Finish::Interrupted);
        cur = g.finish().1;
        if interrupted {
            ctx.save(&cur)?;
            return Err(CliError::interrupted());
        }
    }
    ctx.save(&cur)
}

/// `--lines` and `--jsonl`: every input line a prompt (or a request), up to `--batch` of
/// them decoded together; one record per line, in input order.
fn many_prompts(ctx: &Ctx, initial: Start) -> Result<(), CliError> {
    let a = ctx.args;
    let lines = a.lines(ctx.seed, ctx.model.cfg.vocab, ctx.constraint.clone());
    cli::stdin_hint("rwkv-gen", "prompts, a line each,", a.quiet);
    let input = cli::lines_of_stdin(a.max_line_bytes, 2 * a.batch as usize);
    let mut out = Output::stdout(true);
    let started = Instant::now();
    let _deferred = signal::defer();
    let result = lines.run(
        ctx.model,
        ctx.tok,
        &initial,
        &input,
        Sinks {
            write: &mut |b| out.write(b).and_then(|()| out.tick()),
            note: &mut |m| rwkv::say!("rwkv-gen: {m}"),
        },
        &signal::interrupted,
    );
    out.flush()?;
    let t = match result {
        Ok(t) => t,
        Err(Failed::Output(e)) => return Err(e.into()),
        Err(Failed::Input { msg, .. }) => return Err(CliError::runtime(msg)),
    };
    if a.verbose {
        let s = started.elapsed().as_secs_f64();
        rwkv::say!(
            "rwkv-gen: {} prompts, {} tokens in {s:.1} s ({:.2} tokens/s, batch {})",
            t.answered,
            t.generated,
            t.generated as f64 / s.max(1e-9),
            a.batch
        );
    }
    if signal::interrupted() {
        return Err(CliError::interrupted());
    }
    gen::cut_off(a, t.cut)?;
    match t.failed {
        0 => Ok(()),
        // each --jsonl error is in its result; stderr says how many
        n if a.jsonl => Err(CliError::runtime(format!(
            "{n} of {} requests failed (their results carry the error)",
            t.answered + n
        ))),
        _ => Err(CliError::reported()),
    }
}
