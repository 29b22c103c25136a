//! What a model version is to the rest of the crate. Each version's file (`v6.rs`, `v7.rs`)
//! implements [`Family`] (its names, its config from shapes, its weights and its layer step)
//! and publishes one [`Version`]; [`super::registry`] lists them. Loading, state files,
//! fingerprints and the tools take everything version-specific from a [`Version`], so nothing
//! outside the version files matches on a version.

use super::checkpoint::Checkpoint;
use super::ends::{Ends, Logits};
use super::load::Loader;
use super::names::Names;
use crate::backend::device::DeviceSpec;
use crate::backend::{Backend, MatrixInfo, Precision, Recurrence, StateShape};
use crate::error::Result;
use crate::state::State;
use crate::tensor::quant::Quant;
use std::ops::Range;

/// A model version: its names for people and files, and its functions, taken from the
/// version's [`Family`] by [`super::engine::version`].
pub struct Version {
    /// `rwkv7`: the name state files and JSON output use.
    pub name: &'static str,
    /// `RWKV-7`: the name messages use.
    pub title: &'static str,
    /// Whether a checkpoint's (BlinkDL) names are this version's.
    pub recognise: fn(&Names) -> bool,
    /// The hyper-parameters, read from the tensor shapes.
    pub config: fn(&Checkpoint, &Names) -> Result<Config>,
    /// Which matrices `--quant` quantizes (by BlinkDL name and the layers quantized).
    pub quantizable: fn(&str, usize) -> bool,
    /// The per-channel vectors the model fingerprint hashes, in order.
    pub fingerprinted: fn(&Config) -> Vec<String>,
    /// Parameters, counting every matrix and vector.
    pub params: fn(&Config) -> usize,
    /// How the official state-tuning files of this version lay out a layer's state, if
    /// a layout is known.
    pub tuning: Option<Tuning>,
    /// What its layers' recurrences keep between tokens.
    pub recurrence: Recurrence,
    /// The weights of a checkpoint on the device `opts` names, ready to run.
    pub open: Open,
}

/// [`Version::open`].
pub type Open = fn(&Checkpoint, &Names, &Config, &LoadOptions) -> Result<Box<dyn Run>>;

impl std::fmt::Debug for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Versions are one static each: the same name is the same version.
impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        self.name == other.name
    }
}
impl Eq for Version {}

/// A state-tuning file's layout (RWKV-PEFT `.pth`, Ai00 `.st`): `blocks.N.{tensor}` per
/// layer holding the wkv state `[H, S, S]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// `att.time_state`.
    pub tensor: &'static str,
    /// Whether a RWKV-PEFT `.pth` stores the two inner axes swapped against this version's
    /// state.
    pub pth_transposed: bool,
    /// Whether an Ai00 / web-rwkv `.st` does (they store `[head, key, value]` for every
    /// version: web-rwkv reads RWKV-6 and RWKV-7 states alike).
    pub st_transposed: bool,
}

/// Hyper-parameters, all read from tensor shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub version: &'static Version,
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
    /// The widths of the version's LoRAs, in the order its file names them (unused ones 0).
    pub lora: [usize; 4],
}

impl Config {
    /// The layout of one stream's state.
    pub fn state_shape(&self) -> StateShape {
        StateShape {
            layers: self.n_layer,
            embd: self.n_embd,
            heads: self.n_head,
            head_size: self.head_size,
            recurrence: self.version.recurrence,
        }
    }

    /// Parameters, counting every matrix and vector.
    pub fn n_params(&self) -> usize {
        (self.version.params)(self)
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
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
    /// LoRA adapters merged into the weights as they are read, before `quant`.
    pub adapters: Vec<super::adapter::AdapterSpec>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            quant: None,
            quant_layers: None,
            device: DeviceSpec::CPU,
            quant_panels: true,
            adapters: Vec::new(),
        }
    }
}

