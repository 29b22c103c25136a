//! RNN state files: safetensors holding, per layer, `L.att_shift [D]`, `L.wkv [H, S, S]`
//! and `L.ffn_shift [D]` (f32), optionally `logits [V]` (after the last token fed), and
//! metadata naming the format, the architecture, the shape, the model fingerprint, the
//! tokens fed and the tokenizer. `docs/STATE_FORMAT.md` documents it.
//!
//! The bytes are reproducible (the header's keys in a fixed order), the header is checked
//! against the file's size before anything is allocated, and files are written atomically
//! ([`crate::atomic`]).

use crate::backend::{Recurrence, StateShape};
use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::model::registry;
use crate::model::version::{Tuning, Version};
use crate::state::{LayerState, State};
use crate::Model;
use memmap2::Mmap;
use serde_json::{json, Map, Value};
use std::path::Path;

pub const FORMAT: &str = "rwkv-tools-state";
pub const VERSION: &str = "1";

/// The largest state-file header read: a 64-layer state's is about 20 KB.
const MAX_HEADER: u64 = 16 << 20;

/// The most a state read from stdin without a model may be: the 14B shape's state is 82 MB.
const MAX_STATE_BYTES: u64 = 1 << 30;

/// A state file from stdin, no more than `cap` bytes (what a valid one `for_what` can be)
/// read.
fn read_stdin(cap: u64, for_what: &str) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut b = Vec::new();
    let stdin = std::io::stdin();
    let read = stdin.lock().take(cap + 1).read_to_end(&mut b);
    read.map_err(|e| Error::io("<stdin>", e))?;
    if b.len() as u64 > cap {
        return Err(Error::format(
            "<stdin>",
            format!("more than {cap} bytes, larger than a state file {for_what} can be"),
        ));
    }
    Ok(b)
}

/// What a state file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct StateMeta {
    /// The version's name ([`Version::name`]: `rwkv6`, `rwkv7`).
    pub arch: String,
    pub shape: StateShape,
    /// 0 when unknown (a state imported without a model).
    pub vocab: usize,
    /// [`Model::fingerprint`] of the model that made it; empty when unknown.
    pub fingerprint: String,
    /// Tokens fed since the zero state (or since the imported state).
    pub tokens: u64,
    /// The tokenizer the text was encoded with (`world`, `bytes`, ...), or empty.
    pub tokenizer: String,
}

/// A state with what it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StateFile {
    pub meta: StateMeta,
    /// `[L, layer_len]` ([`StateShape`]).
    pub values: Vec<f32>,
    /// `[V]`: logits after the last token fed, when any was fed.
    pub logits: Option<Vec<f32>>,
}

