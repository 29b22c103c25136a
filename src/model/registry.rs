//! Every model version the tools run, one line each, and how a checkpoint's version is
//! found.

use super::checkpoint::Checkpoint;
use super::names::{self, Names};
use super::version::Version;
use super::{v4, v5, v6, v7, v7a};
use crate::error::Result;

/// The versions, oldest first (a version a file could also be taken for, its extension
/// first: RWKV-7a's files carry RWKV-7's names too).
pub static VERSIONS: &[&Version] = &[
    &v4::VERSION,
    &v5::VERSION,
    &v6::VERSION,
    &v7a::VERSION,
    &v7::VERSION,
];

/// The version named `name` (`rwkv7`), as state files and JSON name it.
pub fn by_name(name: &str) -> Option<&'static Version> {
    VERSIONS.iter().copied().find(|v| v.name == name)
}

/// The versions whose state-tuning layout is known.
pub fn tuned() -> impl Iterator<Item = &'static Version> {
    VERSIONS.iter().copied().filter(|v| v.tuning.is_some())
}

/// `RWKV-4, RWKV-5.2, RWKV-6, RWKV-7a and RWKV-7`: what the tools run, for messages.
pub fn titles() -> String {
    let t: Vec<&str> = VERSIONS.iter().map(|v| v.title).collect();
    match t.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => t.concat(),
    }
}

/// The version of `ck`, from its tensor names; variants no version runs are refused with a
/// line that says what the file is.
pub fn detect(ck: &Checkpoint, names: &Names) -> Result<&'static Version> {
    let runs = titles();
    names::refuse_variants(ck, names, &runs)?;
    match VERSIONS.iter().find(|v| (v.recognise)(names)) {
        Some(v) => Ok(v),
        None => Err(names::unrecognised(ck, names, &runs)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for v in VERSIONS {
            assert_eq!(by_name(v.name), Some(*v));
            assert_eq!(VERSIONS.iter().filter(|w| w.name == v.name).count(), 1);
        }
        assert_eq!(by_name("rwkv5.1"), None);
        assert_eq!(titles(), "RWKV-4, RWKV-5.2, RWKV-6, RWKV-7a and RWKV-7");
    }
}
