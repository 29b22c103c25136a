//! What the three binaries share: flag groups, the exit-code convention, loading a model
//! with its checks done before any work, the stdout writer (a closed pipe is a quiet
//! exit), input lines of bounded length, the progress bar and Ctrl-C. The binaries own
//! stderr; nothing here prints but the progress bar, which draws on stderr only when it is
//! a terminal.

pub mod gen;
pub mod generating;
pub mod progress;
pub mod records;
pub mod score;
pub mod scoring;
pub mod signal;
pub mod state;
pub mod view;

use crate::backend::device::DeviceSpec;
use crate::error::Error;
use crate::model::adapter::AdapterSpec;
use crate::model::quant_file::quantize_then;
use crate::model::{LoadOptions, Model, Precision, Quant};
use crate::tokenizer::{world::World, Tokenizer};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Exit codes, documented in every `--help`.
pub mod exit {
    pub const OK: i32 = 0;
    /// A runtime error: unreadable file, bad model, bad input data (or, for `rwkv-state
    /// diff`, states that differ).
    pub const RUNTIME: i32 = 1;
    /// A usage error: unknown flag, invalid flag value.
    pub const USAGE: i32 = 2;
    /// Interrupted by Ctrl-C (SIGINT).
    pub const INTERRUPTED: i32 = 130;
    /// Terminated (SIGTERM).
    pub const TERMINATED: i32 = 143;
}

/// The exit-status paragraph every `--help` ends with (a macro, for `concat!`).
macro_rules! exit_status_help {
    () => {
        "Exit status: 0 success (also when stdout is closed early, as by `| head`), 1 runtime \
error (unreadable or invalid file or input), 2 usage error, 130 interrupted by Ctrl-C, 143 \
terminated."
    };
}
pub(crate) use exit_status_help;

/// The longest input line read by default (`--max-line-bytes`).
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// Flags every model-running binary takes.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Model")]
pub struct ModelArgs {
    /// Model file, RWKV-4, 5.2, 6, 7 or 7a: .pth, .safetensors or Ai00 .st (BlinkDL names;
    /// RWKV-6 also Hugging Face or Ai00 names)
    #[arg(short = 'm', long, env = "RWKV_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,

    /// Tokenizer: `world`, `bytes` or a tokenizer.json file [default: world for a 65536
    /// vocab, bytes for 256]
    #[arg(long, value_name = "world|bytes|FILE")]
    pub tokenizer: Option<String>,

    /// Quantize the large matrices at load (the head too; embedding, LoRA and vectors stay
    /// as stored)
    #[arg(long, value_enum, value_name = "int8|nf4")]
    pub quant: Option<QuantArg>,

    /// Quantize only the first N layers
    #[arg(long, value_name = "N", requires = "quant")]
    pub quant_layers: Option<usize>,

    /// Merge a RWKV-PEFT adapter into the weights at load (before --quant): W + SCALE B A
    /// for each `NAME.lora_A`, `NAME.lora_B` in FILE (LoRA: SCALE is lora_alpha / lora_r),
    /// DiSHA's update for each `NAME.disha`; other tensors in FILE replace the model's.
    /// Repeatable: PiSSA is its init file, then its checkpoint [default SCALE: 1]
    #[arg(long = "adapter", value_name = "FILE[:SCALE]", value_parser = AdapterSpec::parse)]
    pub adapters: Vec<AdapterSpec>,

    /// Write the model quantized to PATH (once), then run from it; later runs load PATH
    /// directly, without --quant
    #[arg(long, value_name = "PATH", requires = "quant")]
    pub save_quantized: Option<PathBuf>,

    /// Activations of the products: bf16 multiplies twice as fast on CPUs with AVX-512
    /// BF16 (f32 elsewhere and on OpenCL) and makes a prompt's numbers depend on how text
    /// is split into chunks; generation rounds them only against bf16 weights, and a
    /// stream's output never depends on --batch. f32 gives exact products [default: bf16
    /// for rwkv-gen; f32 for rwkv-score and rwkv-state, whose numbers and states are kept]
    #[arg(long, value_enum, value_name = "bf16|f32")]
    pub precision: Option<PrecisionArg>,

