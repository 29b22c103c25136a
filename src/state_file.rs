//! RNN state files: a safetensors file holding, per layer, `L.att_shift [D]`, `L.wkv
//! [H, S, S]` and `L.ffn_shift [D]` (f32), optionally `logits [V]` (after the last token fed),
//! and metadata naming the format, the architecture, the shape, the model fingerprint, the
//! tokens fed and the tokenizer. The format is documented in `docs/STATE_FORMAT.md`.
//!
//! Writes are atomic: a temporary file in the destination folder, then a rename, so an
//! interrupted write never leaves a half-written file and the old one survives.

use crate::error::{Error, Result};
use crate::model::checkpoint::Checkpoint;
use crate::model::Config;
use crate::state::{LayerState, State};
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

pub const FORMAT: &str = "rwkv-tools-state";
pub const VERSION: &str = "1";
pub const ARCH: &str = "rwkv6";

/// A state with what it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct StateFile {
    pub state: State,
    /// `[V]`: logits after the last token fed, when any was fed.
    pub logits: Option<Vec<f32>>,
    pub cfg: Config,
    /// [`crate::Model::fingerprint`] of the model that made it; empty for imported states.
    pub fingerprint: String,
    /// Tokens fed since the zero state (or since the imported state).
    pub tokens: u64,
    /// Tokenizer name the text was encoded with (`world`, `bytes`, ...), or empty.
    pub tokenizer: String,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl StateFile {
    /// Serialize to safetensors bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let c = &self.cfg;
        let (h, s) = (c.n_head, c.head_size);
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (l, ls) in self.state.layers().iter().enumerate() {
            bufs.push((
                format!("{l}.att_shift"),
                vec![c.n_embd],
                f32_bytes(&ls.att_shift),
            ));
            bufs.push((format!("{l}.wkv"), vec![h, s, s], f32_bytes(&ls.wkv)));
            bufs.push((
                format!("{l}.ffn_shift"),
                vec![c.n_embd],
                f32_bytes(&ls.ffn_shift),
            ));
        }
        if let Some(lg) = &self.logits {
            bufs.push(("logits".into(), vec![lg.len()], f32_bytes(lg)));
        }
        let views: Vec<(String, TensorView)> = bufs
            .iter()
            .map(|(n, shape, b)| {
                let v = TensorView::new(Dtype::F32, shape.clone(), b).expect("sizes agree");
                (n.clone(), v)
            })
            .collect();
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("format_version", VERSION.to_string()),
            ("arch", ARCH.to_string()),
            ("n_layer", c.n_layer.to_string()),
            ("n_embd", c.n_embd.to_string()),
            ("n_head", c.n_head.to_string()),
            ("head_size", c.head_size.to_string()),
            ("vocab", c.vocab.to_string()),
            ("model_fingerprint", self.fingerprint.clone()),
            ("tokens", self.tokens.to_string()),
            ("tokenizer", self.tokenizer.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        safetensors::serialize(views, &Some(meta)).expect("serializing f32 tensors")
    }

    /// Write atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.to_bytes())
    }

    /// Read a state file written by [`StateFile::save`].
    pub fn load(path: &Path) -> Result<StateFile> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        StateFile::from_bytes(path, &bytes)
    }

    /// Parse the bytes of a state file; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<StateFile> {
        let bad = |m: String| Error::format(path, m);
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a state file: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("corrupt or truncated state file: {e}")))?;
        let md = meta.metadata().clone().unwrap_or_default();
        if md.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!(
                "not an rwkv-tools state file (no `format: {FORMAT}` metadata); \
                 use `rwkv-state import` for state-tuning files"
            )));
        }
        let num = |k: &str| -> Result<usize> {
            md.get(k)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad(format!("metadata `{k}` missing or not a number")))
        };
        let cfg = Config {
            n_layer: num("n_layer")?,
            n_embd: num("n_embd")?,
            n_head: num("n_head")?,
            head_size: num("head_size")?,
            vocab: num("vocab")?,
            ffn: 0,
            maa_lora: 0,
            decay_lora: 0,
        };
        let tensor = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st.tensor(name).map_err(|_| Error::MissingTensor {
                path: path.to_path_buf(),
                name: name.to_string(),
            })?;
            if t.dtype() != Dtype::F32 || t.shape() != shape {
                return Err(Error::Shape {
                    path: path.to_path_buf(),
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found: t.shape().to_vec(),
                });
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect())
        };
        let (d, h, s) = (cfg.n_embd, cfg.n_head, cfg.head_size);
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            layers.push(LayerState {
                att_shift: tensor(&format!("{l}.att_shift"), &[d])?,
                wkv: tensor(&format!("{l}.wkv"), &[h, s, s])?,
                ffn_shift: tensor(&format!("{l}.ffn_shift"), &[d])?,
            });
        }
        let logits = match st.tensor("logits") {
            Ok(_) => Some(tensor("logits", &[cfg.vocab])?),
            Err(_) => None,
        };
        Ok(StateFile {
            state: State::from_layers(layers),
            logits,
            cfg,
            fingerprint: md.get("model_fingerprint").cloned().unwrap_or_default(),
            tokens: md.get("tokens").and_then(|v| v.parse().ok()).unwrap_or(0),
            tokenizer: md.get("tokenizer").cloned().unwrap_or_default(),
        })
    }

    /// Whether the file's shape is the model's (a vocab of 0, from an import without a
    /// model, fits any).
    pub fn shape_fits(&self, cfg: &Config) -> bool {
        let c = &self.cfg;
        (c.n_layer, c.n_embd, c.n_head, c.head_size)
            == (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.head_size)
            && (c.vocab == 0 || c.vocab == cfg.vocab)
    }
}

