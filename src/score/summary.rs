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

    /// Add every record of `reader` (rwkv-score output: JSON lines, blank ones skipped);
    /// `name` names it in errors.
    pub fn add_lines(&mut self, name: &str, reader: &mut dyn BufRead) -> Result<()> {
        for (i, line) in reader.split(b'\n').enumerate() {
            let line = line.map_err(|e| Error::io(name, e))?;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let v: Value = serde_json::from_slice(&line).map_err(|e| {
                Error::format(name, format!("line {}: not a score record: {e}", i + 1))
            })?;
            if !v.is_object() {
                return Err(Error::format(
                    name,
                    format!("line {}: not a score record", i + 1),
                ));
            }
            self.add(&v);
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
            .add_lines("x.jsonl", &mut "{}\nnot json\n".as_bytes())
            .unwrap_err();
        assert!(e.to_string().contains("x.jsonl: line 2"), "{e}");
    }
}
