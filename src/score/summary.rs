//! Totals over score records, added in input order: the same code sums one run
//! (`--summary`) and the records of many (`--merge`), so both give the same bytes.

use super::bits_per_byte;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::io::BufRead;

/// Running totals over records.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub documents: u64,
    pub tokens: u64,
    pub bytes: u64,
    pub nll: f64,
    pub labelled: u64,
    pub correct: u64,
    pub correct_per_byte: u64,
}

impl Summary {
    /// Add one record (a summary record among them is skipped).
    pub fn add(&mut self, r: &Value) {
        if r.get("summary").is_some() {
            return;
        }
        self.documents += 1;
        if let (Some(t), Some(n)) = (r["tokens"].as_u64(), r["nll"].as_f64()) {
            self.tokens += t;
            self.nll += n;
            self.bytes += r["bytes"].as_u64().unwrap_or(0);
        }
        if let Some(c) = r["correct"].as_bool() {
            self.labelled += 1;
            self.correct += c as u64;
            self.correct_per_byte += r["correct_per_byte"].as_bool().unwrap_or(false) as u64;
        }
    }

    /// The summary record.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "summary": true,
            "documents": self.documents,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "nll": self.nll,
            "ppl": if self.tokens > 0 { (self.nll / self.tokens as f64).exp() } else { f64::NAN },
            "bits_per_byte": bits_per_byte(self.nll, self.bytes),
        });
        if self.labelled > 0 {
            v["accuracy"] = json!(self.correct as f64 / self.labelled as f64);
            v["accuracy_per_byte"] = json!(self.correct_per_byte as f64 / self.labelled as f64);
        }
        v
    }

    /// Add a record read back (`--merge`), checked first: an object with a `source`, and
    /// either `choices` or whole `tokens` and `bytes` with a finite, non-negative `nll`;
    /// totals that would wrap are refused.
    pub fn add_checked(&mut self, r: &Value) -> std::result::Result<(), String> {
        if r.get("summary").is_some() {
            return Ok(());
        }
        if !r.is_object() || r.get("source").is_none() {
            return Err("not a score record (no `source`)".into());
        }
        let whole = |k: &str| {
            r[k].as_u64()
                .ok_or(format!("`{k}` is {}, not a count", r[k]))
        };
        match r.get("choices") {
            Some(c) if !c.is_array() => return Err("`choices` is not a list".into()),
            Some(_) => {}
            None => {
                let nll = r["nll"].as_f64().filter(|n| n.is_finite() && *n >= 0.0);
                nll.ok_or(format!("`nll` is {}, not a log-likelihood", r["nll"]))?;
                let wrap = || "the totals overflow".to_string();
                self.tokens.checked_add(whole("tokens")?).ok_or_else(wrap)?;
                self.bytes.checked_add(whole("bytes")?).ok_or_else(wrap)?;
            }
        }
        if r.get("correct").is_some_and(|c| !c.is_boolean()) {
            return Err("`correct` is not true or false".into());
        }
        self.add(r);
        Ok(())
    }

    /// Add every record of `reader` (rwkv-score output: JSON lines, blank ones skipped, none
    /// longer than [`crate::cli::MAX_LINE_BYTES`]); `name` names it in errors.
    pub fn add_lines(&mut self, name: &str, reader: &mut dyn BufRead) -> Result<()> {
        use crate::cli::MAX_LINE_BYTES;
        use std::io::Read;
        let mut line = Vec::new();
        for i in 1.. {
            line.clear();
            // never more than a line's bound in memory, nor read past it
            let mut part = (&mut *reader).take(MAX_LINE_BYTES as u64 + 1);
            let n = part
                .read_until(b'\n', &mut line)
                .map_err(|e| Error::io(name, e))?;
            let bad = |m: String| Error::format(name, format!("line {i}: {m}"));
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') && line.len() > MAX_LINE_BYTES {
                let m = format!("longer than {MAX_LINE_BYTES} bytes: not a score record");
                return Err(bad(m));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&line)
                .map_err(|e| bad(format!("not a score record: {e}")))?;
            self.add_checked(&v).map_err(bad)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merging records split over several inputs gives the totals of one pass, bit for bit.
    #[test]
    fn merged_parts_equal_one_pass() {
        let recs: Vec<Value> = (0..7)
            .map(|i| {
                json!({"source": i, "tokens": 10 + i, "bytes": 30 + i, "nll": 1.0 / (i as f64 + 3.0),
                       "correct": i % 2 == 0, "correct_per_byte": i % 3 == 0})
            })
            .collect();
        let mut one = Summary::default();
        recs.iter().for_each(|r| one.add(r));
        let text = |rs: &[Value]| rs.iter().map(|r| format!("{r}\n")).collect::<String>();
        let mut merged = Summary::default();
        for part in [&recs[..3], &recs[3..]] {
            let t = text(part);
            merged.add_lines("part", &mut t.as_bytes()).unwrap();
        }
        assert_eq!(merged, one);
        assert_eq!(merged.to_json().to_string(), one.to_json().to_string());
        let s = one.to_json();
        assert_eq!(
            (s["documents"].as_u64(), s["tokens"].as_u64()),
            (Some(7), Some(91))
        );
        assert_eq!(s["accuracy"].as_f64(), Some(4.0 / 7.0));
        let mut bad = Summary::default();
        let e = bad
            .add_lines("x.jsonl", &mut "{\"summary\": true}\nnot json\n".as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("x.jsonl: line 2"), "{e}");
    }

    #[test]
    fn merge_refuses_what_is_not_a_record() {
        let ok = r#"{"source": 1, "tokens": 3, "bytes": 9, "nll": 2.5}"#;
        let bad = [
            (r#"{}"#, "no `source`"),
            (
                r#"{"source": 1, "bytes": 9, "nll": 2.5}"#,
                "`tokens` is null, not a count",
            ),
            (
                r#"{"source": 1, "tokens": -3, "bytes": 9, "nll": 1}"#,
                "`tokens` is -3",
            ),
            (
                r#"{"source": 1, "tokens": "3", "bytes": 9, "nll": 1}"#,
                "`tokens` is \"3\"",
            ),
            (
                r#"{"source": 1, "tokens": 3.5, "bytes": 9, "nll": 1}"#,
                "`tokens` is 3.5",
            ),
            (
                r#"{"source": 1, "tokens": 3, "bytes": 9, "nll": -1}"#,
                "`nll` is -1",
            ),
            (r#"{"source": 1, "choices": 4}"#, "`choices` is not a list"),
            (
                r#"{"source": 1, "tokens": 18446744073709551615, "bytes": 1, "nll": 1}"#,
                "overflow",
            ),
        ];
        for (rec, says) in bad {
            let mut s = Summary::default();
            let text = format!("{ok}\n{rec}\n");
            let e = s
                .add_lines("m", &mut text.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("m: line 2: ") && e.contains(says),
                "{rec}: {e}"
            );
        }
        let mut s = Summary::default();
        let choice = r#"{"source": 2, "choices": [], "best": 0, "correct": true}"#;
        s.add_lines("m", &mut format!("{ok}\n{choice}\n").as_bytes())
            .unwrap();
        assert_eq!((s.documents, s.tokens, s.labelled, s.correct), (2, 3, 1, 1));
    }
}
