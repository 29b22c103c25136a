//! rwkv: the library behind `rwkv-gen`, `rwkv-score` and `rwkv-state`.
//!
//! Data flows one way: bytes -> [`tokenizer`] -> ids -> [`model::Model::forward`] (through a
//! [`backend::Backend`]) -> logits -> [`sample`] -> ids -> bytes. The RNN [`state::State`]
//! carries everything the model remembers. Nothing in the library prints or exits.

pub mod atomic;
pub mod backend;
pub mod cli;
pub mod constrain;
pub mod error;
pub mod generate;
pub mod isa;
pub mod model;
pub mod sample;
pub mod score;
pub mod state;
pub mod state_file;
pub mod state_info;
pub mod tensor;
pub mod tokenizer;

pub use error::{Error, Result};
pub use model::{Config, Logits, Model};
pub use state::State;