/// Write `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// The shape a state-tuning file implies: layers from the `blocks.N.att.time_state`
/// count, heads and head size from their shape; vocab unknown (0).
pub fn tuning_config(path: &Path) -> Result<Config> {
    let ck = Checkpoint::open(path)?;
    let shape = ck
        .shape("blocks.0.att.time_state")
        .ok_or_else(|| {
            Error::format(
                path,
                "not a state-tuning file: no `blocks.0.att.time_state` tensor",
            )
        })?
        .to_vec();
    let [h, s, s2] = shape[..] else {
        return Err(Error::Shape {
            path: path.to_path_buf(),
            name: "blocks.0.att.time_state".into(),
            expected: vec![0, 64, 64],
            found: shape,
        });
    };
    if s != s2 {
        return Err(Error::Shape {
            path: path.to_path_buf(),
            name: "blocks.0.att.time_state".into(),
            expected: vec![h, s, s],
            found: shape,
        });
    }
    let n_layer = ck
        .tensors
        .keys()
        .filter(|k| k.ends_with(".att.time_state"))
        .count();
    Ok(Config {
        n_layer,
        n_embd: h * s,
        n_head: h,
        head_size: s,
        ffn: 0,
        vocab: 0,
        maa_lora: 0,
        decay_lora: 0,
    })
}

/// An official state-tuning file: `blocks.N.att.time_state` [H, S, S] for every layer, in a
/// `.pth` from RWKV-PEFT (stored `[head, value, key]`, transposed here) or an Ai00 `.st`
/// (already `[head, key, value]`). The shift vectors start at zero.
pub fn import_tuning(path: &Path, cfg: &Config) -> Result<State> {
    let ck = Checkpoint::open(path)?;
    let transposed = ck.map.starts_with(b"PK\x03\x04");
    let (h, s) = (cfg.n_head, cfg.head_size);
    let mut state = State::zeros(cfg);
    if !ck.tensors.contains_key("blocks.0.att.time_state") {
        return Err(Error::format(
            path,
            "not a state-tuning file: no `blocks.0.att.time_state` tensor",
        ));
    }
    let n_file = ck
        .tensors
        .keys()
        .filter(|k| k.ends_with(".att.time_state"))
        .count();
    if n_file != cfg.n_layer {
        return Err(Error::StateMismatch(format!(
            "{}: the state has {n_file} layers, the model {}",
            path.display(),
            cfg.n_layer
        )));
    }
    for (l, ls) in state.layers_mut().iter_mut().enumerate() {
        let name = format!("blocks.{l}.att.time_state");
        let v = ck.vector(&name, &[h, s, s]).and_then(|v| {
            // element counts agree; insist on the shape too
            match ck.shape(&name) {
                Some(sh) if sh == [h, s, s] => Ok(v),
                Some(sh) => Err(Error::Shape {
                    path: path.to_path_buf(),
                    name: name.clone(),
                    expected: vec![h, s, s],
                    found: sh.to_vec(),
                }),
                None => unreachable!(),
            }
        })?;
        if transposed {
            for hh in 0..h {
                for i in 0..s {
                    for j in 0..s {
                        ls.wkv[hh * s * s + i * s + j] = v[hh * s * s + j * s + i];
                    }
                }
            }
        } else {
            ls.wkv = v;
        }
    }
    Ok(state)
}

