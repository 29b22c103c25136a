//! The interface between the model files and the hardware. A model file (`model::v6`,
//! `model::v7`) says *what* runs, in order, as calls on a [`Backend`]; the backend says
//! *how*, over its own memory: host memory on the CPU ([`cpu::Cpu`]), device buffers on
//! OpenCL ([`opencl::Ocl`]). Activations, weights and states stay where the backend keeps
//! them; per call only the token rows go in and the requested logits come out.
//!
//! The operations are products against stored weights, each followed by a named
//! elementwise step ([`Then`]) that the backend fuses its own way (in the task that summed
//! the rows on the CPU, in the product's kernel on a device); the layer norm with its token
//! shift ([`NormShift`]); a LoRA ([`Lora`]); and the wkv recurrences ([`Wkv6`], [`Wkv7`]).
//!
//! A call feeds one or more streams at once: the rows of the activations are the streams'
//! tokens one after another ([`Batch`](Backend::Batch)), each stream with its own state.
//! Only the token shift and the recurrence look across rows, and they never look across
//! streams.

pub mod cpu;
pub mod device;
pub mod opencl;

use crate::error::Result;
use crate::tensor::Matrix;
use std::ops::Range;

/// How products round their activations. What it costs: `docs/PRECISION.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 activations: the products of the stored weights, as exact as f32 sums get.
    #[default]
    F32,
    /// Activations rounded to bf16 and multiplied by `vdpbf16ps` (twice the rate of f32
    /// FMAs) on CPUs with AVX-512 BF16; f32 elsewhere and on OpenCL devices. Sequences of
    /// one stream (four tokens or more) widen f16 and int8 weights to bf16 too; one to three
    /// tokens round only against bf16 weights, summed as [`Precision::Bf16Streams`] sums.
    Bf16,
    /// As [`Precision::Bf16`] for one token of each of many streams: bf16 weights only,
    /// each (row, token) pair summed in one order whatever the token count, so that a
    /// stream's result does not depend on its company.
    Bf16Streams,
}

/// `rows` rows of `cols` values in a tensor, from row `row` (element `row * cols`).
pub struct Rows<'a, T> {
    pub t: &'a T,
    pub row: usize,
    pub rows: usize,
    pub cols: usize,
}

impl<T> Clone for Rows<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Rows<'_, T> {}

impl<'a, T> Rows<'a, T> {
    pub fn new(t: &'a T, row: usize, rows: usize, cols: usize) -> Rows<'a, T> {
        Rows { t, row, rows, cols }
    }

    /// The element range, from the first row's first value to the last row's last.
    pub fn span(&self) -> Range<usize> {
        self.row * self.cols..(self.row + self.rows) * self.cols
    }
}

/// Rows to write, as [`Rows`].
pub struct RowsMut<'a, T> {
    pub t: &'a mut T,
    pub row: usize,
    pub rows: usize,
    pub cols: usize,
}

impl<'a, T> RowsMut<'a, T> {
    pub fn new(t: &'a mut T, row: usize, rows: usize, cols: usize) -> RowsMut<'a, T> {
        RowsMut { t, row, rows, cols }
    }

    pub fn span(&self) -> Range<usize> {
        self.row * self.cols..(self.row + self.rows) * self.cols
    }

    /// The same rows, read-only.
    pub fn as_rows(&self) -> Rows<'_, T> {
        Rows::new(self.t, self.row, self.rows, self.cols)
    }

    /// A shorter-lived handle on the same rows.
    pub fn reborrow(&mut self) -> RowsMut<'_, T> {
        RowsMut::new(self.t, self.row, self.rows, self.cols)
    }
}

/// A LayerNorm's (or GroupNorm's) affine part and epsilon: `[D]` each.
pub struct Norm<'a, T> {
    pub w: &'a T,
    pub b: &'a T,
    pub eps: f32,
}

impl<T> Clone for Norm<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Norm<'_, T> {}

