//! rwkv-gen: prompt in, generated text out.

mod common;

use rwkv::cli::gen::{Args, Format};
use rwkv::cli::{self, signal, CliError, Output};
use rwkv::model::{Precision, PROMPT_CHUNK};
use rwkv::sample::{self, Sampler, StopMatcher};
use rwkv::state_file::{self, StateFile};
use rwkv::tokenizer::{Detokenizer, Tokenizer, Utf8Stream};
use rwkv::{Model, State};
use serde_json::json;
use std::io::BufRead;
use std::time::Instant;

fn main() {
    common::main_with("rwkv-gen", run)
}

/// How one answer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Length,
    Stop,
    Eos,
    Interrupted,
}

impl Finish {
    fn name(self) -> &'static str {
        match self {
            Finish::Length => "length",
            Finish::Stop => "stop",
            Finish::Eos => "eos",
            Finish::Interrupted => "interrupted",
        }
    }
}

/// Everything one run keeps between prompts.
struct Gen<'a> {
    args: &'a Args,
    model: &'a Model,
    tok: &'a Tokenizer,
    sampler: Sampler,
    out: Output,
    stops: Vec<Vec<u8>>,
    /// Tokens the current state has been fed since the zero state.
    fed: u64,
}

/// The model's running position: its state and the logits for the next token.
struct Cursor {
    state: State,
    logits: Option<Vec<f32>>,
}

impl Cursor {
    fn try_clone(&self) -> Result<Cursor, CliError> {
        Ok(Cursor {
            state: self.state.try_clone()?,
            logits: self.logits.clone(),
        })
    }
}

