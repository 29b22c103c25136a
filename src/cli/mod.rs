//! What the three binaries share: flag groups, the exit-code convention, the stdout writer
//! (flushed per token on a terminal, block-buffered in a pipe, a closed pipe is a quiet
//! exit) and Ctrl-C handling. The binaries own stderr; nothing here prints.

pub mod gen;
pub mod score;

pub mod signal;
pub mod state;

use crate::backend::opencl::DeviceSpec;
use crate::error::Error;
use crate::model::quant_file::quantize_file;
use crate::model::{LoadOptions, Model, Precision, Quant};
use crate::tokenizer::Tokenizer;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

/// Exit codes, documented in every `--help`.
pub mod exit {
    pub const OK: i32 = 0;
    /// A runtime error: unreadable file, bad model, bad input data.
    pub const RUNTIME: i32 = 1;
    /// A usage error: unknown flag, invalid flag value.
    pub const USAGE: i32 = 2;
    /// Interrupted by Ctrl-C (SIGINT).
    pub const INTERRUPTED: i32 = 130;
}

/// The exit-status paragraph every `--help` ends with (a macro, for `concat!`).
macro_rules! exit_status_help {
    () => {
        "Exit status: 0 success (also when stdout is closed early, as by `| head`), 1 runtime \
error (unreadable or invalid file or input), 2 usage error, 130 interrupted by Ctrl-C."
    };
}
pub(crate) use exit_status_help;

/// Flags every model-running binary takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// Model file: .safetensors, Ai00 .st or PyTorch .pth (BlinkDL, Hugging Face or Ai00 names)
    #[arg(short = 'm', long, env = "RWKV_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Tokenizer: `world`, `bytes` or a tokenizer.json file [default: world for a 65536
    /// vocab, bytes for 256]
    #[arg(long, value_name = "world|bytes|FILE")]
    pub tokenizer: Option<String>,

    /// Worker threads [default: all cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,

    /// Quantize the large matrices at load (the head too; embedding, LoRA and vectors stay
    /// as stored)
    #[arg(long, value_enum, value_name = "int8|nf4")]
    pub quant: Option<QuantArg>,

    /// Quantize only the first N layers
    #[arg(long, value_name = "N", requires = "quant")]
    pub quant_layers: Option<usize>,

    /// Write the model quantized to PATH (once), then run from it; later runs load PATH
    /// directly, without --quant
    #[arg(long, value_name = "PATH", requires = "quant")]
    pub save_quantized: Option<PathBuf>,

    /// Activations of the products over many tokens (prompts, scoring): bf16 multiplies
    /// twice as fast on CPUs with AVX-512 BF16 (f32 elsewhere and on OpenCL) and makes the
    /// numbers depend on how text is split into chunks; f32 gives exact products. Generation
    /// is f32 either way [default: bf16 for rwkv-gen; f32 for rwkv-score and rwkv-state,
    /// whose numbers and states are kept]
    #[arg(long, value_enum, value_name = "bf16|f32")]
    pub precision: Option<PrecisionArg>,

    /// Where to run: cpu, opencl[:PLATFORM[:DEVICE]] (see rwkv-gen --list-devices), or auto
    /// (a GPU when one is found, else the CPU)
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

/// `--quant` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum QuantArg {
    /// 8-bit integers, blocks of 64 with an f32 scale (1.0625 bytes per weight)
    Int8,
    /// 4-bit normal float, blocks of 64 with a bf16 scale (0.53125 bytes per weight)
    Nf4,
}

/// `--precision` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PrecisionArg {
    /// Activations rounded to bf16, `vdpbf16ps` products
    Bf16,
    /// f32 activations
    F32,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::F32 => Precision::F32,
        }
    }
}

impl From<QuantArg> for Quant {
    fn from(q: QuantArg) -> Quant {
        match q {
            QuantArg::Int8 => Quant::Int8,
            QuantArg::Nf4 => Quant::Nf4,
        }
    }
}

