//! `rwkv-gen --chat`: the turn format the World models are trained with, `User:` and
//! `Assistant:` turns separated by blank lines.

use super::Options;

/// What ends a reply (and separates turns).
pub const TURN_END: &[u8] = b"\n\n";

/// The prompt of a user turn `line`: `User: LINE` and the assistant's cue. `None` for a
/// blank line, which is no turn.
pub fn user_turn(line: &[u8]) -> Option<Vec<u8>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some([b"User: ".as_slice(), line, b"\n\nAssistant:"].concat())
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
    fn turns_are_user_and_assistant() {
        assert_eq!(
            user_turn(b"hi there").unwrap(),
            b"User: hi there\n\nAssistant:".to_vec()
        );
        assert_eq!(user_turn(b" \t"), None);
        assert_eq!(user_turn(b""), None);
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
