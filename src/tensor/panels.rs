//! int8 and nf4 matrices stored 32 rows at a time in the order the CPU's integer panel
//! kernel reads them (`Data::Q8Panels`, `Data::Nf4Panels`), so that no product packs its
//! rows again: a panel is one run of bytes, read front to back by every token alike.
//!
//! A panel holds rows `32p .. 32p + 32` (the last one padded with zero rows), the `nb`
//! blocks of a row in [`block_order`], the order the kernel sums them. Row `16h + l` of a
//! panel is lane `l` of half `h`:
//!
//! ```text
//! int8   qs     [panels, nb, 32 words, 2 halves, 16 rows, 2]   word k: weights 2k, 2k + 1
//!        scales [panels, nb, 32 rows] f32
//! nf4    packed [panels, nb, 8 words, 2 halves, 16 rows, 4]    byte c of word j: weights
//!                                                              4j + c (low nibble) and
//!                                                              32 + 4j + c (high)
//!        scales [panels, nb, 32 rows] bf16
//! ```
//!
//! One 32-byte int8 load, widened to 16-bit integers, is the kernel's vector of sixteen
//! rows' two weights; one 64-byte nf4 load, its nibbles looked up, is two vectors of
//! sixteen rows' four codes (words `j` and `j + 8`). An nf4 word is the row's bytes
//! `4j..4j + 4` of the block as stored, moved whole.

use super::blocks::{Nf4, BLOCK, NF4, Q8};
use super::buf::Buf;
use rayon::prelude::*;

/// Rows a panel holds.
pub const PANEL: usize = 32;

/// Classes of blocks summed apart: block `b` belongs to class `b % 16`.
pub const CLASSES: usize = 16;

/// The class the `k`-th pass over a row sums: `k`'s four bits reversed, so that the
/// classes arrive in pairs of a reduction tree by halves.
pub const fn class_order(k: usize) -> usize {
    (k & 1) << 3 | (k & 2) << 1 | (k & 4) >> 1 | (k & 8) >> 3
}

/// The order the integer kernels visit a row's `nb` blocks: class by class in
/// [`class_order`], the blocks of a class one after another.
pub fn block_order(nb: usize) -> impl Iterator<Item = usize> {
    (0..CLASSES).flat_map(move |k| (class_order(k)..nb).step_by(CLASSES))
}

/// Bytes of codes one panel of a matrix `cols` wide takes: int8, or nf4 if `nf4`.
pub fn panel_bytes(cols: usize, nf4: bool) -> usize {
    PANEL * cols / if nf4 { 2 } else { 1 }
}

/// Where weight `i` of block position `pos` of panel row `rr` sits in the panel's codes.
#[inline]
fn at(pos: usize, rr: usize, i: usize) -> usize {
    let (half, lane) = (rr / 16, rr % 16);
    pos * PANEL * BLOCK + ((i / 2) * 2 + half) * 32 + lane * 2 + i % 2
}

/// The int8 matrix `q [rows, cols]` (row after row) in panels.
pub fn q8_to_panels(q: &Q8, rows: usize, cols: usize) -> Q8 {
    let nb = cols / BLOCK;
    let panels = rows.div_ceil(PANEL);
    let order: Vec<usize> = block_order(nb).collect();
    let qs = Buf::pages(panels * panel_bytes(cols, false), |out: &mut [i8]| {
        out.par_chunks_mut(panel_bytes(cols, false))
            .enumerate()
            .for_each(|(p, dst)| {
                for rr in 0..PANEL.min(rows - p * PANEL) {
                    let row = &q.qs[(p * PANEL + rr) * cols..(p * PANEL + rr + 1) * cols];
                    for (pos, &b) in order.iter().enumerate() {
                        for (i, &v) in row[b * BLOCK..(b + 1) * BLOCK].iter().enumerate() {
                            dst[at(pos, rr, i)] = v;
                        }
                    }
                }
            });
    });
    Q8 {
        qs,
        scales: Buf::Owned(scales_to_panels(&q.scales, rows, nb)),
    }
}

/// Row `r` of a panel-stored int8 matrix `cols` wide, dequantized into `out [cols]`.
pub fn q8_dequantize_row(q: &Q8, cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / BLOCK;
    let (p, rr) = (r / PANEL, r % PANEL);
    let codes = &q.qs[p * panel_bytes(cols, false)..(p + 1) * panel_bytes(cols, false)];
    let scales = &q.scales[p * nb * PANEL..(p + 1) * nb * PANEL];
    for (pos, b) in block_order(nb).enumerate() {
        let s = scales[pos * PANEL + rr];
        for (i, o) in out[b * BLOCK..(b + 1) * BLOCK].iter_mut().enumerate() {
            *o = codes[at(pos, rr, i)] as f32 * s;
        }
    }
}

/// Where nf4 word `j` (row bytes `4j..4j + 4` of a block) of block position `pos` of
/// panel row `rr` starts in the panel's bytes.
#[inline]
fn nf4_at(pos: usize, rr: usize, j: usize) -> usize {
    let (half, lane) = (rr / 16, rr % 16);
    pos * PANEL * BLOCK / 2 + ((j * 2 + half) * 16 + lane) * 4
}

