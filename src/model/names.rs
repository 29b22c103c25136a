//! Tensor naming layouts and version detection.
//!
//! Three layouts are in use for the same weights:
//! - BlinkDL (`emb.weight`, `blocks.N.att.time_maa_x`): the released `.pth` files;
//! - Hugging Face (`rwkv.embeddings.weight`, `rwkv.blocks.N.attention.*`, `feed_forward`,
//!   `pre_ln`);
//! - Ai00 / web-rwkv `.st` (`time_mix_*`, `time_first`, and the LoRA matrices stored
//!   transposed, i.e. already `[out, in]`);
//! - llama.cpp's GGUF (`blk.N.time_mix_key`), renamed when the file is read
//!   ([`super::gguf_names`]); its LoRA matrices lie `[out, in]` as Ai00's.
//!
//! Everything is translated to BlinkDL names; [`Layout::lora_is_out_in`] says which way the
//! LoRA matrices lie.

use super::checkpoint::{Checkpoint, Container};
use crate::error::{Error, Result};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    BlinkDL,
    HuggingFace,
    Ai00,
    Gguf,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::BlinkDL => "BlinkDL",
            Layout::HuggingFace => "Hugging Face",
            Layout::Ai00 => "Ai00",
            Layout::Gguf => "llama.cpp",
        }
    }

    /// Ai00 stores `time_maa_w1/w2` and `time_decay_w1/w2` as `[out, in]`; the others as the
    /// `[in, out]` of `x @ W`.
    pub fn lora_is_out_in(self) -> bool {
        matches!(self, Layout::Ai00 | Layout::Gguf)
    }
}

/// The stored names of a checkpoint under their BlinkDL spelling.
pub struct Names {
    pub layout: Layout,
    map: HashMap<String, String>,
}

impl Names {
    pub fn new(ck: &Checkpoint) -> Names {
        let layout = match ck.container {
            Container::Gguf => Layout::Gguf,
            _ if v7_lora_out_in(ck) => Layout::Ai00,
            _ => detect_layout(ck.tensors.keys().map(String::as_str)),
        };
        let map = ck
            .tensors
            .keys()
            .map(|stored| (canonical(layout, stored), stored.clone()))
            .collect();
        Names { layout, map }
    }

    /// The stored name for BlinkDL name `canon` (itself when absent, so that a missing-tensor
    /// error names what the loader looked for).
    pub fn stored<'a>(&'a self, canon: &'a str) -> &'a str {
        if let Some(s) = self.map.get(canon) {
            return s;
        }
        // A matrix saved quantized: `NAME.q8` / `NAME.nf4` stand for `NAME`.
        for suffix in [".q8", ".nf4"] {
            if let Some(s) = self.map.get(&format!("{canon}{suffix}")) {
                return &s[..s.len() - suffix.len()];
            }
        }
        canon
    }

    pub fn contains(&self, canon: &str) -> bool {
        self.map.contains_key(canon)
    }

    /// Number of blocks: one past the highest `blocks.N.` index, every index below it
    /// present (a name cannot make the loader allocate layers the file does not hold).
    pub fn n_layers(&self, path: &std::path::Path) -> Result<usize> {
        let mut seen = std::collections::BTreeSet::new();
        for k in self.map.keys() {
            let index = k.strip_prefix("blocks.").and_then(|r| r.split('.').next());
            if let Some(n) = index.and_then(|n| n.parse::<usize>().ok()) {
                seen.insert(n);
            }
        }
        match seen.last() {
            None => Ok(0),
            Some(&last) if last + 1 == seen.len() => Ok(seen.len()),
            Some(&last) => {
                let missing = (0..last).find(|n| !seen.contains(n)).unwrap_or(0);
                Err(Error::format(
                    path,
                    format!("tensors name layer {last}, but layer {missing} has none"),
                ))
            }
        }
    }
}

