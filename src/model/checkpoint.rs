//! A checkpoint file as a table of named tensors over one read-only memory map.
//!
//! Three containers are read: safetensors (`.safetensors`, Ai00's `.st`), PyTorch's `.pth`
//! (a zip of a pickle plus raw storages, see [`super::pth`]) and GGUF ([`super::gguf`], its
//! names made BlinkDL's by [`super::gguf_names`]). None copies tensor data: each entry is a
//! byte range of the map. GGUF's blocks of ggml types are decoded to f32 when a matrix is
//! read.

use super::adapter::Adapters;
use super::gguf::{self, Value};
pub use super::table::RawTensor;
use super::{gguf_names, pth};
use crate::error::{Error, Result};
use crate::tensor::{ggml, quant, Buf, DType, Data, Matrix};
use half::bf16;
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file formats a checkpoint comes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    Safetensors,
    Pth,
    Gguf,
}

impl Container {
    pub fn name(self) -> &'static str {
        match self {
            Container::Safetensors => "safetensors",
            Container::Pth => "PyTorch .pth",
            Container::Gguf => "GGUF",
        }
    }
}

pub struct Checkpoint {
    pub path: PathBuf,
    pub map: Arc<Mmap>,
    pub container: Container,
    pub tensors: BTreeMap<String, RawTensor>,
    /// safetensors `__metadata__`, empty for `.pth` and GGUF.
    pub metadata: BTreeMap<String, String>,
    /// Factors stored matrices are multiplied by when read (GGUF's undone rescaling).
    pub gains: BTreeMap<String, f32>,
    /// The token list a GGUF file carries (`tokenizer.ggml.tokens`), as the file spells it.
    pub tokens: Option<Vec<Vec<u8>>>,
    /// Adapters merged into the matrices as they are read ([`super::adapter_file::open`]).
    pub adapters: Adapters,
}