/// What happens to a product's outputs `y` once summed, per output. Operand rows go with
/// the product's rows (row `i` of an operand with row `i` of `y`); per-column vectors are
/// `[out]`.
pub enum Then<'a, T> {
    None,
    Tanh,
    Sigmoid,
    Silu,
    ReluSquared,
    /// `y = exp(-exp(bias + y))`: the RWKV-6 decay.
    ExpNegExp(&'a T),
    /// `y = exp(-0.606531 * sigmoid(bias + y))`: the RWKV-7 decay.
    SigmoidDecay(&'a T),
    /// `y = sigmoid(bias + y)`.
    SigmoidPlus(&'a T),
    /// `y = xx + sx * (maa + y)`: RWKV-6's data-dependent token-shift mix.
    Mix {
        xx: Rows<'a, T>,
        sx: Rows<'a, T>,
        maa: &'a T,
    },
    /// `x += y`: the residual stream.
    Residual(RowsMut<'a, T>),
    /// `y *= gate; x += y`.
    GatedResidual {
        gate: Rows<'a, T>,
        x: RowsMut<'a, T>,
    },
    /// `x *= bias + y`: RWKV-7a's DeepEmbed scale of the FFN key.
    Scale {
        bias: &'a T,
        x: RowsMut<'a, T>,
    },
}

impl<T> Then<'_, T> {
    /// The step's code ([`StepCode`]).
    pub fn code(&self) -> StepCode {
        match self {
            Then::None => StepCode::None,
            Then::Tanh => StepCode::Tanh,
            Then::Sigmoid => StepCode::Sigmoid,
            Then::Silu => StepCode::Silu,
            Then::ReluSquared => StepCode::ReluSquared,
            Then::ExpNegExp(_) => StepCode::ExpNegExp,
            Then::SigmoidDecay(_) => StepCode::SigmoidDecay,
            Then::SigmoidPlus(_) => StepCode::SigmoidPlus,
            Then::Mix { .. } => StepCode::Mix,
            Then::Residual(_) => StepCode::Residual,
            Then::GatedResidual { .. } => StepCode::GatedResidual,
            Then::Scale { .. } => StepCode::Scale,
        }
    }
}

/// The steps by number: the one table Rust and the OpenCL kernels share (the OpenCL
/// program is compiled with a `#define` for each, [`StepCode::ALL`] and
/// [`StepCode::name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum StepCode {
    None,
    Tanh,
    Sigmoid,
    Silu,
    ReluSquared,
    ExpNegExp,
    SigmoidDecay,
    SigmoidPlus,
    Mix,
    Residual,
    GatedResidual,
    Scale,
}

impl StepCode {
    pub const ALL: [StepCode; 12] = [
        StepCode::None,
        StepCode::Tanh,
        StepCode::Sigmoid,
        StepCode::Silu,
        StepCode::ReluSquared,
        StepCode::ExpNegExp,
        StepCode::SigmoidDecay,
        StepCode::SigmoidPlus,
        StepCode::Mix,
        StepCode::Residual,
        StepCode::GatedResidual,
        StepCode::Scale,
    ];

    /// Its name in OpenCL C (`T_TANH`).
    pub fn name(self) -> &'static str {
        match self {
            StepCode::None => "T_NONE",
            StepCode::Tanh => "T_TANH",
            StepCode::Sigmoid => "T_SIGMOID",
            StepCode::Silu => "T_SILU",
            StepCode::ReluSquared => "T_RELU_SQ",
            StepCode::ExpNegExp => "T_EXP_NEG_EXP",
            StepCode::SigmoidDecay => "T_SIGMOID_DECAY",
            StepCode::SigmoidPlus => "T_SIGMOID_PLUS",
            StepCode::Mix => "T_MIX",
            StepCode::Residual => "T_RESIDUAL",
            StepCode::GatedResidual => "T_GATED",
            StepCode::Scale => "T_SCALE",
        }
    }
}

/// One product: `W [out, in]`, `x [t, in]` -> `y [t, out]`, `y[t, o] = sum_i W[o, i] x[t, i]`,
/// then `then`.
pub struct Product<'a, B: Backend> {
    pub w: &'a B::Matrix,
    pub x: Rows<'a, B::Tensor>,
    pub y: RowsMut<'a, B::Tensor>,
    pub then: Then<'a, B::Tensor>,
}

/// A LoRA: `h = act(x . down^T)` (`down [width, in]`, `h [t, width]` in `hidden`), then for
/// each up `y = h[:, from .. from + up.in] . up^T`, then the up's step.
pub struct Lora<'a, 'u, B: Backend> {
    pub x: Rows<'a, B::Tensor>,
    pub down: &'a B::Matrix,
    /// Elementwise only (no operands).
    pub act: Then<'a, B::Tensor>,
    pub hidden: &'a mut B::Tensor,
    pub ups: &'u mut [Up<'a, B>],
}

