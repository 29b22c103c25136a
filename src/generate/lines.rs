//! `rwkv-gen --lines` and `--jsonl`: every input line a prompt (or a JSON request), up to
//! a batch of them decoded together ([`super::batch`]), one record per line, each written
//! as soon as it and every one before it are complete.

use super::batch::{self, InOrder, Next, Outcome};
use super::request::{self, Claims, Defaults, Prompt};
use super::{Generation, Options, Step};
use crate::cli::Line;
use crate::constrain::{Compiler, Constraint};
use crate::model::Model;
use crate::state_file::{self, Start, StateFile};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Value};
use std::cell::{OnceCell, RefCell};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};

/// How lines become answers and records.
pub struct Lines {
    /// Each line a JSON request (`--jsonl`), else a text prompt.
    pub jsonl: bool,
    /// A text prompt's answer as its tokens' JSON objects and a record (`--format jsonl`),
    /// else as its text ended by `record_end`.
    pub token_records: bool,
    /// Write the prompt before its answer.
    pub echo: bool,
    /// What ends a text record and stops its answer (a newline, `--separator`, NUL).
    pub record_end: Vec<u8>,
    pub max_line_bytes: usize,
    /// Use a request's state made with other weights.
    pub force: bool,
    /// Streams decoded together.
    pub batch: usize,
    /// A text prompt's options; a request's fields replace theirs.
    pub options: Options,
    /// What a request's absent fields take.
    pub defaults: Defaults,
    /// What every answer is held to (`--json-schema`, ...); a request's own replaces it.
    pub constraint: Option<Constraint>,
    /// Compiles the requests' own constraints, made at the first.
    pub compiler: OnceCell<Compiler>,
}

/// What a line keeps until its record is written: its request's id, the prompt to echo,
/// where to save its state.
#[derive(Default)]
struct Job {
    id: Option<Value>,
    echo: Vec<u8>,
    save_state: Option<PathBuf>,
    /// The request's own constraint, until its stream takes it.
    constraint: Option<Constraint>,
}

/// Why an input line gives no answer (its request id and the message, on its record), or
/// why the run stops (writing the output failed).
pub enum Failed {
    Input { id: Option<Value>, msg: String },
    Output(std::io::Error),
}

impl Failed {
    fn input(id: Option<&Value>, msg: impl std::fmt::Display) -> Failed {
        Failed::Input {
            id: id.cloned(),
            msg: msg.to_string(),
        }
    }
}

impl From<crate::Error> for Failed {
    fn from(e: crate::Error) -> Self {
        Failed::input(None, e)
    }
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Output(e)
    }
}

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Lines answered.
    pub answered: usize,
    /// Lines that failed (their records carry the error, or `note` heard it).
    pub failed: usize,
    /// Tokens generated.
    pub generated: usize,
    /// Text answers that -n cut off before their constraint was complete.
    pub cut: usize,
}

/// Where a run's bytes go: `write` takes records (and, streaming, a text answer's bytes
/// as they come); `note` hears what goes to stderr (a text line's error).
pub struct Sinks<'s> {
    pub write: &'s mut dyn FnMut(&[u8]) -> std::io::Result<()>,
    pub note: &'s mut dyn FnMut(String),
}

impl Lines {
    /// Whether a text answer streams out token by token: one stream at a time, no echo.
    fn streamed(&self) -> bool {
        !self.jsonl && !self.token_records && self.batch == 1 && !self.echo
    }