/// Whether an RWKV-7 file (BlinkDL's names in every layout) holds its LoRA matrices
/// `[out, in]`, as Ai00 and web-rwkv `.st` files do: `w1` is `[W, D]` rather than `[D, W]`
/// (with `D` the embedding's width; a square `w1` reads as BlinkDL's).
fn v7_lora_out_in(ck: &Checkpoint) -> bool {
    // a saved quantized copy holds `emb.weight.q8`
    let emb = ck.logical_shape("emb.weight");
    let (Some(w1), Some(emb)) = (ck.shape("blocks.0.att.w1"), emb) else {
        return false;
    };
    matches!((w1, &emb[..]), (&[w, d], &[_, e]) if d == e && w != d)
}

pub fn detect_layout<'a>(mut names: impl Iterator<Item = &'a str>) -> Layout {
    let mut layout = Layout::BlinkDL;
    for n in names.by_ref() {
        if n.starts_with("rwkv.") {
            return Layout::HuggingFace;
        }
        // RWKV-6's LoRA under Ai00's name (RWKV-4's own `time_first` is BlinkDL's)
        if n.contains(".time_mix_w1") {
            layout = Layout::Ai00;
        }
    }
    layout
}

/// BlinkDL spelling of `name` stored in `layout`.
pub fn canonical(layout: Layout, name: &str) -> String {
    match layout {
        Layout::BlinkDL | Layout::Gguf => name.to_string(),
        Layout::Ai00 => name
            .replace(".time_mix_", ".time_maa_")
            .replace(".time_first", ".time_faaaa"),
        Layout::HuggingFace => {
            let n = name.strip_prefix("rwkv.").unwrap_or(name);
            if let Some(rest) = n.strip_prefix("embeddings.") {
                return format!("emb.{rest}");
            }
            n.replace(".attention.", ".att.")
                .replace(".feed_forward.", ".ffn.")
                .replace(".pre_ln.", ".ln0.")
        }
    }
}

/// A model of `what` kind, which its tensor `evidence` shows, that no version runs.
fn unsupported(
    ck: &Checkpoint,
    names: &Names,
    runs: &str,
    what: &'static str,
    evidence: &str,
) -> Error {
    Error::UnsupportedVersion {
        path: ck.path.clone(),
        what,
        evidence: format!("it has `{}`", names.stored(evidence)),
        runs: runs.to_string(),
    }
}

/// Refuse the variants no version runs that carry a version's own names (DeepEmbed,
/// RWKV-7 previews): checked before any version recognises the file. `runs` names the
/// versions that do run.
pub fn refuse_variants(ck: &Checkpoint, names: &Names, runs: &str) -> Result<()> {
    let has = |s: &str| names.contains(s);
    let unsupported = |what, evidence| unsupported(ck, names, runs, what, evidence);
    // RWKV-7 previews may carry RWKV-6's `time_maa_x`: look for them first.
    let preview = ck.tensors.keys().find(|k| {
        let k = k.as_str();
        ["time_aaa", "time_misc_", "mv_w"]
            .iter()
            .any(|p| k.starts_with(&format!("blocks.0.att.{p}")))
    });
    if has("blocks.0.att.k_k") {
        return Ok(());
    }
    if has("blocks.0.att.ln_x.weight") && !has("blocks.0.att.time_maa_x") {
        // RWKV-5: 5.0 has no gate, 5.1 one decay per head, 5.2 one per channel [H, S].
        if !has("blocks.0.att.gate.weight") {
            return Err(unsupported(
                "an RWKV-5.0 model (no `att.gate`; only 5.2, the World v2 layout, runs)",
                "blocks.0.att.ln_x.weight",
            ));
        }
        let decay = names.stored("blocks.0.att.time_decay");
        if ck.logical_shape_of(decay).is_ok_and(|s| s.len() < 2) {
            return Err(unsupported(
                "an RWKV-5.1 model (one decay per head; only 5.2, the World v2 layout, runs)",
                "blocks.0.att.time_decay",
            ));
        }
    }
    if has("blocks.0.att.time_misc_kkk") && !has("blocks.0.att.time_maa_x") {
        return Err(unsupported(
            "an RWKV-7 preview under the pre-release names of the 2024-11 training code",
            "blocks.0.att.time_misc_kkk",
        ));
    }
    if let Some(p) = preview {
        return Err(unsupported(
            "an early RWKV-7 preview (2024-11), whose math differs from the released x070",
            p,
        ));
    }
    Ok(())
}