impl Checkpoint {
    /// Map `path` and read its tensor table.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only; a checkpoint modified while mapped is the user's
        // problem as with every mmap-based loader (and the usual practice of llama.cpp etc).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let map = Arc::new(map);
        let mut ck = Checkpoint {
            path: path.to_path_buf(),
            map: Arc::clone(&map),
            container: Container::Safetensors,
            tensors: BTreeMap::new(),
            metadata: BTreeMap::new(),
            gains: BTreeMap::new(),
            tokens: None,
            adapters: Adapters::default(),
        };
        if map.starts_with(b"PK\x03\x04") {
            ck.container = Container::Pth;
            ck.tensors = pth::read_tensors(path, &map)?;
        } else if map.starts_with(b"GGUF") {
            let mut g = gguf::read(path, &map)?;
            ck.container = Container::Gguf;
            if let Some(Value::Strings(t)) = g.meta.remove("tokenizer.ggml.tokens") {
                ck.tokens = Some(t);
            }
            let t = gguf_names::translate(path, g)?;
            (ck.tensors, ck.gains) = (t.tensors, t.gains);
        } else {
            (ck.tensors, ck.metadata) = read_safetensors(path, &map)?;
        }
        for (name, t) in &ck.tensors {
            check_entry(path, name, t, map.len())?;
        }
        Ok(ck)
    }

    /// The ggml block types of the matrices stored in them, in table order (`Q8_0`).
    pub fn block_types(&self) -> Vec<&'static str> {
        let mut seen: Vec<&'static str> = Vec::new();
        for t in self.tensors.values() {
            if let Some(b) = blocks_of(t) {
                if !seen.contains(&b.name) {
                    seen.push(b.name);
                }
            }
        }
        seen
    }

    /// Whether `name` is stored in ggml blocks (decoded when read).
    pub fn in_blocks(&self, name: &str) -> bool {
        self.tensors.get(name).and_then(blocks_of).is_some()
    }

    pub fn get(&self, name: &str) -> Result<&RawTensor> {
        self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })
    }

    fn dtype_of(&self, name: &str, t: &RawTensor) -> Result<DType> {
        let d = match t.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => {
                return Err(Error::DType {
                    path: self.path.clone(),
                    name: name.to_string(),
                    dtype: other.to_string(),
                })
            }
        };
        if t.len != t.numel() * d.size() {
            return Err(Error::format(
                &self.path,
                format!(
                    "tensor `{name}`: {} bytes for shape {:?} of {}",
                    t.len, t.shape, t.dtype
                ),
            ));
        }
        Ok(d)
    }

    /// Tensor `name` as a matrix `[rows, cols]` over the map; `shape` must equal the stored one.
    /// A matrix saved quantized (`name.q8` or `name.nf4` with `name.scales`) loads as such.
    pub fn matrix(&self, name: &str, shape: &[usize]) -> Result<Matrix> {
        if !self.tensors.contains_key(name) {
            if let Some(m) = self.quantized_matrix(name, shape)? {
                return Ok(m);
            }
        }
        let t = self.get(name)?;
        self.check_shape(name, t, shape)?;
        // a tensor of any rank as [everything but the last dimension, the last]
        let cols = shape.last().copied().unwrap_or(1);
        let rows = t.numel() / cols.max(1);
        let n = t.numel();
        let data = match blocks_of(t) {
            Some(b) => {
                let mut out = vec![0f32; n];
                let row = self.block_row(t, b, cols);
                out.par_chunks_mut(cols.max(1))
                    .enumerate()
                    .for_each(|(r, o)| row(r, o));
                Data::F32(Buf::Owned(out))
            }
            None => match self.dtype_of(name, t)? {
                DType::F32 => self.window(name, t, n).map(Data::F32),
                DType::F16 => self.window(name, t, n).map(Data::F16),
                DType::BF16 => self.window(name, t, n).map(Data::BF16),
                DType::Int8 | DType::Nf4 => unreachable!("dtype_of gives stored float types"),
            }?,
        };
        let m = Matrix { rows, cols, data };
        let m = match self.gains.get(name) {
            Some(&g) => m.scaled(g),
            None => m,
        };
        if !self.adapters.touches(name) {
            return Ok(m);
        }
        let mut w = match self.adapters.replacement(name) {
            Some(v) => v.to_vec(),
            None => m.to_f32(),
        };
        self.adapters.merge(name, &mut w, cols);
        Ok(Matrix::from_f32(rows, cols, w))
    }

    /// Matrix `name` of `shape` as a source of f32 rows, when it is stored in ggml blocks
    /// that no adapter changes: each row decoded as it is asked for (its gain applied), so
    /// that quantizing it never holds the whole matrix in f32.
    pub fn block_rows(
        &self,
        name: &str,
        shape: &[usize],
    ) -> Result<Option<impl Fn(usize, &mut [f32]) + Sync + '_>> {
        let Some(t) = self.tensors.get(name) else {
            return Ok(None);
        };
        let (Some(b), &[_, cols]) = (blocks_of(t), shape) else {
            return Ok(None);
        };
        if self.adapters.touches(name) {
            return Ok(None);
        }
        self.check_shape(name, t, shape)?;
        let row = self.block_row(t, b, cols);
        let gain = self.gains.get(name).copied();
        Ok(Some(move |r: usize, out: &mut [f32]| {
            row(r, out);
            if let Some(g) = gain {
                out.iter_mut().for_each(|x| *x *= g);
            }
        }))
    }

    /// Row `r` of `t` (rows of `cols` weights in ggml blocks of `b`) decoded into `out`.
    fn block_row<'a>(
        &'a self,
        t: &'a RawTensor,
        b: ggml::Type,
        cols: usize,
    ) -> impl Fn(usize, &mut [f32]) + Sync + 'a {
        let row = b.row_bytes(cols).expect("checked when the table was read");
        move |r, out| {
            let at = t.offset + r * row;
            ggml::decode(b, &self.map[at..at + row], out);
        }
    }

    /// `name` saved quantized by `quant_file`, if it is.
    fn quantized_matrix(&self, name: &str, shape: &[usize]) -> Result<Option<Matrix>> {
        let &[rows, cols] = shape else {
            return Ok(None);
        };
        let (qname, qshape, qtype) = if self.tensors.contains_key(&format!("{name}.q8")) {
            (format!("{name}.q8"), vec![rows, cols], "I8")
        } else if self.tensors.contains_key(&format!("{name}.nf4")) {
            (format!("{name}.nf4"), vec![rows, cols / 2], "U8")
        } else {
            return Ok(None);
        };
        let sname = format!("{name}.scales");
        let q = self.get(&qname)?;
        let sc = self.get(&sname)?;
        let sshape = vec![rows, cols / quant::BLOCK];
        // int8 scales are f32; nf4 scales bf16, or f32 in files from before bf16 scales
        let (stype, ssize) = match (qtype, sc.dtype.as_str()) {
            ("U8", "F32") => ("F32", 4),
            ("U8", _) => ("BF16", 2),
            _ => ("F32", 4),
        };
        for (n, t, want, ty, es) in [
            (&qname, q, &qshape, qtype, 1),
            (&sname, sc, &sshape, stype, ssize),
        ] {
            if t.dtype != ty {
                return Err(Error::format(
                    &self.path,
                    format!("tensor `{n}` is {}, expected {ty}", t.dtype),
                ));
            }
            if t.shape != *want || t.len != t.numel() * es || !quant::fits(cols) {
                return Err(Error::Shape {
                    path: self.path.clone(),
                    name: n.clone(),
                    expected: Error::dims(want),
                    found: t.shape.clone(),
                });
            }
        }
        let f32_scales = || self.window::<f32>(&sname, sc, sc.numel());
        let data = if qtype == "I8" {
            Data::Q8(quant::Q8 {
                qs: self.window(&qname, q, q.numel())?,
                scales: f32_scales()?,
            })
        } else {
            let scales = if stype == "F32" {
                Buf::Owned(f32_scales()?.iter().map(|&s| bf16::from_f32(s)).collect())
            } else {
                self.window(&sname, sc, sc.numel())?
            };
            Data::Nf4(quant::Nf4 {
                packed: self.window(&qname, q, q.numel())?,
                scales,
            })
        };
        Ok(Some(Matrix { rows, cols, data }))
    }

    /// The shape of matrix `name` as the model sees it, stored plain or quantized.
    pub fn logical_shape(&self, name: &str) -> Option<Vec<usize>> {
        if let Some(t) = self.tensors.get(name) {
            return Some(t.shape.clone());
        }
        if let Some(t) = self.tensors.get(&format!("{name}.q8")) {
            return Some(t.shape.clone());
        }
        let t = self.tensors.get(&format!("{name}.nf4"))?;
        Some(vec![*t.shape.first()?, t.shape.get(1)?.checked_mul(2)?])
    }

    /// [`Checkpoint::logical_shape`], or the error naming the missing tensor.
    pub fn logical_shape_of(&self, name: &str) -> Result<Vec<usize>> {
        match self.logical_shape(name) {
            Some(s) => Ok(s),
            None => Ok(self.get(name)?.shape.clone()),
        }
    }

    /// Let the kernel drop the pages of `name` (after it was quantized into memory): the
    /// mapping stays valid, the file's pages just stop counting as resident.
    pub fn release(&self, name: &str) {
        // SAFETY: after MADV_DONTNEED the pages of a read-only file mapping read again
        // from the file, unchanged.
        unsafe { self.advise(name, libc::MADV_DONTNEED) }
    }

    /// Tell the kernel that `name` is read a few rows at a time in no order (a table looked
    /// up by token): no read-ahead and no mapping of the pages around a touched one, so
    /// that only the rows read count as resident.
    pub fn random_access(&self, name: &str) {
        // SAFETY: MADV_RANDOM changes only how pages are brought in.
        unsafe { self.advise(name, libc::MADV_RANDOM) }
    }

    /// `madvise(advice)` over the whole pages of `name`'s bytes.
    ///
    /// # Safety
    /// `advice` leaves the mapping's contents as they are.
    unsafe fn advise(&self, name: &str, advice: libc::c_int) {
        let Some(t) = self.tensors.get(name) else {
            return;
        };
        let page = 4096;
        let start = (self.map.as_ptr() as usize + t.offset).div_ceil(page) * page;
        let end = (self.map.as_ptr() as usize + t.offset + t.len) / page * page;
        if end > start {
            // a page-aligned range inside our file mapping
            libc::madvise(start as *mut libc::c_void, end - start, advice);
        }
    }

    /// Tensor `name` converted to f32; its element count must equal the product of `shape`
    /// (vectors are stored as `[D]` or `[1, 1, D]` depending on the exporter).
    pub fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        let n: usize = shape.iter().product();
        if t.numel() != n {
            return Err(self.shape_error(name, t, shape));
        }
        let m = self.matrix(name, &t.shape.clone())?;
        Ok(m.to_f32())
    }

    /// Stored shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape.as_slice())
    }

    /// `n` elements of `T` at `t`'s offset, over the map.
    fn window<T: Copy + 'static>(&self, name: &str, t: &RawTensor, n: usize) -> Result<Buf<T>> {
        Buf::from_map(&self.map, t.offset, n).ok_or_else(|| {
            Error::format(
                &self.path,
                format!("tensor `{name}` lies past the end of the file"),
            )
        })
    }

    fn check_shape(&self, name: &str, t: &RawTensor, shape: &[usize]) -> Result<()> {
        if t.shape != shape {
            return Err(self.shape_error(name, t, shape));
        }
        Ok(())
    }

    fn shape_error(&self, name: &str, t: &RawTensor, shape: &[usize]) -> Error {
        Error::Shape {
            path: self.path.clone(),
            name: name.to_string(),
            expected: Error::dims(shape),
            found: t.shape.clone(),
        }
    }
}

