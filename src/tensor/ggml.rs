//! ggml's block formats, as GGUF files store them: each row of a matrix is a run of blocks,
//! a block holds `elems` weights in `bytes` bytes (a scale, maybe a minimum, packed codes).
//!
//! The table says what each type is; [`decode`] turns a run of blocks into f32, the way
//! ggml's own dequantization does (the tests check it against the `gguf` Python package's).

use half::f16;

/// Decodes one block into its weights.
type Decode = fn(&[u8], &mut [f32]);

/// One ggml tensor type (equal when their ids are).
#[derive(Debug, Clone, Copy)]
pub struct Type {
    /// ggml's number for it (`GGML_TYPE_*`).
    pub id: u32,
    /// ggml's name, as the file's tensor table is reported (`Q8_0`).
    pub name: &'static str,
    /// Weights per block (1 for the plain types).
    pub elems: usize,
    /// Bytes per block.
    pub bytes: usize,
    /// Decodes one block into `elems` weights; `None` for the plain types.
    decode: Option<Decode>,
}

impl PartialEq for Type {
    fn eq(&self, o: &Type) -> bool {
        self.id == o.id
    }
}

impl Eq for Type {}

const fn plain(id: u32, name: &'static str, bytes: usize) -> Type {
    Type {
        id,
        name,
        elems: 1,
        bytes,
        decode: None,
    }
}

const fn blocks(id: u32, name: &'static str, elems: usize, bytes: usize, f: Decode) -> Type {
    Type {
        id,
        name,
        elems,
        bytes,
        decode: Some(f),
    }
}

/// Weights per K-quant super-block.
const QK_K: usize = 256;

/// The types a model file may hold that these tools read. Plain names are those the
/// safetensors loader uses, so the rest of the loader takes them as they are.
pub static TYPES: &[Type] = &[
    plain(0, "F32", 4),
    plain(1, "F16", 2),
    plain(30, "BF16", 2),
    blocks(2, "Q4_0", 32, 18, q4_0),
    blocks(3, "Q4_1", 32, 20, q4_1),
    blocks(6, "Q5_0", 32, 22, q5_0),
    blocks(7, "Q5_1", 32, 24, q5_1),
    blocks(8, "Q8_0", 32, 34, q8_0),
    blocks(10, "Q2_K", QK_K, 84, q2_k),
    blocks(11, "Q3_K", QK_K, 110, q3_k),
    blocks(12, "Q4_K", QK_K, 144, q4_k),
    blocks(13, "Q5_K", QK_K, 176, q5_k),
    blocks(14, "Q6_K", QK_K, 210, q6_k),
];

/// ggml's names of the types it has that these tools do not read, for messages.
pub fn unread_name(id: u32) -> Option<&'static str> {
    let names = [
        (9, "Q8_1"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    names.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

impl Type {
    pub fn by_id(id: u32) -> Option<Type> {
        TYPES.iter().copied().find(|t| t.id == id)
    }

    pub fn by_name(name: &str) -> Option<Type> {
        TYPES.iter().copied().find(|t| t.name == name)
    }

    /// Whether weights come in blocks that must be decoded (not F32/F16/BF16).
    pub fn is_blocks(self) -> bool {
        self.decode.is_some()
    }

    /// Bytes of a row of `n` weights; `None` when `n` is not whole blocks.
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.elems)
            .then(|| (n / self.elems).checked_mul(self.bytes))
            .flatten()
    }
}

