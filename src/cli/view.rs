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

/// A document's text for a person, built a token at a time: bytes are held until they
/// complete a character, which is shaded by the worst of the tokens that spell it.
#[derive(Default)]
pub struct Shader {
    pending: Vec<u8>,
    worst: f64,
    /// The text written so far leaves a line open.
    open: bool,
}

impl Shader {
    /// A token's `bytes`, predicted with `logprob`, onto `out`.
    pub fn push(&mut self, out: &mut Vec<u8>, bytes: &[u8], logprob: f64, color: bool) {
        let bits = -logprob / std::f64::consts::LN_2;
        self.pending.extend_from_slice(bytes);
        self.worst = self.worst.max(bits);
        let cut = complete_prefix(&self.pending);
        if cut > 0 {
            self.open = self.pending[cut - 1] != b'\n';
            shade(out, &self.pending[..cut], self.worst, color);
            self.pending.drain(..cut);
            self.worst = if self.pending.is_empty() { 0.0 } else { bits };
        }
    }

    /// The rest of the text, its line ended, then a line of the record's totals.
    pub fn finish(&mut self, out: &mut Vec<u8>, rec: &Value, color: bool) {
        shade(out, &self.pending, self.worst, color);
        if self.pending.last().map_or(self.open, |&b| b != b'\n') {
            out.push(b'\n');
        }
        *self = Shader::default();
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
    }
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

    fn render(tokens: &[(&[u8], f64)], color: bool) -> Vec<u8> {
        let (mut out, mut sh) = (Vec::new(), Shader::default());
        for (b, lp) in tokens {
            sh.push(&mut out, b, *lp, color);
        }
        let rec = json!({"source": "-", "tokens": tokens.len(), "bits_per_byte": 1.0, "ppl": 2.0});
        sh.finish(&mut out, &rec, color);
        out
    }

    /// An emoji split over two tokens prints whole, shaded by the worse of them; without
    /// colour the text is the same bytes.
    #[test]
    fn characters_are_joined_across_tokens() {
        let smile = "😀".as_bytes();
        let r = [
            (&b"a"[..], -0.1),
            (&smile[..2], -0.2),
            (&smile[2..], -7.0),
            (&b"\nb"[..], -0.1),
        ];
        let plain = render(&r, false);
        assert_eq!(
            String::from_utf8_lossy(&plain),
            "a😀\nb\n-- \"-\": 4 tokens, 1.0000 bits per byte, perplexity 2.000\n"
        );
        let shaded = String::from_utf8(render(&r, true)).unwrap();
        assert!(shaded.contains("\x1b[48;5;124m😀\x1b[0m"), "{shaded:?}");
        assert!(!shaded.contains('\u{FFFD}'));
    }
}