type Table = (BTreeMap<String, RawTensor>, BTreeMap<String, String>);

/// The ggml block type `t` is stored in, if it is one (not F32/F16/BF16).
fn blocks_of(t: &RawTensor) -> Option<ggml::Type> {
    ggml::Type::by_name(&t.dtype).filter(|b| b.is_blocks())
}

fn read_safetensors(path: &Path, map: &Mmap) -> Result<Table> {
    if map.len() < 8 {
        return Err(Error::format(path, "not a model: file too short"));
    }
    // rwkv.cpp: the int32 0x67676d66 ("ggmf") in little-endian order
    if map.starts_with(b"fmgg") {
        return Err(Error::format(
            path,
            "an rwkv.cpp (ggml) model file, which these tools do not read; use the .pth it \
             was converted from",
        ));
    }
    let n = u64::from_le_bytes(map[..8].try_into().unwrap());
    let first = map.get(8).copied();
    if n < 2 || first != Some(b'{') {
        return Err(Error::format(
            path,
            "not a model: neither safetensors nor a PyTorch .pth (zip) file",
        ));
    }
    if n > map.len() as u64 - 8 {
        return Err(Error::format(
            path,
            "truncated: the safetensors header is longer than the file",
        ));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(map).map_err(|e| {
        use safetensors::SafeTensorError as E;
        let msg = match e {
            E::MetadataIncompleteBuffer => {
                "truncated: the tensor data ends before the header says it does".to_string()
            }
            E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
                "the safetensors header is not valid JSON of tensors".to_string()
            }
            E::JsonError(_) => "the safetensors header is not valid JSON".to_string(),
            E::HeaderTooLarge | E::HeaderTooSmall | E::InvalidHeaderLength => {
                "the safetensors header's length is impossible".to_string()
            }
            E::TensorInvalidInfo | E::InvalidOffset(_) | E::ValidationOverflow => {
                "a tensor's shape, dtype and byte range in the header disagree".to_string()
            }
            e => format!("the safetensors header is invalid ({e})"),
        };
        Error::format(path, msg)
    })?;
    let base = 8 + n as usize;
    let mut tensors = BTreeMap::new();
    for (name, info) in meta.tensors() {
        let (a, b) = info.data_offsets;
        let (Some(offset), Some(len)) = (base.checked_add(a), b.checked_sub(a)) else {
            return Err(Error::format(
                path,
                format!("tensor `{name}`: byte range {a}..{b} is impossible"),
            ));
        };
        tensors.insert(
            name.clone(),
            RawTensor {
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.clone(),
                offset,
                len,
            },
        );
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok((tensors, metadata))
}

/// One table entry, before anything trusts it: its element count in checked arithmetic,
/// its byte length that of its shape and dtype, its bytes inside the file.
fn check_entry(path: &Path, name: &str, t: &RawTensor, file: usize) -> Result<()> {
    let bad = |what: String| Error::format(path, format!("tensor `{name}` {what}"));
    let numel = t
        .shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("has an impossible shape {:?}", t.shape)))?;
    let size = match t.dtype.as_str() {
        "F64" | "I64" | "U64" => Some(8),
        "F32" | "I32" | "U32" => Some(4),
        "F16" | "BF16" | "I16" | "U16" => Some(2),
        "I8" | "U8" | "BOOL" => Some(1),
        _ => None,
    };
    if let Some(size) = size {
        if numel.checked_mul(size) != Some(t.len) {
            return Err(bad(format!(
                "holds {} bytes, but shape {:?} of {} takes {}",
                t.len,
                t.shape,
                t.dtype,
                numel.saturating_mul(size)
            )));
        }
    }
    if t.offset.checked_add(t.len).is_none_or(|e| e > file) {
        return Err(Error::format(
            path,
            format!("truncated: tensor `{name}` ends past the end of the file"),
        ));
    }
    Ok(())
}
