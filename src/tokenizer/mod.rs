//! Tokenizers: World (RWKV's own, embedded), byte-level (vocab 256) and Hugging Face
//! `tokenizer.json`. All encode bytes and decode to bytes: a token may end in the middle of
//! a UTF-8 character, so text is streamed as bytes (see [`Utf8Stream`]).

pub mod world;

use crate::error::{Error, Result};
use std::borrow::Cow;
use std::path::Path;
use std::sync::{Arc, OnceLock};
pub use world::World;

/// The embedded World vocabulary, parsed once per process on first use.
/// Token ids from text like `1 2, 3\n4` (whitespace or commas between them).
pub fn parse_ids(input: &[u8]) -> Result<Vec<u32>> {
    let text = std::str::from_utf8(input).map_err(|_| Error::Invalid("not UTF-8 text".into()))?;
    text.split(|c: char| c.is_whitespace() || c == ',')
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<u32>()
                .map_err(|_| Error::Invalid(format!("item {} (`{s}`) is not a token id", i + 1)))
        })
        .collect()
}

pub fn world() -> Arc<World> {
    static W: OnceLock<Arc<World>> = OnceLock::new();
    W.get_or_init(|| Arc::new(World::embedded())).clone()
}

/// The vocabulary a GGUF file carries (`tokenizer.ggml.tokens`, each token as llama.cpp's
/// converter writes it: the body of its Python `bytes` repr): the World one itself when it
/// is that (id 0 `<s>` and `[PADn]` fillers stand for no text), else one built from it.
pub fn from_gguf(tokens: &[Vec<u8>]) -> Arc<World> {
    let list: Vec<Vec<u8>> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let filler = format!("[PAD{i}]");
            if (i == 0 && t == b"<s>") || *t == filler.as_bytes() {
                return Vec::new();
            }
            let text = std::str::from_utf8(t).ok();
            text.and_then(|s| world::unescape_py(s, true))
                .unwrap_or_else(|| t.clone())
        })
        .collect();
    let file = World::from_tokens(list);
    let w = world();
    if file.same_tokens(&w) {
        w
    } else {
        Arc::new(file)
    }
}

pub enum Tokenizer {
    World(Arc<World>),
    /// Token = byte, vocab 256.
    Bytes,
    Hf(Box<tokenizers::Tokenizer>),
}

