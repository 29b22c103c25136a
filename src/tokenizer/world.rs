//! The RWKV World tokenizer: 65536 ids over byte strings, encoded by greedy longest match.
//!
//! The vocabulary (`rwkv_vocab_v20230424.txt`, embedded) has one token per line,
//! `ID REPR LEN`, where REPR is a Python `str` or `bytes` literal. Every single byte is a
//! token, so any input, valid UTF-8 or not, encodes.

use crate::error::{Error, Result};

const VOCAB: &str = include_str!("rwkv_vocab_v20230424.txt");
const NONE: u32 = u32::MAX;

/// A byte trie node: the token ending here (or `NONE`) and its children, a sorted range of
/// `World::edges`.
#[derive(Clone, Copy)]
struct Node {
    token: u32,
    first: u32,
    len: u32,
}

pub struct World {
    /// Bytes of each id (empty for unused ids and for 0, end of text).
    tokens: Vec<Vec<u8>>,
    nodes: Vec<Node>,
    /// `(byte, child node)`, sorted by byte within each node's range.
    edges: Vec<(u8, u32)>,
    /// Child of the root for each first byte (dense, the hottest lookup).
    root: [u32; 256],
}

impl World {
    /// The embedded vocabulary.
    pub fn embedded() -> World {
        World::parse(VOCAB).expect("the embedded World vocabulary parses")
    }

    /// Parse a vocabulary file's text.
    pub fn parse(text: &str) -> Result<World> {
        let mut tokens: Vec<Vec<u8>> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = |m: &str| Error::Tokenizer(format!("vocabulary line {}: {m}", n + 1));
            let (id, rest) = line.split_once(' ').ok_or_else(|| bad("no id"))?;
            let (repr, len) = rest.rsplit_once(' ').ok_or_else(|| bad("no length"))?;
            let id: usize = id.parse().map_err(|_| bad("bad id"))?;
            let len: usize = len.parse().map_err(|_| bad("bad length"))?;
            let bytes = parse_py_literal(repr).ok_or_else(|| bad("bad literal"))?;
            if bytes.len() != len {
                return Err(bad("length does not match the literal"));
            }
            if tokens.len() <= id {
                tokens.resize(id + 1, Vec::new());
            }
            tokens[id] = bytes;
        }
        tokens.resize(tokens.len().max(65536), Vec::new());
        Ok(World::build(tokens))
    }

    /// A vocabulary of `tokens` (id = index; empty for ids no text encodes to).
    pub fn from_tokens(tokens: Vec<Vec<u8>>) -> World {
        World::build(tokens)
    }

    /// Ids in the vocabulary (the World one has 65536, 0 and the unused ones included).
    pub fn ids(&self) -> usize {
        self.tokens.len()
    }

    /// Whether `self` and `o` encode every id to the same bytes.
    pub fn same_tokens(&self, o: &World) -> bool {
        self.tokens == o.tokens
    }

    fn build(tokens: Vec<Vec<u8>>) -> World {
        // Build with per-node child lists, then flatten into sorted edge ranges.
        let mut children: Vec<Vec<(u8, u32)>> = vec![Vec::new()];
        let mut token_at: Vec<u32> = vec![NONE];
        for (id, bytes) in tokens.iter().enumerate() {
            if bytes.is_empty() {
                continue;
            }
            let mut node = 0usize;
            for &b in bytes {
                node = match children[node].iter().find(|(c, _)| *c == b) {
                    Some(&(_, n)) => n as usize,
                    None => {
                        let n = children.len();
                        children.push(Vec::new());
                        token_at.push(NONE);
                        children[node].push((b, n as u32));
                        n
                    }
                };
            }
            token_at[node] = id as u32;
        }
        let mut nodes = Vec::with_capacity(children.len());
        let mut edges = Vec::new();
        for (kids, &token) in children.iter_mut().zip(&token_at) {
            kids.sort_unstable();
            nodes.push(Node {
                token,
                first: edges.len() as u32,
                len: kids.len() as u32,
            });
            edges.extend_from_slice(kids);
        }
        let mut root = [NONE; 256];
        for &(b, n) in &children[0] {
            root[b as usize] = n;
        }
        World {
            tokens,
            nodes,
            edges,
            root,
        }
    }

    fn child(&self, node: u32, b: u8) -> Option<u32> {
        let n = self.nodes[node as usize];
        let e = &self.edges[n.first as usize..(n.first + n.len) as usize];
        e.binary_search_by_key(&b, |&(c, _)| c).ok().map(|i| e[i].1)
    }

    /// Greedy longest match over `text`, appended to `out`.
    pub fn encode_into(&self, text: &[u8], out: &mut Vec<u32>) {
        let mut i = 0;
        while i < text.len() {
            let mut node = self.root[text[i] as usize];
            // Every byte is a token, so a one-byte match always exists.
            let (mut best, mut best_len) = (self.nodes[node as usize].token, 1);
            let mut j = i + 1;
            while j < text.len() {
                match self.child(node, text[j]) {
                    Some(n) => {
                        node = n;
                        j += 1;
                        let t = self.nodes[n as usize].token;
                        if t != NONE {
                            best = t;
                            best_len = j - i;
                        }
                    }
                    None => break,
                }
            }
            out.push(best);
            i += best_len;
        }
    }

    /// The bytes of `id`; `None` for ids outside the vocabulary. Id 0 (end of text) is empty.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.tokens.get(id as usize).map(Vec::as_slice)
    }

    /// Longest token, in bytes: how far greedy matching can look ahead.
    pub fn max_token_len(&self) -> usize {
        self.tokens.iter().map(Vec::len).max().unwrap_or(1)
    }
}

