//! A model version's weights on one backend, behind an object-safe interface, so that
//! [`super::Model`] holds one engine whatever the version and the device.

use super::{Logits, Net};
use crate::backend::{Backend, Precision, StateShape};
use crate::error::Result;
use crate::state::State;
use std::ops::Range;
use std::sync::Mutex;

/// What [`super::Model`] asks of its engine.
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

    /// The backend's launches and transfers so far (a device's).
    fn counters(&self) -> Option<crate::backend::Counters>;

    /// [`super::Model::host_matrices`].
    fn host_matrices(&self) -> Vec<&crate::tensor::Matrix>;

    /// [`super::Model::matrices`].
    fn matrices(&self) -> Vec<(String, crate::backend::MatrixInfo)>;
}

/// Weights `N` on backend `B`, with a pool of scratch sets (one per concurrent call).
pub struct Engine<B: Backend, N: Net<B>> {
    be: B,
    net: N,
    shape: StateShape,
    scratch: Mutex<Vec<N::Scratch>>,
    cpu: bool,
}

impl<B: Backend, N: Net<B>> Engine<B, N> {
    pub fn new(be: B, net: N, shape: StateShape, cpu: bool) -> Self {
        Engine {
            be,
            net,
            shape,
            scratch: Mutex::new(Vec::new()),
            cpu,
        }
    }
}

impl<B: Backend, N: Net<B>> Run for Engine<B, N> {
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
        let mut sc = taken.unwrap_or_else(|| self.net.scratch(&self.be));
        let mut out = Vec::new();
        let mut run = |states: &mut [&mut B::State]| {
            self.be.enter(|| {
                self.net.forward(
                    &self.be, &mut sc, tokens, spans, states, prec, want, &mut out,
                )
            })
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

    fn counters(&self) -> Option<crate::backend::Counters> {
        self.be.counters()
    }

    fn host_matrices(&self) -> Vec<&crate::tensor::Matrix> {
        let m = self.net.matrices();
        m.into_iter()
            .filter_map(|(_, m)| B::host_matrix(m))
            .collect()
    }

    fn matrices(&self) -> Vec<(String, crate::backend::MatrixInfo)> {
        let emb = crate::backend::MatrixInfo::of(self.net.embedding());
        let all = self.net.matrices().into_iter();
        std::iter::once(("emb.weight".to_string(), emb))
            .chain(all.map(|(n, m)| (n, B::matrix_info(m))))
            .collect()
    }
}