impl ModelArgs {
    /// Size the thread pool, load the model and pick its tokenizer; `precision` unless
    /// `--precision` says otherwise.
    pub fn load(&self, precision: Precision) -> Result<(Model, Tokenizer), CliError> {
        let model = self.load_model(precision)?;
        let tok = self.tokenizer(model.cfg.vocab)?;
        Ok((model, tok))
    }

    /// Size the thread pool and load the model; `precision` unless `--precision` says
    /// otherwise.
    pub fn load_model(&self, precision: Precision) -> Result<Model, CliError> {
        let precision = self.precision.map_or(precision, Precision::from);
        self.init_threads();
        let path = self.model.as_ref().ok_or_else(|| {
            CliError::usage("no model: pass -m PATH or set RWKV_MODEL".to_string())
        })?;
        let quant = self.quant.map(Quant::from);
        let device = self.device;
        if let (Some(dst), Some(q)) = (&self.save_quantized, quant) {
            quantize_file(path, dst, q, self.quant_layers)?;
            let opts = LoadOptions {
                device,
                ..LoadOptions::default()
            };
            let mut model = Model::load_with(dst, opts)?;
            model.set_precision(precision);
            return Ok(model);
        }
        let opts = LoadOptions {
            quant,
            quant_layers: self.quant_layers,
            device,
        };
        let mut model = Model::load_with(path, opts)?;
        model.set_precision(precision);
        Ok(model)
    }

    /// `--tokenizer`, or the default for a model of vocab `vocab`.
    pub fn tokenizer(&self, vocab: usize) -> Result<Tokenizer, CliError> {
        Ok(Tokenizer::choose(self.tokenizer.as_deref(), vocab)?)
    }

    pub fn init_threads(&self) {
        if let Some(n) = self.threads {
            // Fails only if the pool was built already, in which case it stays as it is.
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(n as usize)
                .build_global();
        }
    }
}

/// An error on its way to `main`: the one line to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    /// Empty for a quiet exit (closed stdout).
    pub msg: String,
}

impl CliError {
    pub fn usage(msg: String) -> Self {
        CliError {
            code: exit::USAGE,
            msg,
        }
    }

    pub fn runtime(msg: String) -> Self {
        CliError {
            code: exit::RUNTIME,
            msg,
        }
    }

    pub fn interrupted() -> Self {
        CliError {
            code: exit::INTERRUPTED,
            msg: String::new(),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::runtime(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    /// Writing to stdout: a closed pipe ends the program quietly with status 0.
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError {
                code: exit::OK,
                msg: String::new(),
            }
        } else {
            CliError::runtime(format!("writing output: {e}"))
        }
    }
}

/// Parse flags, mapping clap's errors to one line and exit code 2 (help and version print
/// as usual and exit 0). Returns the message to print on error.
pub fn parse_args<P: clap::Parser>() -> Result<P, (i32, String)> {
    match P::try_parse() {
        Ok(p) => Ok(p),
        Err(e) => {
            use clap::error::ErrorKind::*;
            match e.kind() {
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand => {
                    Err((exit::OK, e.render().to_string()))
                }
                _ => {
                    let text = e.render().to_string();
                    let first = text.lines().next().unwrap_or("invalid arguments");
                    let first = first.trim_start_matches("error: ");
                    Err((exit::USAGE, format!("{first} (see --help)")))
                }
            }
        }
    }
}

/// stdout, flushed after every record when it is a terminal (or when asked), buffered
/// otherwise.
pub struct Output {
    inner: std::io::BufWriter<std::io::Stdout>,
    flush_each: bool,
}

impl Output {
    pub fn stdout(force_flush: bool) -> Output {
        let out = std::io::stdout();
        let flush_each = force_flush || out.is_terminal();
        Output {
            inner: std::io::BufWriter::with_capacity(64 * 1024, out),
            flush_each,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.write_all(bytes)
    }

    /// End of a token or record: flush if interactive.
    pub fn tick(&mut self) -> std::io::Result<()> {
        if self.flush_each {
            self.inner.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Read all of stdin, naming it in the error.
pub fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
        .map_err(|e| CliError::runtime(format!("reading stdin: {e}")))?;
    Ok(buf)
}