impl Tokenizer {
    /// `world`, `bytes`, or the path of a `tokenizer.json`.
    pub fn from_spec(spec: &str) -> Result<Tokenizer> {
        match spec {
            "world" => Ok(Tokenizer::World(world())),
            "bytes" => Ok(Tokenizer::Bytes),
            path => Tokenizer::from_file(Path::new(path)),
        }
    }

    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        use std::io::Read;
        // a tokenizer.json is a few MB: read no more than this
        const MAX: u64 = 64 << 20;
        let mut text = Vec::new();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let read = file.take(MAX + 1).read_to_end(&mut text);
        read.map_err(|e| Error::io(path, e))?;
        if text.len() as u64 > MAX {
            let msg = format!("more than {MAX} bytes: not a tokenizer.json");
            return Err(Error::format(path, msg));
        }
        let t = tokenizers::Tokenizer::from_bytes(&text)
            .map_err(|e| Error::format(path, format!("not a Hugging Face tokenizer.json: {e}")))?;
        Ok(Tokenizer::Hf(Box::new(t)))
    }

    /// The tokenizer a model of vocab `v` is trained with: World for 65536, bytes for 256.
    pub fn for_vocab(v: usize) -> Result<Tokenizer> {
        match v {
            65536 => Ok(Tokenizer::World(world())),
            256 => Ok(Tokenizer::Bytes),
            _ => Err(Error::Tokenizer(format!(
                "no default tokenizer for a vocab of {v}: pass --tokenizer world|bytes|FILE"
            ))),
        }
    }

    /// `--tokenizer` if given (checked against the vocab), else the vocabulary the model
    /// file carries, else the default for the model's vocab.
    pub fn choose(spec: Option<&str>, vocab: usize, file: Option<Arc<World>>) -> Result<Tokenizer> {
        let t = match (spec, file) {
            (Some(s), _) => Tokenizer::from_spec(s)?,
            (None, Some(w)) => Tokenizer::World(w),
            (None, None) => return Tokenizer::for_vocab(vocab),
        };
        t.check_fits(vocab)?;
        Ok(t)
    }

    /// Refuse a tokenizer whose ids a model of vocab `vocab` cannot read (a World
    /// tokenizer needs 65536, bytes 256 or more, a tokenizer.json no more ids than the
    /// model has).
    pub fn check_fits(&self, vocab: usize) -> Result<()> {
        let needs = match self {
            Tokenizer::World(w) => w.ids(),
            Tokenizer::Bytes => 256,
            Tokenizer::Hf(t) => t.get_vocab_size(true),
        };
        if needs > vocab {
            return Err(Error::Tokenizer(format!(
                "the {} tokenizer needs a model vocab of {needs}, this model's is {vocab}",
                self.name()
            )));
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Tokenizer::World(w) if Arc::ptr_eq(w, &world()) => "world",
            Tokenizer::World(_) => "the model file's",
            Tokenizer::Bytes => "bytes",
            Tokenizer::Hf(_) => "tokenizer.json",
        }
    }

    /// Token ids of `text`. Bytes that are not UTF-8 encode as bytes (World, bytes); the
    /// Hugging Face tokenizers take text, so there invalid sequences become U+FFFD.
    pub fn encode(&self, text: &[u8]) -> Result<Vec<u32>> {
        match self {
            Tokenizer::World(w) => {
                let mut out = Vec::with_capacity(text.len() / 3 + 1);
                w.encode_into(text, &mut out);
                Ok(out)
            }
            Tokenizer::Bytes => Ok(text.iter().map(|&b| b as u32).collect()),
            Tokenizer::Hf(t) => {
                let s = String::from_utf8_lossy(text);
                let enc = t
                    .encode(s.as_ref(), false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// Encode a prefix of `buf` that more input cannot change. Returns the ids and the
    /// bytes consumed; the rest is to be passed again with more data. With `at_end` all of
    /// `buf` is encoded. (Greedy longest match looks at most one longest token ahead, so the
    /// tokens starting before `len - max_token_len` are final. A tokenizer.json has no such
    /// bound: it encodes only at the end.)
    pub fn encode_prefix(&self, buf: &[u8], at_end: bool) -> Result<(Vec<u32>, usize)> {
        if at_end {
            return Ok((self.encode(buf)?, buf.len()));
        }
        match self {
            Tokenizer::Bytes => Ok((self.encode(buf)?, buf.len())),
            Tokenizer::Hf(_) => Ok((Vec::new(), 0)),
            Tokenizer::World(w) => {
                let safe = buf.len().saturating_sub(w.max_token_len());
                let mut ids = Vec::new();
                w.encode_into(buf, &mut ids);
                // Keep the tokens that start before `safe`.
                let (mut pos, mut keep) = (0usize, 0usize);
                for &id in &ids {
                    if pos >= safe {
                        break;
                    }
                    pos += w.token_bytes(id).map_or(1, <[u8]>::len);
                    keep += 1;
                }
                ids.truncate(keep);
                Ok((ids, pos))
            }
        }
    }

    /// The bytes of one token; an error for an id the tokenizer cannot spell.
    pub fn token_bytes(&self, id: u32) -> Result<Cow<'_, [u8]>> {
        let none = || {
            Error::Tokenizer(format!(
                "token id {id} has no text in the {} tokenizer",
                self.name()
            ))
        };
        match self {
            Tokenizer::World(w) => w.token_bytes(id).map(Cow::Borrowed).ok_or_else(none),
            Tokenizer::Bytes => u8::try_from(id)
                .map(|b| Cow::Owned(vec![b]))
                .map_err(|_| none()),
            Tokenizer::Hf(t) => {
                if t.id_to_token(id).is_none() {
                    return Err(none());
                }
                let s = t
                    .decode(&[id], false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                Ok(Cow::Owned(s.into_bytes()))
            }
        }
    }

    /// Concatenated bytes of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<Vec<u8>> {
        if let Tokenizer::Hf(t) = self {
            let s = t
                .decode(ids, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))?;
            return Ok(s.into_bytes());
        }
        let mut out = Vec::new();
        for &id in ids {
            out.extend_from_slice(&self.token_bytes(id)?);
        }
        Ok(out)
    }
}

/// Turns generated ids into output bytes, in order. World and byte tokens are their bytes;
/// for a tokenizer.json the crate's stream decoder runs, since a byte-level BPE token can
/// hold part of a character and its decoder works on whole strings.
pub struct Detokenizer<'a> {
    tok: &'a Tokenizer,
    #[allow(clippy::type_complexity)]
    hf: Option<Box<dyn FnMut(u32) -> Result<Option<String>> + 'a>>,
}

