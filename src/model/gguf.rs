//! The GGUF container (llama.cpp's format), read over the memory map: a header, typed
//! metadata, a table of tensors, then their data, each at an aligned offset.
//!
//! Every count and size comes from the file, so each is checked before it is used: strings
//! and arrays cannot claim more bytes than the file has, shapes multiply in checked
//! arithmetic, data lies inside the file at the promised alignment.

use super::table::RawTensor;
use crate::error::{Error, Result};
use crate::tensor::ggml;
use std::collections::BTreeMap;
use std::path::Path;

/// One metadata value. Arrays of numbers are kept only as their length (a model's token
/// scores or merges are not needed); arrays of strings are kept (the vocabulary).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i128),
    Float(f64),
    Bool(bool),
    Str(String),
    Strings(Vec<Vec<u8>>),
    /// An array of something else: its element count.
    Array(usize),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Int(i) => u64::try_from(*i).ok(),
            _ => None,
        }
    }
}

/// A GGUF file's metadata and tensor table (names as the file spells them, shapes in
/// row-major order: the reverse of ggml's `ne`).
pub struct Gguf {
    pub version: u32,
    pub meta: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, RawTensor>,
}

/// Metadata entries and tensors a file may declare: far above any model's (a few thousand
/// tensors), far below what would make the table itself a memory hazard.
const MAX_ENTRIES: u64 = 1 << 20;
/// Dimensions ggml allows.
const MAX_DIMS: u32 = 4;

struct Reader<'a> {
    path: &'a Path,
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("GGUF: {what}"))
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.at.checked_add(n))
            .filter(|&e| e <= self.b.len());
        let Some(end) = end else {
            return Err(self.bad(format!("truncated: the file ends inside {what}")));
        };
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let n = self.u64(what)?;
        self.take(n, what)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.bad(format!("{what} is not UTF-8")))
    }

    /// A scalar of metadata type `ty` (every type but string and array).
    fn scalar(&mut self, ty: u32, what: &str) -> Result<Value> {
        let size = match ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            10..=12 => 8,
            _ => return Err(self.bad(format!("{what} has unknown value type {ty}"))),
        };
        let b = self.take(size, what)?;
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        let u = u64::from_le_bytes(w);
        Ok(match ty {
            0 | 2 | 4 | 10 => Value::Int(u as i128),
            1 => Value::Int(b[0] as i8 as i128),
            3 => Value::Int(u as u16 as i16 as i128),
            5 => Value::Int(u as u32 as i32 as i128),
            11 => Value::Int(u as i64 as i128),
            6 => Value::Float(f32::from_bits(u as u32) as f64),
            12 => Value::Float(f64::from_bits(u)),
            _ => Value::Bool(b[0] != 0),
        })
    }

    fn value(&mut self, ty: u32, what: &str) -> Result<Value> {
        match ty {
            8 => Ok(Value::Str(self.string(what)?)),
            9 => {
                let ety = self.u32(what)?;
                let n = self.u64(what)?;
                // each element takes at least a byte: a count past the file is a lie
                if n > (self.b.len() - self.at) as u64 {
                    return Err(self.bad(format!("{what} claims {n} elements, past the file")));
                }
                match ety {
                    8 => {
                        let mut v = Vec::with_capacity(n as usize);
                        for _ in 0..n {
                            v.push(self.bytes(what)?.to_vec());
                        }
                        Ok(Value::Strings(v))
                    }
                    9 => Err(self.bad(format!("{what} is an array of arrays"))),
                    _ => {
                        for _ in 0..n {
                            self.scalar(ety, what)?;
                        }
                        Ok(Value::Array(n as usize))
                    }
                }
            }
            _ => self.scalar(ty, what),
        }
    }
}

