//! rwkv-gen: prompt in, generated text out.

mod common;

use rwkv::cli::gen::{self, Args};
use rwkv::cli::generating::{chat, many_prompts, one_prompt, Ctx};
use rwkv::cli::{self, CliError, Output};
use rwkv::model::Precision;
use rwkv::state_file;
use std::time::Instant;

fn main() {
    common::main_with("rwkv-gen", run)
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
