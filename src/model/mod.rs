//! Models: loading a checkpoint and running it.
//!
//! [`Model::load_with`] maps a checkpoint (safetensors, Ai00 `.st` or PyTorch `.pth`),
//! detects the naming layout and the RWKV version from the tensor names, reads every
//! hyper-parameter from the tensor shapes and puts the version's weights on the chosen
//! backend. Nothing is hard-coded to a size. Each version is one file ([`v6`], [`v7`]) holding its
//! weights and its forward pass, written once over [`crate::backend::Backend`].

pub mod checkpoint;
pub mod ends;
mod engine;
pub mod load;
pub mod names;
pub mod pth;
pub mod quant_file;
pub mod table;
pub mod v6;
pub mod v7;

use crate::backend::cpu::{bf16_products_here, Cpu};
use crate::backend::opencl::{DeviceSpec, Ocl};
pub use crate::backend::Precision;
use crate::backend::{Backend, MatrixInfo, StateShape};
use crate::error::{Error, Result};
use crate::state::State;
pub use crate::tensor::quant::Quant;
use checkpoint::Checkpoint;
use engine::{Engine, Run};
use load::Loader;
use names::{Layout, Names, Version};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Prompt tokens a sequence call takes at most when feeding ([`Model::feed`] in `rwkv-gen`
/// and `rwkv-state`): bounds the activations' memory, while packing the weights for the
/// bf16 products rarely.
pub const PROMPT_CHUNK: usize = 512;

/// The RWKV generation of a model, with the widths of its LoRAs (read per tensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// RWKV-6 ("Finch", x060): the mix LoRA `M` and the decay LoRA `K`.
    V6 { mix_lora: usize, decay_lora: usize },
    /// RWKV-7 ("Goose", x070): the decay, learning-rate, value-residual and gate LoRAs
    /// (`Dv` is 0 in a one-layer model, which has no value residual).
    V7 {
        w_lora: usize,
        a_lora: usize,
        v_lora: usize,
        g_lora: usize,
    },
}

impl Arch {
    /// The generation.
    pub fn version(self) -> Version {
        match self {
            Arch::V6 { .. } => Version::V6,
            Arch::V7 { .. } => Version::V7,
        }
    }

    /// `RWKV-6` or `RWKV-7`, for people.
    pub fn title(self) -> &'static str {
        match self {
            Arch::V6 { .. } => "RWKV-6",
            Arch::V7 { .. } => "RWKV-7",
        }
    }

    /// `rwkv6` or `rwkv7`: the name state files and messages use.
    pub fn name(self) -> &'static str {
        match self {
            Arch::V6 { .. } => "rwkv6",
            Arch::V7 { .. } => "rwkv7",
        }
    }
}

/// Hyper-parameters, all read from tensor shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub arch: Arch,
    /// `L`
    pub n_layer: usize,
    /// `D`
    pub n_embd: usize,
    /// `H`
    pub n_head: usize,
    /// `S`, with `H * S = D`
    pub head_size: usize,
    /// `F`
    pub ffn: usize,
    /// `V`
    pub vocab: usize,
}

impl Config {
    /// The layout of one stream's state.
    pub fn state_shape(&self) -> StateShape {
        StateShape {
            layers: self.n_layer,
            embd: self.n_embd,
            heads: self.n_head,
            head_size: self.head_size,
        }
    }

    /// RWKV-6's LoRA widths `(M, K)` (zero for another version).
    pub fn v6_loras(&self) -> (usize, usize) {
        match self.arch {
            Arch::V6 {
                mix_lora,
                decay_lora,
            } => (mix_lora, decay_lora),
            Arch::V7 { .. } => (0, 0),
        }
    }