impl StateFile {
    /// `state` of `model`, after `tokens` tokens encoded by `tokenizer`. A state or logits
    /// holding a non-finite value (fed from a state of huge values) is an error: no file
    /// could be read back.
    pub fn of(
        model: &Model,
        state: &State,
        logits: Option<Vec<f32>>,
        tokens: u64,
        tokenizer: &str,
    ) -> Result<StateFile> {
        let values = state.values()?;
        let lg = logits.as_deref().unwrap_or(&[]);
        for (what, v) in [("state", &values[..]), ("logits", lg)] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::Invalid(format!(
                    "the {what} after the last token holds a non-finite value (at {i}), \
                     which no state file can hold; nothing written"
                )));
            }
        }
        Ok(StateFile {
            meta: StateMeta {
                arch: model.cfg.version.name.to_string(),
                shape: state.shape(),
                vocab: model.cfg.vocab,
                fingerprint: model.fingerprint().to_string(),
                tokens,
                tokenizer: tokenizer.to_string(),
            },
            values,
            logits,
        })
    }

    /// The state, on the host.
    pub fn state(&self) -> Result<State> {
        State::from_values(self.meta.shape, self.values.clone())
    }

    /// Every layer's values.
    pub fn layers(&self) -> Vec<LayerState> {
        layers(self.meta.shape, &self.values)
    }

    /// The file's bytes: tensors in layer order, then `logits`; metadata keys sorted.
    pub fn to_bytes(&self) -> Vec<u8> {
        let m = &self.meta;
        let s = m.shape;
        let mut tensors: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        for l in 0..s.layers {
            let wkv = s.wkv_dims();
            tensors.push((
                format!("{l}.att_shift"),
                vec![s.embd],
                &self.values[s.att_shift(l)],
            ));
            tensors.push((format!("{l}.wkv"), wkv, &self.values[s.wkv(l)]));
            tensors.push((
                format!("{l}.ffn_shift"),
                vec![s.embd],
                &self.values[s.ffn_shift(l)],
            ));
        }
        if let Some(lg) = &self.logits {
            tensors.push(("logits".into(), vec![lg.len()], lg));
        }
        let meta: Map<String, Value> = [
            ("arch", m.arch.clone()),
            ("format", FORMAT.to_string()),
            ("format_version", VERSION.to_string()),
            ("head_size", s.head_size.to_string()),
            ("model_fingerprint", m.fingerprint.clone()),
            ("n_embd", s.embd.to_string()),
            ("n_head", s.heads.to_string()),
            ("n_layer", s.layers.to_string()),
            ("tokenizer", m.tokenizer.clone()),
            ("tokens", m.tokens.to_string()),
            ("vocab", m.vocab.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
        let mut header = Map::new();
        header.insert("__metadata__".into(), Value::Object(meta));
        let mut off = 0usize;
        for (name, shape, v) in &tensors {
            let end = off + 4 * v.len();
            header.insert(
                name.clone(),
                json!({"dtype": "F32", "shape": shape, "data_offsets": [off, end]}),
            );
            off = end;
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).expect("a JSON map serializes");
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = Vec::with_capacity(8 + h.len() + off);
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        for (_, _, v) in &tensors {
            for x in v.iter() {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
        out
    }

    /// Write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::atomic::write_atomic(path, &self.to_bytes())
    }

    /// Read a state file (`path` names it in errors).
    pub fn load(path: &Path) -> Result<StateFile> {
        Mapped::open(path)?.read()
    }

    /// Parse a state file's bytes (`path` names it in errors).
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<StateFile> {
        Parsed::new(path, bytes)?.read(bytes)
    }

    /// A state file, or a state-tuning file read as one (no model: vocab and fingerprint
    /// unknown; the version whose tuning tensors it holds); `-` reads stdin. Also whether
    /// it was a state-tuning file.
    pub fn read_any(path: &Path) -> Result<(StateFile, bool)> {
        if path.as_os_str() == "-" {
            let b = read_stdin(MAX_STATE_BYTES, "of any model here")?;
            return Ok((StateFile::from_bytes(Path::new("<stdin>"), &b)?, false));
        }
        let first = match StateFile::load(path) {
            Ok(sf) => return Ok((sf, false)),
            Err(e) => e,
        };
        let Ok((versions, shape)) = tuning_shape(path) else {
            return Err(first);
        };
        let state = import_tuning(path, shape)?;
        let names: Vec<&str> = versions.iter().map(|v| v.name).collect();
        let meta = StateMeta {
            // `rwkv6 or rwkv7` where the file alone cannot tell
            arch: names.join(" or "),
            shape,
            vocab: 0,
            fingerprint: String::new(),
            tokens: 0,
            tokenizer: String::new(),
        };
        let values = state.values()?;
        Ok((
            StateFile {
                meta,
                values,
                logits: None,
            },
            true,
        ))
    }

    /// Whether the file's shape is the model's (a vocab of 0, from an import without a
    /// model, fits any).
    pub fn shape_fits(&self, model: &Model) -> bool {
        let c = &model.cfg;
        self.meta.shape == c.state_shape() && (self.meta.vocab == 0 || self.meta.vocab == c.vocab)
    }
}

/// Layers of `values [L, layer_len]`.
pub fn layers(shape: StateShape, values: &[f32]) -> Vec<LayerState> {
    (0..shape.layers)
        .map(|l| LayerState {
            att_shift: values[shape.att_shift(l)].to_vec(),
            wkv: values[shape.wkv(l)].to_vec(),
            ffn_shift: values[shape.ffn_shift(l)].to_vec(),
        })
        .collect()
}

/// A state file's header, checked: where each tensor's bytes lie.
struct Parsed {
    meta: StateMeta,
    /// Byte ranges of the layers' three tensors, in order, and of `logits`.
    parts: Vec<std::ops::Range<usize>>,
    logits: Option<std::ops::Range<usize>>,
    path: std::path::PathBuf,
}

impl Parsed {
    fn new(path: &Path, bytes: &[u8]) -> Result<Parsed> {
        let bad = |m: String| Error::format(path, m);
        let not_state = || {
            bad(format!(
                "not an rwkv-tools state file (no `format: {FORMAT}` metadata); `rwkv-state \
                 import` reads state-tuning files"
            ))
        };
        let Some(n) = bytes.get(..8) else {
            return Err(not_state());
        };
        let n = u64::from_le_bytes(n.try_into().expect("8 bytes"));
        if n > MAX_HEADER || n > bytes.len() as u64 - 8 || bytes.get(8) != Some(&b'{') {
            return Err(not_state());
        }
        let header: Value =
            serde_json::from_slice(&bytes[8..8 + n as usize]).map_err(|_| not_state())?;
        let Some(Value::Object(md)) = header.get("__metadata__") else {
            return Err(not_state());
        };
        let text = |k: &str| md.get(k).and_then(Value::as_str);
        if text("format") != Some(FORMAT) {
            return Err(not_state());
        }
        if text("format_version") != Some(VERSION) {
            return Err(bad(format!(
                "state file format version {}, this build reads version {VERSION}",
                text("format_version").unwrap_or("(none)")
            )));
        }
        let num = |k: &str| -> Result<usize> {
            text(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("metadata `{k}` missing or not a number")))
        };
        let arch = text("arch").unwrap_or("rwkv6").to_string();
        let Some(version) = registry::by_name(&arch) else {
            return Err(bad(format!("a state of an unknown architecture `{arch}`")));
        };
        let shape = StateShape {
            layers: num("n_layer")?,
            embd: num("n_embd")?,
            heads: num("n_head")?,
            head_size: num("head_size")?,
            recurrence: version.recurrence,
        };
        let vocab = num("vocab")?;
        // Every size from the metadata, in checked arithmetic, must fit in the file.
        let data = bytes.len() as u64 - 8 - n;
        let too_big = || {
            bad(format!(
                "metadata declares a state ({shape}) larger than the file"
            ))
        };
        let wkv = match shape.recurrence {
            Recurrence::Heads => (shape.heads as u64)
                .checked_mul(shape.head_size as u64)
                .and_then(|v| v.checked_mul(shape.head_size as u64)),
            Recurrence::Channels => (shape.embd as u64).checked_mul(3),
        };
        let per_layer = wkv.and_then(|w| w.checked_add(2 * shape.embd as u64));
        let total = per_layer
            .and_then(|p| p.checked_mul(shape.layers as u64))
            .and_then(|v| v.checked_mul(4))
            .ok_or_else(too_big)?;
        let heads_fit = shape.recurrence == Recurrence::Channels
            || shape.heads.checked_mul(shape.head_size) == Some(shape.embd);
        if total > data || !heads_fit {
            return Err(too_big());
        }
        let base = 8 + n as usize;
        let tensor = |name: &str, want: &[usize]| -> Result<std::ops::Range<usize>> {
            let t = header.get(name).ok_or_else(|| Error::MissingTensor {
                path: path.to_path_buf(),
                name: name.to_string(),
            })?;
            let shape: Option<Vec<usize>> = t["shape"]
                .as_array()
                .and_then(|a| a.iter().map(|v| v.as_u64().map(|v| v as usize)).collect());
            let offs: Option<Vec<u64>> = t["data_offsets"]
                .as_array()
                .and_then(|a| a.iter().map(Value::as_u64).collect());
            let dtype = t["dtype"].as_str().unwrap_or("");
            let found = shape.clone().unwrap_or_default();
            if dtype != "F32" {
                return Err(bad(format!(
                    "tensor `{name}` is {dtype}, expected F32 {want:?}"
                )));
            }
            if found != want {
                return Err(Error::Shape {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    expected: Error::dims(want),
                    found,
                });
            }
            let len = want.iter().product::<usize>() as u64 * 4;
            match offs.as_deref() {
                Some(&[a, b]) if b >= a && b - a == len && b <= data => {
                    Ok(base + a as usize..base + b as usize)
                }
                _ => Err(bad(format!("tensor `{name}` lies outside the file's data"))),
            }
        };
        let mut parts = Vec::with_capacity(3 * shape.layers);
        let (d, wkv) = (shape.embd, shape.wkv_dims());
        for l in 0..shape.layers {
            parts.push(tensor(&format!("{l}.att_shift"), &[d])?);
            parts.push(tensor(&format!("{l}.wkv"), &wkv)?);
            parts.push(tensor(&format!("{l}.ffn_shift"), &[d])?);
        }
        let logits = match header.get("logits") {
            Some(_) if vocab == 0 => return Err(bad("`logits` in a state of vocab 0".into())),
            Some(_) => Some(tensor("logits", &[vocab])?),
            None => None,
        };
        Ok(Parsed {
            meta: StateMeta {
                arch,
                shape,
                vocab,
                fingerprint: text("model_fingerprint").unwrap_or("").to_string(),
                tokens: text("tokens").and_then(|v| v.parse().ok()).unwrap_or(0),
                tokenizer: text("tokenizer").unwrap_or("").to_string(),
            },
            parts,
            logits,
            path: path.to_path_buf(),
        })
    }

    fn read(&self, bytes: &[u8]) -> Result<StateFile> {
        let f32s = |r: &std::ops::Range<usize>| -> Vec<f32> {
            bytes[r.clone()]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect()
        };
        let mut values = Vec::with_capacity(self.meta.shape.len());
        for p in &self.parts {
            values.extend(f32s(p));
        }
        let logits = self.logits.as_ref().map(f32s);
        for (what, v) in [
            ("state", &values),
            ("logits", logits.as_ref().unwrap_or(&vec![])),
        ] {
            if let Some(i) = v.iter().position(|x| !x.is_finite()) {
                return Err(Error::format(
                    &self.path,
                    format!("the {what} holds a non-finite value (at {i})"),
                ));
            }
        }
        Ok(StateFile {
            meta: self.meta.clone(),
            values,
            logits,
        })
    }
}

/// A state file mapped, its header checked; its values read on demand.
pub struct Mapped {
    map: Mmap,
    parsed: Parsed,
}

impl Mapped {
    pub fn open(path: &Path) -> Result<Mapped> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        if file.metadata().map_err(|e| Error::io(path, e))?.is_dir() {
            return Err(Error::format(path, "is a folder, not a state file"));
        }
        // SAFETY: read-only; a file changed while mapped gives wrong values, not UB in us
        // beyond what reading any changing file gives.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let parsed = Parsed::new(path, &map)?;
        Ok(Mapped { map, parsed })
    }

    pub fn meta(&self) -> &StateMeta {
        &self.parsed.meta
    }

    pub fn has_logits(&self) -> bool {
        self.parsed.logits.is_some()
    }

    /// Layer `l`'s three tensors (`att_shift`, `wkv`, `ffn_shift`), each as f32 values.
    pub fn layer(&self, l: usize) -> [impl Iterator<Item = f32> + '_; 3] {
        std::array::from_fn(|k| {
            self.map[self.parsed.parts[3 * l + k].clone()]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        })
    }

    pub fn read(&self) -> Result<StateFile> {
        self.parsed.read(&self.map)
    }
}

