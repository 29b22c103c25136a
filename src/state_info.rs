//! What `rwkv-state info` and `rwkv-state diff` compute: a state file's metadata with each
//! layer's norms, and the per-tensor differences of two states, as text and JSON.

use crate::error::{Error, Result};
use crate::state_file::{self, Mapped, StateFile, StateMeta};
use serde_json::{json, Value};
use std::path::Path;

/// `sqrt(sum x^2)`, in f64.
fn norm(v: impl Iterator<Item = f32>) -> f64 {
    v.map(|x| (x as f64) * (x as f64)).sum::<f64>().sqrt()
}

/// What `info` shows of a state file or a state-tuning file.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    pub meta: StateMeta,
    /// [`state_file::FORMAT`], or `state-tuning file`.
    pub kind: &'static str,
    pub has_logits: bool,
    /// Per layer, the norms of `att_shift`, `wkv` and `ffn_shift`.
    pub norms: Vec<[f64; 3]>,
}

impl Info {
    /// Read `path` (`-`: stdin). A state file is mapped and read a layer at a time, so
    /// memory stays what is shown.
    pub fn read(path: &Path) -> Result<Info> {
        if path.as_os_str() != "-" {
            if let Ok(m) = Mapped::open(path) {
                return Ok(Info {
                    kind: state_file::FORMAT,
                    has_logits: m.has_logits(),
                    norms: (0..m.meta().shape.layers)
                        .map(|l| m.layer(l).map(norm))
                        .collect(),
                    meta: m.meta().clone(),
                });
            }
        }
        let (sf, tuning) = StateFile::read_any(path)?;
        Ok(Info::of(&sf, tuning))
    }

    /// The report of `sf` (read from a state-tuning file when `tuning`).
    pub fn of(sf: &StateFile, tuning: bool) -> Info {
        let n = |v: &[f32]| norm(v.iter().copied());
        Info {
            kind: if tuning {
                "state-tuning file"
            } else {
                state_file::FORMAT
            },
            has_logits: sf.logits.is_some(),
            norms: sf
                .layers()
                .iter()
                .map(|l| [n(&l.att_shift), n(&l.wkv), n(&l.ffn_shift)])
                .collect(),
            meta: sf.meta.clone(),
        }
    }

    /// One JSON object; `file` as given.
    pub fn json(&self, file: &Path) -> Value {
        let (m, c) = (&self.meta, self.meta.shape);
        let layers: Vec<_> = self
            .norms
            .iter()
            .map(|n| json!({"att_shift": n[0], "wkv": n[1], "ffn_shift": n[2]}))
            .collect();
        let tuning = self.kind != state_file::FORMAT;
        json!({
            "file": file.display().to_string(),
            "format": self.kind,
            "format_version": if tuning { "" } else { state_file::VERSION },
            "arch": m.arch,
            "n_layer": c.layers,
            "n_embd": c.embd,
            "n_head": c.heads,
            "head_size": c.head_size,
            "vocab": m.vocab,
            "model_fingerprint": m.fingerprint,
            "tokens": m.tokens,
            "tokenizer": m.tokenizer,
            "has_logits": self.has_logits,
            "layers": layers,
        })
    }

    /// The table people read.
    pub fn text(&self, file: &Path) -> String {
        let (m, c) = (&self.meta, self.meta.shape);
        let known = |s: &str| if s.is_empty() { "unknown" } else { s }.to_string();
        let vocab = match m.vocab {
            0 => "unknown".into(),
            v => v.to_string(),
        };
        let mut s = String::new();
        s += &format!("file         {}\n", file.display());
        s += &format!("format       {} ({})\n", self.kind, m.arch);
        s += &format!("shape        {c}, vocab {vocab}\n");
        s += &format!("model        {}\n", known(&m.fingerprint));
        s += &format!("tokens fed   {}\n", m.tokens);
        s += &format!("tokenizer    {}\n", known(&m.tokenizer));
        let logits = if self.has_logits { "yes" } else { "no" };
        s += &format!("logits       {logits}\n");
        s += "layer   |att_shift|       |wkv|   |ffn_shift|\n";
        for (l, n) in self.norms.iter().enumerate() {
            s += &format!("{l:>5} {:>11.4} {:>11.4} {:>11.4}\n", n[0], n[1], n[2]);
        }
        s
    }
}

/// The differences of two states: per tensor, the largest and the mean `|a - b|`.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff {
    /// `(tensor, max, mean)`, layer by layer, then `logits` when both have them.
    pub rows: Vec<(String, f64, f64)>,
    /// Whether any value differs (or only one of them has logits).
    pub differ: bool,
}

/// max and mean `|a - b|`.
fn delta(a: &[f32], b: &[f32]) -> (f64, f64) {
    let d = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs());
    let (max, sum) = d.fold((0.0f64, 0.0f64), |(m, s), d| (m.max(d), s + d));
    (
        max,
        if a.is_empty() {
            0.0
        } else {
            sum / a.len() as f64
        },
    )
}