fn run(args: &Args) -> Result<(), CliError> {
    if args.list_devices {
        let mut out = Output::stdout(false);
        for line in rwkv::backend::opencl::list_devices()? {
            out.write(format!("{line}\n").as_bytes())?;
        }
        out.flush()?;
        return Ok(());
    }
    if args.save_state.is_some() && args.lines {
        return Err(CliError::usage(
            "--save-state cannot be used with --lines (each line starts afresh)".into(),
        ));
    }
    let state_on_stdin = args.state.as_ref().is_some_and(|p| p.as_os_str() == "-");
    if state_on_stdin
        && (args.lines || args.chat || (args.prompt.is_none() && args.prompt_file.is_none()))
    {
        return Err(CliError::usage(
            "--state - reads the state from stdin: give the prompt with -p or -f".into(),
        ));
    }
    if args.top_logprobs > 0 && args.format != Format::Jsonl {
        return Err(CliError::usage(
            "--top-logprobs needs --format jsonl".into(),
        ));
    }
    let t0 = Instant::now();
    let (model, tok) = args.model.load(Precision::Bf16)?;
    if args.verbose {
        let c = &model.cfg;
        eprintln!(
            "rwkv-gen: loaded {} ({} names, {} layers, width {}, vocab {}, tokenizer {}, {} \
             prompt products) in {:.0} ms",
            model.path.display(),
            model.layout.name(),
            c.n_layer,
            c.n_embd,
            c.vocab,
            tok.name(),
            match model.sequence_precision() {
                Precision::Bf16 => "bf16",
                Precision::F32 => "f32",
            },
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
    let start = state_file::start_for(args.state.as_deref(), &model, args.force)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let mut stops: Vec<Vec<u8>> = args.stop.iter().map(|s| s.as_bytes().to_vec()).collect();
    if args.chat {
        stops.push(b"\n\n".to_vec());
    }
    let mut g = Gen {
        args,
        model: &model,
        tok: &tok,
        sampler: Sampler::new(args.sampler(), model.cfg.vocab, seed),
        out: Output::stdout(args.format == Format::Jsonl || args.lines || args.chat),
        stops,
        fed: start.tokens,
    };
    let initial = Cursor {
        state: start.state,
        logits: start.logits,
    };

    if args.lines || args.chat {
        let mut cur = initial.try_clone()?;
        let base_fed = g.fed;
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            let got = input
                .read_until(b'\n', &mut line)
                .map_err(|e| CliError::runtime(format!("reading stdin: {e}")))?;
            if got == 0 {
                break;
            }
            n += 1;
            while matches!(line.last(), Some(b'\n' | b'\r')) {
                line.pop();
            }
            let finish = if args.chat {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let mut prompt = b"User: ".to_vec();
                prompt.extend_from_slice(&line);
                prompt.extend_from_slice(b"\n\nAssistant:");
                g.answer(&prompt, &mut cur, Some(n))?
            } else {
                let mut fresh = initial.try_clone()?;
                g.fed = base_fed;
                g.sampler.reset_counts();
                g.answer(&line, &mut fresh, Some(n))?
            };
            if g.args.format == Format::Text {
                // A record per line; in a chat a blank line, which no reply contains.
                g.out.write(if args.chat { b"\n\n" } else { b"\n" })?;
            }
            g.out.flush()?;
            if finish == Finish::Interrupted {
                return Err(CliError::interrupted());
            }
        }
        if let Some(p) = &args.save_state {
            g.save(p, &cur)?;
        }
    } else {
        let prompt = match (&args.prompt, &args.prompt_file) {
            (Some(p), _) => p.as_bytes().to_vec(),
            (None, Some(f)) => {
                std::fs::read(f).map_err(|e| CliError::runtime(format!("{}: {e}", f.display())))?
            }
            (None, None) => cli::read_stdin()?,
        };
        let mut cur = initial;
        let finish = g.answer(&prompt, &mut cur, None)?;
        g.out.flush()?;
        if finish == Finish::Interrupted {
            return Err(CliError::interrupted());
        }
        if let Some(p) = &args.save_state {
            g.save(p, &cur)?;
        }
    }
    g.out.flush()?;
    Ok(())
}

impl Gen<'_> {
    /// Feed `ids` (chunked, sequence mode) and keep the logits after the last one.
    fn feed(&mut self, ids: &[u32], cur: &mut Cursor) -> Result<(), CliError> {
        cur.logits = Some(self.model.feed(ids, &mut cur.state, PROMPT_CHUNK)?);
        self.fed += ids.len() as u64;
        Ok(())
    }

    /// Answer one prompt from `cur`, leaving `cur` after the prompt and the answer.
    fn answer(
        &mut self,
        prompt: &[u8],
        cur: &mut Cursor,
        line: Option<u64>,
    ) -> Result<Finish, CliError> {
        let args = self.args;
        let jsonl = args.format == Format::Jsonl;
        let t0 = Instant::now();
        let ids = self.tok.encode(prompt)?;
        if !ids.is_empty() {
            self.feed(&ids, cur)?;
        } else if cur.logits.is_none() {
            // Nothing to continue from: start a document, as the models are trained.
            self.feed(&[0], cur)?;
        }
        let prompt_s = t0.elapsed().as_secs_f64();
        if args.echo && !jsonl {
            self.out.write(prompt)?;
        }

        let t1 = Instant::now();
        let mut stop = StopMatcher::new(self.stops.clone());
        let mut utf8 = Utf8Stream::default();
        let mut detok = Detokenizer::new(self.tok);
        let mut text = Vec::new();
        let mut generated = 0usize;
        let mut finish = Finish::Length;
        let need_state = args.save_state.is_some() || args.chat;
        let _deferred = signal::defer();
        while generated < args.max_tokens {
            if signal::interrupted() {
                finish = Finish::Interrupted;
                break;
            }
            let raw = cur.logits.take().expect("logits after feeding");
            let mut logits = raw.clone();
            let token = self.sampler.sample(&mut logits);
            if token == 0 && !args.ignore_eos {
                cur.logits = Some(raw);
                finish = Finish::Eos;
                break;
            }
            let bytes = detok.push(token)?;
            self.sampler.observe(token, &bytes);
            generated += 1;
            if jsonl {
                self.token_record(token, &bytes, &raw)?;
            }
            let step = stop.push(&bytes);
            let emit = utf8.push(&step.emit);
            text.extend_from_slice(&step.emit);
            if !jsonl {
                self.out.write(&emit)?;
            }
            self.out.tick()?;
            // Feed the token unless this is the end and nobody needs the state after it.
            let last = step.stopped || generated == args.max_tokens;
            if !last || need_state {
                self.feed(&[token], cur)?;
            } else {
                cur.logits = Some(raw);
            }
            if step.stopped {
                finish = Finish::Stop;
                break;
            }
        }
        if finish != Finish::Stop {
            let rest = stop.finish();
            text.extend_from_slice(&rest);
            let emit = utf8.push(&rest);
            if !jsonl {
                self.out.write(&emit)?;
            }
        }
        if !jsonl {
            self.out.write(&utf8.finish())?;
        }
        let gen_s = t1.elapsed().as_secs_f64();
        let rate = |n: usize, s: f64| if s > 0.0 { n as f64 / s } else { 0.0 };
        if jsonl {
            let mut rec = json!({
                "finish_reason": finish.name(),
                "prompt_tokens": ids.len(),
                "tokens": generated,
                "text": String::from_utf8_lossy(&text),
                "prompt_ms": prompt_s * 1e3,
                "gen_ms": gen_s * 1e3,
                "prompt_tokens_per_s": rate(ids.len(), prompt_s),
                "tokens_per_s": rate(generated, gen_s),
            });
            if let Some(n) = line {
                rec["line"] = json!(n);
            }
            if args.echo {
                rec["prompt"] = json!(String::from_utf8_lossy(prompt));
            }
            self.out.write(format!("{rec}\n").as_bytes())?;
        }
        self.out.tick()?;
        if args.verbose {
            eprintln!(
                "rwkv-gen: prompt {} tokens in {:.0} ms ({:.1} tokens/s); generated {} tokens in {:.0} ms ({:.2} tokens/s); {}",
                ids.len(),
                prompt_s * 1e3,
                rate(ids.len(), prompt_s),
                generated,
                gen_s * 1e3,
                rate(generated, gen_s),
                finish.name()
            );
        }
        Ok(finish)
    }

    /// One `--format jsonl` token object.
    fn token_record(&mut self, token: u32, bytes: &[u8], raw: &[f32]) -> Result<(), CliError> {
        let lse = sample::log_sum_exp(raw);
        let mut rec = json!({
            "token": token,
            "text": String::from_utf8_lossy(bytes),
            "logprob": raw[token as usize] as f64 - lse,
        });
        if self.args.top_logprobs > 0 {
            let top: Vec<_> = sample::top_logprobs(raw, self.args.top_logprobs)
                .into_iter()
                .map(|(id, lp)| {
                    let text = self
                        .tok
                        .token_bytes(id)
                        .map(|b| String::from_utf8_lossy(&b).into_owned())
                        .unwrap_or_default();
                    json!({"token": id, "text": text, "logprob": lp})
                })
                .collect();
            rec["top_logprobs"] = json!(top);
        }
        self.out.write(format!("{rec}\n").as_bytes())?;
        Ok(())
    }

    fn save(&self, path: &std::path::Path, cur: &Cursor) -> Result<(), CliError> {
        let sf = StateFile::of(
            self.model,
            &cur.state,
            cur.logits.clone(),
            self.fed,
            self.tok.name(),
        )?;
        sf.save(path)?;
        Ok(())
    }
}
