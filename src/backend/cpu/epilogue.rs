//! The elementwise step after a product ([`crate::backend::Then`]) as the CPU runs it: on a
//! run of one token's consecutive outputs, in the task that summed them. Each output is
//! treated on its own (its value depends on its token and column only), so however a
//! product's rows are split into tasks, no bit changes.

use super::shared::SharedMut;

/// `x / (1 + e^-x)`.
#[inline]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `1 / (1 + e^-x)`.
#[inline]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A product's step, its operands as slices whose row `i` goes with the product's row `i`
/// (rows of the product's width, `cols`), and its targets as pointers the tasks write
/// disjoint parts of.
pub enum Step<'a> {
    None,
    Tanh,
    Sigmoid,
    Silu,
    ReluSquared,
    /// `y = exp(-exp(bias + y))`.
    ExpNegExp(&'a [f32]),
    /// `y = exp(-0.606531 * sigmoid(bias + y))`.
    SigmoidDecay(&'a [f32]),
    /// `y = sigmoid(bias + y)`.
    SigmoidPlus(&'a [f32]),
    /// `y = xx + sx * (maa + y)`.
    Mix {
        xx: &'a [f32],
        sx: &'a [f32],
        maa: &'a [f32],
    },
    /// `x += y`.
    Residual(SharedMut),
    /// `y *= gate; x += y`.
    GatedResidual {
        gate: &'a [f32],
        x: SharedMut,
    },
    /// `x *= bias + y`.
    Scale {
        bias: &'a [f32],
        x: SharedMut,
    },
}

impl Step<'_> {
    /// Apply to `y`, token `ti`'s outputs from column `c0` of a product `cols` wide.
    #[inline]
    pub fn apply(&self, ti: usize, cols: usize, c0: usize, y: &mut [f32]) {
        let at = ti * cols + c0;
        match self {
            Step::None => {}
            Step::Tanh => y.iter_mut().for_each(|v| *v = v.tanh()),
            Step::Sigmoid => y.iter_mut().for_each(|v| *v = sigmoid(*v)),
            Step::Silu => y.iter_mut().for_each(|v| *v = silu(*v)),
            Step::ReluSquared => y.iter_mut().for_each(|v| *v = v.max(0.0) * v.max(0.0)),
            Step::ExpNegExp(bias) => {
                for (v, b) in y.iter_mut().zip(&bias[c0..]) {
                    *v = (-(b + *v).exp()).exp();
                }
            }
            Step::SigmoidDecay(bias) => {
                for (v, b) in y.iter_mut().zip(&bias[c0..]) {
                    *v = (-0.606531 * sigmoid(b + *v)).exp();
                }
            }
            Step::SigmoidPlus(bias) => {
                for (v, b) in y.iter_mut().zip(&bias[c0..]) {
                    *v = sigmoid(b + *v);
                }
            }
            Step::Mix { xx, sx, maa } => {
                let ins = y.iter_mut().zip(&xx[at..]).zip(&sx[at..]);
                ins.zip(&maa[c0..])
                    .for_each(|(((o, x), s), m)| *o = x + s * (m + *o));
            }
            Step::Residual(x) => {
                // SAFETY: this run's elements of x belong to this task alone.
                let x = unsafe { x.run(at, y.len()) };
                x.iter_mut().zip(y.iter()).for_each(|(x, y)| *x += y);
            }
            Step::Scale { bias, x } => {
                // SAFETY: as above.
                let x = unsafe { x.run(at, y.len()) };
                let xs = x.iter_mut().zip(y.iter());
                xs.zip(&bias[c0..]).for_each(|((x, y), b)| *x *= b + y);
            }
            Step::GatedResidual { gate, x } => {
                y.iter_mut().zip(&gate[at..]).for_each(|(v, g)| *v *= g);
                // SAFETY: as above.
                let x = unsafe { x.run(at, y.len()) };
                x.iter_mut().zip(y.iter()).for_each(|(x, y)| *x += y);
            }
        }
    }
}