/// Bytes of a Python `str` (`'..'`, `".."`) or `bytes` (`b'..'`) literal. In a `str`,
/// `\xNN` and `\uNNNN` are code points (UTF-8 encoded); in `bytes`, `\xNN` is one byte.
pub fn parse_py_literal(s: &str) -> Option<Vec<u8>> {
    let (is_bytes, s) = match s.strip_prefix('b') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let q = s.chars().next()?;
    if !(q == '\'' || q == '"') || s.len() < 2 || !s.ends_with(q) {
        return None;
    }
    unescape_py(&s[1..s.len() - 1], is_bytes)
}

/// The bytes of the body of a Python literal (what lies between the quotes), a `bytes`
/// literal's when `is_bytes`.
pub fn unescape_py(body: &str, is_bytes: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars();
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            push_char(&mut out, c);
            continue;
        }
        let e = chars.next()?;
        let hex = |chars: &mut std::str::Chars, n: usize| -> Option<u32> {
            let h: String = chars.take(n).collect();
            if h.len() != n {
                return None;
            }
            u32::from_str_radix(&h, 16).ok()
        };
        match e {
            'n' => out.push(b'\n'),
            't' => out.push(b'\t'),
            'r' => out.push(b'\r'),
            'a' => out.push(7),
            'b' => out.push(8),
            'f' => out.push(12),
            'v' => out.push(11),
            '0' => out.push(0),
            '\\' | '\'' | '"' => out.push(e as u8),
            'x' => {
                let v = hex(&mut chars, 2)?;
                if is_bytes {
                    out.push(v as u8);
                } else {
                    push_char(&mut out, char::from_u32(v)?);
                }
            }
            'u' if !is_bytes => push_char(&mut out, char::from_u32(hex(&mut chars, 4)?)?),
            'U' if !is_bytes => push_char(&mut out, char::from_u32(hex(&mut chars, 8)?)?),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals() {
        assert_eq!(parse_py_literal("'a b'").unwrap(), b"a b");
        assert_eq!(parse_py_literal(r"'\n\t\\'").unwrap(), b"\n\t\\");
        assert_eq!(parse_py_literal(r"b'\xe6\x98'").unwrap(), vec![0xe6, 0x98]);
        // In a str, \xNN is a code point: U+00E9 is two UTF-8 bytes.
        assert_eq!(parse_py_literal(r"'\xe9'").unwrap(), "é".as_bytes());
        assert_eq!(parse_py_literal(r"'\u4e00'").unwrap(), "一".as_bytes());
        assert_eq!(parse_py_literal("\"it's\"").unwrap(), b"it's");
        assert!(parse_py_literal("abc").is_none());
    }

    #[test]
    fn longest_match_prefers_the_longer_token() {
        let mut toks = vec![Vec::new(); 260];
        for (b, t) in toks.iter_mut().enumerate().take(256) {
            *t = vec![b as u8];
        }
        toks[256] = b"ab".to_vec();
        toks[257] = b"abcd".to_vec();
        let w = World::build(toks);
        let mut out = Vec::new();
        w.encode_into(b"abcabcdab", &mut out);
        // "ab" "c" "abcd" "ab": at "abc" the walk passes "abc" (no token) and falls back.
        assert_eq!(out, vec![256, b'c' as u32, 257, 256]);
    }
}