/// One up-projection of a [`Lora`].
pub struct Up<'a, B: Backend> {
    pub w: &'a B::Matrix,
    /// The first hidden column it reads.
    pub from: usize,
    pub y: RowsMut<'a, B::Tensor>,
    pub then: Then<'a, B::Tensor>,
}

/// Per row `r`, a product with the row's own small matrix: `out[r, j] = sum_i x[r, i]
/// m[r, i*J + j]`, `x [n, I]`, `m [n, I*J]` (each row an `[I, J]` matrix, row-major),
/// `out [n, J]`. RWKV-7a's DeepEmbed multiplies by a per-token 32 x 32 matrix this way.
pub struct RowProduct<'a, B: Backend> {
    pub x: Rows<'a, B::Tensor>,
    pub m: Rows<'a, B::Tensor>,
    pub out: RowsMut<'a, B::Tensor>,
}

/// `xx = LayerNorm(x)`; `sx[t] = prev(t) - xx[t]`, where `prev` is the row before in the
/// same stream, or the stream's shift state for its first row; each stream's shift state
/// becomes its last row of `xx`. Then each mix `out = xx + sx * maa` for the rows from
/// `from` on (`out`'s row 0 is row `from`; `from` is 0 unless the call has one stream).
pub struct NormShift<'a, 'm, B: Backend> {
    pub x: Rows<'a, B::Tensor>,
    pub ln: Norm<'a, B::Tensor>,
    /// The shift vector `[D]` in each stream's state.
    pub shift: Range<usize>,
    pub xx: RowsMut<'a, B::Tensor>,
    pub sx: RowsMut<'a, B::Tensor>,
    pub from: usize,
    pub mixes: &'m mut [Mix<'a, B>],
}

/// `out = xx + sx * maa` (`maa [D]`).
pub struct Mix<'a, B: Backend> {
    pub maa: &'a B::Tensor,
    pub out: RowsMut<'a, B::Tensor>,
}

/// The RWKV-6 time mix's recurrence (RWKV-5.2's too, with a [`Decay::Fixed`] decay),
/// `D = H * S`, each stream's rows in order from its state `[H, S, S]` (`[head, key i,
/// value j]`, updated):
///
/// ```text
/// w = exp(-exp(decay_bias + hidden . up^T))                 [t, D] (Decay::Lora)
/// w = exp(-exp(decay_bias))                                 [D], every token (Decay::Fixed)
/// per head:  out[j] = sum_i r[i] (u[i] k[i] v[j] + s[i][j]);  s[i][j] = k[i] v[j] + w[i] s[i][j]
/// out = GroupNorm(out; H groups, ln_x) * g                   rows from `from` on
/// ```
///
/// (`g`'s row 0 is row `from`). Rows of `out` before `from` are left unnormalised.
pub struct Wkv6<'a, B: Backend> {
    pub heads: usize,
    pub r: Rows<'a, B::Tensor>,
    pub k: Rows<'a, B::Tensor>,
    pub v: Rows<'a, B::Tensor>,
    pub decay: Decay<'a, B>,
    /// `[D]`.
    pub decay_bias: &'a B::Tensor,
    /// `[t, D]` scratch for the decay.
    pub w: RowsMut<'a, B::Tensor>,
    /// `[H, S]`: the current token's bonus.
    pub u: &'a B::Tensor,
    pub state: Range<usize>,
    pub out: RowsMut<'a, B::Tensor>,
    pub ln_x: Norm<'a, B::Tensor>,
    pub g: Rows<'a, B::Tensor>,
    pub from: usize,
}

/// RWKV-4's time-mix recurrence, per channel of `D`, each stream's rows in order from its
/// state `[3, D]` (`aa`, `bb`, `pp`, [`Recurrence::Channels`]; updated):
///
/// ```text
/// q = u + k;   p = max(pp, q);   e1 = exp(pp - p);   e2 = exp(q - p)
/// out = r * (e1 aa + e2 v) / (e1 bb + e2)                     rows from `from` on
/// q = w + pp;  p = max(q, k);    e1 = exp(q - p);    e2 = exp(k - p)
/// aa = e1 aa + e2 v;   bb = e1 bb + e2;   pp = p
/// ```
///
/// `pp` is read as minus infinity while `bb` is 0: the zero state is the empty one. `r`'s
/// row 0 is row `from`; `out` is written at the rows of `k` from `from` on.
pub struct Wkv4<'a, B: Backend> {
    pub k: Rows<'a, B::Tensor>,
    pub v: Rows<'a, B::Tensor>,
    /// `sigmoid(Wr xr)`.
    pub r: Rows<'a, B::Tensor>,
    /// `[D]` each: the decay `w = -exp(time_decay)` and the bonus `u = time_first`.
    pub w: &'a B::Tensor,
    pub u: &'a B::Tensor,
    pub state: Range<usize>,
    pub out: RowsMut<'a, B::Tensor>,
    pub from: usize,
}