/// Scales `s [rows, nb]` (row after row) in panels: `[panels, nb, 32]`, blocks in
/// [`block_order`], zeros for the rows past the end.
fn scales_to_panels<T: Copy + Default>(s: &[T], rows: usize, nb: usize) -> Vec<T> {
    let order: Vec<usize> = block_order(nb).collect();
    let mut out = vec![T::default(); rows.div_ceil(PANEL) * nb * PANEL];
    for (p, dst) in out.chunks_mut(nb * PANEL).enumerate() {
        for rr in 0..PANEL.min(rows - p * PANEL) {
            let row = &s[(p * PANEL + rr) * nb..(p * PANEL + rr + 1) * nb];
            for (pos, &b) in order.iter().enumerate() {
                dst[pos * PANEL + rr] = row[b];
            }
        }
    }
    out
}

/// The nf4 matrix `q [rows, cols]` (row after row) in panels.
pub fn nf4_to_panels(q: &Nf4, rows: usize, cols: usize) -> Nf4 {
    let nb = cols / BLOCK;
    let order: Vec<usize> = block_order(nb).collect();
    let bytes = panel_bytes(cols, true);
    let packed = Buf::pages(rows.div_ceil(PANEL) * bytes, |out: &mut [u8]| {
        out.par_chunks_mut(bytes).enumerate().for_each(|(p, dst)| {
            for rr in 0..PANEL.min(rows - p * PANEL) {
                let row = &q.packed[(p * PANEL + rr) * cols / 2..(p * PANEL + rr + 1) * cols / 2];
                for (pos, &b) in order.iter().enumerate() {
                    for j in 0..BLOCK / 8 {
                        let src = b * BLOCK / 2 + 4 * j;
                        let at = nf4_at(pos, rr, j);
                        dst[at..at + 4].copy_from_slice(&row[src..src + 4]);
                    }
                }
            }
        });
    });
    Nf4 {
        packed,
        scales: Buf::Owned(scales_to_panels(&q.scales, rows, nb)),
    }
}

/// Row `r` of a panel-stored nf4 matrix `cols` wide, dequantized into `out [cols]`.
pub fn nf4_dequantize_row(q: &Nf4, cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / BLOCK;
    let (p, rr) = (r / PANEL, r % PANEL);
    let bytes = &q.packed[p * panel_bytes(cols, true)..(p + 1) * panel_bytes(cols, true)];
    let scales = &q.scales[p * nb * PANEL..(p + 1) * nb * PANEL];
    for (pos, b) in block_order(nb).enumerate() {
        let s = scales[pos * PANEL + rr].to_f32();
        let o = &mut out[b * BLOCK..(b + 1) * BLOCK];
        for j in 0..BLOCK / 8 {
            for (c, &v) in bytes[nf4_at(pos, rr, j)..][..4].iter().enumerate() {
                o[4 * j + c] = NF4[(v & 15) as usize] * s;
                o[BLOCK / 2 + 4 * j + c] = NF4[(v >> 4) as usize] * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::quant::{quantize, Quant};
    use crate::tensor::{Data, Matrix};

    /// Every block once, class by class; every weight back where it came from, for
    /// widths of fewer blocks than classes and partly empty last panels.
    #[test]
    fn panels_hold_every_weight_once() {
        for nb in [1, 3, 16, 17, 40] {
            let mut seen: Vec<usize> = block_order(nb).collect();
            assert_eq!(seen[0], 0);
            seen.sort_unstable();
            assert_eq!(seen, (0..nb).collect::<Vec<_>>());
        }
        assert_eq!(block_order(32).take(4).collect::<Vec<_>>(), [0, 16, 8, 24]);
        for (rows, cols) in [(7, 64), (33, 192), (64, 17 * 64)] {
            let v: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 37) % 101) as f32 - 50.0)
                .collect();
            let m = quantize(&Matrix::from_f32(rows, cols, v), Quant::Int8);
            let Data::Q8(q) = &m.data else { unreachable!() };
            let p = q8_to_panels(q, rows, cols);
            assert_eq!(p.qs.len(), rows.div_ceil(PANEL) * PANEL * cols);
            let n = quantize(&Matrix::from_f32(rows, cols, m.to_f32()), Quant::Nf4);
            let Data::Nf4(nq) = &n.data else {
                unreachable!()
            };
            let np = nf4_to_panels(nq, rows, cols);
            assert_eq!(np.packed.len(), rows.div_ceil(PANEL) * PANEL * cols / 2);
            let (mut want, mut got) = (vec![0.0; cols], vec![0.0; cols]);
            for r in 0..rows {
                m.row_f32(r, &mut want);
                q8_dequantize_row(&p, cols, r, &mut got);
                assert_eq!(got, want, "int8 {rows}x{cols}, row {r}");
                n.row_f32(r, &mut want);
                nf4_dequantize_row(&np, cols, r, &mut got);
                assert_eq!(got, want, "nf4 {rows}x{cols}, row {r}");
            }
        }
    }
}