    /// Parameters, counting every matrix and vector.
    pub fn n_params(&self) -> usize {
        let (d, f, v, l) = (self.n_embd, self.ffn, self.vocab, self.n_layer);
        let layers = match self.arch {
            Arch::V6 {
                mix_lora: m,
                decay_lora: k,
            } => {
                let att = 5 * d * d + d * 5 * m + 5 * m * d + 2 * d * k + 12 * d;
                let ffn = 2 * d * f + d * d + 2 * d;
                l * (att + ffn + 4 * d)
            }
            Arch::V7 {
                w_lora,
                a_lora,
                v_lora,
                g_lora,
            } => {
                let att = 4 * d * d + 2 * d * (w_lora + a_lora + g_lora) + 13 * d;
                let ffn = 2 * d * f + d;
                // layers 1.. add the value residual's LoRA and bias
                let residual = 2 * d * v_lora + d;
                l * (att + ffn + 4 * d) + l.saturating_sub(1) * residual
            }
        };
        2 * v * d + 4 * d + layers
    }
}

/// Which logits a forward call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// None: only the state advances (prompt prefixes).
    None,
    /// `[V]` after the last token (of each stream: `[N, V]`).
    Last,
    /// `[T, V]` after every token (scoring).
    All,
}

/// A model version's weights and forward pass on one backend.
pub trait Net<B: Backend>: Send + Sync + 'static {
    /// Reusable activations of one call.
    type Scratch: Send;

    fn scratch(&self, be: &B) -> Self::Scratch;

    /// Every weight matrix a token reads (all but the embedding), by BlinkDL name.
    fn matrices(&self) -> Vec<(String, &B::Matrix)>;

    /// The embedding `[V, D]`, on the host.
    fn embedding(&self) -> &crate::tensor::Matrix;

    /// Feed the rows `tokens` (stream `i` is rows `spans[i]` with state `states[i]`) and put
    /// the logits `want`s into `out`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        be: &B,
        sc: &mut Self::Scratch,
        tokens: &[u32],
        spans: &[Range<usize>],
        states: &mut [&mut B::State],
        prec: Precision,
        want: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()>;
}

/// Keep the last row of each stream of `logits [T, V]`: `[N, V]`.
pub(crate) fn last_rows(logits: &mut Vec<f32>, spans: &[Range<usize>], v: usize) {
    for (i, s) in spans.iter().enumerate() {
        logits.copy_within((s.end - 1) * v..s.end * v, i * v);
    }
    logits.truncate(spans.len() * v);
}

/// A loaded model, ready to run.
pub struct Model {
    pub path: PathBuf,
    pub cfg: Config,
    pub layout: Layout,
    /// Identifies the weights, not the file: see [`Model::fingerprint`].
    fingerprint: String,
    run: Box<dyn Run>,
    /// What [`Model::set_precision`] asked for.
    precision: Precision,
}

/// How to load a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Quantize the large matrices at load.
    pub quant: Option<Quant>,
    /// Quantize only the first N layers (the head too); `None`: all.
    pub quant_layers: Option<usize>,
    /// Where to run.
    pub device: DeviceSpec,
    /// On the CPU, store int8 and nf4 matrices in panels where the integer panel kernel
    /// runs ([`crate::backend::cpu::Cpu::panels`]; the default): as fast for one stream,
    /// faster for a batch of streams. `false` keeps them row after row, as quantized; the
    /// results are the same bits either way.
    pub quant_panels: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            quant: None,
            quant_layers: None,
            device: DeviceSpec::CPU,
            quant_panels: true,
        }
    }
}

impl Model {
    /// Map and check the checkpoint at `path`, weights as stored, on the CPU.
    pub fn load(path: &Path) -> Result<Model> {
        Model::load_with(path, LoadOptions::default())
    }

    /// Map and check the checkpoint at `path`, quantizing and placing it as `opts` say.
    pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Model> {
        let ck = Checkpoint::open(path)?;
        let names = Names::new(&ck);
        let cfg = config(&ck, &names)?;
        let vectors = match cfg.arch {
            Arch::V6 { .. } => v6::fingerprinted(&cfg),
            Arch::V7 { .. } => v7::fingerprinted(&cfg),
        };
        let fingerprint = fingerprint(&ck, &names, &cfg, &vectors)?;
        let run: Box<dyn Run> = match Ocl::open(opts.device)? {
            None => {
                let cpu = Cpu {
                    panels: opts.quant_panels,
                };
                engine(cpu, &ck, &names, &cfg, &opts, true)?
            }
            #[cfg(feature = "opencl")]
            Some(ocl) => engine(ocl, &ck, &names, &cfg, &opts, false)?,
            #[cfg(not(feature = "opencl"))]
            Some(never) => match never {},
        };
        Ok(Model {
            path: path.to_path_buf(),
            cfg,
            layout: names.layout,
            fingerprint,
            run,
            precision: Precision::F32,
        })
    }

