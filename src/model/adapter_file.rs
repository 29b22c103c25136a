//! Reading `--adapter` files against the model they adapt: every LoRA pair's shapes, and
//! every replaced tensor's count, checked against the base checkpoint's tensors.

use super::adapter::{AdapterSpec, Adapters};
use super::checkpoint::Checkpoint;
use super::names::Names;
use crate::error::{Error, Result};

/// Read every adapter of `specs` against `base`, whose stored names `names` gives; kept
/// under the base's stored names.
pub fn open(specs: &[AdapterSpec], base: &Checkpoint, names: &Names) -> Result<Adapters> {
    let mut out = Adapters::default();
    for spec in specs {
        add(&mut out, spec, base, names)?;
    }
    Ok(out)
}

fn add(out: &mut Adapters, spec: &AdapterSpec, base: &Checkpoint, names: &Names) -> Result<()> {
    let ck = Checkpoint::open(&spec.path)?;
    let bad = |m: String| Error::format(&spec.path, m);
    let (mut count, mut rank, mut replaced) = (0, 0, 0);
    for (name, t) in &ck.tensors {
        if let Some(stem) = name.strip_suffix(".disha") {
            let target = names.stored(&format!("{stem}.weight")).to_string();
            let w = base.logical_shape_of(&target).map_err(|_| {
                bad(format!(
                    "`{name}` adapts `{target}`, which the model does not have"
                ))
            })?;
            let (blocks, r) = match (&t.shape[..], &w[..]) {
                (&[r, o], &[wo, _]) if r > 0 && o == wo => (false, r),
                (&[n, r, r2], &[wo, wi]) if r > 0 && r == r2 && wo % r == 0 && wi == n * r => {
                    (true, r)
                }
                _ => {
                    return Err(bad(format!(
                        "`{name}` {:?} does not adapt `{target}` {w:?} (DiSHA is [r, out] or \
                         [in / r, r, r])",
                        t.shape
                    )))
                }
            };
            let d = ck.matrix(name, &t.shape)?.to_f32();
            out.add_disha(target, d, r, blocks, spec.scale);
            count += 1;
            rank = rank.max(r);
        } else if let Some(stem) = name.strip_suffix(".lora_A").or_else(|| {
            // PiSSA's init file: its product is taken away
            name.strip_prefix("model.")
                .and_then(|n| n.strip_suffix(".init_lora_A"))
        }) {
            let init = name.ends_with(".init_lora_A");
            let target = names.stored(&format!("{stem}.weight")).to_string();
            let bname = match init {
                true => format!("model.{stem}.init_lora_B"),
                false => format!("{stem}.lora_B"),
            };
            let (a_shape, b_shape) = (t.shape.clone(), ck.get(&bname)?.shape.clone());
            let w = base.logical_shape_of(&target).map_err(|_| {
                bad(format!(
                    "`{name}` adapts `{target}`, which the model does not have"
                ))
            })?;
            let mismatch = || {
                bad(format!(
                    "`{name}` {a_shape:?} and `{bname}` {b_shape:?} do not adapt `{target}` \
                     {w:?} (A is [r, in], B [out, r])"
                ))
            };
            let (&[r, i], &[o, r2], &[wo, wi]) = (&a_shape[..], &b_shape[..], &w[..]) else {
                return Err(mismatch());
            };
            if r != r2 || i != wi || o != wo || r == 0 {
                return Err(mismatch());
            }
            let a = ck.matrix(name, &a_shape)?.to_f32();
            let b = ck.matrix(&bname, &b_shape)?.to_f32();
            let scale = if init { -spec.scale } else { spec.scale };
            out.add_low_rank(target, a, b, r, scale);
            count += 1;
            rank = rank.max(r);
        } else if let Some(stem) = name.strip_suffix(".lora_B") {
            ck.get(&format!("{stem}.lora_A"))?;
        } else if let Some(stem) = name.strip_suffix(".init_lora_B") {
            ck.get(&format!("{stem}.init_lora_A"))?;
        } else {
            let stored = names.stored(name).to_string();
            let shape = base.logical_shape_of(&stored).map_err(|_| {
                bad(format!(
                    "tensor `{name}` replaces one the model does not have"
                ))
            })?;
            if t.numel() != shape.iter().product::<usize>() {
                return Err(Error::Shape {
                    path: spec.path.clone(),
                    name: name.clone(),
                    expected: Error::dims(&shape),
                    found: t.shape.clone(),
                });
            }
            let values = ck.matrix(name, &t.shape)?.to_f32();
            out.replace(stored, values);
            replaced += 1;
        }
    }
    if count == 0 && replaced == 0 {
        return Err(bad(
            "no LoRA matrices (`NAME.lora_A`, `NAME.lora_B`) in it".into()
        ));
    }
    out.summary.push((spec.path.clone(), count, rank));
    Ok(())
}
