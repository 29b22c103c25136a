//! llama.cpp's RWKV-6 and RWKV-7 GGUF files under BlinkDL's names, their converter's
//! changes undone without copying a byte:
//!
//! - names: `blk.N.time_mix_key.weight` is `blocks.N.att.key.weight`, and so on;
//! - the token-shift mixes, fused into one `[5 or 6, 1, 1, D]` tensor, are split back into
//!   one view each (RWKV-6 in the order `w k v r g`, RWKV-7 `r w k v a g`);
//! - the LoRA matrices are stored transposed, `[out, in]`, as in Ai00 files (the loader
//!   reads that layout already);
//! - RWKV-7's `r_k`, flattened to `[H * S]`, is `[H, S]` again;
//! - RWKV-6 files made with `rescale_every` hold each layer's `att.output` and `ffn.value`
//!   divided by `2^(N / rescale_every)` (llama.cpp halves the residual instead): the gains
//!   returned multiply them back, a power of two, so nothing is rounded.

use super::gguf::{Gguf, Value};
use super::table::RawTensor;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// The architectures read, as `general.architecture` names them.
const ARCHES: [&str; 2] = ["rwkv6", "rwkv7"];

/// A GGUF model's tensors under BlinkDL names, and the gain each stored matrix must be
/// multiplied by (only those that differ from 1).
pub struct Translated {
    pub tensors: BTreeMap<String, RawTensor>,
    pub gains: BTreeMap<String, f32>,
}

pub fn translate(path: &Path, g: Gguf) -> Result<Translated> {
    let arch = match g.meta.get("general.architecture") {
        Some(Value::Str(a)) => a.clone(),
        _ => return Err(Error::format(path, "GGUF: no `general.architecture`")),
    };
    if !ARCHES.contains(&arch.as_str()) {
        return Err(Error::format(
            path,
            format!(
                "a GGUF model of architecture `{arch}`: these tools run only `rwkv6` and `rwkv7`"
            ),
        ));
    }
    let v7 = arch == "rwkv7";
    let meta_u64 = |key: &str| g.meta.get(&format!("{arch}.{key}")).and_then(Value::as_u64);
    let rescale = if v7 {
        0
    } else {
        meta_u64("rescale_every_n_layers").unwrap_or(0)
    };
    let head_size = meta_u64("wkv.head_size");
    let mut out = Translated {
        tensors: BTreeMap::new(),
        gains: BTreeMap::new(),
    };
    for (name, t) in g.tensors {
        if let Some(canon) = global(&name) {
            out.tensors.insert(canon.to_string(), t);
            continue;
        }
        let Some((layer, tail)) = split(&name) else {
            out.tensors.insert(name, t);
            continue;
        };
        if tail == "time_mix_lerp_fused.weight" {
            let order: &[&str] = if v7 {
                &["x_r", "x_w", "x_k", "x_v", "x_a", "x_g"]
            } else {
                &[
                    "time_maa_w",
                    "time_maa_k",
                    "time_maa_v",
                    "time_maa_r",
                    "time_maa_g",
                ]
            };
            for (i, part) in fused(path, &name, &t, order.len())?.into_iter().enumerate() {
                out.tensors
                    .insert(format!("blocks.{layer}.att.{}", order[i]), part);
            }
            continue;
        }
        let Some(canon) = rename(tail, v7) else {
            out.tensors.insert(name, t);
            continue;
        };
        let canon = format!("blocks.{layer}.{canon}");
        let mut t = t;
        if canon.ends_with(".att.r_k") {
            t.shape = unflatten(path, &name, &t, head_size)?;
        }
        if rescale > 0
            && (canon.ends_with(".att.output.weight") || canon.ends_with(".ffn.value.weight"))
        {
            let shift = (layer / rescale as usize).min(64) as i32;
            out.gains.insert(canon.clone(), 2f32.powi(shift));
        }
        out.tensors.insert(canon, t);
    }
    Ok(out)
}

/// `blk.N.TAIL` as `(N, TAIL)`; the model-wide tensors as layer 0 of their BlinkDL names.
fn split(name: &str) -> Option<(usize, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, tail) = rest.split_once('.')?;
    Some((n.parse().ok()?, tail))
}

