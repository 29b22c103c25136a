//! The RNN state: what a prompt of any length becomes. Plain f32 vectors that callers can
//! read, set and copy; files live in `state_file`.

use crate::model::Config;

/// One layer's state.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerState {
    /// `[D]`: the ln1 output of the previous token.
    pub att_shift: Vec<f32>,
    /// `[H, S, S]`, indexed `[head, key, value]`.
    pub wkv: Vec<f32>,
    /// `[D]`: the ln2 output of the previous token.
    pub ffn_shift: Vec<f32>,
}

/// The state of every layer, `[L]`.
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub layers: Vec<LayerState>,
}

impl State {
    /// The zero state a document starts from.
    pub fn zeros(cfg: &Config) -> State {
        let d = cfg.n_embd;
        let layer = LayerState {
            att_shift: vec![0.0; d],
            wkv: vec![0.0; cfg.n_head * cfg.head_size * cfg.head_size],
            ffn_shift: vec![0.0; d],
        };
        State {
            layers: vec![layer; cfg.n_layer],
        }
    }

    /// Whether the shapes fit `cfg`.
    pub fn fits(&self, cfg: &Config) -> bool {
        self.layers.len() == cfg.n_layer
            && self.layers.iter().all(|l| {
                l.att_shift.len() == cfg.n_embd
                    && l.ffn_shift.len() == cfg.n_embd
                    && l.wkv.len() == cfg.n_head * cfg.head_size * cfg.head_size
            })
    }
}
