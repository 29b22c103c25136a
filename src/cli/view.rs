//! `rwkv-score --view`: a document's text for a person, each character shaded by the
//! surprisal of the tokens that spell it. A character split across tokens is joined before
//! it is printed, and without colour the text is the same, unshaded.

use crate::tokenizer::complete_prefix;
use serde_json::Value;

/// Surprisal bands in bits, their 256-colour backgrounds and labels.
const BANDS: [(f64, u8, &str); 5] = [
    (1.0, 22, "1-2"),
    (2.0, 58, "2-4"),
    (4.0, 94, "4-8"),
    (8.0, 124, "8-12"),
    (12.0, 160, ">12"),
];

fn band(bits: f64) -> Option<u8> {
    BANDS
        .iter()
        .rev()
        .find(|(lo, _, _)| bits >= *lo)
        .map(|b| b.1)
}

/// `bytes`, shaded by `bits` when `color` (line by line, so a newline does not paint the
/// rest of the row).
fn shade(out: &mut Vec<u8>, bytes: &[u8], bits: f64, color: bool) {
    match band(bits).filter(|_| color) {
        None => out.extend_from_slice(bytes),
        Some(c) => {
            for (i, piece) in bytes.split(|&b| b == b'\n').enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                if !piece.is_empty() {
                    out.extend_from_slice(format!("\x1b[48;5;{c}m").as_bytes());
                    out.extend_from_slice(piece);
                    out.extend_from_slice(b"\x1b[0m");
                }
            }
        }
    }
}

/// A score record with per-token records, as text for a person, then a line of totals.
pub fn render(rec: &Value, color: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut pending, mut worst) = (Vec::<u8>::new(), 0.0f64);
    for t in rec["per_token"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let bits = -t["logprob"].as_f64().unwrap_or(0.0) / std::f64::consts::LN_2;
        let bytes: Vec<u8> = t["bytes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().map(|b| b as u8))
                    .collect()
            })
            .unwrap_or_default();
        pending.extend_from_slice(&bytes);
        worst = worst.max(bits);
        let cut = complete_prefix(&pending);
        if cut > 0 {
            shade(&mut out, &pending[..cut], worst, color);
            pending.drain(..cut);
            worst = if pending.is_empty() { 0.0 } else { bits };
        }
    }
    shade(&mut out, &pending, worst, color);
    if out.last() != Some(&b'\n') {
        out.push(b'\n');
    }
    out.extend_from_slice(
        format!(
            "-- {}: {} tokens, {:.4} bits per byte, perplexity {:.3}\n",
            rec["source"],
            rec["tokens"],
            rec["bits_per_byte"].as_f64().unwrap_or(f64::NAN),
            rec["ppl"].as_f64().unwrap_or(f64::NAN)
        )
        .as_bytes(),
    );
    out
}

/// What the shades mean (with colour only: without, there are none).
pub fn legend() -> String {
    let mut s = String::from("surprisal (bits):  <1 ");
    for (_, c, label) in BANDS {
        s += &format!(" \x1b[48;5;{c}m {label} \x1b[0m");
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rec(tokens: &[(&[u8], f64)]) -> Value {
        let per: Vec<Value> = tokens
            .iter()
            .map(|(b, lp)| json!({"bytes": b, "logprob": lp}))
            .collect();
        json!({"source": "-", "tokens": tokens.len(), "bits_per_byte": 1.0, "ppl": 2.0, "per_token": per})
    }

    /// An emoji split over two tokens prints whole, shaded by the worse of them; without
    /// colour the text is the same bytes.
    #[test]
    fn characters_are_joined_across_tokens() {
        let smile = "😀".as_bytes();
        let r = rec(&[
            (b"a", -0.1),
            (&smile[..2], -0.2),
            (&smile[2..], -7.0),
            (b"\nb", -0.1),
        ]);
        let plain = render(&r, false);
        assert!(
            plain.starts_with("a😀\nb\n-- ".as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&plain)
        );
        let shaded = String::from_utf8(render(&r, true)).unwrap();
        assert!(shaded.contains("\x1b[48;5;124m😀\x1b[0m"), "{shaded:?}");
        assert!(!shaded.contains('\u{FFFD}'));
    }
}