/// A model version, as its file implements it: everything [`Version`] holds, and its
/// weights on any backend.
pub trait Family: 'static {
    const NAME: &'static str;
    const TITLE: &'static str;
    const TUNING: Option<Tuning> = None;
    const RECURRENCE: Recurrence = Recurrence::Heads;
    /// The weights of one model on backend `B`.
    type Weights<B: Backend>: Layers<B>;

    fn recognise(names: &Names) -> bool;
    fn config(ck: &Checkpoint, names: &Names) -> Result<Config>;
    fn quantizable(canon: &str, layers: usize) -> bool;
    fn fingerprinted(cfg: &Config) -> Vec<String>;
    fn params(cfg: &Config) -> usize;
    /// Build the weights of every layer on `l`'s backend, checking every shape against `cfg`.
    fn load<B: Backend>(l: &Loader<B>, cfg: &Config) -> Result<Self::Weights<B>>;
}

/// A version's weights on a backend, as the forward pass's driver
/// ([`super::engine::Engine`]) runs them: it embeds the tokens, calls [`Layers::layer`] for
/// each layer in turn on the residual stream, and computes the logits.
pub trait Layers<B: Backend>: Send + Sync + 'static {
    /// Reusable activations of one call, beside the driver's residual stream.
    type Scratch: Send;

    fn scratch(&self, be: &B) -> Self::Scratch;

    /// Grow `sc` for a call of `t` rows.
    fn reserve(&self, be: &B, sc: &mut Self::Scratch, t: usize) -> Result<()>;

    /// The embedding and the head.
    fn ends(&self) -> &Ends<B>;

    /// Number of layers.
    fn depth(&self) -> usize;

    /// Every weight matrix of the layers, by BlinkDL name (the driver adds the head).
    fn matrices(&self) -> Vec<(String, &B::Matrix)>;

    /// Layer `i` on the residual stream `x [t, D]`: its time mix computes the rows from
    /// `rows.0` on and its channel mix those from `rows.1` on (rows before stay as they
    /// are, though the state takes every token).
    #[allow(clippy::too_many_arguments)]
    fn layer(
        &self,
        be: &B,
        i: usize,
        x: &mut B::Tensor,
        sc: &mut Self::Scratch,
        pass: Pass<'_, B>,
        states: &mut [&mut B::State],
    ) -> Result<()>;
}

/// What a layer step needs to know of the call: its rows, streams and precision, and which
/// rows this layer computes ([`Layers::layer`]).
pub struct Pass<'a, B: Backend> {
    /// Rows of the call.
    pub t: usize,
    /// The token of each row.
    pub tokens: &'a [u32],
    pub batch: &'a B::Batch,
    pub prec: Precision,
    /// The first row the time mix computes, and the first the channel mix computes.
    pub rows: (usize, usize),
}

impl<B: Backend> Clone for Pass<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Pass<'_, B> {}

/// What [`super::Model`] asks of its engine: a version's weights on one backend, behind an
/// object-safe interface.
pub trait Run: Send + Sync {
    /// Feed the rows `tokens`, stream `i` being `spans[i]` with state `states[i]`; the
    /// logits `want`s.
    fn forward(
        &self,
        tokens: &[u32],
        spans: &[Range<usize>],
        states: &mut [&mut State],
        prec: Precision,
        want: Logits,
    ) -> Result<Vec<f32>>;

    /// What runs the model.
    fn describe(&self) -> String;

    /// Whether this engine runs on the CPU.
    fn on_cpu(&self) -> bool;

    /// Whether its backend rounds products to bf16 at [`Precision::Bf16`].
    fn bf16_products(&self) -> bool;

    /// The backend's launches and transfers so far (a device's).
    fn counters(&self) -> Option<crate::backend::Counters>;

    /// [`super::Model::host_matrices`].
    fn host_matrices(&self) -> Vec<&crate::tensor::Matrix>;

    /// [`super::Model::matrices`].
    fn matrices(&self) -> Vec<(String, MatrixInfo)>;
}
