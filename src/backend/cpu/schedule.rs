//! Scheduling: independent products share one parallel region, split into row tasks over
//! rayon's threads; each task runs its product's kernel over its rows, then the product's
//! elementwise step ([`Step`]) on those rows while they are in that core's cache.
//!
//! Every output element is computed by one task in a fixed order, so results do not
//! depend on the thread count; a task's kernel and rows depend on the product alone, so
//! they do not depend on which products share the region either.

use super::bf16::{matmul_rows as bf16_rows, round_bf16, row_order_rows};
use super::dense;
use super::epilogue::Step;
use super::plan::{kernel, rows_per_task, Kernel};
use super::quant::{self, acts::QActs, rows::code_unit};
use super::shared::{with_scratch, SharedMut};
use crate::backend::Precision;
use crate::isa::Isa;
use crate::tensor::Matrix;
use half::bf16;
use rayon::prelude::*;
use std::cell::RefCell;

/// The most products one region runs together.
pub const MAX_JOBS: usize = 8;

/// One product of a region: `W [out, in]`, `x [t, in]` -> `y [t, out]`, then `then`.
pub struct MatJob<'a> {
    pub w: &'a Matrix,
    pub x: &'a [f32],
    pub y: &'a mut [f32],
    pub then: Step<'a>,
}

