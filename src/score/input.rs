//! What `rwkv-score` reads: its sources (files or stdin), lines parsed as documents in
//! batches, and the `--tokenize` records.

use super::docs::{self, Doc, Scored, Scorer};
use crate::cli::{read_line, Line};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use rayon::prelude::*;
use serde_json::{json, Value};
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;

/// Where documents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Stdin,
    File(PathBuf),
}

impl Source {
    /// The sources the FILE arguments name (`-`: stdin); stdin when there are none.
    pub fn list(files: &[PathBuf]) -> Vec<Source> {
        if files.is_empty() {
            return vec![Source::Stdin];
        }
        let src = |p: &PathBuf| match p.as_os_str() == "-" {
            true => Source::Stdin,
            false => Source::File(p.clone()),
        };
        files.iter().map(src).collect()
    }

    /// `-` or the path, as records and messages name it.
    pub fn name(&self) -> String {
        match self {
            Source::Stdin => "-".into(),
            Source::File(p) => p.display().to_string(),
        }
    }

    /// Bytes to read, when known (a file's size).
    pub fn known_size(&self) -> u64 {
        match self {
            Source::File(p) => std::fs::metadata(p).map_or(0, |m| m.len()),
            Source::Stdin => 0,
        }
    }

    pub fn open(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Source::Stdin => Ok(Box::new(std::io::stdin())),
            Source::File(p) if p.is_dir() => Err(Error::format(p, "is a folder, not a file")),
            Source::File(p) => std::fs::File::open(p)
                .map(|f| Box::new(f) as Box<dyn Read + Send>)
                .map_err(|e| Error::io(p, e)),
        }
    }
}

/// A line's number, its bytes (the newline too) and its document, or why it is none.
pub type Numbered = (u64, u64, std::result::Result<Doc, String>);

/// Up to `n` lines of `reader` (named `name`) as documents (`jsonl`: JSON objects), each
/// numbered on from `*line`; the batch ends after the first line that is not one.
pub fn next_docs(
    reader: &mut dyn BufRead,
    name: &str,
    (max, jsonl, vocab): (usize, bool, usize),
    n: usize,
    line: &mut u64,
) -> Result<Vec<Numbered>> {
    let mut batch = Vec::new();
    while batch.len() < n {
        let Some(l) = read_line(reader, max).map_err(|e| Error::Invalid(format!("{name}: {e}")))?
        else {
            break;
        };
        *line += 1;
        let (bytes, doc) = match l {
            Line::Text(l) => (l.len() + 1, docs::parse(&l, jsonl, vocab)),
            Line::TooLong(b) => (
                b,
                Err(format!("{b} bytes, longer than --max-line-bytes ({max})")),
            ),
            Line::Unreadable(e) => (0, Err(e)),
        };
        let stop = doc.is_err();
        batch.push((*line, bytes as u64, doc));
        if stop {
            break;
        }
    }
    Ok(batch)
}