/// Read the header, metadata and tensor table of the GGUF file `b` (the whole map).
pub fn read(path: &Path, b: &[u8]) -> Result<Gguf> {
    let mut r = Reader { path, b, at: 0 };
    r.take(4, "the magic")?;
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(r.bad(format!(
            "version {version}, and only versions 2 and 3 are read"
        )));
    }
    let n_tensors = r.u64("the tensor count")?;
    let n_kv = r.u64("the metadata count")?;
    if n_tensors > MAX_ENTRIES || n_kv > MAX_ENTRIES {
        return Err(r.bad(format!(
            "{n_tensors} tensors and {n_kv} metadata entries: impossible counts"
        )));
    }
    let mut meta = BTreeMap::new();
    for i in 0..n_kv {
        let key = r.string(&format!("metadata key {i}"))?;
        let ty = r.u32(&key)?;
        let v = r.value(ty, &key)?;
        meta.insert(key, v);
    }
    let align = match meta.get("general.alignment") {
        None => 32,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 16 => a as usize,
            _ => return Err(r.bad("general.alignment is not a power of two up to 65536")),
        },
    };
    let mut infos = Vec::new();
    for i in 0..n_tensors {
        let name = r.string(&format!("tensor name {i}"))?;
        let dims = r.u32(&name)?;
        if dims == 0 || dims > MAX_DIMS {
            return Err(r.bad(format!("tensor `{name}` has {dims} dimensions")));
        }
        let mut ne = Vec::new();
        for _ in 0..dims {
            let d = usize::try_from(r.u64(&name)?)
                .map_err(|_| r.bad(format!("tensor `{name}` has an impossible size")))?;
            ne.push(d);
        }
        let ty = r.u32(&name)?;
        let offset = r.u64(&name)?;
        infos.push((name, ne, ty, offset));
    }
    let data = r.at.div_ceil(align) * align;
    let mut tensors = BTreeMap::new();
    for (name, ne, ty, offset) in infos {
        let t = entry(&r, &name, &ne, ty, offset, data, align)?;
        if tensors.insert(name.clone(), t).is_some() {
            return Err(r.bad(format!("tensor `{name}` is listed twice")));
        }
    }
    Ok(Gguf {
        version,
        meta,
        tensors,
    })
}

/// The table entry of one tensor: its type known, its size whole blocks in checked
/// arithmetic, its bytes aligned and inside the file.
fn entry(
    r: &Reader,
    name: &str,
    ne: &[usize],
    ty: u32,
    offset: u64,
    data: usize,
    align: usize,
) -> Result<RawTensor> {
    let Some(t) = ggml::Type::by_id(ty) else {
        let what = match ggml::unread_name(ty) {
            Some(n) => format!("is {n}, a type these tools do not read"),
            None => format!("has unknown type {ty}"),
        };
        return Err(r.bad(format!("tensor `{name}` {what}")));
    };
    let Some(row) = t.row_bytes(ne[0]) else {
        return Err(r.bad(format!(
            "tensor `{name}`: rows of {} {} are not whole blocks of {}",
            ne[0], t.name, t.elems
        )));
    };
    let rows = ne[1..].iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let Some(len) = rows.and_then(|r| r.checked_mul(row)) else {
        return Err(r.bad(format!("tensor `{name}` has an impossible shape {ne:?}")));
    };
    if !offset.is_multiple_of(align as u64) {
        return Err(r.bad(format!(
            "tensor `{name}` starts at {offset}, not a multiple of the alignment {align}"
        )));
    }
    let start = usize::try_from(offset)
        .ok()
        .and_then(|o| o.checked_add(data));
    let Some(start) = start.filter(|s| s.checked_add(len).is_some_and(|e| e <= r.b.len())) else {
        return Err(r.bad(format!(
            "truncated: tensor `{name}` ends past the end of the file"
        )));
    };
    Ok(RawTensor {
        dtype: t.name.to_string(),
        shape: ne.iter().rev().copied().collect(),
        offset: start,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(tensors: u64, kv: u64) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(tensors.to_le_bytes());
        b.extend(kv.to_le_bytes());
        b
    }

    fn put_str(b: &mut Vec<u8>, s: &str) {
        b.extend((s.len() as u64).to_le_bytes());
        b.extend(s.as_bytes());
    }

    #[test]
    fn reads_metadata_and_tensors() {
        let mut f = header(1, 2);
        put_str(&mut f, "general.architecture");
        f.extend(8u32.to_le_bytes());
        put_str(&mut f, "rwkv7");
        put_str(&mut f, "rwkv7.block_count");
        f.extend(4u32.to_le_bytes());
        f.extend(3u32.to_le_bytes());
        put_str(&mut f, "a");
        f.extend(2u32.to_le_bytes());
        f.extend(4u64.to_le_bytes());
        f.extend(6u64.to_le_bytes());
        f.extend(0u32.to_le_bytes());
        f.extend(0u64.to_le_bytes());
        let data = f.len().div_ceil(32) * 32;
        f.resize(data, 0);
        f.extend((0..24).flat_map(|i| (i as f32).to_le_bytes()));
        let g = read(Path::new("x.gguf"), &f).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.meta["general.architecture"], Value::Str("rwkv7".into()));
        assert_eq!(g.meta["rwkv7.block_count"].as_u64(), Some(3));
        let t = &g.tensors["a"];
        assert_eq!((t.dtype.as_str(), t.shape.clone()), ("F32", vec![6, 4]));
        assert_eq!((t.offset, t.len), (data, 96));
        // one byte short
        let e = read(Path::new("x.gguf"), &f[..f.len() - 1]).err().unwrap();
        assert!(
            e.to_string().contains("truncated: tensor `a` ends past"),
            "{e}"
        );
    }
}
