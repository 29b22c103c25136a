//! The forward pass's driver, written once for every version and backend: a version's
//! weights ([`Layers`]) on one backend, behind the object-safe [`Run`], and the one place
//! that opens a backend for a `--device`.

use super::checkpoint::Checkpoint;
use super::ends::{rows_from, Logits};
use super::load::Loader;
use super::names::Names;
use super::version::{Config, Family, Layers, LoadOptions, Pass, Run, Version};
use crate::backend::cpu::Cpu;
use crate::backend::opencl::Ocl;
use crate::backend::{Backend, MatrixInfo, Precision, StateShape};
use crate::error::Result;
use crate::state::State;
use std::ops::Range;
use std::sync::Mutex;

/// The [`Version`] of family `F`: its names and functions, and its weights opened on any
/// backend. Each version file holds `pub static VERSION: Version = version::<Its>();`.
pub const fn version<F: Family>() -> Version {
    Version {
        name: F::NAME,
        title: F::TITLE,
        recognise: F::recognise,
        config: F::config,
        quantizable: F::quantizable,
        fingerprinted: F::fingerprinted,
        params: F::params,
        tuning: F::TUNING,
        recurrence: F::RECURRENCE,
        open: open::<F>,
    }
}

/// The weights of `ck` on the backend `opts.device` names (the backends' registry).
fn open<F: Family>(
    ck: &Checkpoint,
    names: &Names,
    cfg: &Config,
    opts: &LoadOptions,
) -> Result<Box<dyn Run>> {
    match Ocl::open(opts.device)? {
        None => {
            let cpu = Cpu {
                panels: opts.quant_panels,
            };
            engine::<F, Cpu>(cpu, ck, names, cfg, opts, true)
        }
        #[cfg(feature = "opencl")]
        Some(ocl) => engine::<F, Ocl>(ocl, ck, names, cfg, opts, false),
        #[cfg(not(feature = "opencl"))]
        Some(never) => match never {},
    }
}

/// The weights of `ck` on `be`, ready to run.
fn engine<F: Family, B: Backend>(
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
        quantizable: F::quantizable,
    };
    let net = F::load(&l, cfg)?;
    Ok(Box::new(Engine::new(be, net, cfg.state_shape(), cpu)))
}

/// The activations every version's pass has: the residual stream `[T, D]`, the logits
/// `[rows, V]` and the streams of the call.
struct Shell<B: Backend> {
    x: B::Tensor,
    logits: B::Tensor,
    batch: B::Batch,
}

/// Weights `N` on backend `B`, with a pool of scratch sets (one per concurrent call).
pub struct Engine<B: Backend, N: Layers<B>> {
    be: B,
    net: N,
    shape: StateShape,
    scratch: Mutex<Vec<(Shell<B>, N::Scratch)>>,
    cpu: bool,
}

impl<B: Backend, N: Layers<B>> Engine<B, N> {
    pub fn new(be: B, net: N, shape: StateShape, cpu: bool) -> Self {
        Engine {
            be,
            net,
            shape,
            scratch: Mutex::new(Vec::new()),
            cpu,
        }
    }

    /// The forward pass: embed `tokens`, every layer in turn, then the logits `want`s.
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        (shell, sc): &mut (Shell<B>, N::Scratch),
        tokens: &[u32],
        spans: &[Range<usize>],
        states: &mut [&mut B::State],
        prec: Precision,
        want: Logits,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let (be, net) = (&self.be, &self.net);
        let t = tokens.len();
        be.reserve(&mut shell.x, t * self.shape.embd)?;
        net.reserve(be, sc, t)?;
        be.set_batch(&mut shell.batch, spans, states)?;
        let ends = net.ends();
        ends.embed(be, tokens, &mut shell.x)?;
        let depth = net.depth();
        for i in 0..depth {
            let pass = Pass {
                t,
                tokens,
                batch: &shell.batch,
                prec,
                rows: rows_from(i, depth, t, spans.len(), want),
            };
            net.layer(be, i, &mut shell.x, sc, pass, states)?;
        }
        ends.logits(be, &mut shell.x, &mut shell.logits, spans, prec, want, out)
    }
}

impl<B: Backend, N: Layers<B>> Run for Engine<B, N> {
    fn forward(
        &self,
        tokens: &[u32],
        spans: &[Range<usize>],
        states: &mut [&mut State],
        prec: Precision,
        want: Logits,
    ) -> Result<Vec<f32>> {
        debug_assert!(states.iter().all(|s| s.shape() == self.shape));
        let pool = || self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        let taken = pool().pop();
        let mut sc = taken.unwrap_or_else(|| {
            let be = &self.be;
            let shell = Shell {
                x: be.tensor(),
                logits: be.tensor(),
                batch: be.batch(),
            };
            (shell, self.net.scratch(be))
        });
        let mut out = Vec::new();
        let mut run = |states: &mut [&mut B::State]| {
            self.be
                .enter(|| self.pass(&mut sc, tokens, spans, states, prec, want, &mut out))
        };
        let result = match states {
            [one] => {
                let s = self.be.state_mut(one.data_mut())?;
                run(std::slice::from_mut(&mut &mut *s))
            }
            many => {
                let mut v = many
                    .iter_mut()
                    .map(|s| self.be.state_mut(s.data_mut()))
                    .collect::<Result<Vec<_>>>()?;
                run(&mut v)
            }
        };
        pool().push(sc);
        result.map(|()| out)
    }

    fn describe(&self) -> String {
        self.be.describe()
    }

    fn on_cpu(&self) -> bool {
        self.cpu
    }

    fn bf16_products(&self) -> bool {
        self.be.bf16_products()
    }

    fn counters(&self) -> Option<crate::backend::Counters> {
        self.be.counters()
    }

    fn host_matrices(&self) -> Vec<&crate::tensor::Matrix> {
        self.layer_matrices()
            .into_iter()
            .filter_map(|(_, m)| B::host_matrix(m))
            .collect()
    }

    fn matrices(&self) -> Vec<(String, MatrixInfo)> {
        let emb = MatrixInfo::of(&self.net.ends().emb);
        let all = self.layer_matrices().into_iter();
        std::iter::once(("emb.weight".to_string(), emb))
            .chain(all.map(|(n, m)| (n, B::matrix_info(m))))
            .collect()
    }
}

impl<B: Backend, N: Layers<B>> Engine<B, N> {
    /// Every matrix a token reads: the layers', then the head.
    fn layer_matrices(&self) -> Vec<(String, &B::Matrix)> {
        let mut v = self.net.matrices();
        v.push(("head.weight".into(), &self.net.ends().head));
        v
    }
}