/// The versions and shape a state-tuning file implies: the versions whose tuning tensor
/// (`blocks.0.att.time_state`) it holds (RWKV-6 and RWKV-7 files hold the same names and
/// shapes: only a model tells them apart); layers from that tensor's count, heads and head
/// size from its shape; vocab unknown.
pub fn tuning_shape(path: &Path) -> Result<(Vec<&'static Version>, StateShape)> {
    let ck = Checkpoint::open(path)?;
    tuned_versions(&ck)
}

fn tuned_versions(ck: &Checkpoint) -> Result<(Vec<&'static Version>, StateShape)> {
    let tuning = |v: &Version| v.tuning.expect("tuned versions have a layout");
    let versions: Vec<&'static Version> = registry::tuned()
        .filter(|v| {
            ck.shape(&format!("blocks.0.{}", tuning(v).tensor))
                .is_some()
        })
        .collect();
    let Some(first) = versions.first() else {
        return Err(Error::format(
            &ck.path,
            "neither a state file nor a state-tuning file (no `blocks.0.att.time_state`)",
        ));
    };
    let shape = tuning_shape_of(ck, tuning(first))?;
    Ok((versions, shape))
}

fn tuning_shape_of(ck: &Checkpoint, t: Tuning) -> Result<StateShape> {
    let path = &ck.path;
    let name = format!("blocks.0.{}", t.tensor);
    let shape = ck
        .shape(&name)
        .ok_or_else(|| Error::MissingTensor {
            path: path.clone(),
            name: name.clone(),
        })?
        .to_vec();
    let [h, s, s2] = shape[..] else {
        return Err(Error::Shape {
            path: path.clone(),
            name,
            expected: "[H, S, S]".into(),
            found: shape,
        });
    };
    if s != s2 {
        return Err(Error::Shape {
            path: path.clone(),
            name,
            expected: Error::dims(&[h, s, s]),
            found: shape,
        });
    }
    let suffix = format!(".{}", t.tensor);
    let layers = ck.tensors.keys().filter(|k| k.ends_with(&suffix)).count();
    Ok(StateShape {
        layers,
        embd: h
            .checked_mul(s)
            .ok_or_else(|| Error::format(path, format!("{name}'s shape overflows")))?,
        heads: h,
        head_size: s,
        recurrence: Recurrence::Heads,
    })
}