    /// The hyper-parameters of the checkpoint at `path`, read from its header and tensor
    /// shapes without loading the weights.
    pub fn inspect(path: &Path) -> Result<Config> {
        let ck = Checkpoint::open(path)?;
        let names = Names::new(&ck);
        config(&ck, &names)
    }

    /// Round the activations of products as `p` says ([`Precision::Bf16Streams`] asks for
    /// [`Precision::Bf16`]); the CPU only (an OpenCL device always multiplies in f32).
    pub fn set_precision(&mut self, p: Precision) {
        self.precision = p;
    }

    /// The precision products run in: [`Precision::Bf16`] only where it was asked for and
    /// the CPU has it, and never on an OpenCL device.
    pub fn sequence_precision(&self) -> Precision {
        match self.precision {
            Precision::Bf16 | Precision::Bf16Streams
                if self.run.on_cpu() && bf16_products_here() =>
            {
                Precision::Bf16
            }
            _ => Precision::F32,
        }
    }

    /// What runs the model: `cpu (...)` or the OpenCL device's name.
    pub fn device(&self) -> String {
        self.run.describe()
    }

    /// The weight matrices a token reads, where they are in host memory (on the CPU; empty
    /// on a device): what a benchmark reads to measure the bandwidth they get.
    pub fn host_matrices(&self) -> Vec<&crate::tensor::Matrix> {
        self.run.host_matrices()
    }

    /// Every weight matrix by BlinkDL name (the embedding first), with its shape, format
    /// and size where the model runs.
    pub fn matrices(&self) -> Vec<(String, MatrixInfo)> {
        self.run.matrices()
    }

    /// Bytes of the weights a token reads (every matrix but the embedding).
    pub fn weight_bytes(&self) -> usize {
        self.matrices().iter().skip(1).map(|(_, i)| i.bytes).sum()
    }

    /// Kernel launches and host transfers so far, when the model runs on a device.
    pub fn counters(&self) -> Option<crate::backend::Counters> {
        self.run.counters()
    }

    /// Whether the model runs on an OpenCL device.
    pub fn on_device(&self) -> bool {
        !self.run.on_cpu()
    }

    /// 16 hex digits identifying the weights: a hash of the shape and of the per-channel
    /// vectors (norms, decays, bonuses, mixes), which every file layout stores alike and
    /// quantization never touches. The same weights in BlinkDL, Hugging Face or Ai00 files
    /// share it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A fresh zero state (on the host; it moves to the model's device on first use).
    pub fn new_state(&self) -> State {
        State::zeros(self.cfg.state_shape())
    }