    /// Where to run: cpu, opencl[:PLATFORM[:DEVICE]] (see rwkv-gen --list-devices), or auto
    /// (a GPU when one is found, else the CPU)
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,

    /// Worker threads [default: all cores]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
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
    /// The model path, checked: given, and a file.
    pub fn path(&self) -> Result<&Path, CliError> {
        let path = self.model.as_deref().ok_or_else(|| {
            CliError::usage("no model: pass -m PATH or set RWKV_MODEL".to_string())
        })?;
        if path.is_dir() {
            return Err(CliError::runtime(format!(
                "{}: is a folder, not a model file",
                path.display()
            )));
        }
        Ok(path)
    }

    /// Size the thread pool, load the model and pick its tokenizer (checked against the
    /// model's vocabulary); `precision` unless `--precision` says otherwise.
    pub fn load(&self, precision: Precision) -> Result<(Model, Tokenizer), CliError> {
        let model = self.load_model(precision)?;
        let tok = self.tokenizer(model.cfg.vocab, model.vocabulary.clone())?;
        Ok((model, tok))
    }

    /// Size the thread pool and load the model; `precision` unless `--precision` says
    /// otherwise.
    pub fn load_model(&self, precision: Precision) -> Result<Model, CliError> {
        let precision = self.precision.map_or(precision, Precision::from);
        self.init_threads();
        let path = self.path()?;
        let quant = self.quant.map(Quant::from);
        let device = self.device;
        if let Some(dst) = &self.save_quantized {
            crate::atomic::check_writable(dst)?;
        }
        let opts = LoadOptions {
            quant,
            quant_layers: self.quant_layers,
            device,
            adapters: self.adapters.clone(),
            ..LoadOptions::default()
        };
        let saved = match (&self.save_quantized, quant) {
            // the written file is loaded before it takes the destination's place
            (Some(dst), Some(q)) => {
                let load = |p: &Path| {
                    let plain = LoadOptions {
                        device,
                        ..LoadOptions::default()
                    };
                    Model::load_with(p, plain)
                };
                quantize_then(path, dst, q, self.quant_layers, &self.adapters, load)?.map(
                    |mut m| {
                        m.path = dst.clone();
                        m
                    },
                )
            }
            _ => None,
        };
        let mut model = match saved {
            Some(m) => m,
            None => Model::load_with(path, opts)?,
        };
        model.set_precision(precision);
        Ok(model)
    }

    /// `--tokenizer`, or the vocabulary the model file carries, or the default for a model
    /// of vocab `vocab`.
    pub fn tokenizer(&self, vocab: usize, file: Option<Arc<World>>) -> Result<Tokenizer, CliError> {
        Ok(Tokenizer::choose(self.tokenizer.as_deref(), vocab, file)?)
    }

    /// The tokenizer without the model: the model's (its vocab read from the file's header)
    /// when one is given, else `--tokenizer`, else World.
    pub fn tokenizer_alone(&self) -> Result<Tokenizer, CliError> {
        if self.model.is_some() {
            let (cfg, file) = Model::inspect_vocabulary(self.path()?)?;
            return self.tokenizer(cfg.vocab, file);
        }
        Ok(Tokenizer::from_spec(
            self.tokenizer.as_deref().unwrap_or("world"),
        )?)
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

/// An error on its way to `main`: what to print and the exit code.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    /// Empty for a quiet exit (closed stdout, or errors already reported).
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

    /// Exit 1 quietly: the errors were reported as they happened.
    pub fn reported() -> Self {
        CliError::runtime(String::new())
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

/// Write `line` and a newline to stderr, its control characters escaped (`\n`,
/// `\u{1b}`): a name read from a file (a path, a tensor or zip member name, a JSON string)
/// can neither break the line nor send the terminal an escape. A stderr that cannot be
/// written (closed, full) loses the line: the program goes on to its documented exit
/// status.
pub fn say_line(line: &str) {
    let mut e = std::io::stderr().lock();
    let _ = e
        .write_all(one_line(line).as_bytes())
        .and_then(|()| e.write_all(b"\n"));
}

/// `s` with its control characters escaped as Rust writes them.
pub fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return s.into();
    }
    let esc = |c: char| match c.is_control() {
        true => c.escape_debug().to_string(),
        false => c.to_string(),
    };
    s.chars().map(esc).collect::<String>().into()
}

/// `eprintln!` that never panics: [`say_line`].
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => {
        $crate::cli::say_line(&format!($($t)*))
    };
}