/// An official state-tuning file as a state of `shape`, in the layout of the first version
/// whose tensors it names ([`tuning_shape`]).
pub fn import_tuning(path: &Path, shape: StateShape) -> Result<State> {
    let ck = Checkpoint::open(path)?;
    let (v, _) = tuned_versions(&ck)?;
    import_as(
        &ck,
        v[0].tuning.expect("tuned versions have a layout"),
        shape,
    )
}

/// The state-tuning file `ck` in layout `t` as a state of `shape`: `blocks.N.{tensor}`
/// `[H, S, S]` for every layer, in a `.pth` from RWKV-PEFT or an Ai00 `.st`, each
/// transposed here where the version's layout says. The shift vectors start at zero.
fn import_as(ck: &Checkpoint, t: Tuning, shape: StateShape) -> Result<State> {
    let path = &ck.path;
    let found = tuning_shape_of(ck, t)?;
    if found != shape {
        return Err(Error::StateMismatch(format!(
            "{}: a state-tuning file for {found}; the model has {shape}",
            path.display(),
        )));
    }
    let pth = ck.map.starts_with(b"PK\x03\x04");
    let transposed = if pth {
        t.pth_transposed
    } else {
        t.st_transposed
    };
    let (h, s) = (shape.heads, shape.head_size);
    let mut values = vec![0.0f32; shape.len()];
    for l in 0..shape.layers {
        let name = format!("blocks.{l}.{}", t.tensor);
        match ck.shape(&name) {
            Some(sh) if sh == [h, s, s] => {}
            Some(found) => {
                return Err(Error::Shape {
                    path: path.clone(),
                    name,
                    expected: Error::dims(&[h, s, s]),
                    found: found.to_vec(),
                })
            }
            None => {
                return Err(Error::MissingTensor {
                    path: path.clone(),
                    name,
                })
            }
        }
        let v = ck.vector(&name, &[h, s, s])?;
        let wkv = &mut values[shape.wkv(l)];
        if transposed {
            for hh in 0..h {
                for i in 0..s {
                    for j in 0..s {
                        wkv[hh * s * s + i * s + j] = v[hh * s * s + j * s + i];
                    }
                }
            }
        } else {
            wkv.copy_from_slice(&v);
        }
    }
    State::from_values(shape, values)
}

