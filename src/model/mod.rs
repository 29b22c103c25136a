//! Model loading and the forward pass entry point.
//!
//! `Model::load` maps a checkpoint (safetensors, Ai00 `.st` or PyTorch `.pth`), detects the
//! naming layout and the RWKV version, reads every hyper-parameter from the tensor shapes
//! and builds the version's weights over the map. Nothing is hard-coded to a size.

pub mod checkpoint;
pub mod names;
pub mod pth;
pub mod quant_file;
pub mod v6;

use crate::backend::opencl::{DeviceSpec, Ocl, OclModel};
pub use crate::backend::Precision;
use crate::backend::{cpu::Cpu, Backend};
use crate::error::{Error, Result};
use crate::state::State;
pub use crate::tensor::quant::Quant;
use checkpoint::Checkpoint;
use names::{Layout, Names};
use std::path::{Path, PathBuf};
pub use v6::Logits;

/// Hyper-parameters, all read from tensor shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
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
    /// `M`: width of the token-shift mix LoRA.
    pub maa_lora: usize,
    /// `K`: width of the decay LoRA.
    pub decay_lora: usize,
}

impl Config {
    /// Parameters, counting every matrix and vector.
    pub fn n_params(&self) -> usize {
        let (d, f, v, m, k) = (
            self.n_embd,
            self.ffn,
            self.vocab,
            self.maa_lora,
            self.decay_lora,
        );
        let att = 5 * d * d + d * 5 * m + 5 * m * d + 2 * d * k + 12 * d;
        let ffn = 2 * d * f + d * d + 2 * d;
        let norms = 4 * d;
        2 * v * d + 4 * d + self.n_layer * (att + ffn + norms)
    }
}

/// Prompt tokens a sequence call takes at most ([`Model::feed`] in `rwkv-gen` and
/// `rwkv-state`): bounds the activations' memory. 512 rather than 256 packs the weights for
/// the bf16 products half as often: a 1042-token prompt of the 1.6B shape took 8.86 s
/// instead of 9.20 (3 paired runs) for 50 MB more resident memory.
pub const PROMPT_CHUNK: usize = 512;

/// A loaded model, ready to run.
pub struct Model {
    pub path: PathBuf,
    pub cfg: Config,
    pub layout: Layout,
    pub weights: v6::Weights,
    /// Identifies the weights, not the file: see [`Model::fingerprint`].
    fingerprint: String,
    backend: Box<dyn Backend>,
    /// What [`Model::set_precision`] asked for.
    precision: Precision,
    /// The weights on an OpenCL device, when the model runs there.
    device: Option<OclModel>,
}

/// How to load a model.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Quantize the large matrices at load.
    pub quant: Option<Quant>,
    /// Quantize only the first N layers (the head too); `None`: all.
    pub quant_layers: Option<usize>,
}

impl Model {
    /// Map and check the checkpoint at `path`, weights as stored.
    pub fn load(path: &Path) -> Result<Model> {
        Model::load_with(path, LoadOptions::default())
    }

    /// Map and check the checkpoint at `path`, quantizing as `opts` say.
    pub fn load_with(path: &Path, opts: LoadOptions) -> Result<Model> {
        let ck = Checkpoint::open(path)?;
        let names = Names::new(&ck);
        names::check_version(&ck, &names)?;
        let cfg = v6::config(&ck, &names)?;
        let layers = opts.quant_layers.unwrap_or(cfg.n_layer);
        let weights = v6::load(&ck, &names, &cfg, opts.quant, layers)?;
        let fingerprint = fingerprint(&cfg, &weights);
        Ok(Model {
            path: path.to_path_buf(),
            cfg,
            layout: names.layout,
            weights,
            fingerprint,
            backend: Box::new(Cpu::default()),
            precision: Precision::F32,
            device: None,
        })
    }

    /// Round the activations of sequence products (prompts, scoring) as `p` says; the CPU
    /// only (an OpenCL device always multiplies in f32).
    pub fn set_precision(&mut self, p: Precision) {
        self.backend = Box::new(Cpu { precision: p });
        self.precision = p;
    }

    /// The precision sequence products run in: [`Precision::Bf16`] only where it was asked
    /// for and the CPU has it, and never on an OpenCL device.
    pub fn sequence_precision(&self) -> Precision {
        match self.precision {
            Precision::Bf16
                if self.device.is_none() && crate::backend::cpu::bf16_products_here() =>
            {
                Precision::Bf16
            }
            _ => Precision::F32,
        }
    }

    /// Run on `spec`'s device: upload the weights once (`auto` without a GPU, and `cpu`,
    /// keep the CPU). Returns the device's name when one is used.
    pub fn use_device(&mut self, spec: DeviceSpec) -> Result<Option<String>> {
        self.device = None;
        match Ocl::open(spec)? {
            None => Ok(None),
            Some(ocl) => {
                #[cfg(feature = "opencl")]
                let name = Some(ocl.name.clone());
                #[cfg(not(feature = "opencl"))]
                let name = None;
                self.device = Some(OclModel::upload(ocl, &self.weights)?);
                Ok(name)
            }
        }
    }

    /// 16 hex digits identifying the weights: a hash of the shape and of the per-channel
    /// vectors (norms, decays, bonuses, mixes), which every file layout stores alike and
    /// quantization never touches. The same weights in BlinkDL, Hugging Face or Ai00 files
    /// share it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A fresh zero state.
    pub fn new_state(&self) -> State {
        State::zeros(&self.cfg)
    }

    /// Feed `tokens` from `state` (advanced in place) and return the logits `want`s:
    /// nothing, `[V]` after the last token, or `[T, V]` after every token.
    /// Every projection runs over all the tokens at once (sequence mode).
    pub fn forward(&self, tokens: &[u32], state: &mut State, want: Logits) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::Invalid("no tokens to feed".into()));
        }
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= self.cfg.vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is out of range for a model with vocab {}",
                self.cfg.vocab
            )));
        }
        if !state.fits(&self.cfg) {
            return Err(Error::StateMismatch(
                "the state's shape does not fit this model".into(),
            ));
        }
        if let Some(dev) = &self.device {
            return dev.forward(&self.weights, &self.cfg, tokens, state, want);
        }
        Ok(self
            .weights
            .forward(self.backend.as_ref(), &self.cfg, tokens, state, want))
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

/// FNV-1a over the shape and the exact f32 bits of the per-channel vectors.
fn fingerprint(cfg: &Config, w: &v6::Weights) -> String {
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
    let mut vectors: Vec<&[f32]> = vec![&w.ln0_w, &w.ln0_b, &w.ln_out_w, &w.ln_out_b];
    for l in &w.layers {
        vectors.extend([
            &l.ln1_w[..],
            &l.ln2_w,
            &l.att.decay,
            &l.att.faaaa,
            &l.att.maa_x,
        ]);
        vectors.extend([&l.att.ln_x_w[..], &l.ffn.maa_k, &l.ffn.maa_r]);
    }
    for v in vectors {
        for x in v {
            eat(&x.to_bits().to_le_bytes());
        }
    }
    format!("{h:016x}")
}
