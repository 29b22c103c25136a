//! Sequence products at [`Precision::Bf16`](crate::backend::Precision): the activations
//! rounded to bf16 once a product, the weight rows packed 32 at a time into a panel (bf16
//! rows as stored, other formats widened to bf16 in one pass), then multiplied with up to
//! twelve tokens at a time by `vdpbf16ps` (AVX-512 BF16).

use super::caps::Caps;
use super::shared::{with_scratch, SharedMut};
use crate::isa::Isa;
use crate::tensor::{Data, Matrix};
use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

thread_local! {
    /// A panel of weight rows packed for the kernel.
    static PANEL: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Rows of a panel as bf16, for weights not stored as bf16.
    static BROWS: RefCell<Vec<bf16>> = const { RefCell::new(Vec::new()) };
    /// One row in f32, on its way to bf16.
    static F32ROW: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The lanes of the bf16 tiles' sums, `[token groups, 4 rows, 4 tokens, 16]`.
    static SUMS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Whether this CPU has the bf16 products of `Precision::Bf16` (AVX-512 BF16, and the
/// AVX-512 instruction set in use); without them that precision is f32.
pub fn bf16_products_here() -> bool {
    bf16_dot_on(Isa::detect())
}

/// Whether `isa` is AVX-512 on a CPU with AVX-512 BF16.
pub fn bf16_dot_on(isa: Isa) -> bool {
    Caps::of(isa).bf16_dot
}

/// The row stride of activations rounded to bf16 for rows of `n`: even (the kernel reads
/// pairs), and off multiples of 2 KiB, where the twelve rows the kernel reads together
/// would share the eight ways of one L1 set.
pub fn x_stride(n: usize) -> usize {
    let w = n.next_multiple_of(2);
    if (2 * w).is_multiple_of(2048) {
        w + 32
    } else {
        w
    }
}

/// `x [t, n]` rounded to bf16 into `out [t, x_stride(n)]`, zeros past `n`; tokens in
/// parallel (AVX-512 BF16 only).
pub fn round_bf16(x: &[f32], n: usize, out: &mut Vec<bf16>) {
    let w = x_stride(n);
    out.resize(x.len() / n * w, bf16::ZERO);
    #[cfg(target_arch = "x86_64")]
    out.par_chunks_mut(w * 16)
        .zip(x.par_chunks(n * 16))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(w).zip(x.chunks_exact(n)) {
                // SAFETY: only called for products the plan gave bf16 panels (AVX-512 BF16).
                unsafe { super::arch::x86::bf16::round_bf16_avx512(x, &mut o[..n]) };
                o[n..].fill(bf16::ZERO);
            }
        });
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` with `x` rounded to bf16
/// (`x [t, x_stride(in)]`, zeros past `in`): the rows 32 at a time, packed into a panel
/// (bf16 rows as stored; other formats, and odd widths, through bf16 copies), then
/// multiplied with up to 12 tokens at a time.
#[cfg(target_arch = "x86_64")]
pub fn matmul_rows(w: &Matrix, rows: Range<usize>, x: &[bf16], t: usize, y: SharedMut) {
    use super::arch::x86::bf16::{pack_panel_avx512, q8_panel_bf16};
    use super::tuning::{BF16_PANEL_TOKENS, PANEL_ROWS};
    use crate::tensor::panels::panel_bytes;
    use crate::tensor::quant::BLOCK;
    let (out, inp) = (w.rows, w.cols);
    let pairs = inp.div_ceil(2);
    let xw = 2 * pairs;
    let (xp, xs_u32) = (x.as_ptr() as *const u32, x_stride(inp) / 2);
    with_scratch(&PANEL, |panel| {
        panel.resize(pairs * PANEL_ROWS, 0);
        for r0 in rows.clone().step_by(PANEL_ROWS) {
            let n = (rows.end - r0).min(PANEL_ROWS);
            if let Data::Q8Panels(q) = &w.data {
                let (p, nb) = (r0 / PANEL_ROWS, inp / BLOCK);
                let bytes = panel_bytes(inp, false);
                let codes = &q.qs[p * bytes..(p + 1) * bytes];
                let scales = &q.scales[p * nb * PANEL_ROWS..(p + 1) * nb * PANEL_ROWS];
                // SAFETY: the plan gives bf16 panels only on AVX-512 BF16; tasks take whole
                // panels (Kernel::panel_rows), so r0 starts one.
                unsafe { q8_panel_bf16(codes, scales, nb, panel) };
            } else {
                let (base, stride) = match &w.data {
                    Data::BF16(b) if inp.is_multiple_of(2) => (b[r0 * inp..].as_ptr(), inp),
                    _ => with_scratch(&F32ROW, |f| {
                        with_scratch(&BROWS, |brows| {
                            f.resize(inp, 0.0);
                            brows.resize(n * xw, bf16::ZERO);
                            for (k, row) in brows.chunks_exact_mut(xw).enumerate() {
                                // SAFETY: the plan gives bf16 panels only on AVX-512 BF16.
                                unsafe { row_bf16(w, r0 + k, f, &mut row[..inp]) };
                                row[inp..].fill(bf16::ZERO);
                            }
                            (brows.as_ptr(), xw)
                        })
                    }),
                };
                // SAFETY: as above; the n rows of `stride` from `base` are in bounds (BROWS is
                // not touched again before the panel is packed).
                unsafe { pack_panel_avx512(base, stride, n, pairs, panel) };
            }
            // The next panel's stored rows (most often this thread's next task's) are asked
            // for while the tokens keep the core busy, a line every few pairs of every call.
            let (next, len) = super::dense::stored_span(w, r0 + PANEL_ROWS, r0 + 2 * PANEL_ROWS);
            let calls = t.div_ceil(BF16_PANEL_TOKENS);
            let per_call = len.div_ceil(64 * calls);
            for (c, t0) in (0..t).step_by(BF16_PANEL_TOKENS).enumerate() {
                let nt = (t - t0).min(BF16_PANEL_TOKENS);
                let from = (c * per_call).min(len.div_ceil(64));
                let lines = per_call.min(len.div_ceil(64) - from);
                let ahead = (next.wrapping_add(64 * from), lines);
                // SAFETY: token t0 + j's activations are `pairs` u32 from its row of `x`; its
                // outputs for rows r0..r0 + n are written by this task only.
                unsafe {
                    let xs = |j: usize| xp.add((t0 + j) * xs_u32);
                    let ys = |j: usize| y.ptr().add((t0 + j) * out + r0);
                    panel_tokens(nt, panel, pairs, xs, ys, n, ahead);
                }
            }
        }
    })
}

/// Rows `rows` of `y [t, out] = x [t, in] . W^T` for bf16 rows as stored, `x` rounded to
/// bf16 (`[t, x_stride(in)]`): each row dotted with each token ([`Kernel::Bf16Dots`]), or
/// `tiles`, four rows by four tokens at a time ([`Kernel::Bf16Tiles`]). Either sums a
/// (row, token) pair alike, so a token's result does not depend on the token count.
///
/// [`Kernel::Bf16Dots`]: super::plan::Kernel::Bf16Dots
/// [`Kernel::Bf16Tiles`]: super::plan::Kernel::Bf16Tiles
pub fn row_order_rows(
    w: &Matrix,
    rows: Range<usize>,
    x: &[bf16],
    t: usize,
    tiles: bool,
    y: SharedMut,
) {
    #[cfg(target_arch = "x86_64")]
    {
        use super::arch::x86::bf16::{dot_bf16x2, tile4x4_bf16x2, tile_sums};
        use super::tuning::BF16_TILE_COLS;
        let (out, inp, stride) = (w.rows, w.cols, x_stride(w.cols));
        let Data::BF16(b) = &w.data else {
            unreachable!("bf16 row products of {:?} weights", w.dtype())
        };
        let row = |r: usize| &b[r * inp..(r + 1) * inp];
        let xr = |ti: usize| &x[ti * stride..ti * stride + inp];
        // SAFETY (both kernels): the plan picks these kernels on AVX-512 BF16 only.
        if !tiles {
            for r in rows {
                super::dense::prefetch_row(w, r + 2);
                for ti in 0..t {
                    // SAFETY: as above; element (ti, r) is written by the task owning row r.
                    unsafe { y.write(ti * out + r, dot_bf16x2(row(r), xr(ti))) };
                }
            }
            return;
        }
        // Four rows at a time against the tokens in groups of four, a block of columns at
        // a time, so that the rows' block and every token's stay in L1 while the groups
        // pass; each group's sixteen sums wait in `sums` between blocks.
        let start = rows.start;
        let groups = t / 4;
        // under four groups the rows' whole width is read once a group from L1 anyway
        let block = if groups >= 4 {
            BF16_TILE_COLS
        } else {
            inp.max(1)
        };
        let blocks = inp.div_ceil(block);
        let group_lines = (4 * inp * 2).div_ceil(64);
        let share = group_lines.div_ceil((groups * blocks).max(1));
        with_scratch(&SUMS, |sums| {
            sums.resize(groups * 256, 0.0);
            for g in (0..rows.len()).step_by(4) {
                let nr = (rows.len() - g).min(4);
                let wr: [&[bf16]; 4] = std::array::from_fn(|k| row(start + g + k.min(nr - 1)));
                // the next four rows, asked for a share a tile
                let next = wr[0].as_ptr().wrapping_add(4 * inp) as *const u8;
                let mut asked = 0;
                sums.fill(0.0);
                for c0 in (0..inp).step_by(block) {
                    let cols = c0..(c0 + block).min(inp);
                    let wb = wr.map(|r| &r[cols.clone()]);
                    for (gi, sums) in sums.chunks_exact_mut(256).enumerate() {
                        let xb = std::array::from_fn(|j| &xr(4 * gi + j)[cols.clone()]);
                        let lines = share.min(group_lines - asked);
                        let ahead = (next.wrapping_add(64 * asked), lines);
                        asked += lines;
                        let sums: &mut [f32; 256] = sums.try_into().expect("256 sums a group");
                        unsafe { tile4x4_bf16x2(wb, xb, sums, ahead) };
                    }
                }
                for (gi, sums) in sums.chunks_exact(256).enumerate() {
                    let sums: &[f32; 256] = sums.try_into().expect("256 sums a group");
                    let v = unsafe { tile_sums(sums) };
                    for (k, j) in (0..nr).flat_map(|k| (0..4).map(move |j| (k, j))) {
                        // SAFETY: element (token, row) is written by the task owning the row.
                        unsafe { y.write((4 * gi + j) * out + start + g + k, v[4 * k + j]) };
                    }
                }
                for tt in 4 * groups..t {
                    for (k, wrow) in wr.iter().enumerate().take(nr) {
                        // SAFETY: as above.
                        unsafe { y.write(tt * out + start + g + k, dot_bf16x2(wrow, xr(tt))) };
                    }
                }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "bf16 rows without AVX-512 ({:?})",
        (w.dtype(), rows, x.len(), t, tiles, y.ptr())
    )
}

#[cfg(not(target_arch = "x86_64"))]
pub fn matmul_rows(w: &Matrix, rows: Range<usize>, x: &[bf16], t: usize, y: SharedMut) {
    unreachable!(
        "bf16 panels without AVX-512 ({:?})",
        (w.dtype(), rows, x.len(), t, y.ptr())
    )
}

/// Row `r` of `w` rounded to bf16 into `out [cols]`: int8 and nf4 rows in one pass, others
/// through `f [cols]` in f32.
///
/// # Safety
/// The CPU has AVX-512 BF16.
#[cfg(target_arch = "x86_64")]
pub unsafe fn row_bf16(w: &Matrix, r: usize, f: &mut [f32], out: &mut [bf16]) {
    use super::arch::x86::bf16::{nf4_row_bf16, q8_row_bf16, round_bf16_avx512};
    use super::quant::rows::{qrow, QRow};
    match &w.data {
        Data::Q8(_) | Data::Nf4(_) => match qrow(w, r) {
            QRow::Q8 { qs, scales } => q8_row_bf16(qs, scales, out),
            QRow::Nf4 { packed, scales } => nf4_row_bf16(packed, scales, out),
        },
        _ => {
            w.row_f32(r, f);
            round_bf16_avx512(f, out);
        }
    }
}

/// The panel kernel for `nt` (1 to 12) tokens.
///
/// # Safety
/// As the kernel's; AVX-512 BF16 on this CPU.
#[cfg(target_arch = "x86_64")]
unsafe fn panel_tokens(
    nt: usize,
    panel: &[u32],
    pairs: usize,
    xs: impl Fn(usize) -> *const u32,
    ys: impl Fn(usize) -> *mut f32,
    n: usize,
    ahead: (*const u8, usize),
) {
    macro_rules! k {
        ($($n:literal)*) => {
            match nt {
                $($n => super::arch::x86::bf16::panel_kernel::<$n>(
                    panel,
                    pairs,
                    std::array::from_fn(&xs),
                    std::array::from_fn(&ys),
                    n,
                    ahead,
                ),)*
                _ => unreachable!("panel_tokens: {nt} tokens"),
            }
        };
    }
    k!(1 2 3 4 5 6 7 8 9 10 11 12)
}