/// A state to start from, as read by [`load_for`].
#[derive(Debug, Clone)]
pub struct Start {
    pub state: State,
    /// Logits after the last token the state was fed, when the file carries them.
    pub logits: Option<Vec<f32>>,
    pub tokens: u64,
}

/// The state a run starts from: `path` read by [`load_for`], or the zero state.
pub fn start_for(path: Option<&Path>, model: &crate::Model, force: bool) -> Result<Start> {
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
/// official state-tuning file (`.pth`, Ai00 `.st`). A state of another shape is refused; one
/// made with other weights (another fingerprint) is refused unless `force`.
pub fn load_for(path: &Path, model: &crate::Model, force: bool) -> Result<Start> {
    let bytes = if path.as_os_str() == "-" {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut b)
            .map_err(|e| Error::io("<stdin>", e))?;
        Some(b)
    } else {
        None
    };
    let shown = if bytes.is_some() {
        Path::new("<stdin>")
    } else {
        path
    };
    let ours = match &bytes {
        Some(b) => is_state_file(b),
        None => {
            let mut head = vec![0u8; 64 * 1024];
            let n = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                .map_err(|e| Error::io(path, e))?;
            head.truncate(n);
            is_state_file(&head)
        }
    };
    if !ours {
        if bytes.is_some() {
            return Err(Error::format(shown, "not an rwkv-tools state file"));
        }
        let state = import_tuning(path, &model.cfg)?;
        return Ok(Start {
            state,
            logits: None,
            tokens: 0,
        });
    }
    let sf = match bytes {
        Some(b) => StateFile::from_bytes(shown, &b)?,
        None => StateFile::load(path)?,
    };
    let c = &sf.cfg;
    if !sf.shape_fits(&model.cfg) {
        let m = &model.cfg;
        return Err(Error::StateMismatch(format!(
            "{}: state of another model shape ({} layers, width {}, {} heads of {}, vocab {}) \
             than {} ({} layers, width {}, {} heads of {}, vocab {})",
            shown.display(),
            c.n_layer,
            c.n_embd,
            c.n_head,
            c.head_size,
            c.vocab,
            model.path.display(),
            m.n_layer,
            m.n_embd,
            m.n_head,
            m.head_size,
            m.vocab
        )));
    }
    if !force && !sf.fingerprint.is_empty() && sf.fingerprint != model.fingerprint() {
        return Err(Error::StateMismatch(format!(
            "{}: state made with other weights (model fingerprint {}) than {} ({}); \
             --force uses it anyway",
            shown.display(),
            sf.fingerprint,
            model.path.display(),
            model.fingerprint()
        )));
    }
    Ok(Start {
        state: sf.state,
        logits: sf.logits,
        tokens: sf.tokens,
    })
}

/// Whether `head` (the start of a file) is a safetensors header naming our format.
fn is_state_file(head: &[u8]) -> bool {
    let Some(n) = head.get(..8) else { return false };
    let n = u64::from_le_bytes(n.try_into().unwrap()) as usize;
    match head.get(8..8usize.saturating_add(n).min(head.len())) {
        Some(h) => {
            let needle = format!("\"format\":\"{FORMAT}\"");
            h.windows(needle.len()).any(|w| w == needle.as_bytes())
        }
        None => false,
    }
}