/// Where [`Wkv6`]'s decay comes from.
pub enum Decay<'a, B: Backend> {
    /// RWKV-6: per token, from the decay LoRA's hidden layer `hidden [t, K]` (`tanh(xw .
    /// decay_w1^T)`) and its up-projection `up [D, K]`.
    Lora {
        hidden: Rows<'a, B::Tensor>,
        up: &'a B::Matrix,
    },
    /// RWKV-5.2: the bias alone, the same for every token.
    Fixed,
}

/// The RWKV-7 time mix's recurrence, `D = H * N`, each stream's rows in order from its
/// state `[H, N, N]` (`[head, value i, key j]`, the official order; updated). Per row and
/// head, on the head's `N` channels:
///
/// ```text
/// kk = (k * k_k) / max(|k * k_k|, 1e-12)               the unit removal key
/// k  = k * (1 + (a - 1) * k_a)
/// v  = v + (v_first - v) * vg                          with `vg`; without it (layer 0),
///                                                      v_first = v
/// s[i][j] = s[i][j] w[j] + (sum_q s[i][q] (-kk[q])) kk[j] a[j] + v[i] k[j]
/// out[i]  = sum_j s[i][j] r[j]                         with the updated s
/// out = (GroupNorm(out; H groups, ln_x) + (sum_j r[j] k[j] r_k[j]) v) * g
/// ```
///
/// Outputs only for the rows from `from` on (`g`'s row 0 is row `from`); `r` is read only
/// there.
pub struct Wkv7<'a, B: Backend> {
    pub heads: usize,
    pub r: Rows<'a, B::Tensor>,
    /// The decay, `exp(-0.606531 sigmoid(.))`, in (0.545, 1).
    pub w: Rows<'a, B::Tensor>,
    pub k: Rows<'a, B::Tensor>,
    pub v: Rows<'a, B::Tensor>,
    /// The in-context learning rate, in (0, 1).
    pub a: Rows<'a, B::Tensor>,
    /// The value-residual gate (every layer but the first).
    pub vg: Option<Rows<'a, B::Tensor>>,
    /// Layer 0's values of the same rows: written by layer 0, read by the others.
    pub v_first: RowsMut<'a, B::Tensor>,
    /// `[D]` each.
    pub k_k: &'a B::Tensor,
    pub k_a: &'a B::Tensor,
    /// `[H, N]`: the current token's bonus.
    pub r_k: &'a B::Tensor,
    pub state: Range<usize>,
    pub out: RowsMut<'a, B::Tensor>,
    pub ln_x: Norm<'a, B::Tensor>,
    pub g: Rows<'a, B::Tensor>,
    pub from: usize,
}

/// What a device backend did since it was opened: kernel launches and transfers between
/// host and device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub launches: u64,
    /// Host to device writes.
    pub uploads: u64,
    /// Device to host reads.
    pub downloads: u64,
}

/// A weight matrix's shape, format and size where a backend keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatrixInfo {
    pub rows: usize,
    pub cols: usize,
    pub dtype: crate::tensor::DType,
    /// Bytes of its values and block scales.
    pub bytes: usize,
}

impl MatrixInfo {
    pub fn of(m: &Matrix) -> MatrixInfo {
        MatrixInfo {
            rows: m.rows,
            cols: m.cols,
            dtype: m.dtype(),
            bytes: m.byte_len(),
        }
    }
}

/// Where each part of one layer's recurrent state lies in a stream's state: per layer
/// `att_shift [D]`, the recurrence's state ("wkv", [`Recurrence`]), `ffn_shift [D]`, layers
/// one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateShape {
    pub layers: usize,
    pub embd: usize,
    pub heads: usize,
    pub head_size: usize,
    pub recurrence: Recurrence,
}