impl<'a> Detokenizer<'a> {
    pub fn new(tok: &'a Tokenizer) -> Detokenizer<'a> {
        let hf = match tok {
            Tokenizer::Hf(t) => {
                let mut stream = t.decode_stream(false);
                let step = move |id: u32| {
                    stream
                        .step(id)
                        .map_err(|e| Error::Tokenizer(format!("token id {id}: {e}")))
                };
                Some(Box::new(step) as Box<dyn FnMut(u32) -> Result<Option<String>> + 'a>)
            }
            _ => None,
        };
        Detokenizer { tok, hf }
    }

    /// The bytes `id` adds to the output (possibly none yet, for a partial character).
    pub fn push(&mut self, id: u32) -> Result<Vec<u8>> {
        match &mut self.hf {
            Some(step) => {
                if let Tokenizer::Hf(t) = self.tok {
                    if t.id_to_token(id).is_none() {
                        return Err(Error::Tokenizer(format!(
                            "token id {id} has no text in the tokenizer.json tokenizer"
                        )));
                    }
                }
                Ok(step(id)?.map(String::into_bytes).unwrap_or_default())
            }
            None => Ok(self.tok.token_bytes(id)?.into_owned()),
        }
    }
}

/// Splits a byte stream at UTF-8 character boundaries: bytes of an unfinished character are
/// held back until the character completes. Invalid sequences pass through unchanged (the
/// model's output is bytes; we never drop or alter them).
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    /// Append `bytes`; return what can be written now without splitting a character.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let cut = complete_prefix(&self.pending);
        let rest = self.pending.split_off(cut);
        std::mem::replace(&mut self.pending, rest)
    }

    /// Whatever is held back (at the end of the stream).
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Length of the longest prefix of `b` that does not end inside a (possibly valid) UTF-8
/// character.
pub fn complete_prefix(b: &[u8]) -> usize {
    // Look back at most 3 bytes for the start of a multi-byte character.
    let n = b.len();
    for back in 1..=n.min(3) {
        let c = b[n - back];
        if c & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead
        }
        let need = match c {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => 1,
        };
        return if need > back { n - back } else { n };
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token as llama.cpp's converter writes it: the body of Python's `repr(bytes)`.
    fn py_repr_body(b: &[u8]) -> Vec<u8> {
        let quote = if b.contains(&b'\'') && !b.contains(&b'"') {
            b'"'
        } else {
            b'\''
        };
        let mut s = Vec::new();
        for &c in b {
            match c {
                b'\\' => s.extend(b"\\\\"),
                b'\n' => s.extend(b"\\n"),
                b'\r' => s.extend(b"\\r"),
                b'\t' => s.extend(b"\\t"),
                c if c == quote => s.extend([b'\\', c]),
                0x20..=0x7e => s.push(c),
                c => s.extend(format!("\\x{c:02x}").bytes()),
            }
        }
        s
    }

    #[test]
    fn a_gguf_world_vocabulary_is_the_world_tokenizer() {
        let w = world();
        let mut list = vec![b"<s>".to_vec()];
        for id in 1..65536u32 {
            list.push(match w.token_bytes(id) {
                Some(b) if !b.is_empty() => py_repr_body(b),
                _ => format!("[PAD{id}]").into_bytes(),
            });
        }
        assert!(Arc::ptr_eq(&from_gguf(&list), &w));
        // one token changed: a vocabulary of the file's own
        list[300] = b"zz".to_vec();
        let own = from_gguf(&list);
        assert!(!Arc::ptr_eq(&own, &w));
        assert_eq!(own.token_bytes(300), Some(&b"zz"[..]));
        assert_eq!(own.token_bytes(0), Some(&b""[..]));
        let t = Tokenizer::World(own);
        assert_eq!(t.name(), "the model file's");
        assert_eq!(
            t.encode(b"'\xff").unwrap(),
            Tokenizer::World(w).encode(b"'\xff").unwrap()
        );
    }

    #[test]
    fn ids_parse_between_spaces_and_commas() {
        assert_eq!(parse_ids(b" 1 2,3\n\t40,,").unwrap(), vec![1, 2, 3, 40]);
        assert_eq!(parse_ids(b"").unwrap(), Vec::<u32>::new());
        let e = parse_ids(b"5 x6").unwrap_err().to_string();
        assert_eq!(e, "item 2 (`x6`) is not a token id");
        assert_eq!(
            parse_ids(b"-1").unwrap_err().to_string(),
            "item 1 (`-1`) is not a token id"
        );
        assert_eq!(
            parse_ids(&[0xff]).unwrap_err().to_string(),
            "not UTF-8 text"
        );
    }

    #[test]
    fn utf8_stream_holds_back_partial_characters() {
        let mut s = Utf8Stream::default();
        let e = "é".as_bytes();
        assert_eq!(s.push(b"a"), b"a");
        assert_eq!(s.push(&e[..1]), b"");
        assert_eq!(s.push(&e[1..]), e);
        let zh = "是".as_bytes();
        assert_eq!(s.push(&zh[..2]), b"");
        assert_eq!(s.push(&zh[2..]), zh);
        // invalid bytes are not held forever
        assert_eq!(s.push(&[0xFF, b'x']), vec![0xFF, b'x']);
        assert_eq!(s.push(&[0xE6]), b"");
        assert_eq!(s.finish(), vec![0xE6]);
    }

    #[test]
    fn bytes_tokenizer_refuses_ids_above_255() {
        let t = Tokenizer::Bytes;
        assert_eq!(t.encode(b"hi").unwrap(), vec![104, 105]);
        assert!(t.token_bytes(300).is_err());
    }
}