    /// Feed `tokens` from `state` (advanced in place) and return the logits `want`s:
    /// nothing, `[V]` after the last token, or `[T, V]` after every token.
    /// Every projection runs over all the tokens at once (sequence mode).
    pub fn forward(&self, tokens: &[u32], state: &mut State, want: Logits) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to feed".into()));
        }
        self.check(tokens, std::slice::from_ref(state))?;
        let prec = self.sequence_precision();
        let whole = 0..tokens.len();
        self.run.forward(
            tokens,
            std::slice::from_ref(&whole),
            &mut [state],
            prec,
            want,
        )
    }

    /// One token for each stream, `tokens[i]` after `states[i]` (each advanced in place):
    /// the logits after each, `[N, V]`. The streams share every product, and a stream's
    /// result is the same bits as [`Model::forward`] of its token alone.
    pub fn step(&self, tokens: &[u32], states: &mut [&mut State]) -> Result<Vec<f32>> {
        if tokens.is_empty() || tokens.len() != states.len() {
            return Err(Error::Invalid(format!(
                "{} tokens for {} streams",
                tokens.len(),
                states.len()
            )));
        }
        for s in states.iter() {
            self.check(tokens, std::slice::from_ref(&**s))?;
        }
        let spans: Vec<Range<usize>> = (0..tokens.len()).map(|i| i..i + 1).collect();
        let prec = match self.sequence_precision() {
            Precision::F32 => Precision::F32,
            _ => Precision::Bf16Streams,
        };
        self.run.forward(tokens, &spans, states, prec, Logits::Last)
    }

    /// The token range and the states' shapes.
    fn check(&self, tokens: &[u32], states: &[State]) -> Result<()> {
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range for a model with vocab {}",
                self.cfg.vocab
            )));
        }
        if states.iter().any(|s| s.shape() != self.cfg.state_shape()) {
            return Err(Error::StateMismatch(
                "the state's shape does not fit this model".into(),
            ));
        }
        Ok(())
    }

    /// Feed `tokens` in chunks of `chunk` (bounding the activations' memory), returning the
    /// logits after the last token.
    pub fn feed(&self, tokens: &[u32], state: &mut State, chunk: usize) -> Result<Vec<f32>> {
        let chunk = chunk.max(1);
        let mut logits = Vec::new();
        let n = tokens.len().div_ceil(chunk);
        for (i, part) in tokens.chunks(chunk).enumerate() {
            let want = if i + 1 == n {
                Logits::Last
            } else {
                Logits::None
            };
            logits = self.forward(part, state, want)?;
        }
        Ok(logits)
    }
}

/// The weights of `ck` on `be`, ready to run.
fn engine<B: Backend>(
    be: B,
    ck: &Checkpoint,
    names: &Names,
    cfg: &Config,
    opts: &LoadOptions,
    cpu: bool,
) -> Result<Box<dyn Run>> {
    let l = Loader {
        ck,
        names,
        be: &be,
        quant: opts.quant,
        quant_layers: opts.quant_layers.unwrap_or(cfg.n_layer),
        quantizable: quantizable(cfg.arch.version()),
    };
    let shape = cfg.state_shape();
    Ok(match cfg.arch {
        Arch::V6 { .. } => {
            let w = v6::load(&l, cfg)?;
            Box::new(Engine::new(be, w, shape, cpu))
        }
        Arch::V7 { .. } => {
            let w = v7::load(&l, cfg)?;
            Box::new(Engine::new(be, w, shape, cpu))
        }
    })
}

/// The hyper-parameters of `ck`, by the version its names say; none of them zero.
fn config(ck: &Checkpoint, names: &Names) -> Result<Config> {
    let c = match names::version(ck, names)? {
        Version::V6 => v6::config(ck, names)?,
        Version::V7 => v7::config(ck, names)?,
    };
    let sizes = [
        ("layers", c.n_layer),
        ("width", c.n_embd),
        ("heads", c.n_head),
        ("head size", c.head_size),
        ("FFN width", c.ffn),
        ("vocabulary", c.vocab),
    ];
    if let Some((what, _)) = sizes.iter().find(|(_, n)| *n == 0) {
        return Err(Error::format(
            &ck.path,
            format!("a model with no {what} (its tensor shapes say 0)"),
        ));
    }
    Ok(c)
}

/// Which matrices `--quant` quantizes in a model of version `v` (by BlinkDL name and the
/// number of layers quantized).
pub fn quantizable(v: Version) -> fn(&str, usize) -> bool {
    match v {
        Version::V6 => v6::quantizable,
        Version::V7 => v7::quantizable,
    }
}

/// FNV-1a over the shape and the exact f32 bits of the per-channel vectors `vectors`.
fn fingerprint(ck: &Checkpoint, names: &Names, cfg: &Config, vectors: &[String]) -> Result<String> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for n in [
        cfg.n_layer,
        cfg.n_embd,
        cfg.n_head,
        cfg.head_size,
        cfg.ffn,
        cfg.vocab,
    ] {
        eat(&(n as u64).to_le_bytes());
    }
    for name in vectors {
        let stored = names.stored(name);
        let n = ck.get(stored)?.numel();
        for x in ck.vector(stored, &[n])? {
            eat(&x.to_bits().to_le_bytes());
        }
    }
    Ok(format!("{h:016x}"))
}
