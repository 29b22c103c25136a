//! RWKV-PEFT LoRA adapters, merged into the weights as they are read.
//!
//! An adapter file (`.pth` or `.safetensors`) holds, for each adapted matrix `NAME.weight`
//! `[out, in]`, `NAME.lora_A` `[r, in]` and `NAME.lora_B` `[out, r]`; RWKV-PEFT's merge
//! (`merge/merge_lora.py`) makes `W + s B A` in f32, `s` its `lora_alpha / r`. Any other
//! tensor in the file (the parts trained whole, `--train_parts`) replaces the model's of the
//! same name. Names are BlinkDL's, as RWKV-PEFT saves them; [`super::adapter_file`] reads
//! the files and checks every shape against the model's.

use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `--adapter FILE[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub path: PathBuf,
    /// What `B A` is multiplied by (RWKV-PEFT's `lora_alpha / r`).
    pub scale: f32,
}

impl AdapterSpec {
    /// `FILE` or `FILE:SCALE` (a path holding a colon takes a scale after it: `a:b:1`).
    pub fn parse(s: &str) -> std::result::Result<AdapterSpec, String> {
        if let Some((path, scale)) = s.rsplit_once(':') {
            if let Ok(v) = scale.parse::<f32>() {
                if !v.is_finite() {
                    return Err(format!("scale `{scale}` is not a finite number"));
                }
                return Ok(AdapterSpec {
                    path: path.into(),
                    scale: v,
                });
            }
        }
        if s.is_empty() {
            return Err("no file named".into());
        }
        Ok(AdapterSpec {
            path: s.into(),
            scale: 1.0,
        })
    }
}

/// One low-rank update of a matrix: `scale B A`.
struct Delta {
    /// `[r, in]`, f32
    a: Vec<f32>,
    /// `[out, r]`, f32
    b: Vec<f32>,
    rank: usize,
    scale: f32,
}

/// The adapters of one load, by the name of the tensor each changes.
#[derive(Default)]
pub struct Adapters {
    deltas: BTreeMap<String, Vec<Delta>>,
    /// Tensors that replace the model's: `(values, shape)`.
    replaced: BTreeMap<String, (Vec<f32>, Vec<usize>)>,
    /// Per file: its path, the matrices it adapts, their rank.
    pub summary: Vec<(PathBuf, usize, usize)>,
}

impl Adapters {
    pub fn is_empty(&self) -> bool {
        self.deltas.is_empty() && self.replaced.is_empty()
    }

    /// Add `scale B A` (`a [rank, in]`, `b [out, rank]`, f32) to tensor `name`.
    pub fn add_delta(&mut self, name: String, a: Vec<f32>, b: Vec<f32>, rank: usize, scale: f32) {
        let d = Delta { a, b, rank, scale };
        self.deltas.entry(name).or_default().push(d);
    }

    /// Let `values` (f32, `shape`'s count) stand for tensor `name`.
    pub fn replace(&mut self, name: String, values: Vec<f32>, shape: Vec<usize>) {
        self.replaced.insert(name, (values, shape));
    }

    /// Whether `name` is changed by an adapter.
    pub fn touches(&self, name: &str) -> bool {
        self.deltas.contains_key(name) || self.replaced.contains_key(name)
    }

    /// The replacement of `name`, if an adapter holds one.
    pub fn replacement(&self, name: &str) -> Option<&[f32]> {
        self.replaced.get(name).map(|(v, _)| v.as_slice())
    }

    /// `w [out, in]` (f32, row-major) with every update of `name` added in f32.
    pub fn merge(&self, name: &str, w: &mut [f32], cols: usize) {
        for d in self.deltas.get(name).into_iter().flatten() {
            w.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
                for (k, a) in d.a.chunks_exact(cols).enumerate() {
                    let s = d.scale * d.b[o * d.rank + k];
                    for (x, &y) in row.iter_mut().zip(a) {
                        *x += s * y;
                    }
                }
            });
        }
    }
}

/// `-v`'s words for the adapters loaded: `a.pth (24 matrices, rank 32)`.
pub fn describe(summary: &[(PathBuf, usize, usize)]) -> String {
    let parts: Vec<String> = summary
        .iter()
        .map(|(p, n, r)| format!("{} ({n} matrices, rank {r})", name_of(p)))
        .collect();
    parts.join(", ")
}

fn name_of(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let s = AdapterSpec::parse("a.pth:0.5").unwrap();
        assert_eq!((s.path, s.scale), (PathBuf::from("a.pth"), 0.5));
        let s = AdapterSpec::parse("dir:x/a.pth").unwrap();
        assert_eq!((s.path, s.scale), (PathBuf::from("dir:x/a.pth"), 1.0));
        assert!(AdapterSpec::parse("a.pth:inf").is_err());
        assert!(AdapterSpec::parse("").is_err());
    }
}
