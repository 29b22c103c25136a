//! int8 matrices stored 32 rows at a time in the order the CPU's integer kernel reads them
//! (`Data::Q8Panels`), so that no product packs its rows again: a panel is one run of
//! bytes, read front to back by one token or by a batch of streams alike.
//!
//! A panel holds rows `32p .. 32p + 32` (the last one padded with zero rows):
//!
//! ```text
//! qs     [panels, nb, 32 words, 2 halves, 16 rows, 2]   word k: weights 2k, 2k + 1 of a block
//! scales [panels, nb, 32 rows]
//! ```
//!
//! with the `nb` blocks of a row in [`block_order`], the order the kernel sums them. Row
//! `16h + l` of a panel is lane `l` of half `h`: one 32-byte load of a word's half, widened
//! to 16-bit integers, is the kernel's vector of sixteen rows' two weights.

use super::quant::{BLOCK, Q8};
use super::Buf;
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

/// Bytes of codes one panel of a matrix `cols` wide takes.
pub fn panel_bytes(cols: usize) -> usize {
    PANEL * cols
}

/// Where weight `i` of block position `pos` of panel row `rr` sits in the panel's codes.
#[inline]
fn at(pos: usize, rr: usize, i: usize) -> usize {
    let (half, lane) = (rr / 16, rr % 16);
    pos * PANEL * BLOCK + ((i / 2) * 2 + half) * 32 + lane * 2 + i % 2
}

/// The int8 matrix `q [rows, cols]` (row after row) in panels.
pub fn to_panels(q: &Q8, rows: usize, cols: usize) -> Q8 {
    let nb = cols / BLOCK;
    let panels = rows.div_ceil(PANEL);
    let order: Vec<usize> = block_order(nb).collect();
    let qs = Buf::pages(panels * panel_bytes(cols), |out: &mut [i8]| {
        out.par_chunks_mut(panel_bytes(cols))
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
    let mut scales = vec![0.0f32; panels * nb * PANEL];
    for (p, dst) in scales.chunks_mut(nb * PANEL).enumerate() {
        for rr in 0..PANEL.min(rows - p * PANEL) {
            let row = &q.scales[(p * PANEL + rr) * nb..(p * PANEL + rr + 1) * nb];
            for (pos, &b) in order.iter().enumerate() {
                dst[pos * PANEL + rr] = row[b];
            }
        }
    }
    Q8 {
        qs,
        scales: Buf::Owned(scales),
    }
}

/// Row `r` of a panel-stored int8 matrix `cols` wide, dequantized into `out [cols]`.
pub fn dequantize_row(q: &Q8, cols: usize, r: usize, out: &mut [f32]) {
    let nb = cols / BLOCK;
    let (p, rr) = (r / PANEL, r % PANEL);
    let codes = &q.qs[p * panel_bytes(cols)..(p + 1) * panel_bytes(cols)];
    let scales = &q.scales[p * nb * PANEL..(p + 1) * nb * PANEL];
    for (pos, b) in block_order(nb).enumerate() {
        let s = scales[pos * PANEL + rr];
        for (i, o) in out[b * BLOCK..(b + 1) * BLOCK].iter_mut().enumerate() {
            *o = codes[at(pos, rr, i)] as f32 * s;
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
            let p = to_panels(q, rows, cols);
            assert_eq!(p.qs.len(), rows.div_ceil(PANEL) * PANEL * cols);
            let (mut want, mut got) = (vec![0.0; cols], vec![0.0; cols]);
            for r in 0..rows {
                m.row_f32(r, &mut want);
                dequantize_row(&p, cols, r, &mut got);
                assert_eq!(got, want, "{rows}x{cols}, row {r}");
            }
        }
    }
}