/// A state to start from, as read by [`load_for`].
#[derive(Debug)]
pub struct Start {
    pub state: State,
    /// Logits after the last token the state was fed, when the file carries them.
    pub logits: Option<Vec<f32>>,
    pub tokens: u64,
}

impl Start {
    /// A copy where this one lives.
    pub fn try_clone(&self) -> Result<Start> {
        Ok(Start {
            state: self.state.try_clone()?,
            logits: self.logits.clone(),
            tokens: self.tokens,
        })
    }
}

/// The state-tuning file `path` as a state of `model`, in the layout of the model's
/// version; refused for a version whose state-tuning layout is not known.
pub fn import_for(path: &Path, model: &Model) -> Result<State> {
    let Some(t) = model.cfg.version.tuning else {
        let known: Vec<&str> = registry::tuned().map(|v| v.title).collect();
        return Err(Error::StateMismatch(format!(
            "{}: state-tuning files are read for {} models only, and {} is an {} model",
            path.display(),
            known.join(" and "),
            model.path.display(),
            model.cfg.version.title
        )));
    };
    import_as(&Checkpoint::open(path)?, t, model.cfg.state_shape())
}

/// The state a run starts from: `path` read by [`load_for`], or the zero state.
pub fn start_for(path: Option<&Path>, model: &Model, force: bool) -> Result<Start> {
    match path {
        Some(p) => load_for(p, model, force),
        None => Ok(Start {
            state: model.new_state(),
            logits: None,
            tokens: 0,
        }),
    }
}