/// What a layer's recurrence keeps between tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recurrence {
    /// A matrix per head, `[H, S, S]`: `[head, key, value]` in RWKV-5.2 and RWKV-6, `[head,
    /// value, key]` in RWKV-7, each version's official order.
    #[default]
    Heads,
    /// RWKV-4's three vectors `[3, D]`: `aa`, `bb` (numerator and denominator, scaled by
    /// `exp(-pp)`) and `pp` (the running maximum exponent). The zero state is the empty
    /// one: while `bb` is 0 the recurrence reads `pp` as minus infinity.
    Channels,
}

impl std::fmt::Display for StateShape {
    /// `24 layers, width 2048, 32 heads of 64` (RWKV-4: `24 layers, width 2048`).
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{} layers, width {}", self.layers, self.embd)?;
        if self.recurrence == Recurrence::Heads {
            let heads = if self.heads == 1 { "head" } else { "heads" };
            write!(f, ", {} {heads} of {}", self.heads, self.head_size)?;
        }
        Ok(())
    }
}

impl StateShape {
    /// Values of one layer's recurrence state.
    pub fn wkv_len(&self) -> usize {
        match self.recurrence {
            Recurrence::Heads => self.heads * self.head_size * self.head_size,
            Recurrence::Channels => 3 * self.embd,
        }
    }

    /// The recurrence state's shape in a state file: `[H, S, S]` or `[3, D]`.
    pub fn wkv_dims(&self) -> Vec<usize> {
        match self.recurrence {
            Recurrence::Heads => vec![self.heads, self.head_size, self.head_size],
            Recurrence::Channels => vec![3, self.embd],
        }
    }

    /// Values of one layer.
    pub fn layer_len(&self) -> usize {
        2 * self.embd + self.wkv_len()
    }

    /// Values of the whole state.
    pub fn len(&self) -> usize {
        self.layers * self.layer_len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn att_shift(&self, layer: usize) -> Range<usize> {
        let at = layer * self.layer_len();
        at..at + self.embd
    }

    pub fn wkv(&self, layer: usize) -> Range<usize> {
        let at = layer * self.layer_len() + self.embd;
        at..at + self.wkv_len()
    }

    pub fn ffn_shift(&self, layer: usize) -> Range<usize> {
        let at = layer * self.layer_len() + self.embd + self.wkv_len();
        at..at + self.embd
    }
}

/// A stream's state values where some backend keeps them: one flat `[L, layer_len]`
/// array ([`StateShape`]).
pub enum StateData {
    /// In host memory (the CPU's, and any state read from a file).
    Host(Vec<f32>),
    /// In a device's memory, behind the one interface every backend reads it through.
    Device(Box<dyn DeviceData>),
}

/// A stream's state in a device backend's memory: what shared code and the other backends
/// may do with it. The backend that holds it finds its own type with [`DeviceData::as_any`].
pub trait DeviceData: Send + Sync + 'static {
    /// The values, read to the host.
    fn download(&self) -> Result<Vec<f32>>;
    /// A copy, on the same device.
    fn duplicate(&self) -> Result<Box<dyn DeviceData>>;
    fn as_any(&self) -> &dyn std::any::Any;
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

impl StateData {
    /// The values, as a host copy.
    pub fn to_host(&self) -> Result<Vec<f32>> {
        match self {
            StateData::Host(v) => Ok(v.clone()),
            StateData::Device(d) => d.download(),
        }
    }

    /// A copy, on the same device.
    pub fn try_clone(&self) -> Result<StateData> {
        match self {
            StateData::Host(v) => Ok(StateData::Host(v.clone())),
            StateData::Device(d) => Ok(StateData::Device(d.duplicate()?)),
        }
    }
}

/// A place to run the model: its memory and its operations (see the module doc). Every
/// operation may fail on a device; the CPU's never do.
pub trait Backend: Send + Sync + Sized + 'static {
    /// A flat f32 array in the backend's memory: activations, or a per-channel vector.
    type Tensor: Send + Sync;
    /// A weight matrix in its stored or quantized format, where the backend computes.
    type Matrix: Send + Sync;
    /// One stream's recurrent state.
    type State: Send + Sync;
    /// The streams of a call, as the operations that look across rows need them.
    type Batch: Send + Sync;

    /// What runs the model, for `-v` and errors.
    fn describe(&self) -> String;

    /// Launches and transfers so far, on a device backend.
    fn counters(&self) -> Option<Counters> {
        None
    }

    /// Whether [`Precision::Bf16`] rounds products to bf16 here (else they run in f32).
    fn bf16_products(&self) -> bool {
        false
    }

