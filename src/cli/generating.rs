//! `rwkv-gen`'s run once the model is loaded: one prompt, a chat, or many prompts
//! (`--lines`, `--jsonl`), each answer streamed to stdout as it comes.

use super::gen::{self, Args, Format};
use super::{read_line, signal, CliError, Line, Output};
use crate::constrain::Constraint;
use crate::generate::lines::{Failed, Sinks};
use crate::generate::{chat, Finish, Generation};
use crate::state_file::{Start, StateFile};
use crate::tokenizer::Tokenizer;
use crate::Model;
use serde_json::json;
use std::time::Instant;

/// What one run shares.
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub model: &'a Model,
    pub tok: &'a Tokenizer,
    pub seed: u64,
    /// What every answer is held to.
    pub constraint: Option<Constraint>,
}

impl Ctx<'_> {
    /// Say so when the model ended the text at once.
    fn hint_if_empty(&self, g: &Generation) {
        let out = g.generated();
        if !self.args.quiet && out.tokens.is_empty() && out.finish == Some(Finish::Eos) {
            crate::say!(
                "rwkv-gen: the model ended the text at once (end-of-text token); \
                 --ignore-eos goes on past it"
            );
        }
    }

    /// Stream one answer to `out` (each token as it comes, text as `shown` lets it), then
    /// its record (jsonl).
    fn answer(
        &self,
        g: &mut Generation,
        out: &mut Output,
        echo: Option<&[u8]>,
        mut shown: Option<&mut chat::Shown>,
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
            out.write(&match (jsonl, shown.as_deref_mut()) {
                (true, _) => format!("{}\n", step.token.record(self.tok)).into_bytes(),
                (false, Some(s)) => s.push(&step.emit),
                (false, None) => step.emit,
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
            let tail = match shown {
                Some(s) => s.push(&tail),
                None => tail,
            };
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
            let peak = super::peak_memory_note();
            crate::say!("rwkv-gen: {}{peak}", g.generated().timing());
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

pub fn one_prompt(ctx: &Ctx, start: Start, prompt: &[u8]) -> Result<(), CliError> {
    let mut out = Output::stdout(true);
    let mut g = Generation::new(ctx.model, ctx.tok, start, ctx.args.options(ctx.seed, false))
        .held_to(ctx.constraint.as_ref());
    g.prompt(&ctx.tok.encode(prompt)?)?;
    ctx.answer(&mut g, &mut out, ctx.args.echo.then_some(prompt), None)?;
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
pub fn chat(ctx: &Ctx, mut cur: Start) -> Result<(), CliError> {
    let mut talk = ctx.args.conversation()?;
    let mut out = Output::stdout(true);
    super::stdin_hint("rwkv-gen", "chat turns, a line each,", ctx.args.quiet);
    let mut input = std::io::stdin().lock();
    let mut turn = 0u64;
    let max = ctx.args.max_line_bytes;
    while let Some(line) =
        read_line(&mut input, max).map_err(|e| CliError::runtime(format!("reading stdin: {e}")))?
    {
        let line = match line {
            Line::Text(l) => l,
            Line::TooLong(n) => {
                let msg = format!("a chat turn of {n} bytes, longer than --max-line-bytes ({max})");
                return Err(CliError::runtime(msg));
            }
            Line::Unreadable(e) => return Err(CliError::runtime(format!("reading stdin: {e}"))),
        };
        let Some(prompt) = talk.user_turn(&line) else {
            continue;
        };
        let opts = chat::reply_options(&ctx.args.options(ctx.seed, true), turn);
        turn += 1;
        let mut g = Generation::new(ctx.model, ctx.tok, cur, opts).held_to(ctx.constraint.as_ref());
        g.prompt(&ctx.tok.encode(&prompt)?)?;
        ctx.answer(&mut g, &mut out, None, Some(&mut talk.reply()))?;
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
pub fn many_prompts(ctx: &Ctx, initial: Start) -> Result<(), CliError> {
    let a = ctx.args;
    let lines = a.lines(ctx.seed, ctx.model.cfg.vocab, ctx.constraint.clone());
    super::stdin_hint("rwkv-gen", "prompts, a line each,", a.quiet);
    let input = super::lines_of_stdin(a.max_line_bytes, 2 * a.batch as usize);
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
            note: &mut |m| crate::say!("rwkv-gen: {m}"),
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
        crate::say!(
            "rwkv-gen: {} prompts, {} tokens in {s:.1} s ({:.2} tokens/s, batch {}){}",
            t.answered,
            t.generated,
            t.generated as f64 / s.max(1e-9),
            a.batch,
            super::peak_memory_note()
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