/// Read `path` (`-` for stdin) as a state for `model`: an rwkv-tools state file, or an
/// official state-tuning file (`.pth`, Ai00 `.st`). A state of another architecture or
/// shape is refused; one made with other weights (another fingerprint) is refused unless
/// `force`.
pub fn load_for(path: &Path, model: &Model, force: bool) -> Result<Start> {
    let stdin = path.as_os_str() == "-";
    let sf = if stdin {
        let c = &model.cfg;
        let values = (c.state_shape().len() + c.vocab) as u64 * 4;
        let b = read_stdin(8 + MAX_HEADER + values, "of this model")?;
        StateFile::from_bytes(Path::new("<stdin>"), &b)?
    } else {
        match Mapped::open(path) {
            Ok(m) => {
                // the header against the model first: a state of another shape is never decoded
                check_fits(path, m.meta(), model, force)?;
                m.read()?
            }
            Err(e) if is_not_state(&e) => {
                // Not ours: maybe a state-tuning file.
                if tuning_shape(path).is_err() {
                    return Err(Error::format(
                        path,
                        "neither a state file (from rwkv-state feed or --save-state) nor a \
                         state-tuning file",
                    ));
                }
                return Ok(Start {
                    state: import_for(path, model)?,
                    logits: None,
                    tokens: 0,
                });
            }
            Err(e) => return Err(e),
        }
    };
    if stdin {
        check_fits(Path::new("<stdin>"), &sf.meta, model, force)?;
    }
    Ok(Start {
        state: sf.state()?,
        logits: sf.logits,
        tokens: sf.meta.tokens,
    })
}

/// Whether `e` says the file is not an rwkv-tools state file (so it may be another kind).
fn is_not_state(e: &Error) -> bool {
    matches!(e, Error::Format { msg, .. } if msg.starts_with("not an rwkv-tools state file"))
}

/// Refuse a state of another architecture, shape or (unless `force`) weights.
pub fn check_fits(shown: &Path, m: &StateMeta, model: &Model, force: bool) -> Result<()> {
    let c = &model.cfg;
    if m.arch != c.version.name {
        return Err(Error::StateMismatch(format!(
            "{}: a state of an {} model, but {} is an {} model",
            shown.display(),
            registry::by_name(&m.arch).map_or(m.arch.as_str(), |v| v.title),
            model.path.display(),
            c.version.title
        )));
    }
    let s = m.shape;
    if s != c.state_shape() || (m.vocab != 0 && m.vocab != c.vocab) {
        return Err(Error::StateMismatch(format!(
            "{}: state of another model shape ({s}, vocab {}) than {} ({}, vocab {})",
            shown.display(),
            m.vocab,
            model.path.display(),
            c.state_shape(),
            c.vocab
        )));
    }
    if !force && !m.fingerprint.is_empty() && m.fingerprint != model.fingerprint() {
        return Err(Error::StateMismatch(format!(
            "{}: state made with other weights (model fingerprint {}) than {} ({}); \
             --force uses it anyway",
            shown.display(),
            m.fingerprint,
            model.path.display(),
            model.fingerprint()
        )));
    }
    Ok(())
}