/// Score each of `sources` as one document, in parallel, each streamed through in blocks;
/// `progress` hears the bytes and tokens as they go.
pub fn score_sources(
    scorer: &Scorer,
    sources: &[Source],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Vec<Result<Value>> {
    sources
        .par_iter()
        .map(|s| scorer.score_reader(&s.name(), &mut s.open()?, &progress, &mut |_| {}))
        .collect()
}

/// Score a batch of lines of source `name` in parallel, each record's `source` its line
/// number (`name:N` when `named`); `progress` hears each line's tokens. A line that is no
/// document, or fails, is its message (`name: line N: ...`).
pub fn score_batch(
    scorer: &Scorer,
    name: &str,
    named: bool,
    batch: &[Numbered],
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Vec<std::result::Result<Scored, String>> {
    batch
        .par_iter()
        .map(|(n, bytes, doc)| {
            let doc = doc.as_ref().map_err(|e| format!("{name}: line {n}: {e}"))?;
            let source = match named {
                false => json!(n),
                true => json!(format!("{name}:{n}")),
            };
            let rec = scorer.score_doc(source, doc);
            let tokens = rec
                .as_ref()
                .map_or(0, |r| r.record["tokens"].as_u64().unwrap_or(0));
            progress(*bytes, tokens);
            rec.map_err(|e| format!("{name}: line {n}: {e}"))
        })
        .collect()
}

/// `--tokenize`'s record of line `n`: `{"source", "ids", "tokens", "bytes"}` of the text,
/// or (`jsonl`) one such object for each text field of the JSON object. The ids are
/// written as they are encoded, so memory does not grow with the line beyond the line.
pub fn write_token_record(
    tok: &Tokenizer,
    n: u64,
    line: &[u8],
    jsonl: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io("stdout", e);
    write!(out, "{{\"source\":{n}").map_err(io)?;
    if jsonl {
        let v: Value = serde_json::from_slice(line)
            .map_err(|e| Error::Invalid(format!("line {n}: invalid JSON: {e}")))?;
        for (field, text) in docs::texts(&v) {
            write!(out, ",{}:{{", json!(field)).map_err(io)?;
            write_ids(tok, "stdout", &mut &text[..], out)?;
            out.write_all(b"}").map_err(io)?;
        }
    } else {
        out.write_all(b",").map_err(io)?;
        write_ids(tok, "stdout", &mut &line[..], out)?;
    }
    out.write_all(b"}\n").map_err(io)
}

/// One whole document's `{"source", "ids", "tokens", "bytes"}`, encoded and written a
/// block at a time, so memory does not grow with the document.
pub fn tokenize_stream(
    tok: &Tokenizer,
    name: &str,
    reader: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io(name, e);
    write!(out, "{{\"source\":{},", json!(name)).map_err(io)?;
    write_ids(tok, name, reader, out)?;
    out.write_all(b"}\n").map_err(io)
}

/// Writes `"ids":[...],"tokens":T,"bytes":B` for the text `reader` holds, encoding it a
/// block at a time (at most 64 KiB and a token's length held). I/O errors name `name`.
fn write_ids(
    tok: &Tokenizer,
    name: &str,
    reader: &mut dyn BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    const PIECE: usize = 64 << 10;
    let io = |e: std::io::Error| Error::io(name, e);
    out.write_all(b"\"ids\":[").map_err(io)?;
    let (mut buf, mut tokens, mut bytes) = (Vec::new(), 0u64, 0u64);
    let mut s = String::new();
    loop {
        let block = reader.fill_buf().map_err(io)?;
        let n = block.len().min(PIECE);
        let end = n == 0;
        buf.extend_from_slice(&block[..n]);
        reader.consume(n);
        let (ids, used) = tok.encode_prefix(&buf, end)?;
        buf.drain(..used);
        bytes += used as u64;
        s.clear();
        for id in ids {
            if tokens > 0 {
                s.push(',');
            }
            // into the piece's one buffer: no allocation an id
            let _ = std::fmt::Write::write_fmt(&mut s, format_args!("{id}"));
            tokens += 1;
        }
        out.write_all(s.as_bytes()).map_err(io)?;
        if end {
            break;
        }
    }
    write!(out, "],\"tokens\":{tokens},\"bytes\":{bytes}").map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_default_to_stdin() {
        assert_eq!(Source::list(&[]), vec![Source::Stdin]);
        let files = [PathBuf::from("a"), PathBuf::from("-")];
        assert_eq!(
            Source::list(&files),
            vec![Source::File("a".into()), Source::Stdin]
        );
        assert_eq!(Source::list(&files)[1].name(), "-");
    }

    #[test]
    fn lines_batch_up_to_the_first_bad_one() {
        let text = b"{\"ids\": [1]}\n{\"ids\": [2]}\n{\"ids\": [300]}\n{\"ids\": [4]}\n";
        let mut r = &text[..];
        let mut line = 0;
        let b = next_docs(&mut r, "x", (100, true, 256), 2, &mut line).unwrap();
        assert_eq!(b.iter().map(|d| d.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(b.iter().map(|d| d.1).collect::<Vec<_>>(), vec![13, 13]);
        assert!(b.iter().all(|d| d.2.is_ok()));
        let b = next_docs(&mut r, "x", (100, true, 256), 8, &mut line).unwrap();
        assert_eq!(b.len(), 1, "the batch ends at the line that failed");
        assert_eq!(b[0].0, 3);
        assert!(b[0].2.is_err(), "token 300 is past the vocabulary");
        let b = next_docs(&mut r, "x", (100, true, 256), 8, &mut line).unwrap();
        assert_eq!((b.len(), b[0].0), (1, 4));
        let long = next_docs(&mut &b"abcdef\n"[..], "x", (3, false, 256), 8, &mut 0).unwrap();
        assert_eq!(
            long[0].2.as_ref().unwrap_err(),
            "6 bytes, longer than --max-line-bytes (3)"
        );
    }

    #[test]
    fn token_records_stream_and_by_line_agree() {
        let tok = Tokenizer::from_spec("bytes").unwrap();
        let record = |n, line: &[u8], jsonl| {
            let mut out = Vec::new();
            write_token_record(&tok, n, line, jsonl, &mut out).map(|()| out)
        };
        assert_eq!(
            record(3, b"hi", false).unwrap(),
            b"{\"source\":3,\"ids\":[104,105],\"tokens\":2,\"bytes\":2}\n"
        );
        let j = record(1, br#"{"context": "a", "continuation": "bc"}"#, true).unwrap();
        let j: Value = serde_json::from_slice(&j).unwrap();
        assert_eq!(j["continuation"]["ids"], json!([98, 99]));
        assert_eq!(j["context"]["tokens"], 1);
        let bad = record(2, b"{", true).unwrap_err().to_string();
        assert!(bad.starts_with("line 2: invalid JSON"), "{bad}");
        let mut out = Vec::new();
        tokenize_stream(&tok, "f", &mut &b"hi"[..], &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"source\":\"f\",\"ids\":[104,105],\"tokens\":2,\"bytes\":2}\n"
        );
    }

    /// Ids written a piece at a time are the ids of the whole text, across the pieces'
    /// seams (World tokens span them).
    #[test]
    fn ids_in_pieces_are_the_whole_texts() {
        let tok = Tokenizer::from_spec("world").unwrap();
        let text = "Ünïcode and ASCII, 😀 across pieces; ".repeat(5000);
        let mut out = Vec::new();
        write_token_record(&tok, 1, text.as_bytes(), false, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        let ids: Vec<u32> = serde_json::from_value(v["ids"].clone()).unwrap();
        assert!(text.len() > 3 * (64 << 10), "several pieces");
        assert_eq!(ids, tok.encode(text.as_bytes()).unwrap());
        assert_eq!(v["bytes"], text.len());
    }
}
