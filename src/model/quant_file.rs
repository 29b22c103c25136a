//! Save a model quantized, so that a large model is quantized once and later runs map it
//! instantly. The output is safetensors: every tensor of the source under its stored name
//! and dtype, except the quantized matrices, each replaced by `NAME.q8` (I8 `[rows, cols]`)
//! or `NAME.nf4` (U8 `[rows, cols / 2]`, low nibble first) and `NAME.scales` (`[rows, cols
//! / 64]`: F32 for int8, BF16 for nf4; nf4 files written before bf16 scales have F32 ones,
//! which load rounded to bf16). Tensors `--adapter`s change are written merged (the
//! quantized ones from the merged values, the rest as F32); so are a GGUF model's decoded
//! blocks and rescaled layers. The file is written one tensor at a time by the same safe
//! writer as state files ([`crate::atomic`]), read back, and only then put in place.

use super::adapter::AdapterSpec;
use super::checkpoint::{Checkpoint, Container};
use super::names::{canonical, Names};
use super::registry;
use super::{adapter_file, load};
use crate::atomic::AtomicFile;
use crate::error::{Error, Result};
use crate::tensor::quant::{self, Quant};
use crate::tensor::Data;
use crate::tokenizer;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// One tensor of the output: its name, dtype, shape, and where its bytes come from.
struct Entry {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    bytes: usize,
    /// The source tensor's stored name.
    source: String,
    part: Part,
}

#[derive(Clone, Copy, PartialEq)]
enum Part {
    Raw,
    /// Written in f32 as the loader reads it: merged with its adapters, decoded from ggml
    /// blocks, its gain applied.
    Merged,
    Values,
    Scales,
}

fn dtype_name(s: &str) -> Option<&'static str> {
    Some(match s {
        "F32" => "F32",
        "F16" => "F16",
        "BF16" => "BF16",
        "I8" => "I8",
        "U8" => "U8",
        _ => return None,
    })
}

/// Quantize the checkpoint `src` into `dst` (the first `layers` layers and the head).
pub fn quantize_file(src: &Path, dst: &Path, q: Quant, layers: Option<usize>) -> Result<()> {
    quantize_then(src, dst, q, layers, &[], |_| Ok(())).map(drop)
}

/// The name a GGUF model's tensor (under BlinkDL's name, [`super::gguf_names`]) is saved
/// under: RWKV-6's token-shift LoRA takes Ai00's spelling, which says that the LoRA
/// matrices lie `[out, in]` as GGUF's do (RWKV-7's say it by their shapes).
fn saved_name(stored: &str) -> String {
    for (blinkdl, ai00) in [
        (".att.time_maa_w1", ".att.time_mix_w1"),
        (".att.time_maa_w2", ".att.time_mix_w2"),
    ] {
        if let Some(layer) = stored.strip_suffix(blinkdl) {
            return format!("{layer}{ai00}");
        }
    }
    stored.to_string()
}