    /// The weights `m` where the backend computes.
    fn matrix(&self, m: Matrix) -> Result<Self::Matrix>;
    /// `m` in host memory, when the backend computes there (benchmarks read it).
    fn host_matrix(m: &Self::Matrix) -> Option<&Matrix>;
    /// `m`'s shape, format and size.
    fn matrix_info(m: &Self::Matrix) -> MatrixInfo;
    /// The per-channel vector `v` where the backend computes.
    fn vector(&self, v: &[f32]) -> Result<Self::Tensor>;
    /// An empty scratch tensor.
    fn tensor(&self) -> Self::Tensor;
    /// Make `t` hold at least `n` values (its contents are scratch afterwards).
    fn reserve(&self, t: &mut Self::Tensor, n: usize) -> Result<()>;
    /// Copy `x` to the host, into `out` (resized).
    fn read(&self, x: Rows<Self::Tensor>, out: &mut Vec<f32>) -> Result<()>;

    /// `s` as this backend's state, moved here first if another backend holds it.
    fn state_mut<'s>(&self, s: &'s mut StateData) -> Result<&'s mut Self::State>;

    /// A batch description to fill with [`Backend::set_batch`].
    fn batch(&self) -> Self::Batch;
    /// `b` for streams whose rows are `spans` (in order, covering the rows) and whose
    /// states are `states`.
    fn set_batch(
        &self,
        b: &mut Self::Batch,
        spans: &[Range<usize>],
        states: &[&mut Self::State],
    ) -> Result<()>;

    /// Run a forward pass: `f` on a worker of the backend's own pool, if it has one.
    fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        f()
    }

    /// `x`'s rows = rows `tokens` of the host table `emb [V, D]` in f32 (read from where it
    /// is stored, not copied whole), then LayerNorm'd with `ln0` (given on the host) if any.
    fn embed(
        &self,
        emb: &Matrix,
        ln0: Option<Norm<Vec<f32>>>,
        tokens: &[u32],
        x: RowsMut<Self::Tensor>,
    ) -> Result<()>;
    /// LayerNorm of each row of `x`, in place.
    fn layer_norm(&self, x: RowsMut<Self::Tensor>, ln: Norm<Self::Tensor>) -> Result<()>;
    /// [`NormShift`].
    fn norm_shift(
        &self,
        op: NormShift<Self>,
        batch: &Self::Batch,
        states: &mut [&mut Self::State],
    ) -> Result<()>;
    /// Independent products, each with its step; `prec` for sequence products.
    fn products(&self, prec: Precision, jobs: &mut [Product<Self>]) -> Result<()>;
    /// [`Lora`]; `prec` for sequence products.
    fn lora(&self, prec: Precision, op: Lora<Self>) -> Result<()>;
    /// [`Wkv6`]; `prec` for the decay's sequence product.
    fn wkv6(
        &self,
        prec: Precision,
        op: Wkv6<Self>,
        batch: &Self::Batch,
        states: &mut [&mut Self::State],
    ) -> Result<()>;
    /// [`RowProduct`].
    fn row_products(&self, op: RowProduct<Self>) -> Result<()>;
    /// [`Wkv4`].
    fn wkv4(
        &self,
        op: Wkv4<Self>,
        batch: &Self::Batch,
        states: &mut [&mut Self::State],
    ) -> Result<()>;
    /// [`Wkv7`].
    fn wkv7(
        &self,
        op: Wkv7<Self>,
        batch: &Self::Batch,
        states: &mut [&mut Self::State],
    ) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_codes_are_their_places_and_named_once() {
        for (i, s) in StepCode::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{s:?}");
            assert!(s.name().starts_with("T_"), "{s:?}");
            let same = StepCode::ALL
                .iter()
                .filter(|o| o.name() == s.name())
                .count();
            assert_eq!(same, 1, "{}", s.name());
        }
        let x = vec![0.0f32];
        assert_eq!(Then::<Vec<f32>>::None.code(), StepCode::None);
        assert_eq!(Then::ExpNegExp(&x).code() as i32, 5);
        assert_eq!(
            Then::Residual(RowsMut::new(&mut vec![0.0], 0, 1, 1)).code() as i32,
            9
        );
        let mut y = vec![0.0f32];
        let scale = Then::Scale {
            bias: &x,
            x: RowsMut::new(&mut y, 0, 1, 1),
        };
        assert_eq!(scale.code().name(), "T_SCALE");
    }
}
