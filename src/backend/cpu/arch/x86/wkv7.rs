//! The RWKV-7 state update on AVX-512, sixteen rows (values) of a head at a time, in the
//! order of the portable body ([`crate::backend::cpu::wkv7`]): each row's sums over the
//! keys in sixteen lanes, key `j` in lane `j % 16`, the sixteen rows' lanes reduced
//! together by [`hsum512x16`] (each [`crate::backend::cpu::scalar::tree16`]'s order).

use super::hsum512x16;
use std::arch::x86_64::*;

/// One token's vectors over the keys of a head, `[n]` each: `-kk`, `kk * a`, the key, the
/// decay and the receptance.
pub struct Keys<'a> {
    pub neg_kk: &'a [f32],
    pub ka: &'a [f32],
    pub k: &'a [f32],
    pub w: &'a [f32],
    pub r: &'a [f32],
}

/// Update a head's state `st [n, n]` (`[value i, key j]`, `n` a multiple of 16) for one
/// token: row `i` becomes `s * w + sa[i] * ka + v[i] * k`, with `sa[i] = s . (-kk)` of the
/// row before; `o[i]` (when `o` is given) is the updated row dotted with `r`.
///
/// # Safety
/// AVX-512F on this CPU.
#[target_feature(enable = "avx512f")]
pub unsafe fn update_rows(st: &mut [f32], n: usize, x: &Keys, v: &[f32], o: Option<&mut [f32]>) {
    assert!(n.is_multiple_of(16) && st.len() >= n * n && v.len() >= n);
    for s in [x.neg_kk, x.ka, x.k, x.w, x.r] {
        assert!(s.len() >= n);
    }
    // chunk `c` of a key vector (a macro: a closure would not take the target feature)
    macro_rules! at {
        ($s:expr, $c:expr) => {
            _mm512_loadu_ps($s.as_ptr().add(16 * $c))
        };
    }
    let sp = st.as_mut_ptr();
    let chunks = n / 16;
    let mut sums = [0.0f32; 16];
    let mut o = o;
    for i0 in (0..n).step_by(16) {
        let mut acc = [_mm512_setzero_ps(); 16];
        for (rr, acc) in acc.iter_mut().enumerate() {
            let row = sp.add((i0 + rr) * n);
            for c in 0..chunks {
                let p = _mm512_mul_ps(_mm512_loadu_ps(row.add(16 * c)), at!(x.neg_kk, c));
                *acc = _mm512_add_ps(*acc, p);
            }
        }
        _mm512_storeu_ps(sums.as_mut_ptr(), hsum512x16(acc));
        let mut out = [_mm512_setzero_ps(); 16];
        for (rr, out) in out.iter_mut().enumerate() {
            let row = sp.add((i0 + rr) * n);
            let (sa, vi) = (_mm512_set1_ps(sums[rr]), _mm512_set1_ps(v[i0 + rr]));
            for c in 0..chunks {
                let s = _mm512_mul_ps(_mm512_loadu_ps(row.add(16 * c)), at!(x.w, c));
                let s = _mm512_add_ps(s, _mm512_mul_ps(sa, at!(x.ka, c)));
                let s = _mm512_add_ps(s, _mm512_mul_ps(vi, at!(x.k, c)));
                _mm512_storeu_ps(row.add(16 * c), s);
                *out = _mm512_add_ps(*out, _mm512_mul_ps(s, at!(x.r, c)));
            }
        }
        if let Some(o) = o.as_deref_mut() {
            _mm512_storeu_ps(o.as_mut_ptr().add(i0), hsum512x16(out));
        }
    }
}