impl<'a> MatJob<'a> {
    /// `y = x . W^T`.
    pub fn new(w: &'a Matrix, x: &'a [f32], y: &'a mut [f32]) -> MatJob<'a> {
        MatJob {
            w,
            x,
            y,
            then: Step::None,
        }
    }

    /// This product followed by `then`.
    pub fn then(self, then: Step<'a>) -> MatJob<'a> {
        MatJob { then, ..self }
    }
}

thread_local! {
    /// Activations rounded to integers, one set per quantized product of the region.
    static ACTS: RefCell<Vec<QActs>> = RefCell::default();
    /// Activations rounded to bf16, `[t, x_stride(in)]` per product of the region.
    static XBF: RefCell<Vec<Vec<bf16>>> = RefCell::default();
}

/// `y = x . W^T` on a chosen instruction set and precision (tests and benchmarks compare
/// them).
pub fn matmul_with(isa: Isa, prec: Precision, w: &Matrix, x: &[f32], t: usize, y: &mut [f32]) {
    matmuls_with(isa, prec, t, &mut [MatJob::new(w, x, y)]);
}

/// Independent products over `t` tokens in one parallel region, each followed by its step.
pub fn matmuls_with(isa: Isa, prec: Precision, t: usize, jobs: &mut [MatJob<'_>]) {
    let mut region = Region::default();
    for j in jobs {
        let then = std::mem::replace(&mut j.then, Step::None);
        region.push(j.w, j.x, j.y, then);
    }
    region.run(isa, prec, t);
}

/// Up to [`MAX_JOBS`] independent products to run in one parallel region.
#[derive(Default)]
pub struct Region<'a> {
    jobs: [Option<Job<'a>>; MAX_JOBS],
    n: usize,
}

struct Job<'a> {
    w: &'a Matrix,
    x: &'a [f32],
    y: SharedMut,
    y_len: usize,
    then: Step<'a>,
}

impl<'a> Region<'a> {
    /// Add `y = x . W^T` followed by `then`.
    pub fn push(&mut self, w: &'a Matrix, x: &'a [f32], y: &'a mut [f32], then: Step<'a>) {
        assert!(self.n < MAX_JOBS, "matmuls: more than {MAX_JOBS} products");
        let y_len = y.len();
        self.jobs[self.n] = Some(Job {
            w,
            x,
            y: SharedMut::new(y),
            y_len,
            then,
        });
        self.n += 1;
    }

    /// Run every product over `t` tokens: row tasks of all of them in one parallel region.
    pub fn run(self, isa: Isa, prec: Precision, t: usize) {
        assert!(isa.runs_here(), "{isa:?} is not available on this CPU");
        let n = self.n;
        let jobs: [Option<Job>; MAX_JOBS] = self.jobs;
        let job = |i: usize| jobs[i].as_ref().expect("pushed");
        let kernels: [Kernel; MAX_JOBS] = std::array::from_fn(|i| {
            jobs[i]
                .as_ref()
                .map_or(Kernel::Dots, |j| kernel(isa, prec, j.w, t))
        });
        let per: [usize; MAX_JOBS] = std::array::from_fn(|i| {
            jobs[i].as_ref().map_or(1, |j| {
                rows_per_task(j.w.rows, j.w.cols, t, kernels[i].panel_rows())
            })
        });
        let mut first_task = [0usize; MAX_JOBS + 1];
        for i in 0..n {
            let j = job(i);
            assert_eq!(j.x.len(), t * j.w.cols, "matmul: x is not [t, in]");
            assert_eq!(j.y_len, t * j.w.rows, "matmul: y is not [t, out]");
            first_task[i + 1] = first_task[i] + j.w.rows.div_ceil(per[i]);
        }
        with_scratch(&ACTS, |acts| {
            with_scratch(&XBF, |xbf| {
                if acts.len() < n {
                    acts.resize_with(n, QActs::default);
                }
                if xbf.len() < n {
                    xbf.resize_with(n, Vec::new);
                }
                for i in 0..n {
                    let j = job(i);
                    match kernels[i] {
                        Kernel::Bf16Panels | Kernel::Bf16Dots | Kernel::Bf16Tiles => {
                            round_bf16(j.x, j.w.cols, &mut xbf[i])
                        }
                        Kernel::QuantDots | Kernel::QuantPanels => {
                            let (unit, act) = code_unit(j.w).expect("a quantized matrix");
                            acts[i].quantize(isa, j.x, j.w.cols, unit, act)
                        }
                        _ => {}
                    }
                }
                let (acts, xbf) = (&*acts, &*xbf);
                (0..first_task[n]).into_par_iter().for_each(|task| {
                    let i = first_task[1..=n].partition_point(|&f| f <= task);
                    let (j, w) = (job(i), job(i).w);
                    let r0 = (task - first_task[i]) * per[i];
                    let rows = r0..(r0 + per[i]).min(w.rows);
                    run(
                        isa,
                        kernels[i],
                        w,
                        j.x,
                        rows.clone(),
                        &acts[i],
                        &xbf[i],
                        t,
                        j.y,
                    );
                    if !matches!(j.then, Step::None) {
                        for ti in 0..t {
                            // SAFETY: the outputs (ti, rows) are this task's alone, written
                            // above, and in bounds (y is [t, out]).
                            let run = unsafe { j.y.run(ti * w.rows + rows.start, rows.len()) };
                            j.then.apply(ti, w.rows, rows.start, run);
                        }
                    }
                });
            })
        });
    }
}

/// Rows `rows` of one product on `kernel`.
#[allow(clippy::too_many_arguments)]
fn run(
    isa: Isa,
    kernel: Kernel,
    w: &Matrix,
    x: &[f32],
    rows: std::ops::Range<usize>,
    acts: &QActs,
    xbf: &[bf16],
    t: usize,
    y: SharedMut,
) {
    match kernel {
        Kernel::Dots => dense::dot_rows(isa, w, rows, x, t, y),
        Kernel::Narrow16 => {
            let rest = dense::narrow_rows(w, rows, x, t, y);
            dense::dot_rows(isa, w, rest, x, t, y)
        }
        Kernel::Tiles => dense::tile_rows(isa, w, rows, x, t, y),
        Kernel::StoredTiles => dense::stored_tile_rows(w, rows, x, t, y),
        Kernel::Bf16Panels => bf16_rows(w, rows, xbf, t, y),
        Kernel::Bf16Dots => row_order_rows(w, rows, xbf, t, false, y),
        Kernel::Bf16Tiles => row_order_rows(w, rows, xbf, t, true, y),
        Kernel::QuantDots => quant::matmul_rows(isa, w, rows, acts, t, false, y),
        Kernel::QuantPanels => quant::matmul_rows(isa, w, rows, acts, t, true, y),
    }
}