/// Parse flags. On error: clap's whole message (it names missing arguments, suggests
/// similar flags, lists allowed values) and exit code 2; help and version print as usual
/// and exit 0.
pub fn parse_args<P: clap::Parser>() -> Result<P, (i32, String)> {
    P::try_parse().map_err(|e| {
        use clap::error::ErrorKind::*;
        let code = match e.kind() {
            DisplayHelp | DisplayVersion => exit::OK,
            // `rwkv-state` alone: the usage, on stderr, as any other usage error
            _ => exit::USAGE,
        };
        (code, e.render().to_string())
    })
}

/// stdout: block-buffered, flushed after every record when it is a terminal (or when
/// asked, as `rwkv-gen` does after every token).
pub struct Output {
    inner: std::io::BufWriter<std::io::Stdout>,
    flush_each: bool,
    terminal: bool,
    /// The last byte written.
    last: Option<u8>,
}

impl Output {
    pub fn stdout(force_flush: bool) -> Output {
        let out = std::io::stdout();
        let terminal = out.is_terminal();
        Output {
            inner: std::io::BufWriter::with_capacity(64 * 1024, out),
            flush_each: force_flush || terminal,
            terminal,
            last: None,
        }
    }

    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(&b) = bytes.last() {
            self.last = Some(b);
        }
        self.inner.write_all(bytes)
    }

    /// On a terminal, end the line the output left open (so that the shell's prompt, or
    /// what follows on stderr, starts a line of its own); in a pipe the bytes stay as they
    /// are.
    pub fn end_line_on_terminal(&mut self) -> std::io::Result<()> {
        match self.last {
            Some(b) if self.terminal && b != b'\n' => self.write(b"\n"),
            _ => Ok(()),
        }
    }

    /// End of a token or record: flush if asked.
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

/// For writers that stream into it (`--tokenize`); flushed at [`Output::flush`].
impl Write for Output {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.inner.write(bytes)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The most memory this process has held resident, in bytes (`VmHWM`; `None` where
/// `/proc` does not say).
pub fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// `, peak memory 15.2 MiB` for the `-v` figures, or nothing where it is not known.
pub fn peak_memory_note() -> String {
    peak_memory().map_or_else(String::new, |b| {
        format!(", peak memory {:.1} MiB", b as f64 / (1 << 20) as f64)
    })
}

/// Say on stderr that the program waits on a terminal for `what`, unless `quiet` or stdin
/// is not a terminal.
pub fn stdin_hint(name: &str, what: &str, quiet: bool) {
    if !quiet && std::io::stdin().is_terminal() {
        say_line(&format!(
            "{name}: reading {what} from the terminal; end it with Ctrl-D"
        ));
    }
}

/// The longest prompt `rwkv-gen` and `rwkv-state` read (about 16 million tokens: hours of
/// feeding); `/dev/zero` or an endless pipe is an error, not the machine's memory.
pub const MAX_PROMPT_BYTES: u64 = 64 << 20;

/// Read all of `r` (named `name` in errors), at most [`MAX_PROMPT_BYTES`].
fn read_bounded(mut r: impl std::io::Read, name: &str) -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    (&mut r)
        .take(MAX_PROMPT_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CliError::runtime(format!("{name}: {e}")))?;
    if buf.len() as u64 > MAX_PROMPT_BYTES {
        return Err(CliError::runtime(format!(
            "{name}: longer than {} MiB, the most a prompt may be",
            MAX_PROMPT_BYTES >> 20
        )));
    }
    Ok(buf)
}

/// Read all of stdin, naming it in the error.
pub fn read_stdin() -> Result<Vec<u8>, CliError> {
    read_bounded(std::io::stdin(), "stdin")
}

/// The text `-p TEXT` gives, or `-f FILE` (`-`: stdin), or else stdin (saying so to a
/// terminal as `what`, unless `quiet`); `tool` names the program.
pub fn read_prompt(
    text: Option<&str>,
    file: Option<&Path>,
    (tool, what, quiet): (&str, &str, bool),
) -> Result<Vec<u8>, CliError> {
    match (text, file) {
        (Some(t), _) => Ok(t.as_bytes().to_vec()),
        (None, Some(f)) => read_input(f),
        (None, None) => {
            stdin_hint(tool, what, quiet);
            read_stdin()
        }
    }
}

/// A file's contents, or stdin's for `-`.
pub fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    if path.as_os_str() == "-" {
        return read_stdin();
    }
    if path.is_dir() {
        return Err(CliError::runtime(format!(
            "{}: is a folder, not a file",
            path.display()
        )));
    }
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| CliError::runtime(format!("{name}: {e}")))?;
    read_bounded(file, &name)
}