/// The BlinkDL name (after `blocks.N.`) of a layer tensor's GGUF `tail`.
fn rename(tail: &str, v7: bool) -> Option<String> {
    let (stem, suffix) = tail.rsplit_once('.')?;
    let base = match stem {
        "attn_norm" => "ln1",
        "attn_norm_2" => "ln2",
        "time_mix_ln" => "att.ln_x",
        "time_mix_key" => "att.key",
        "time_mix_value" => "att.value",
        "time_mix_receptance" => "att.receptance",
        "time_mix_gate" => "att.gate",
        "time_mix_output" => "att.output",
        "channel_mix_key" => "ffn.key",
        "channel_mix_value" => "ffn.value",
        "channel_mix_receptance" => "ffn.receptance",
        "channel_mix_lerp_k" if v7 => "ffn.x_k",
        "channel_mix_lerp_k" => "ffn.time_maa_k",
        "channel_mix_lerp_r" => "ffn.time_maa_r",
        "time_mix_lerp_x" => "att.time_maa_x",
        // files from converters that did not fuse RWKV-6's mixes
        "time_mix_lerp_w" => "att.time_maa_w",
        "time_mix_lerp_k" => "att.time_maa_k",
        "time_mix_lerp_v" => "att.time_maa_v",
        "time_mix_lerp_r" => "att.time_maa_r",
        "time_mix_lerp_g" => "att.time_maa_g",
        "time_mix_first" => "att.time_faaaa",
        "time_mix_decay" => "att.time_decay",
        "time_mix_decay_w1" => "att.time_decay_w1",
        "time_mix_decay_w2" => "att.time_decay_w2",
        "time_mix_w1" if !v7 => "att.time_maa_w1",
        "time_mix_w2" if !v7 => "att.time_maa_w2",
        _ => {
            // RWKV-7's own: time_mix_{w0,w1,w2,a0,..,g2,k_k,k_a,r_k}, which are parameters
            // (no `.weight` in BlinkDL's names)
            let p = stem.strip_prefix("time_mix_").filter(|_| v7)?;
            return Some(format!("att.{p}"));
        }
    };
    // norms and projections keep `.weight`/`.bias`; BlinkDL's parameters have neither
    let plain_parameter = base.contains("time_") || base.contains(".x_");
    Some(if plain_parameter {
        base.to_string()
    } else {
        format!("{base}.{suffix}")
    })
}

/// The `n` equal parts of a fused `[n, 1, 1, D]` tensor, as views `[D]`.
fn fused(path: &Path, name: &str, t: &RawTensor, n: usize) -> Result<Vec<RawTensor>> {
    let d = *t.shape.last().unwrap_or(&0);
    if t.shape.first() != Some(&n)
        || t.numel() != n * d
        || !matches!(t.dtype.as_str(), "F32" | "F16" | "BF16")
    {
        return Err(Error::Shape {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: format!("[{n}, 1, 1, D] of F32, F16 or BF16"),
            found: t.shape.clone(),
        });
    }
    let part = t.len / n;
    Ok((0..n)
        .map(|i| RawTensor {
            dtype: t.dtype.clone(),
            shape: vec![d],
            offset: t.offset + i * part,
            len: part,
        })
        .collect())
}

/// `r_k`'s `[H * S]` as `[H, S]`, with `S` the file's head size.
fn unflatten(path: &Path, name: &str, t: &RawTensor, head_size: Option<u64>) -> Result<Vec<usize>> {
    let n = t.numel();
    match head_size.map(|s| s as usize) {
        Some(s) if s > 0 && n.is_multiple_of(s) => Ok(vec![n / s, s]),
        _ => Err(Error::Shape {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: "[H * S] with S the file's `rwkv7.wkv.head_size`".into(),
            found: t.shape.clone(),
        }),
    }
}

/// BlinkDL names of the model-wide tensors.
pub fn global(name: &str) -> Option<&'static str> {
    Some(match name {
        "token_embd.weight" => "emb.weight",
        "token_embd_norm.weight" => "blocks.0.ln0.weight",
        "token_embd_norm.bias" => "blocks.0.ln0.bias",
        "output_norm.weight" => "ln_out.weight",
        "output_norm.bias" => "ln_out.bias",
        "output.weight" => "head.weight",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_blinkdl() {
        // (GGUF tail, RWKV-7, BlinkDL tail)
        for (tail, v7, want) in [
            ("time_mix_key.weight", true, "att.key.weight"),
            ("time_mix_w0.weight", true, "att.w0"),
            ("time_mix_k_k.weight", true, "att.k_k"),
            ("time_mix_w1.weight", false, "att.time_maa_w1"),
            ("time_mix_w1.weight", true, "att.w1"),
            ("channel_mix_lerp_k.weight", true, "ffn.x_k"),
            ("channel_mix_lerp_k.weight", false, "ffn.time_maa_k"),
            ("time_mix_ln.bias", false, "att.ln_x.bias"),
            ("attn_norm_2.weight", false, "ln2.weight"),
            ("time_mix_first.weight", false, "att.time_faaaa"),
            ("time_mix_lerp_g.weight", false, "att.time_maa_g"),
        ] {
            assert_eq!(rename(tail, v7).as_deref(), Some(want), "{tail}");
        }
        assert_eq!(rename("time_mix_a0.weight", false), None);
        assert_eq!(
            split("blk.12.time_mix_key.weight"),
            Some((12, "time_mix_key.weight"))
        );
        assert_eq!(global("output.weight"), Some("head.weight"));
    }

    #[test]
    fn fused_mixes_split_into_views() {
        let t = RawTensor {
            dtype: "F32".into(),
            shape: vec![6, 1, 1, 8],
            offset: 64,
            len: 6 * 8 * 4,
        };
        let parts = fused(Path::new("m.gguf"), "f", &t, 6).unwrap();
        assert_eq!(parts.len(), 6);
        assert_eq!(
            (parts[2].offset, parts[2].len, parts[2].shape.clone()),
            (64 + 64, 32, vec![8])
        );
        assert!(fused(Path::new("m.gguf"), "f", &t, 5).is_err());
    }
}
