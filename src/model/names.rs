//! Tensor naming layouts and version detection.
//!
//! Three layouts are in use for the same weights:
//! - BlinkDL (`emb.weight`, `blocks.N.att.time_maa_x`): the released `.pth` files;
//! - Hugging Face (`rwkv.embeddings.weight`, `rwkv.blocks.N.attention.*`, `feed_forward`,
//!   `pre_ln`);
//! - Ai00 / web-rwkv `.st` (`time_mix_*`, `time_first`, and the LoRA matrices stored
//!   transposed, i.e. already `[out, in]`).
//!
//! Everything is translated to BlinkDL names; [`Layout::lora_is_out_in`] says which way the
//! LoRA matrices lie.

use super::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    BlinkDL,
    HuggingFace,
    Ai00,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::BlinkDL => "BlinkDL",
            Layout::HuggingFace => "Hugging Face",
            Layout::Ai00 => "Ai00",
        }
    }

    /// Ai00 stores `time_maa_w1/w2` and `time_decay_w1/w2` as `[out, in]`; the others as the
    /// `[in, out]` of `x @ W`.
    pub fn lora_is_out_in(self) -> bool {
        self == Layout::Ai00
    }
}

/// The stored names of a checkpoint under their BlinkDL spelling.
pub struct Names {
    pub layout: Layout,
    map: HashMap<String, String>,
}

impl Names {
    pub fn new(ck: &Checkpoint) -> Names {
        let layout = detect_layout(ck.tensors.keys().map(String::as_str));
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

    /// Number of blocks: one past the highest `blocks.N.` index.
    pub fn n_layers(&self) -> usize {
        self.map
            .keys()
            .filter_map(|k| {
                k.strip_prefix("blocks.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .map(|n| n + 1)
            .max()
            .unwrap_or(0)
    }
}

pub fn detect_layout<'a>(mut names: impl Iterator<Item = &'a str>) -> Layout {
    let mut layout = Layout::BlinkDL;
    for n in names.by_ref() {
        if n.starts_with("rwkv.") {
            return Layout::HuggingFace;
        }
        if n.contains(".time_mix_w1") || n.contains(".time_first") {
            layout = Layout::Ai00;
        }
    }
    layout
}

/// BlinkDL spelling of `name` stored in `layout`.
pub fn canonical(layout: Layout, name: &str) -> String {
    match layout {
        Layout::BlinkDL => name.to_string(),
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

/// Refuse checkpoints of other RWKV generations with a message that says which one it is.
pub fn check_version(ck: &Checkpoint, names: &Names) -> Result<()> {
    let has = |s: &str| names.contains(s);
    if has("blocks.0.att.time_maa_x") {
        return Ok(());
    }
    let unsupported = |version: &'static str, evidence: &str| Error::UnsupportedVersion {
        path: ck.path.clone(),
        version,
        evidence: format!("it has `{}`", names.stored(evidence)),
    };
    for v7 in ["blocks.0.att.w0", "blocks.0.att.x_r", "blocks.0.att.r_k"] {
        if has(v7) {
            return Err(unsupported("v7", v7));
        }
    }
    if has("blocks.0.att.ln_x.weight") {
        return Err(unsupported("v5", "blocks.0.att.ln_x.weight"));
    }
    if has("blocks.0.att.time_faaaa") {
        return Err(unsupported("v4", "blocks.0.att.time_faaaa"));
    }
    if has("blocks.0.att.time_mix_k") || has("blocks.0.att.time_maa_k") {
        return Err(unsupported("v4", "blocks.0.att.time_maa_k"));
    }
    if has("emb.weight") {
        return Err(Error::format(
            &ck.path,
            "an RWKV checkpoint of an unknown version: no `blocks.0.att.time_maa_x`",
        ));
    }
    Err(Error::format(
        &ck.path,
        "not an RWKV model: no `emb.weight` (or `rwkv.embeddings.weight`) tensor",
    ))
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
            detect_layout(["emb.weight", "blocks.0.att.time_first"].into_iter()),
            Layout::Ai00
        );
        assert_eq!(
            detect_layout(["head.weight", "rwkv.embeddings.weight"].into_iter()),
            Layout::HuggingFace
        );
    }
}