/// One line of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// The line, without its line end (`\n` or `\r\n`).
    Text(Vec<u8>),
    /// A line longer than the limit: its bytes were read and dropped.
    TooLong(usize),
    /// Reading failed (the error's message).
    Unreadable(String),
}

/// stdin's lines (each at most `max` bytes), read on a thread of their own as they arrive,
/// at most `ahead` of them waiting: a consumer can take what has arrived without waiting
/// for more. A read error is the last line.
pub fn lines_of_stdin(max: usize, ahead: usize) -> std::sync::mpsc::Receiver<Line> {
    let (tx, rx) = std::sync::mpsc::sync_channel(ahead.max(1));
    std::thread::spawn(move || {
        let mut input = std::io::BufReader::with_capacity(1 << 16, std::io::stdin());
        loop {
            let line = match read_line(&mut input, max) {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => Line::Unreadable(e.to_string()),
            };
            let last = matches!(line, Line::Unreadable(_));
            if tx.send(line).is_err() || last {
                return;
            }
        }
    });
    rx
}

/// Read the next line of `r` in memory bounded by `max` bytes; `None` at the end.
pub fn read_line(r: &mut dyn BufRead, max: usize) -> std::io::Result<Option<Line>> {
    let mut line = Vec::new();
    let (mut seen, mut any, mut ended) = (0usize, false, false);
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        any = true;
        let (take, end) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        // room for `max` bytes and a line end
        let room = (max + 2).saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        seen += take;
        r.consume(take);
        if end {
            ended = true;
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    let stored_all = seen == line.len();
    if ended && stored_all {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    let content = if stored_all {
        line.len()
    } else {
        seen - usize::from(ended)
    };
    if content > max {
        return Ok(Some(Line::TooLong(content)));
    }
    Ok(Some(Line::Text(line)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_one_line_without_escapes() {
        assert_eq!(one_line("plain: ok"), "plain: ok");
        assert_eq!(
            one_line("a\nb\u{1b}[31mc\u{9b}d\te"),
            "a\\nb\\u{1b}[31mc\\u{9b}d\\te"
        );
    }

    #[test]
    fn lines_are_read_in_bounded_memory() {
        let text = b"ab\r\ncdefgh\n\nlast\nabcd\r\n";
        let mut r = std::io::BufReader::with_capacity(3, &text[..]);
        let mut got = Vec::new();
        while let Some(l) = read_line(&mut r, 4).unwrap() {
            got.push(l);
        }
        assert_eq!(
            got,
            vec![
                Line::Text(b"ab".to_vec()),
                Line::TooLong(6),
                Line::Text(vec![]),
                Line::Text(b"last".to_vec()),
                Line::Text(b"abcd".to_vec()),
            ]
        );
    }
}
