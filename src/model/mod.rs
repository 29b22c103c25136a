//! Models: loading a checkpoint and running it.
//!
//! [`Model::load_with`] maps a checkpoint (safetensors, Ai00 `.st` or PyTorch `.pth`),
//! detects the naming layout and the RWKV version from the tensor names, reads every
//! hyper-parameter from the tensor shapes and puts the version's weights on the chosen
//! backend. Nothing is hard-coded to a size. Each version is one file ([`v4`], [`v5`], [`v6`], [`v7`], [`v7a`]) holding its
//! weights and its forward pass, written once over [`crate::backend::Backend`].

pub mod adapter;
pub mod adapter_file;
pub mod checkpoint;
pub mod deep_embed;
pub mod describe;
pub mod ends;
mod engine;
pub mod ffn;
pub mod gguf;
pub mod gguf_names;
pub mod load;
pub mod names;
pub mod pth;
pub mod quant_file;
pub mod registry;
pub mod table;
pub mod v4;
pub mod v5;
pub mod v6;
pub mod v7;
pub mod v7a;
pub mod version;

use crate::backend::MatrixInfo;
pub use crate::backend::Precision;
use crate::error::{Error, Result};
use crate::state::State;
pub use crate::tensor::quant::Quant;
use crate::tokenizer::{self, world::World};
use checkpoint::Checkpoint;
pub use checkpoint::Container;
pub use ends::Logits;
use names::{Layout, Names};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use version::Run;
pub use version::{Config, LoadOptions, Version};

/// Prompt tokens a sequence call takes at most when feeding ([`Model::feed`] in `rwkv-gen`
/// and `rwkv-state`): bounds the activations' memory, while packing the weights for the
/// bf16 products rarely.
pub const PROMPT_CHUNK: usize = 512;

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
    /// The vocabulary the file carries (GGUF), if any.
    pub vocabulary: Option<Arc<World>>,
    /// The file's format.
    pub container: Container,
    /// The ggml block types the file stores matrices in (GGUF), decoded at load.
    pub block_types: Vec<&'static str>,
    /// The adapters merged at load, for `-v` (empty: none).
    pub adapters: String,
}

impl Model {
    /// Map and check the checkpoint at `path`, weights as stored, on the CPU.
    pub fn load(path: &Path) -> Result<Model> {
        Model::load_with(path, LoadOptions::default())
    }

    /// Map and check the checkpoint at `path`, quantizing and placing it as `opts` say.
    pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Model> {
        let mut ck = Checkpoint::open(path)?;
        let names = Names::new(&ck);
        ck.adapters = adapter_file::open(&opts.adapters, &ck, &names)?;
        let cfg = config(&ck, &names)?;
        let vectors = (cfg.version.fingerprinted)(&cfg);
        let fingerprint = fingerprint(&ck, &names, &cfg, &vectors)?;
        let run = (cfg.version.open)(&ck, &names, &cfg, &opts)?;
        Ok(Model {
            path: path.to_path_buf(),
            cfg,
            layout: names.layout,
            fingerprint,
            run,
            precision: Precision::F32,
            vocabulary: ck.tokens.as_deref().map(tokenizer::from_gguf),
            container: ck.container,
            block_types: ck.block_types(),
            adapters: adapter::describe(&ck.adapters.summary),
        })
    }

    /// The hyper-parameters of the checkpoint at `path`, read from its header and tensor
    /// shapes without loading the weights.
    pub fn inspect(path: &Path) -> Result<Config> {
        Ok(Model::inspect_vocabulary(path)?.0)
    }

    /// [`Model::inspect`], and the vocabulary the file carries (GGUF), if any.
    pub fn inspect_vocabulary(path: &Path) -> Result<(Config, Option<Arc<World>>)> {
        let ck = Checkpoint::open(path)?;
        let names = Names::new(&ck);
        let vocabulary = ck.tokens.as_deref().map(tokenizer::from_gguf);
        Ok((config(&ck, &names)?, vocabulary))
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
            Precision::Bf16 | Precision::Bf16Streams if self.run.bf16_products() => Precision::Bf16,
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
        self.feed_telling(tokens, state, chunk, &mut |_| {})
    }

    /// [`Model::feed`], telling `fed` the tokens of each chunk once it is fed.
    pub fn feed_telling(
        &self,
        tokens: &[u32],
        state: &mut State,
        chunk: usize,
        fed: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>> {
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
            fed(part.len());
        }
        Ok(logits)
    }
}

/// The hyper-parameters of `ck`, by the version its names say; none of them zero.
fn config(ck: &Checkpoint, names: &Names) -> Result<Config> {
    let c = (registry::detect(ck, names)?.config)(ck, names)?;
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
