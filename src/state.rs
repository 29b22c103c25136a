//! The RNN state: what a prompt of any length becomes. It lives where the model runs
//! (host memory, or an OpenCL device) as one flat array per stream, laid out by
//! [`StateShape`]: per layer `att_shift [D]`, the wkv matrix `[H, S, S]`, `ffn_shift [D]`.
//! Reading it ([`State::layers`], [`State::values`]) copies it to the host; a state read
//! from a file starts on the host and moves to the model's device on first use.
//!
//! The wkv matrix is indexed `[head, key, value]` for RWKV-6 and `[head, value, key]` for
//! RWKV-7, each model's official order (`docs/STATE_FORMAT.md`).

use crate::backend::{StateData, StateShape};
use crate::error::{Error, Result};

/// One layer's state, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// `[D]`: the ln1 output of the previous token.
    pub att_shift: Vec<f32>,
    /// `[H, S, S]`.
    pub wkv: Vec<f32>,
    /// `[D]`: the ln2 output of the previous token.
    pub ffn_shift: Vec<f32>,
}

/// The state of every layer of one stream.
pub struct State {
    shape: StateShape,
    data: StateData,
}

impl State {
    /// The zero state a document starts from, on the host.
    pub fn zeros(shape: StateShape) -> State {
        State::from_values(shape, vec![0.0; shape.len()]).expect("sized for the shape")
    }

    /// A host state from its flat values (`[L, layer_len]`).
    pub fn from_values(shape: StateShape, values: Vec<f32>) -> Result<State> {
        if values.len() != shape.len() {
            return Err(Error::StateMismatch(format!(
                "a state of {} values for a shape of {}",
                values.len(),
                shape.len()
            )));
        }
        Ok(State {
            shape,
            data: StateData::Host(values),
        })
    }

    /// A host state from its layers.
    pub fn from_layers(shape: StateShape, layers: &[LayerState]) -> Result<State> {
        let mut v = Vec::with_capacity(shape.len());
        for l in layers {
            v.extend_from_slice(&l.att_shift);
            v.extend_from_slice(&l.wkv);
            v.extend_from_slice(&l.ffn_shift);
        }
        State::from_values(shape, v)
    }

    pub fn shape(&self) -> StateShape {
        self.shape
    }

    /// The values, `[L, layer_len]`, copied to the host.
    pub fn values(&self) -> Result<Vec<f32>> {
        self.data.to_host()
    }

    /// Every layer, copied to the host.
    pub fn layers(&self) -> Result<Vec<LayerState>> {
        let v = self.values()?;
        let s = self.shape;
        Ok((0..s.layers)
            .map(|l| LayerState {
                att_shift: v[s.att_shift(l)].to_vec(),
                wkv: v[s.wkv(l)].to_vec(),
                ffn_shift: v[s.ffn_shift(l)].to_vec(),
            })
            .collect())
    }

    /// A copy where this one lives.
    pub fn try_clone(&self) -> Result<State> {
        Ok(State {
            shape: self.shape,
            data: self.data.try_clone()?,
        })
    }

    /// A copy on the host.
    pub fn to_host(&self) -> Result<State> {
        State::from_values(self.shape, self.values()?)
    }

    /// Where the values live, for the backend that runs the model.
    pub(crate) fn data_mut(&mut self) -> &mut StateData {
        &mut self.data
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on = match self.data {
            StateData::Host(_) => "host",
            StateData::Device(_) => "device",
        };
        f.debug_struct("State")
            .field("shape", &self.shape)
            .field("on", &on)
            .finish()
    }
}
