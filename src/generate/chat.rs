//! `rwkv-gen --chat`: the turn format the World and G1 models are trained with. Turns are
//! `System: ...`, `User: ...` and `Assistant: ...`, each ended by a blank line, which the
//! training data keeps as the turn separator, so a blank line inside a turn's text is made
//! a single newline. The G1 reasoning models think first when the reply is cued with
//! `Assistant: <think`; the block they write (`<think>...</think>`) is shown or left out.

use super::Options;

/// What ends a reply (and separates turns).
pub const TURN_END: &[u8] = b"\n\n";

/// Whether replies start with a think block, and whether it is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Think {
    /// Replies are cued with `Assistant:` alone.
    #[default]
    Off,
    /// Cued with `Assistant: <think`; the block is shown, its `<think` included.
    Show,
    /// Cued so, and only what follows `</think>` is shown.
    Hide,
}

/// One conversation's turns.
#[derive(Debug, Clone, Default)]
pub struct Conversation {
    /// The system turn, until the first user turn takes it.
    system: Option<Vec<u8>>,
    think: Think,
}

impl Conversation {
    pub fn new(system: Option<&[u8]>, think: Think) -> Conversation {
        Conversation {
            system: system.map(turn_text).filter(|s| !s.is_empty()),
            think,
        }
    }

    /// The prompt of a user turn `line`: the system turn before the first, `User: LINE`
    /// and the assistant's cue. `None` for a blank line, which is no turn.
    pub fn user_turn(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        let text = turn_text(line);
        if text.is_empty() {
            return None;
        }
        let mut p = Vec::new();
        if let Some(s) = self.system.take() {
            p.extend_from_slice(b"System: ");
            p.extend_from_slice(&s);
            p.extend_from_slice(TURN_END);
        }
        p.extend_from_slice(b"User: ");
        p.extend_from_slice(&text);
        p.extend_from_slice(TURN_END);
        p.extend_from_slice(match self.think {
            Think::Off => b"Assistant:".as_slice(),
            Think::Show | Think::Hide => b"Assistant: <think",
        });
        Some(p)
    }

    /// What is shown of a reply, fed its bytes as they come.
    pub fn reply(&self) -> Shown {
        Shown {
            think: self.think,
            held: Vec::new(),
            started: false,
        }
    }
}

/// A turn's text: trimmed, each run of blank lines a single newline.
fn turn_text(text: &[u8]) -> Vec<u8> {
    let text = text.trim_ascii();
    let mut out = Vec::with_capacity(text.len());
    for &b in text {
        if b == b'\n' {
            while out
                .last()
                .is_some_and(|&c: &u8| c == b' ' || c == b'\t' || c == b'\r')
            {
                out.pop();
            }
            if out.last() == Some(&b'\n') {
                continue;
            }
        }
        out.push(b);
    }
    out
}

/// A reply as shown: with the think block's `<think` (which the cue fed) put back, or the
/// block and the whitespace after it left out.
#[derive(Debug)]
pub struct Shown {
    think: Think,
    /// Hidden bytes, until `</think>` ends them.
    held: Vec<u8>,
    /// The shown part has begun.
    started: bool,
}

const THINK_END: &[u8] = b"</think>";

impl Shown {
    /// The bytes of `piece` to show.
    pub fn push(&mut self, piece: &[u8]) -> Vec<u8> {
        match self.think {
            Think::Off => piece.to_vec(),
            Think::Show if !self.started => {
                self.started = true;
                [b"<think".as_slice(), piece].concat()
            }
            Think::Show => piece.to_vec(),
            Think::Hide if self.started => piece.to_vec(),
            Think::Hide => {
                // only the new bytes, and a marker's length before them, can hold its end
                let from = match self.held.starts_with(THINK_END) {
                    true => 0,
                    false => self.held.len().saturating_sub(THINK_END.len()),
                };
                self.held.extend_from_slice(piece);
                let Some(at) = find(&self.held[from..], THINK_END).map(|i| from + i) else {
                    return Vec::new();
                };
                let rest = self.held[at + THINK_END.len()..].trim_ascii_start();
                if rest.is_empty() {
                    // keep the marker: the blank space after it may go on in the next piece
                    self.held.drain(..at);
                    return Vec::new();
                }
                self.started = true;
                let shown = rest.to_vec();
                self.held = Vec::new();
                shown
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The options of reply `turn` (from 0): `base`, stopping at the end of the reply, its seed
/// moved on by the turn so that replies differ but a run repeats.
pub fn reply_options(base: &Options, turn: u64) -> Options {
    let mut o = base.clone();
    o.stop.push(TURN_END.to_vec());
    o.seed = base.seed.wrapping_add(turn);
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_are_system_user_and_assistant() {
        let mut c = Conversation::new(Some(b"Be brief.\n\n\nReally. "), Think::Off);
        assert_eq!(c.user_turn(b" \t"), None);
        assert_eq!(
            c.user_turn(b"hi there").unwrap(),
            b"System: Be brief.\nReally.\n\nUser: hi there\n\nAssistant:".to_vec()
        );
        assert_eq!(
            c.user_turn(b"and  \n\nthen?").unwrap(),
            b"User: and\nthen?\n\nAssistant:".to_vec(),
            "the system turn comes once; a blank line in a turn is one newline"
        );
        assert_eq!(c.user_turn(b""), None);
        let mut c = Conversation::new(Some(b"  "), Think::Hide);
        assert_eq!(
            c.user_turn(b"2+2?").unwrap(),
            b"User: 2+2?\n\nAssistant: <think".to_vec()
        );
    }

    /// A think block split anywhere over the pieces is shown whole, or left out with the
    /// blank space after it.
    #[test]
    fn think_blocks_are_shown_or_left_out() {
        let reply = ">\nSum: 4.\n</think>\n 2+2 is 4.";
        for cut in 0..reply.len() {
            let (a, b) = reply.as_bytes().split_at(cut);
            let shown = |think| {
                let mut s = Conversation::new(None, think).reply();
                [s.push(a), s.push(b)].concat()
            };
            assert_eq!(shown(Think::Hide), b"2+2 is 4.", "cut at {cut}");
            assert_eq!(shown(Think::Show), [b"<think", reply.as_bytes()].concat());
            assert_eq!(shown(Think::Off), reply.as_bytes());
        }
        let mut s = Conversation::new(None, Think::Hide).reply();
        assert!(
            s.push(b">\nstill thinking").is_empty(),
            "an open block shows nothing"
        );
    }

    #[test]
    fn each_reply_has_its_seed_and_stops_at_a_blank_line() {
        let base = Options {
            seed: u64::MAX,
            stop: vec![b"x".to_vec()],
            ..Options::default()
        };
        let o = reply_options(&base, 2);
        assert_eq!(o.seed, 1);
        assert_eq!(o.stop, vec![b"x".to_vec(), b"\n\n".to_vec()]);
    }
}