/// Why no version recognised `ck`: what the file looks like, as one line.
pub fn unrecognised(ck: &Checkpoint, names: &Names, runs: &str) -> Error {
    let has = |s: &str| names.contains(s);
    for v7 in ["blocks.0.att.w0", "blocks.0.att.x_r", "blocks.0.att.r_k"] {
        if has(v7) {
            return Error::format(
                &ck.path,
                format!("an RWKV-7 checkpoint without `blocks.0.att.k_k` (it has `{v7}`)"),
            );
        }
    }
    if ck.tensors.contains_key("model.layers.0.attn.k_k") {
        return Error::format(
            &ck.path,
            "an RWKV-7 model under Hugging Face (flash-linear-attention) names, which these \
             tools do not read; use the released .pth, or a safetensors copy of it",
        );
    }
    if !has("emb.weight") && ck.tensors.keys().any(|k| k.ends_with(".att.time_state")) {
        return Error::format(
            &ck.path,
            "a state-tuning file, not a model: give it with --state (or convert it with \
             `rwkv-state import`) beside the model it was tuned on",
        );
    }
    if has("emb.weight") {
        return Error::format(
            &ck.path,
            format!("an RWKV checkpoint of an unknown version: none of {runs}"),
        );
    }
    Error::format(
        &ck.path,
        "not an RWKV model: no `emb.weight` (or `rwkv.embeddings.weight`) tensor",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hugging_face_names_map_to_blinkdl() {
        let h = Layout::HuggingFace;
        assert_eq!(canonical(h, "rwkv.embeddings.weight"), "emb.weight");
        assert_eq!(
            canonical(h, "rwkv.blocks.0.pre_ln.bias"),
            "blocks.0.ln0.bias"
        );
        assert_eq!(
            canonical(h, "rwkv.blocks.3.attention.time_maa_w1"),
            "blocks.3.att.time_maa_w1"
        );
        assert_eq!(
            canonical(h, "rwkv.blocks.1.feed_forward.key.weight"),
            "blocks.1.ffn.key.weight"
        );
        assert_eq!(canonical(h, "rwkv.ln_out.weight"), "ln_out.weight");
        assert_eq!(canonical(h, "head.weight"), "head.weight");
    }

    #[test]
    fn ai00_names_map_to_blinkdl() {
        let a = Layout::Ai00;
        assert_eq!(
            canonical(a, "blocks.0.att.time_first"),
            "blocks.0.att.time_faaaa"
        );
        assert_eq!(
            canonical(a, "blocks.0.ffn.time_mix_k"),
            "blocks.0.ffn.time_maa_k"
        );
        assert_eq!(
            canonical(a, "blocks.0.att.time_mix_w2"),
            "blocks.0.att.time_maa_w2"
        );
    }

    #[test]
    fn layout_detection() {
        assert_eq!(
            detect_layout(["emb.weight", "blocks.0.att.time_maa_x"].into_iter()),
            Layout::BlinkDL
        );
        assert_eq!(
            detect_layout(["emb.weight", "blocks.0.att.time_mix_w1"].into_iter()),
            Layout::Ai00
        );
        // RWKV-4's own names
        assert_eq!(
            detect_layout(["emb.weight", "blocks.0.att.time_first"].into_iter()),
            Layout::BlinkDL
        );
        assert_eq!(
            detect_layout(["head.weight", "rwkv.embeddings.weight"].into_iter()),
            Layout::HuggingFace
        );
    }
}
