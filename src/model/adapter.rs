//! RWKV-PEFT LoRA adapters, merged into the weights as they are read.
//!
//! An adapter file (`.pth` or `.safetensors`) holds, for each adapted matrix `NAME.weight`
//! `[out, in]`, one of:
//! - LoRA: `NAME.lora_A` `[r, in]` and `NAME.lora_B` `[out, r]`; RWKV-PEFT's merge
//!   (`merge/merge_lora.py`) makes `W + s B A`, `s` its `lora_alpha / r`;
//! - PiSSA: the same names, merged with `s` 1 after its init file (`model.NAME.init_lora_A`,
//!   `init_lora_B`), whose product is taken away (`merge/merge.py`);
//! - DiSHA (Bone): `NAME.disha`, `[r, out]` or `[in / r, r, r]` (`merge/merge_disha.py`).
//!
//! Every update is added in f32. Any other tensor in the file (the parts trained whole,
//! `--train_parts`) replaces the model's of the same name. Names are BlinkDL's, as
//! RWKV-PEFT saves them; [`super::adapter_file`] reads the files and checks every shape
//! against the model's.

use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One `--adapter FILE[:SCALE]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterSpec {
    pub path: PathBuf,
    /// What each update is multiplied by (LoRA: RWKV-PEFT's `lora_alpha / r`).
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

/// One update of a matrix `W [out, in]`, each times its adapter's scale `s`.
enum Delta {
    /// LoRA (and PiSSA): `W += s B A`, `A [r, in]`, `B [out, r]`.
    LowRank {
        a: Vec<f32>,
        b: Vec<f32>,
        rank: usize,
        scale: f32,
    },
    /// DiSHA's shared form, `D [r, out]`: `W[o, c] += s D[c % r, o]`.
    Shared { d: Vec<f32>, r: usize, scale: f32 },
    /// DiSHA's block form, `D [in / r, r, r]`: every `r x r` block `W_ij` (row block `i`,
    /// column block `j`) gains `s (W_ij D_j + D_j)`.
    Blocks { d: Vec<f32>, r: usize, scale: f32 },
}

/// The adapters of one load, by the name of the tensor each changes.
#[derive(Default)]
pub struct Adapters {
    deltas: BTreeMap<String, Vec<Delta>>,
    /// Tensors that replace the model's, in f32.
    replaced: BTreeMap<String, Vec<f32>>,
    /// Per file: its path, the matrices it adapts, their rank.
    pub summary: Vec<(PathBuf, usize, usize)>,
}

impl Adapters {
    /// Add `scale B A` (`a [rank, in]`, `b [out, rank]`, f32) to tensor `name`.
    pub fn add_low_rank(
        &mut self,
        name: String,
        a: Vec<f32>,
        b: Vec<f32>,
        rank: usize,
        scale: f32,
    ) {
        let d = Delta::LowRank { a, b, rank, scale };
        self.deltas.entry(name).or_default().push(d);
    }

    /// Add DiSHA's update `d` to tensor `name`: `d [r, out]` (shared) or `[in / r, r, r]`
    /// (`blocks`).
    pub fn add_disha(&mut self, name: String, d: Vec<f32>, r: usize, blocks: bool, scale: f32) {
        let d = match blocks {
            false => Delta::Shared { d, r, scale },
            true => Delta::Blocks { d, r, scale },
        };
        self.deltas.entry(name).or_default().push(d);
    }

    /// Let `values` (f32, the tensor's count) stand for tensor `name`.
    pub fn replace(&mut self, name: String, values: Vec<f32>) {
        self.replaced.insert(name, values);
    }

    /// Whether `name` is changed by an adapter.
    pub fn touches(&self, name: &str) -> bool {
        self.deltas.contains_key(name) || self.replaced.contains_key(name)
    }

    /// The replacement of `name`, if an adapter holds one.
    pub fn replacement(&self, name: &str) -> Option<&[f32]> {
        self.replaced.get(name).map(Vec::as_slice)
    }

    /// `w [out, in]` (f32, row-major) with every update of `name` added in f32, in the
    /// order the adapters came.
    pub fn merge(&self, name: &str, w: &mut [f32], cols: usize) {
        for d in self.deltas.get(name).into_iter().flatten() {
            match d {
                Delta::LowRank { a, b, rank, scale } => {
                    w.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
                        for (k, a) in a.chunks_exact(cols).enumerate() {
                            let s = scale * b[o * rank + k];
                            for (x, &y) in row.iter_mut().zip(a) {
                                *x += s * y;
                            }
                        }
                    });
                }
                &Delta::Shared { ref d, r, scale } => {
                    let out = w.len() / cols;
                    w.par_chunks_mut(cols).enumerate().for_each(|(o, row)| {
                        for (c, x) in row.iter_mut().enumerate() {
                            *x += scale * d[(c % r) * out + o];
                        }
                    });
                }
                &Delta::Blocks { ref d, r, scale } => {
                    w.par_chunks_mut(r * cols)
                        .for_each(|rows| blocks(rows, cols, d, r, scale));
                }
            }
        }
    }
}

/// DiSHA's block update of `rows` (`r` rows of `cols`): block `j` gains `s (W_j D_j + D_j)`.
fn blocks(rows: &mut [f32], cols: usize, d: &[f32], r: usize, s: f32) {
    let mut block = vec![0f32; r * r];
    for j in 0..cols / r {
        let dj = &d[j * r * r..(j + 1) * r * r];
        for i in 0..r {
            block[i * r..(i + 1) * r].copy_from_slice(&rows[i * cols + j * r..][..r]);
        }
        for i in 0..r {
            let out = &mut rows[i * cols + j * r..][..r];
            for (k, &wik) in block[i * r..(i + 1) * r].iter().enumerate() {
                for (o, &dkj) in out.iter_mut().zip(&dj[k * r..(k + 1) * r]) {
                    *o += s * wik * dkj;
                }
            }
            for (o, &dij) in out.iter_mut().zip(&dj[i * r..(i + 1) * r]) {
                *o += s * dij;
            }
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
