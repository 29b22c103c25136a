//! What a model file holds, read from its header and small tensors without loading the
//! weights: `rwkv-state info MODEL`.

use super::checkpoint::{Checkpoint, Container};
use super::names::Names;
use super::{config, fingerprint, Config};
use crate::error::Result;
use crate::tokenizer;
use serde_json::{json, Value};
use std::path::Path;

/// A model file's description.
pub struct Description {
    pub container: Container,
    /// The tensor names' layout (`BlinkDL`, `llama.cpp`...).
    pub layout: &'static str,
    pub cfg: Config,
    pub fingerprint: String,
    /// Per stored type (`BF16`, `Q8_0`...): tensors and bytes, most bytes first.
    pub types: Vec<(String, usize, usize)>,
    /// `world`, `the file's (N ids)`, or `none` (the tools pick by vocab size).
    pub vocabulary: String,
}

impl Description {
    /// Whether `path` is a model file these tools read (its tensors name an embedding).
    pub fn is_model(path: &Path) -> bool {
        Checkpoint::open(path).is_ok_and(|ck| {
            let names = Names::new(&ck);
            ck.logical_shape(names.stored("emb.weight")).is_some()
        })
    }

    pub fn read(path: &Path) -> Result<Description> {
        let ck = Checkpoint::open(path)?;
        let names = Names::new(&ck);
        let cfg = config(&ck, &names)?;
        let fingerprint = fingerprint(&ck, &names, &cfg, &(cfg.version.fingerprinted)(&cfg))?;
        let mut types: Vec<(String, usize, usize)> = Vec::new();
        for t in ck.tensors.values() {
            match types.iter_mut().find(|(n, _, _)| *n == t.dtype) {
                Some((_, n, b)) => (*n, *b) = (*n + 1, *b + t.len),
                None => types.push((t.dtype.clone(), 1, t.len)),
            }
        }
        types.sort_by_key(|&(_, _, b)| std::cmp::Reverse(b));
        let vocabulary = match ck.tokens.as_deref().map(tokenizer::from_gguf) {
            Some(w) if std::sync::Arc::ptr_eq(&w, &tokenizer::world()) => "world".into(),
            Some(w) => format!("the file's ({} ids)", w.ids()),
            None => "none".into(),
        };
        Ok(Description {
            container: ck.container,
            layout: names.layout.name(),
            cfg,
            fingerprint,
            types,
            vocabulary,
        })
    }

    pub fn json(&self, file: &Path) -> Value {
        let c = &self.cfg;
        let types: Vec<Value> = self
            .types
            .iter()
            .map(|(t, n, b)| json!({"type": t, "tensors": n, "bytes": b}))
            .collect();
        json!({
            "file": file.display().to_string(),
            "format": self.container.name(),
            "names": self.layout,
            "arch": c.version.name,
            "n_layer": c.n_layer,
            "n_embd": c.n_embd,
            "n_head": c.n_head,
            "head_size": c.head_size,
            "ffn": c.ffn,
            "vocab": c.vocab,
            "parameters": c.n_params(),
            "model_fingerprint": self.fingerprint,
            "types": types,
            "vocabulary": self.vocabulary,
        })
    }

    pub fn text(&self, file: &Path) -> String {
        let c = &self.cfg;
        let types: Vec<String> = self
            .types
            .iter()
            .map(|(t, n, b)| format!("{t} ({n} tensors, {:.1} MB)", *b as f64 / 1e6))
            .collect();
        let mut s = String::new();
        s += &format!("file         {}\n", file.display());
        s += &format!(
            "format       {} model, {} names\n",
            self.container.name(),
            self.layout
        );
        s += &format!("version      {}\n", c.version.title);
        s += &format!(
            "shape        {}, FFN {}, vocab {}\n",
            c.state_shape(),
            c.ffn,
            c.vocab
        );
        s += &format!("parameters   {:.1} M\n", c.n_params() as f64 / 1e6);
        s += &format!("fingerprint  {}\n", self.fingerprint);
        s += &format!("types        {}\n", types.join(", "));
        s += &format!("vocabulary   {}\n", self.vocabulary);
        s
    }
}
