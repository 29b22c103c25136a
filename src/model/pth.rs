//! PyTorch `.pth` files without Python.
//!
//! `torch.save` writes an uncompressed zip (zip64 past 4 GiB) holding `ARCHIVE/data.pkl`, a
//! pickle of the state dict, and `ARCHIVE/data/KEY`, one raw little-endian storage per
//! tensor, aligned to 64 bytes. The pickle uses a small subset of protocol 2: dicts, tuples,
//! strings, ints, `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` and
//! persistent ids `('storage', torch.BFloat16Storage, KEY, 'cpu', numel)`. We run that subset
//! on a tiny stack machine and map each tensor to its byte range in the file.

use super::table::RawTensor;
use crate::error::{Error, Result};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::rc::Rc;

/// One zip member: where its (stored, uncompressed) bytes start and how many.
struct Member {
    offset: usize,
    size: usize,
}

fn le16(b: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as u64)
}
fn le32(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as u64)
}
fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The members of a stored (uncompressed) zip, by name.
fn zip_members(path: &Path, b: &[u8]) -> Result<HashMap<String, Member>> {
    let bad = |m: &str| Error::format(path, format!("not a valid .pth zip: {m}"));
    // End of central directory: the last `PK\x05\x06` within the final 64 KiB + 22 bytes.
    let lo = b.len().saturating_sub(65_557);
    let eocd = (lo..b.len().saturating_sub(21))
        .rev()
        .find(|&i| b[i..].starts_with(b"PK\x05\x06"))
        .ok_or_else(|| bad("no end of central directory (truncated?)"))?;
    let mut count = le16(b, eocd + 10).unwrap_or(0);
    let mut cd = le32(b, eocd + 16).unwrap_or(0);
    if count == 0xFFFF || cd == 0xFFFF_FFFF {
        // zip64: locator just before the EOCD points to the zip64 EOCD record.
        let loc = eocd
            .checked_sub(20)
            .ok_or_else(|| bad("zip64 locator missing"))?;
        if !b[loc..].starts_with(b"PK\x06\x07") {
            return Err(bad("zip64 locator missing"));
        }
        let rec = le64(b, loc + 8).map_or(usize::MAX, |r| usize::try_from(r).unwrap_or(usize::MAX));
        if !b.get(rec..).is_some_and(|r| r.starts_with(b"PK\x06\x06")) {
            return Err(bad("zip64 end record missing"));
        }
        count = le64(b, rec + 32).ok_or_else(|| bad("zip64 end record truncated"))?;
        cd = le64(b, rec + 48).ok_or_else(|| bad("zip64 end record truncated"))?;
    }
    let mut members = HashMap::new();
    let mut p = usize::try_from(cd).unwrap_or(usize::MAX);
    for _ in 0..count {
        let hdr = b
            .get(p..)
            .filter(|h| h.len() >= 46)
            .ok_or_else(|| bad("central directory truncated"))?;
        if !hdr.starts_with(b"PK\x01\x02") {
            return Err(bad("central directory entry corrupt"));
        }
        let field16 = |at: usize| le16(hdr, at).unwrap_or(0);
        let method = field16(10);
        let mut size = le32(hdr, 24).unwrap_or(0);
        let name_len = field16(28) as usize;
        let extra_len = field16(30) as usize;
        let comment_len = field16(32) as usize;
        let mut local = le32(hdr, 42).unwrap_or(0);
        let name = hdr
            .get(46..46 + name_len)
            .ok_or_else(|| bad("central directory truncated"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        // zip64 extra field (id 1): the 0xFFFFFFFF fields, in order usize, csize, offset.
        let mut e = p + 46 + name_len;
        let extra_end = e + extra_len;
        while e + 4 <= extra_end {
            let id = le16(b, e).unwrap_or(0);
            let len = le16(b, e + 2).unwrap_or(0) as usize;
            if id == 1 {
                let mut q = e + 4;
                if size == 0xFFFF_FFFF {
                    size = le64(b, q).ok_or_else(|| bad("zip64 field truncated"))?;
                    q += 8;
                }
                if le32(hdr, 20) == Some(0xFFFF_FFFF) {
                    q += 8;
                }
                if local == 0xFFFF_FFFF {
                    local = le64(b, q).ok_or_else(|| bad("zip64 field truncated"))?;
                }
            }
            e += 4 + len;
        }
        if method != 0 {
            return Err(bad(&format!("member {name} is compressed")));
        }
        let l = usize::try_from(local).unwrap_or(usize::MAX);
        let header = b
            .get(l..)
            .filter(|r| r.len() >= 30 && r.starts_with(b"PK\x03\x04"));
        let Some(header) = header else {
            return Err(bad(&format!(
                "member {name}: local header missing (truncated?)"
            )));
        };
        let lname = le16(header, 26).unwrap_or(0);
        let lextra = le16(header, 28).unwrap_or(0);
        // the member's bytes, in checked arithmetic, within the file
        let start = local + 30 + lname + lextra;
        let inside = start
            .checked_add(size)
            .is_some_and(|end| end <= b.len() as u64);
        if !inside {
            return Err(bad(&format!(
                "member {name} lies past the end (truncated?)"
            )));
        }
        members.insert(
            name,
            Member {
                offset: start as usize,
                size: size as usize,
            },
        );
        p = p
            .checked_add(46 + name_len + extra_len + comment_len)
            .ok_or_else(|| bad("central directory corrupt"))?;
    }
    Ok(members)
}

/// Values of the pickle subset a state dict uses. Every value a memo may hand out again is
/// shared, never copied, so what a pickle builds is bounded by its own size.
#[derive(Debug, Clone)]
enum Val {
    None,
    Int(i64),
    Str(Rc<str>),
    Tuple(Rc<Children>),
    /// Keys and values, alternating; shared with the memo, as in Python.
    Dict(Rc<RefCell<Children>>),
    Global(Rc<str>),
    /// `('storage', dtype, key, device, numel)` after BINPERSID.
    Storage {
        dtype: Rc<str>,
        key: Rc<str>,
    },
    Tensor(Rc<PickledTensor>),
    /// An object we do not interpret (OrderedDict(), metadata): kept as a placeholder.
    Other,
    Mark,
}

/// A tuple's items or a dict's keys and values, dropped without recursion: a hostile pickle
/// may nest them a million deep.
#[derive(Debug, Default)]
struct Children(Vec<Val>);

impl Drop for Children {
    fn drop(&mut self) {
        let mut stack = std::mem::take(&mut self.0);
        while let Some(v) = stack.pop() {
            match v {
                Val::Tuple(rc) => {
                    if let Ok(mut c) = Rc::try_unwrap(rc) {
                        stack.append(&mut c.0);
                    }
                }
                Val::Dict(rc) => {
                    if let Ok(cell) = Rc::try_unwrap(rc) {
                        stack.append(&mut cell.into_inner().0);
                    }
                }
                _ => {}
            }
        }
    }
}

fn tuple(items: Vec<Val>) -> Val {
    Val::Tuple(Rc::new(Children(items)))
}

#[derive(Debug)]
struct PickledTensor {
    dtype: Rc<str>,
    key: Rc<str>,
    offset: u64,
    shape: Vec<u64>,
    stride: Vec<u64>,
}

fn storage_dtype(global: &str) -> Rc<str> {
    match global {
        "torch FloatStorage" => "F32",
        "torch HalfStorage" => "F16",
        "torch BFloat16Storage" => "BF16",
        "torch DoubleStorage" => "F64",
        "torch LongStorage" => "I64",
        "torch IntStorage" => "I32",
        other => other,
    }
    .into()
}

/// Pickle operations a state dict runs for each storage in its zip (about 40 a tensor:
/// its name, the rebuild call, the storage tuple, shape, stride), and for the dict itself.
const OPS_PER_STORAGE: usize = 128;
const OPS_BASE: usize = 4096;

/// Run the pickle and return the top-level dict. At most `max_ops` operations run, so what
/// a pickle builds is bounded by the tensors it can describe, not by its own size.
fn unpickle(path: &Path, p: &[u8], max_ops: usize) -> Result<Vec<Val>> {
    let bad = |m: String| Error::format(path, format!("unsupported .pth pickle: {m}"));
    let mut ops = 0usize;
    let mut stack: Vec<Val> = Vec::new();
    let mut memo: HashMap<u64, Val> = HashMap::new();
    let mut i = 0usize;
    let take = |i: &mut usize, n: usize| -> Result<&[u8]> {
        let s = p
            .get(*i..*i + n)
            .ok_or_else(|| Error::format(path, "truncated .pth pickle"))?;
        *i += n;
        Ok(s)
    };
    let pop_mark = |stack: &mut Vec<Val>| -> Result<Vec<Val>> {
        let m = stack
            .iter()
            .rposition(|v| matches!(v, Val::Mark))
            .ok_or_else(|| Error::format(path, "pickle: MARK missing"))?;
        let items = stack.split_off(m + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = take(&mut i, 1)?[0];
        ops += 1;
        if ops > max_ops {
            return Err(bad(format!(
                "more than {max_ops} operations, more than the zip's storages need"
            )));
        }
        match op {
            0x80 => {
                take(&mut i, 1)?;
            } // PROTO
            b'}' => stack.push(Val::Dict(Rc::default())),
            b')' => stack.push(tuple(Vec::new())),
            b'N' => stack.push(Val::None),
            0x88 | 0x89 => stack.push(Val::Other),
            b'(' => stack.push(Val::Mark),
            b'q' => {
                let k = take(&mut i, 1)?[0] as u64;
                memo.insert(k, stack.last().cloned().unwrap_or(Val::None));
            }
            b'r' => {
                let k = u32::from_le_bytes(take(&mut i, 4)?.try_into().unwrap()) as u64;
                memo.insert(k, stack.last().cloned().unwrap_or(Val::None));
            }
            b'h' => {
                let k = take(&mut i, 1)?[0] as u64;
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .ok_or_else(|| bad(format!("memo {k}")))?,
                );
            }
            b'j' => {
                let k = u32::from_le_bytes(take(&mut i, 4)?.try_into().unwrap()) as u64;
                stack.push(
                    memo.get(&k)
                        .cloned()
                        .ok_or_else(|| bad(format!("memo {k}")))?,
                );
            }
            b'K' => stack.push(Val::Int(take(&mut i, 1)?[0] as i64)),
            b'M' => stack.push(Val::Int(
                u16::from_le_bytes(take(&mut i, 2)?.try_into().unwrap()) as i64,
            )),
            b'J' => stack.push(Val::Int(
                i32::from_le_bytes(take(&mut i, 4)?.try_into().unwrap()) as i64,
            )),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = take(&mut i, 1)?[0] as usize;
                let bytes = take(&mut i, n)?;
                let mut v: i64 = 0;
                for (k, &byte) in bytes.iter().enumerate().take(8) {
                    v |= (byte as i64) << (8 * k);
                }
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Val::Int(v));
            }
            b'X' => {
                let n = u32::from_le_bytes(take(&mut i, 4)?.try_into().unwrap()) as usize;
                let s = take(&mut i, n)?;
                stack.push(Val::Str(String::from_utf8_lossy(s).into()));
            }
            0x8c => {
                // SHORT_BINUNICODE
                let n = take(&mut i, 1)?[0] as usize;
                let s = take(&mut i, n)?;
                stack.push(Val::Str(String::from_utf8_lossy(s).into()));
            }
            b'c' => {
                let end1 = p[i..].iter().position(|&c| c == b'\n').map(|e| i + e);
                let end1 = end1.ok_or_else(|| bad("GLOBAL".into()))?;
                let end2 = p[end1 + 1..].iter().position(|&c| c == b'\n');
                let end2 = end1 + 1 + end2.ok_or_else(|| bad("GLOBAL".into()))?;
                let g = format!(
                    "{} {}",
                    String::from_utf8_lossy(&p[i..end1]),
                    String::from_utf8_lossy(&p[end1 + 1..end2])
                );
                i = end2 + 1;
                stack.push(Val::Global(g.into()));
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(bad("stack underflow".into()));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(tuple(items));
            }
            b'Q' => {
                // BINPERSID: ('storage', Global(dtype), key, device, numel)
                let pid = stack.pop().ok_or_else(|| bad("stack underflow".into()))?;
                let Val::Tuple(t) = pid else {
                    return Err(bad("persistent id is not a tuple".into()));
                };
                match (t.0.get(1), t.0.get(2)) {
                    (Some(Val::Global(g)), Some(Val::Str(key))) => stack.push(Val::Storage {
                        dtype: storage_dtype(g),
                        key: key.clone(),
                    }),
                    _ => return Err(bad("persistent id is not a storage".into())),
                }
            }
            b'R' => {
                let args = stack.pop().ok_or_else(|| bad("stack underflow".into()))?;
                let func = stack.pop().ok_or_else(|| bad("stack underflow".into()))?;
                let v = match (&func, args) {
                    (Val::Global(g), Val::Tuple(a))
                        if &**g == "torch._utils _rebuild_tensor_v2" =>
                    {
                        rebuild_tensor(&a.0).ok_or_else(|| {
                            bad("a tensor's storage, offset, shape or stride is malformed".into())
                        })?
                    }
                    _ => Val::Other,
                };
                stack.push(v);
            }
            b's' => {
                let v = stack.pop().ok_or_else(|| bad("stack underflow".into()))?;
                let k = stack.pop().ok_or_else(|| bad("stack underflow".into()))?;
                if let Some(Val::Dict(d)) = stack.last() {
                    d.borrow_mut().0.extend([k, v]);
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                if let Some(Val::Dict(d)) = stack.last() {
                    let pairs = items.len() / 2 * 2;
                    d.borrow_mut().0.extend(items.into_iter().take(pairs));
                }
            }
            b'.' => break,
            other => return Err(bad(format!("opcode 0x{other:02x} at byte {}", i - 1))),
        }
    }
    match stack.pop() {
        Some(Val::Dict(d)) => Ok(std::mem::take(&mut d.borrow_mut().0)),
        _ => Err(bad("the pickle is not a dict of tensors".into())),
    }
}

fn rebuild_tensor(a: &[Val]) -> Option<Val> {
    let ints = |v: &Val| -> Option<Vec<u64>> {
        match v {
            Val::Tuple(t) => {
                t.0.iter()
                    .map(|x| match x {
                        Val::Int(i) => u64::try_from(*i).ok(),
                        _ => None,
                    })
                    .collect()
            }
            _ => None,
        }
    };
    let (Val::Storage { dtype, key }, Val::Int(off)) = (a.first()?, a.get(1)?) else {
        return None;
    };
    Some(Val::Tensor(Rc::new(PickledTensor {
        dtype: dtype.clone(),
        key: key.clone(),
        offset: u64::try_from(*off).ok()?,
        shape: ints(a.get(2)?)?,
        stride: ints(a.get(3)?)?,
    })))
}

fn elem_size(dtype: &str) -> u64 {
    match dtype {
        "F16" | "BF16" => 2,
        "F64" | "I64" => 8,
        _ => 4,
    }
}

/// The tensors of a `.pth` state dict as byte ranges of `b` (the whole mapped file).
pub fn read_tensors(path: &Path, b: &[u8]) -> Result<BTreeMap<String, RawTensor>> {
    let members = zip_members(path, b)?;
    let (pkl_name, pkl) = members
        .iter()
        .find(|(n, _)| n.ends_with("/data.pkl") || n.as_str() == "data.pkl")
        .ok_or_else(|| Error::format(path, "not a PyTorch checkpoint: no data.pkl in the zip"))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();
    // zip_members checked that every member lies inside the file
    let pkl_bytes = &b[pkl.offset..pkl.offset + pkl.size];
    let max_ops = OPS_BASE.saturating_add(members.len().saturating_mul(OPS_PER_STORAGE));
    let dict = unpickle(path, pkl_bytes, max_ops)?;
    let mut out = BTreeMap::new();
    for pair in dict.chunks_exact(2) {
        let (Val::Str(name), Val::Tensor(t)) = (&pair[0], &pair[1]) else {
            continue;
        };
        let bad = |what: &str| Error::format(path, format!("tensor `{name}` {what}"));
        // Only contiguous row-major tensors map without a copy; torch.save of a state dict
        // writes them that way. Every size in u64, checked.
        let mut expect = 1u64;
        for (d, s) in t.shape.iter().zip(&t.stride).rev() {
            if *d > 1 && *s != expect {
                return Err(bad(&format!(
                    "is not contiguous (shape {:?}, stride {:?})",
                    t.shape, t.stride
                )));
            }
            expect = expect
                .checked_mul(*d)
                .ok_or_else(|| bad(&format!("has an impossible shape {:?}", t.shape)))?;
        }
        if t.stride.len() != t.shape.len() {
            return Err(bad("has a stride of another rank than its shape"));
        }
        let storage = members
            .get(&format!("{prefix}data/{}", t.key))
            .ok_or_else(|| bad(&format!("has no storage (`data/{}` missing)", t.key)))?;
        let es = elem_size(&t.dtype);
        let range = t
            .offset
            .checked_mul(es)
            .and_then(|start| Some((start, expect.checked_mul(es)?)))
            .filter(|&(start, len)| {
                start
                    .checked_add(len)
                    .is_some_and(|e| e <= storage.size as u64)
            });
        let Some((start, len)) = range else {
            return Err(bad("lies outside its storage"));
        };
        let shape = t.shape.iter().map(|&d| d as usize).collect();
        out.insert(
            name.to_string(),
            RawTensor {
                dtype: t.dtype.to_string(),
                shape,
                offset: storage.offset + start as usize,
                len: len as usize,
            },
        );
    }
    if out.is_empty() {
        return Err(Error::format(path, "the .pth file holds no tensors"));
    }
    Ok(out)
}
