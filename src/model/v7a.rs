//! RWKV-7a ("DeepEmbed", the G1 models `rwkv7a-g1*`): RWKV-7 whose channel mix scales its
//! key by a per-token factor read from a table in the file. The time mix, the state and
//! everything else are x070's ([`super::v7`], which calls [`DeepEmbed::scale`] when a
//! layer has one). The math is the DeepEmbed section of `docs/RWKV7.md`.
//!
//! Per layer and token `t`, with `x` the ln2 output and `x0` the ln0 output (the layers'
//! input):
//!
//! ```text
//! M  = s_emb[t] + s_emb_x x0                      [1024], read as a 32 x 32 matrix
//! k *= ((x @ s1) @ M) @ s2 + s0                   (k = relu(K xk)^2, [F])
//! ```
//!
//! The table `s_emb [V, 1024]` is read a row a token from where the file lies (mapped), never
//! copied into memory: a 1.5B G1 model's tables are 3 GB of its file that a token reads 48 KB
//! of.

use super::checkpoint::Checkpoint;
use super::deep_embed::{DeepEmbed, R};
use super::engine::version;
use super::load::{in_layers, Loader};
use super::names::Names;
use super::v7::{self, X070};
use super::version::{Config, Family, Version};
use crate::backend::Backend;
use crate::error::Result;

/// RWKV-7a as the registry lists it.
pub static VERSION: Version = version::<X070a>();

/// The RWKV-7a family (x070 with DeepEmbed).
pub struct X070a;

impl Family for X070a {
    const NAME: &'static str = "rwkv7a";
    const TITLE: &'static str = "RWKV-7a";
    type Weights<B: Backend> = v7::Weights<B>;

    fn recognise(names: &Names) -> bool {
        X070::recognise(names) && names.contains("blocks.0.ffn.s_emb.weight")
    }

    fn config(ck: &Checkpoint, names: &Names) -> Result<Config> {
        Ok(Config {
            version: &VERSION,
            ..X070::config(ck, names)?
        })
    }

    /// RWKV-7's matrices, and `s_emb_x`; the tables and the small `s1`, `s2` keep their
    /// stored precision.
    fn quantizable(canon: &str, layers: usize) -> bool {
        X070::quantizable(canon, layers) || in_layers(canon, layers, &["ffn.s_emb_x.weight"])
    }

    fn fingerprinted(cfg: &Config) -> Vec<String> {
        let mut v = X070::fingerprinted(cfg);
        v.extend((0..cfg.n_layer).map(|i| format!("blocks.{i}.ffn.s0")));
        v
    }

    fn params(cfg: &Config) -> usize {
        let (d, f, v) = (cfg.n_embd, cfg.ffn, cfg.vocab);
        let deep = v * R * R + R * R * d + d * R + R * f + f;
        X070::params(cfg) + cfg.n_layer * deep
    }

    fn load<B: Backend>(l: &Loader<B>, cfg: &Config) -> Result<v7::Weights<B>> {
        let mut w = X070::load(l, cfg)?;
        for (i, layer) in w.layers.iter_mut().enumerate() {
            layer.ffn.deep = Some(DeepEmbed::load(l, cfg, i)?);
        }
        Ok(w)
    }
}