impl Diff {
    /// `x` against `y` (`names` the two files, for the error when they do not compare).
    pub fn of(x: &StateFile, y: &StateFile, names: [&Path; 2]) -> Result<Diff> {
        let (mx, my) = (&x.meta, &y.meta);
        if mx.shape != my.shape || mx.arch != my.arch {
            let shape = |m: &StateMeta| {
                let s = m.shape;
                format!("{} {} layers of width {}", m.arch, s.layers, s.embd)
            };
            return Err(Error::StateMismatch(format!(
                "{} and {} are states of different models ({} against {})",
                names[0].display(),
                names[1].display(),
                shape(mx),
                shape(my)
            )));
        }
        let mut rows = Vec::new();
        let mut row = |name: String, (max, mean): (f64, f64)| rows.push((name, max, mean));
        for (l, (p, q)) in x.layers().iter().zip(y.layers()).enumerate() {
            row(format!("{l}.att_shift"), delta(&p.att_shift, &q.att_shift));
            row(format!("{l}.wkv"), delta(&p.wkv, &q.wkv));
            row(format!("{l}.ffn_shift"), delta(&p.ffn_shift, &q.ffn_shift));
        }
        let mut differ = x.values != y.values;
        match (&x.logits, &y.logits) {
            (Some(p), Some(q)) if p.len() == q.len() => {
                row("logits".into(), delta(p, q));
                differ |= p != q;
            }
            (None, None) => {}
            _ => differ = true,
        }
        Ok(Diff { rows, differ })
    }

    /// The table, or one JSON object a tensor.
    pub fn render(&self, json: bool) -> String {
        let mut s = String::new();
        if !json {
            s += "tensor           max|diff|    mean|diff|\n";
        }
        for (name, max, mean) in &self.rows {
            if json {
                let rec = json!({"tensor": name, "max_abs_diff": max, "mean_abs_diff": mean});
                s += &format!("{rec}\n");
            } else {
                s += &format!("{name:<14} {max:>12.4e} {mean:>12.4e}\n");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StateShape;

    fn state(values: Vec<f32>, logits: Option<Vec<f32>>) -> StateFile {
        let shape = StateShape {
            layers: 2,
            embd: 2,
            heads: 1,
            head_size: 2,
            recurrence: Default::default(),
        };
        StateFile {
            meta: StateMeta {
                arch: "rwkv7".into(),
                shape,
                vocab: 3,
                fingerprint: String::new(),
                tokens: 4,
                tokenizer: String::new(),
            },
            values,
            logits,
        }
    }

    #[test]
    fn info_has_each_layers_norms() {
        // per layer: att_shift [2], wkv [1, 2, 2], ffn_shift [2]
        let v = vec![
            3., 4., 1., 1., 1., 1., 0., 0., 0., 0., 0., 0., 0., 0., 6., 8.,
        ];
        let i = Info::of(&state(v, None), true);
        assert_eq!(i.norms, vec![[5.0, 2.0, 0.0], [0.0, 0.0, 10.0]]);
        assert_eq!(i.kind, "state-tuning file");
        let t = i.text(Path::new("s"));
        assert!(
            t.contains("format       state-tuning file (rwkv7)\n"),
            "{t}"
        );
        assert!(t.contains("model        unknown\n"), "{t}");
        assert!(
            t.ends_with("    1      0.0000      0.0000     10.0000\n"),
            "{t}"
        );
        let j = i.json(Path::new("s"));
        assert_eq!(j["layers"][1]["ffn_shift"], 10.0);
        assert_eq!(j["format_version"], "");
    }

    #[test]
    fn diff_gives_max_and_mean_per_tensor() {
        let a = state(vec![0.0; 16], Some(vec![1.0, 2.0, 3.0]));
        let mut v = vec![0.0; 16];
        v[2] = 0.5;
        v[5] = -1.5;
        let b = state(v, Some(vec![1.0, 2.0, 3.0]));
        let d = Diff::of(&a, &b, [Path::new("a"), Path::new("b")]).unwrap();
        assert!(d.differ);
        assert_eq!(d.rows[1], ("0.wkv".to_string(), 1.5, 0.5));
        assert_eq!(d.rows[6], ("logits".to_string(), 0.0, 0.0));
        assert_eq!(d.rows.len(), 7);
        let same = Diff::of(&a, &a, [Path::new("a"), Path::new("a")]).unwrap();
        assert!(!same.differ);
        let no_logits = state(vec![0.0; 16], None);
        assert!(
            Diff::of(&a, &no_logits, [Path::new("a"), Path::new("c")])
                .unwrap()
                .differ
        );
        let line = d.render(true).lines().nth(1).unwrap().to_string();
        assert_eq!(
            line,
            r#"{"tensor":"0.wkv","max_abs_diff":1.5,"mean_abs_diff":0.5}"#
        );
    }

    #[test]
    fn states_of_other_models_do_not_compare() {
        let a = state(vec![0.0; 16], None);
        let mut b = a.clone();
        b.meta.arch = "rwkv6".into();
        let e = Diff::of(&a, &b, [Path::new("a"), Path::new("b")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "a and b are states of different models (rwkv7 2 layers of width 2 against \
             rwkv6 2 layers of width 2)"
        );
    }
}