    /// Answer every line `lines` brings, starting from `initial` (a request may name its
    /// own state); stop taking lines once `stop()` says so.
    pub fn run(
        &self,
        model: &Model,
        tok: &Tokenizer,
        initial: &Start,
        lines: &Receiver<Line>,
        sinks: Sinks,
        stop: &dyn Fn() -> bool,
    ) -> Result<Tally, Failed> {
        let jobs = RefCell::new(Vec::<Job>::new());
        let mut claims = Claims::default();
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
            let mut jobs = jobs.borrow_mut();
            jobs.push(Job::default());
            let i = jobs.len() - 1;
            let job = &mut jobs[i];
            Next::Input((i, self.begin(model, tok, (initial, &mut claims), line, job)))
        };
        let (write, streamed) = (RefCell::new(sinks.write), self.streamed());
        let mut on_step = |_: usize, step: &Step| -> Result<(), Failed> {
            if streamed {
                (write.borrow_mut())(&step.emit)?;
            }
            Ok(())
        };
        let mut order = InOrder::<Vec<u8>>::default();
        let mut tally = Tally::default();
        let mut done = |i: usize, o: Outcome<'_, Failed>| -> Result<(), Failed> {
            let job = std::mem::take(&mut jobs.borrow_mut()[i]);
            let rec = match o.and_then(|mut g| {
                tally.answered += 1;
                tally.generated += g.generated().tokens.len();
                let length = g.generated().finish == Some(super::Finish::Length);
                tally.cut += (g.constrained() && length && !self.jsonl) as usize;
                self.record(model, tok, &mut g, &job, i)
            }) {
                Ok(rec) => rec,
                Err(Failed::Output(e)) => return Err(Failed::Output(e)),
                Err(Failed::Input { id, msg }) => {
                    tally.failed += 1;
                    self.failed_record(id, msg, i, sinks.note)
                }
            };
            let mut write = write.borrow_mut();
            for r in order.put(i, rec) {
                write(&r)?;
            }
            Ok(())
        };
        let n = self.batch.max(1);
        batch::run(model, n, &mut inputs, &mut on_step, &mut done, stop)?;
        Ok(tally)
    }

    /// The record of a line that failed: an error object (`--jsonl`), or the message to
    /// stderr and an empty text record.
    fn failed_record(
        &self,
        id: Option<Value>,
        msg: String,
        i: usize,
        note: &mut dyn FnMut(String),
    ) -> Vec<u8> {
        if self.jsonl {
            return format!("{}\n", request::error(id.as_ref(), &msg)).into_bytes();
        }
        note(format!("line {}: {msg}", i + 1));
        match self.token_records {
            false => self.record_end.clone(),
            true => Vec::new(),
        }
    }

    /// A stream for an input line, its prompt fed; `job` keeps what its record needs. A
    /// request's state files are claimed for it in `claims`.
    fn begin<'a>(
        &self,
        model: &'a Model,
        tok: &'a Tokenizer,
        (initial, claims): (&Start, &mut Claims),
        line: Line,
        job: &mut Job,
    ) -> Outcome<'a, Failed> {
        let line = match line {
            Line::Text(l) => l,
            Line::TooLong(n) => {
                let max = self.max_line_bytes;
                let msg = format!("{n} bytes, longer than --max-line-bytes ({max})");
                return Err(Failed::input(None, msg));
            }
            Line::Unreadable(e) => return Err(Failed::input(None, format!("reading stdin: {e}"))),
        };
        let mut opts = self.options.clone();
        let (start, ids) = if self.jsonl {
            let d = &self.defaults;
            let r = request::parse(&line, d).map_err(|r| Failed::input(r.id.as_ref(), r.error))?;
            let fail = |e: crate::Error| Failed::input(r.id.as_ref(), e);
            job.id = r.id.clone();
            claims
                .claim(r.state.as_deref(), r.save_state.as_deref())
                .map_err(|e| Failed::input(r.id.as_ref(), e))?;
            if let Some(p) = &r.save_state {
                crate::atomic::check_writable(p).map_err(fail)?;
            }
            let start = match &r.state {
                Some(p) => state_file::load_for(p, model, self.force).map_err(fail)?,
                None => initial.try_clone().map_err(fail)?,
            };
            let ids = match &r.prompt {
                Prompt::Text(t) => tok.encode(t).map_err(fail)?,
                Prompt::Ids(ids) => ids.clone(),
            };
            opts.max_tokens = r.max_tokens;
            opts.sampler = r.sampler.config(false);
            opts.stop = r.stop;
            opts.seed = r.seed;
            opts.keep_state = r.save_state.is_some();
            job.save_state = r.save_state;
            if let Some(spec) = &r.constraint {
                let what = format!("the request's {}", spec.kind());
                let c = match self.compiler.get() {
                    Some(c) => c,
                    None => {
                        let c = Compiler::new(tok, model.cfg.vocab).map_err(fail)?;
                        self.compiler.get_or_init(|| c)
                    }
                };
                job.constraint = Some(c.compile(spec, &what).map_err(fail)?);
            }
            (start, ids)
        } else {
            if !self.token_records {
                opts.stop.push(self.record_end.clone());
                // an answer that starts on a new line is not an empty record
                opts.skip_leading_newlines = self.record_end.contains(&b'\n');
            }
            let ids = tok.encode(&line)?;
            if self.echo {
                job.echo = line;
            }
            (initial.try_clone()?, ids)
        };
        let own = job.constraint.take();
        let g = Generation::new(model, tok, start, opts);
        let mut g = g.held_to(own.as_ref().or(self.constraint.as_ref()));
        g.prompt(&ids)
            .map_err(|e| Failed::input(job.id.as_ref(), e))?;
        Ok(g)
    }

    /// The record of finished line `i`: the answer (text, or its JSON objects), or the
    /// request's result (`--jsonl`), its state saved when asked.
    fn record(
        &self,
        model: &Model,
        tok: &Tokenizer,
        g: &mut Generation,
        job: &Job,
        i: usize,
    ) -> Result<Vec<u8>, Failed> {
        let tail = g.drain();
        let out = g.generated();
        if self.jsonl {
            let id = job.id.as_ref();
            if let Some(p) = &job.save_state {
                let (state, logits) = (&g.state, g.logits().map(<[f32]>::to_vec));
                StateFile::of(model, state, logits, g.fed, tok.name())
                    .and_then(|sf| sf.save(p))
                    .map_err(|e| Failed::input(id, e))?;
            }
            return Ok(format!("{}\n", request::result(id, out, tok)).into_bytes());
        }
        if self.token_records {
            let mut s = String::new();
            for t in &out.per_token {
                s += &format!("{}\n", t.record(tok));
            }
            let mut rec = out.record(tok);
            let fields = rec.as_object_mut().expect("a record is an object");
            fields.remove("per_token");
            rec["line"] = json!(i + 1);
            if self.echo {
                rec["prompt"] = json!(String::from_utf8_lossy(&job.echo));
            }
            s += &format!("{rec}\n");
            return Ok(s.into_bytes());
        }
        let mut rec = Vec::new();
        if self.streamed() {
            rec.extend(tail);
        } else {
            rec.extend_from_slice(&job.echo);
            rec.extend_from_slice(&out.text);
        }
        rec.extend_from_slice(&self.record_end);
        Ok(rec)
    }
}