/// [`quantize_file`], `check` reading the written file before it takes `dst`'s place: a
/// file that fails it leaves `dst` as it was. `None` when `dst` is no regular file (a FIFO,
/// a device), written in place, which cannot be read back.
pub fn quantize_then<T>(
    src: &Path,
    dst: &Path,
    q: Quant,
    layers: Option<usize>,
    adapters: &[AdapterSpec],
    check: impl FnOnce(&Path) -> Result<T>,
) -> Result<Option<T>> {
    let mut ck = Checkpoint::open(src)?;
    let gguf = ck.container == Container::Gguf;
    // the World vocabulary, or the 256 bytes in order: what the tools pick by vocab size
    let default = |t: &Vec<Vec<u8>>| {
        let w = tokenizer::from_gguf(t);
        let bytes = w.ids() == 256 && (0..256u32).all(|i| w.token_bytes(i) == Some(&[i as u8][..]));
        bytes || Arc::ptr_eq(&w, &tokenizer::world())
    };
    if ck.tokens.as_ref().is_some_and(|t| !default(t)) {
        return Err(Error::format(
            src,
            "a GGUF model with its own vocabulary, which a saved copy would lose: load the \
             GGUF file itself (--quant applies to it at load)",
        ));
    }
    let names = Names::new(&ck);
    ck.adapters = adapter_file::open(adapters, &ck, &names)?;
    let quantizable = registry::detect(&ck, &names)?.quantizable;
    let layers = layers.unwrap_or(usize::MAX);
    let mut entries = Vec::new();
    for (stored, t) in &ck.tensors {
        let blocks = ck.in_blocks(stored);
        let dtype = match blocks {
            true => "F32",
            false => dtype_name(&t.dtype).ok_or_else(|| Error::DType {
                path: src.to_path_buf(),
                name: stored.clone(),
                dtype: t.dtype.clone(),
            })?,
        };
        let canon = canonical(names.layout, stored);
        let float = matches!(dtype, "F32" | "F16" | "BF16");
        let quantized = load::quantizes(quantizable, &canon, layers, blocks);
        let out_name = if gguf {
            saved_name(stored)
        } else {
            stored.clone()
        };
        if float && t.shape.len() == 2 && quant::fits(t.shape[1]) && quantized {
            let (r, c) = (t.shape[0], t.shape[1]);
            let (suffix, qt, qshape, st) = match q {
                Quant::Int8 => ("q8", "I8", vec![r, c], "F32"),
                Quant::Nf4 => ("nf4", "U8", vec![r, c / 2], "BF16"),
            };
            entries.push(Entry {
                name: format!("{out_name}.{suffix}"),
                dtype: qt,
                bytes: qshape.iter().product(),
                shape: qshape,
                source: stored.clone(),
                part: Part::Values,
            });
            entries.push(Entry {
                name: format!("{out_name}.scales"),
                dtype: st,
                shape: vec![r, c / quant::BLOCK],
                bytes: r * c / quant::BLOCK * if st == "F32" { 4 } else { 2 },
                source: stored.clone(),
                part: Part::Scales,
            });
        } else if ck.adapters.touches(stored) || blocks || ck.gains.contains_key(stored) {
            entries.push(Entry {
                name: out_name,
                dtype: "F32",
                shape: t.shape.clone(),
                bytes: t.numel() * 4,
                source: stored.clone(),
                part: Part::Merged,
            });
        } else {
            entries.push(Entry {
                name: out_name,
                dtype,
                shape: t.shape.clone(),
                bytes: t.len,
                source: stored.clone(),
                part: Part::Raw,
            });
        }
    }
    let mut header = serde_json::Map::new();
    let mut meta: serde_json::Map<String, serde_json::Value> = ck
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into()))
        .collect();
    meta.insert("rwkv_tools_quant".into(), q.name().into());
    header.insert("__metadata__".into(), meta.into());
    let mut off = 0usize;
    for e in &entries {
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [off, off + e.bytes]}),
        );
        off += e.bytes;
    }
    let mut h = serde_json::to_vec(&header).expect("a JSON map serializes");
    while !(8 + h.len()).is_multiple_of(64) {
        h.push(b' ');
    }
    let io = |e| Error::io(dst, e);
    let mut w = AtomicFile::create(dst)?;
    {
        w.write_all(&(h.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&h).map_err(io)?;
        let mut pending_scales: Option<Vec<u8>> = None;
        for e in &entries {
            match e.part {
                Part::Raw => {
                    let t = &ck.tensors[&e.source];
                    w.write_all(&ck.map[t.offset..t.offset + t.len])
                        .map_err(io)?;
                }
                Part::Values => {
                    let t = &ck.tensors[&e.source];
                    let m = ck.matrix(&e.source, &t.shape)?;
                    let qm = quant::quantize(&m, q);
                    ck.release(&e.source);
                    let (values, scales): (&[u8], Vec<u8>) = match &qm.data {
                        // SAFETY: i8 and u8 have the same size and any bit pattern.
                        Data::Q8(x) => (
                            unsafe { &*(&x.qs[..] as *const [i8] as *const [u8]) },
                            x.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                        ),
                        Data::Nf4(x) => (
                            &x.packed,
                            x.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                        ),
                        _ => unreachable!("quantize gives a quantized matrix"),
                    };
                    w.write_all(values).map_err(io)?;
                    pending_scales = Some(scales);
                }
                Part::Merged => {
                    let t = &ck.tensors[&e.source];
                    let m = ck.matrix(&e.source, &t.shape)?.to_f32();
                    let bytes: Vec<u8> = m.iter().flat_map(|x| x.to_le_bytes()).collect();
                    w.write_all(&bytes).map_err(io)?;
                }
                Part::Scales => {
                    let s = pending_scales.take().expect("scales follow their values");
                    w.write_all(&s).map_err(io)?;
                }
            }
        }
    }
    let checked = match w.written_path()? {
        Some(p) => Some(check(&p)?),
        None => None,
    };
    w.commit()?;
    Ok(checked)
}
