//! The RNN state: what a prompt of any length becomes. Per layer, f32 vectors that callers
//! can read, set and copy; files live in `state_file`.
//!
//! A state may also have a copy on a device (OpenCL), which is then the newer one: the
//! device backend advances it there, and the host copy is brought up to date only when
//! someone reads it ([`State::sync`], [`State::layers_mut`], `clone`), so that generating a
//! token moves no state across the bus.

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

/// A copy of a state on a device.
pub trait DeviceState: Send + Sync {
    /// Copy the device's values into `layers`.
    fn download(&self, layers: &mut [LayerState]);
    /// Downcasting, for the backend that made it.
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;
}

/// The state of every layer, `[L]`.
pub struct State {
    layers: Vec<LayerState>,
    device: Option<Box<dyn DeviceState>>,
    /// The device copy is newer than `layers`.
    host_stale: bool,
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
        State::from_layers(vec![layer; cfg.n_layer])
    }

    pub fn from_layers(layers: Vec<LayerState>) -> State {
        State {
            layers,
            device: None,
            host_stale: false,
        }
    }

    /// Bring the host copy up to date.
    pub fn sync(&mut self) {
        if self.host_stale {
            if let Some(d) = &self.device {
                d.download(&mut self.layers);
            }
            self.host_stale = false;
        }
    }

    /// The layers as the host holds them: current unless a device advanced the state since
    /// the last [`State::sync`] (the library syncs before every read of its own).
    pub fn layers(&self) -> &[LayerState] {
        debug_assert!(!self.host_stale, "State::layers read without sync");
        &self.layers
    }

    /// The layers to change: synced first, and any device copy dropped (the next device
    /// run uploads the changed values).
    pub fn layers_mut(&mut self) -> &mut Vec<LayerState> {
        self.sync();
        self.device = None;
        &mut self.layers
    }

    /// For a device backend: its copy of this state, if it has one.
    pub fn device_mut(&mut self) -> Option<&mut (dyn DeviceState + 'static)> {
        self.device.as_deref_mut()
    }

    /// For a device backend: attach its copy (made from [`State::layers`]).
    pub fn set_device(&mut self, d: Box<dyn DeviceState>) {
        self.sync();
        self.device = Some(d);
    }

    /// For a device backend: its copy has advanced past the host's.
    pub fn mark_device_newer(&mut self) {
        self.host_stale = true;
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

impl Clone for State {
    /// A host-only copy with the current values.
    fn clone(&self) -> State {
        let mut layers = self.layers.clone();
        if self.host_stale {
            if let Some(d) = &self.device {
                d.download(&mut layers);
            }
        }
        State::from_layers(layers)
    }
}

impl PartialEq for State {
    fn eq(&self, other: &State) -> bool {
        self.clone().layers == other.clone().layers
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("layers", &self.layers.len())
            .field("on_device", &self.device.is_some())
            .finish()
    }
}