/// The weights of `src`, whole blocks of type `t`, into `out` (`elems` per block).
///
/// # Panics
/// If `t` is a plain type or the lengths disagree (callers check sizes first).
pub fn decode(t: Type, src: &[u8], out: &mut [f32]) {
    let f = t.decode.expect("decode: a block type");
    assert_eq!(src.len() / t.bytes * t.elems, out.len(), "decode: sizes");
    for (b, o) in src.chunks_exact(t.bytes).zip(out.chunks_exact_mut(t.elems)) {
        f(b, o);
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `d` (f16), then 16 bytes: weight `j` is the low nibble of byte `j`, weight `j + 16` the
/// high one; `x = (q - 8) d`.
fn q4_0(b: &[u8], o: &mut [f32]) {
    let d = half(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        o[j] = ((q & 15) as i32 - 8) as f32 * d;
        o[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `d`, `m` (f16), then Q4_0's nibbles; `x = q d + m`.
fn q4_1(b: &[u8], o: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        o[j] = (q & 15) as f32 * d + m;
        o[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// The fifth bits of 32 codes: bit `j` of the little-endian u32 at `at`.
fn high_bits(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// `d`, the fifth bits (u32), Q4_0's nibbles; `x = (q - 16) d`.
fn q5_0(b: &[u8], o: &mut [f32]) {
    let (d, h) = (half(b, 0), high_bits(b, 2));
    for j in 0..16 {
        let q = b[6 + j];
        let lo = (q & 15) as u32 | ((h >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((h >> (j + 16)) & 1) << 4;
        o[j] = (lo as i32 - 16) as f32 * d;
        o[j + 16] = (hi as i32 - 16) as f32 * d;
    }
}

/// `d`, `m`, the fifth bits, the nibbles; `x = q d + m`.
fn q5_1(b: &[u8], o: &mut [f32]) {
    let (d, m, h) = (half(b, 0), half(b, 2), high_bits(b, 4));
    for j in 0..16 {
        let q = b[8 + j];
        let lo = (q & 15) as u32 | ((h >> j) & 1) << 4;
        let hi = (q >> 4) as u32 | ((h >> (j + 16)) & 1) << 4;
        o[j] = lo as f32 * d + m;
        o[j + 16] = hi as f32 * d + m;
    }
}

/// `d`, then 32 signed bytes; `x = q d`.
fn q8_0(b: &[u8], o: &mut [f32]) {
    let d = half(b, 0);
    for (x, &q) in o.iter_mut().zip(&b[2..34]) {
        *x = q as i8 as f32 * d;
    }
}

/// The 2-bit codes of a K-quant super-block, 64 bytes: in half `h`, weight `32k + l` is bits
/// `2k..2k+2` of byte `32h + l`.
fn two_bits(qs: &[u8], i: usize) -> u8 {
    let (h, k, l) = (i / 128, (i % 128) / 32, i % 32);
    (qs[32 * h + l] >> (2 * k)) & 3
}

/// 16 bytes of scales (low nibble) and minimums (high nibble), one per 16 weights, 64 of
/// codes, `d`, `dmin`; `x = d sc q - dmin m`.
fn q2_k(b: &[u8], o: &mut [f32]) {
    let (sc, qs) = (&b[..16], &b[16..80]);
    let (d, dmin) = (half(b, 80), half(b, 82));
    for (i, x) in o.iter_mut().enumerate() {
        let s = sc[i / 16];
        *x = d * (s & 15) as f32 * two_bits(qs, i) as f32 - dmin * (s >> 4) as f32;
    }
}

/// 32 bytes of high bits (weight `32m + l`: bit `m` of byte `l`, set meaning no offset), 64
/// of 2-bit codes, 12 of sixteen 6-bit scales (less 32), `d`; `x = d sc (q - 4 (1 - h))`.
fn q3_k(b: &[u8], o: &mut [f32]) {
    let (hm, qs, sc) = (&b[..32], &b[32..96], &b[96..108]);
    let d = half(b, 108);
    let scale = |j: usize| {
        let low = if j < 8 { sc[j] & 15 } else { sc[j - 8] >> 4 };
        let high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3;
        (low | high << 4) as i32 - 32
    };
    for (i, x) in o.iter_mut().enumerate() {
        let high = (hm[i % 32] >> (i / 32)) & 1;
        let q = two_bits(qs, i) as i32 - if high == 1 { 0 } else { 4 };
        *x = d * scale(i / 16) as f32 * q as f32;
    }
}

/// Q4_K's and Q5_K's eight 6-bit scales and minimums, packed in 12 bytes.
fn scales_mins(s: &[u8]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
    for j in 0..4 {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 15) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, mn)
}

/// `d`, `dmin`, 12 bytes of scales, 128 bytes of nibbles: eight runs of 32 weights, run
/// `2i` the low nibbles of bytes `32i..32i+32`, run `2i + 1` their high nibbles;
/// `x = d sc q - dmin m`.
fn q4_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, mn) = scales_mins(&b[4..16]);
    let qs = &b[16..144];
    for run in 0..8 {
        let (s, m) = (d * sc[run] as f32, dmin * mn[run] as f32);
        let (bytes, shift) = (&qs[32 * (run / 2)..][..32], 4 * (run % 2));
        for (l, &q) in bytes.iter().enumerate() {
            o[32 * run + l] = s * ((q >> shift) & 15) as f32 - m;
        }
    }
}

/// Q4_K with a fifth bit per weight: 32 bytes after the scales, bit `run` of byte `l`.
fn q5_k(b: &[u8], o: &mut [f32]) {
    let (d, dmin) = (half(b, 0), half(b, 2));
    let (sc, mn) = scales_mins(&b[4..16]);
    let (qh, qs) = (&b[16..48], &b[48..176]);
    for run in 0..8 {
        let (s, m) = (d * sc[run] as f32, dmin * mn[run] as f32);
        let (bytes, shift) = (&qs[32 * (run / 2)..][..32], 4 * (run % 2));
        for (l, &q) in bytes.iter().enumerate() {
            let q = ((q >> shift) & 15) | ((qh[l] >> run) & 1) << 4;
            o[32 * run + l] = s * q as f32 - m;
        }
    }
}

/// 128 bytes of low nibbles, 64 of high bit pairs, 16 signed scales, `d` last: two halves
/// of 128 weights; in half `h`, weight `32k + l` takes the low (`k` < 2) or high nibble of
/// byte `64h + 32(k % 2) + l` and bits `2k..2k+2` of high byte `32h + l`;
/// `x = d sc[i / 16] (q - 32)`.
fn q6_k(b: &[u8], o: &mut [f32]) {
    let (ql, qh, sc) = (&b[..128], &b[128..192], &b[192..208]);
    let d = half(b, 208);
    for h in 0..2 {
        for k in 0..4 {
            for l in 0..32 {
                let lo = (ql[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 15;
                let hi = (qh[32 * h + l] >> (2 * k)) & 3;
                let q = (lo | hi << 4) as i32 - 32;
                let i = 128 * h + 32 * k + l;
                o[i] = d * (sc[i / 16] as i8) as f32 * q as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16_bytes(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q8_0_is_scale_times_code() {
        let mut b = f16_bytes(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let mut o = [0f32; 32];
        decode(Type::by_name("Q8_0").unwrap(), &b, &mut o);
        let want: Vec<f32> = (0..32).map(|i| (i - 16) as f32 * 0.5).collect();
        assert_eq!(o.to_vec(), want);
    }

    #[test]
    fn q4_0_orders_low_nibbles_first() {
        let mut b = f16_bytes(2.0).to_vec();
        b.extend((0..16).map(|j| (j as u8) | (15 - j as u8) << 4));
        let mut o = [0f32; 32];
        decode(Type::by_name("Q4_0").unwrap(), &b, &mut o);
        for j in 0..16 {
            assert_eq!(o[j], (j as f32 - 8.0) * 2.0);
            assert_eq!(o[j + 16], (7.0 - j as f32) * 2.0);
        }
    }

    #[test]
    fn q5_0_takes_the_fifth_bit() {
        let mut b = f16_bytes(1.0).to_vec();
        // every fifth bit set: codes 16 + nibble
        b.extend(u32::MAX.to_le_bytes());
        b.extend([0x21u8; 16]);
        let mut o = [0f32; 32];
        decode(Type::by_name("Q5_0").unwrap(), &b, &mut o);
        assert_eq!(o[0], 1.0);
        assert_eq!(o[16], 2.0);
    }

    #[test]
    fn table_is_consistent() {
        for t in TYPES {
            assert_eq!(Type::by_id(t.id), Some(*t));
            assert_eq!(Type::by_name(t.name), Some(*t));
            assert!(unread_name(t.id).is_none());
            assert_eq!(t.is_blocks(), t.elems > 1);
        }
        let q4k = Type::by_name("Q4_K").unwrap();
        assert_eq!(q4k.row_bytes(512), Some(288));
        assert_eq!(q4k.row_bytes(100), None);
    }
}
