//! x86-64 kernels in `std::arch`, chosen at run time: AVX-512F, or AVX2 + FMA + F16C.
//! Everything here has a portable twin in `super` (the `wide` kernels) and a scalar twin the
//! tests compare it with; callers go through [`Isa::detect`] and never reach a kernel the
//! CPU lacks.
//!
//! Kernels:
//! - `dot_{f32,f16,bf16}`: one stored weight row `[n]` against an f32 vector `[n]`,
//!   converting the weights in registers (the one-token path, bound by memory bandwidth);
//! - `tile4x4`: four f32 rows `[4][n]` against four f32 tokens `[4][n]`, sixteen sums, so
//!   that every load feeds four FMAs (the sequence path, bound by arithmetic).
//!
//! Within one instruction set every kernel sums a (row, token) pair in the same order (one
//! lane-wise accumulator, the same reduction, then the scalar tail), and converting bf16 or
//! f16 to f32 is exact, so a token's result does not depend on which kernel computed it:
//! outputs are identical whatever the chunk size or the thread count.

#![allow(clippy::missing_safety_doc)]

use std::sync::OnceLock;

/// How far ahead of its reads a one-token kernel asks for weights, in bytes
/// ([`prefetch_ahead`]).
///
/// The lines go into L2 only (`prefetcht1`). That leaves L1's few miss buffers to the
/// kernel's own loads. Measured in paired runs on the 1.6B shape, against `prefetcht0`
/// 2 KiB ahead (the share of the bandwidth limit in the same rounds):
/// - bf16: 87-88 % -> 92-95 %;
/// - f16 (no prefetch before): 80-81 % -> 89 %;
/// - int8: 87 % -> 90-91 %;
/// - nf4: 12 % faster generation. One core streams 22-23 GB/s of nf4 products instead of
///   17-19.
///
/// 8 KiB ahead was the same for bf16 and slower for int8 (83-86 %).
pub const PREFETCH_AHEAD: usize = 4096;

/// Ask for the cache line `ahead` bytes past `p` into L2. Only a hint: the address may lie
/// past the end of the weights.
#[inline(always)]
pub fn prefetch_ahead<T>(p: *const T, ahead: usize) {
    prefetch_l2((p as *const i8).wrapping_add(ahead));
}

/// Ask for the cache line at `p` into L2. Only a hint: `p` may be any address.
#[inline(always)]
pub fn prefetch_l2<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// The instruction set the kernels use on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    /// `wide` (SSE2 on x86-64, NEON on aarch64...).
    Portable,
}

impl Isa {
    /// The best the CPU has, detected once; `RWKV_ISA=portable|avx2|avx512` lowers it (for
    /// benchmarks and tests), never past what the CPU has.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::best();
            match std::env::var("RWKV_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if best != Isa::Portable => Isa::Avx2,
                _ => best,
            }
        })
    }

    /// What the CPU supports.
    pub fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run `self`.
    pub fn runs_here(self) -> bool {
        matches!(
            (self, Isa::best()),
            (Isa::Portable, _) | (Isa::Avx2, Isa::Avx2 | Isa::Avx512) | (Isa::Avx512, Isa::Avx512)
        )
    }

    /// Every instruction set this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        match Isa::best() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2, Isa::Portable],
            Isa::Avx2 => vec![Isa::Avx2, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub mod x86 {
    use crate::tensor::quant::{BLOCK, NF4};
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    // ---- AVX-512 ----

    /// `v`'s lanes summed as a tree, by halves: lane `i` plus lane `i + 8`, then `i + 4`,
    /// `i + 2` and `i + 1`. Every AVX-512 f32 product reduces its sums so, and
    /// [`hsum512x16`] reduces sixteen at once in the same order.
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub(crate) unsafe fn hsum512(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        let a = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
        let b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
        let c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps::<1>(c, c)))
    }

    /// How the levels of a sixteen-vector reduction ([`sum_halves`], [`sum_chunk_pairs`],
    /// [`sum_chunks`]) add lanes: as f32 ([`F32Lanes`], the sums of the f32 kernels) or as
    /// the i32 the same bits hold ([`I32Lanes`], the integer sums of `qdot`).
    pub(crate) trait Lanes {
        unsafe fn add(a: __m512, b: __m512) -> __m512;
    }

    pub(crate) struct F32Lanes;
    pub(crate) struct I32Lanes;

    impl Lanes for F32Lanes {
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            _mm512_add_ps(a, b)
        }
    }

    impl Lanes for I32Lanes {
        #[inline(always)]
        unsafe fn add(a: __m512, b: __m512) -> __m512 {
            let (a, b) = (_mm512_castps_si512(a), _mm512_castps_si512(b));
            _mm512_castsi512_ps(_mm512_add_epi32(a, b))
        }
    }

    /// The first level, `i + 8`: `[a0 + a2, a1 + a3, b0 + b2, b1 + b3]` in 128-bit chunks,
    /// each vector's eight sums side by side.
    #[inline(always)]
    pub(crate) unsafe fn sum_halves<L: Lanes>(a: __m512, b: __m512) -> __m512 {
        let lo = _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b);
        let hi = _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b);
        L::add(lo, hi)
    }

    /// The second level, `i + 4`: `[a0 + a1, a2 + a3, b0 + b1, b2 + b3]` in 128-bit chunks.
    #[inline(always)]
    pub(crate) unsafe fn sum_chunk_pairs<L: Lanes>(a: __m512, b: __m512) -> __m512 {
        let lo = _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b);
        let hi = _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b);
        L::add(lo, hi)
    }

    /// The last levels, `i + 2` and `i + 1`, of sixteen sums whose four partial lanes sit in
    /// chunk `c` of `u[k]` (sum `4k + c`): lane `r` of the result is sum `r`.
    #[inline(always)]
    pub(crate) unsafe fn sum_chunks<L: Lanes>(u: [__m512; 4]) -> __m512 {
        // lane j of s[k]'s chunk c: sums 8k + c (j < 2) and 8k + 4 + c, two lanes each
        let mut s = [_mm512_setzero_ps(); 2];
        for k in 0..2 {
            let (a, b) = (u[2 * k], u[2 * k + 1]);
            s[k] = L::add(
                _mm512_shuffle_ps::<0x44>(a, b),
                _mm512_shuffle_ps::<0xEE>(a, b),
            );
        }
        // lane 4c + m holds sum 4m + c; put sum r in lane r
        let f = L::add(
            _mm512_shuffle_ps::<0x88>(s[0], s[1]),
            _mm512_shuffle_ps::<0xDD>(s[0], s[1]),
        );
        let idx = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
        _mm512_permutexvar_ps(idx, f)
    }

    /// Lane `r` of the result is `hsum512(v[r])`, bit for bit: the same tree for sixteen
    /// vectors at once, each level adding halves of two vectors' lanes side by side (45
    /// instructions where sixteen reductions take about 140).
    #[inline(always)]
    unsafe fn hsum512x16(v: [__m512; 16]) -> __m512 {
        let mut w = [_mm512_setzero_ps(); 8];
        for k in 0..8 {
            w[k] = sum_halves::<F32Lanes>(v[2 * k], v[2 * k + 1]);
        }
        let mut u = [_mm512_setzero_ps(); 4];
        for k in 0..4 {
            u[k] = sum_chunk_pairs::<F32Lanes>(w[2 * k], w[2 * k + 1]);
        }
        sum_chunks::<F32Lanes>(u)
    }

    /// Sixteen rows of `n` weights (`n` a multiple of 16; row `r` at `w[r * n..]`) against
    /// `x [n]`: `out[r]` is the one-token dot of the row type (`dot_*_avx512`), bit for bit.
    /// For narrow matrices (the LoRA factors, 32 or 64 wide), whose rows are a cache line
    /// or two: reducing sixteen sums at once halves a row's instructions.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn rows16_avx512<W: Wide512>(w: &[W], x: &[f32], out: &mut [f32]) {
        let n = x.len();
        assert!(n.is_multiple_of(16) && w.len() == 16 * n && out.len() == 16);
        let mut acc = [_mm512_setzero_ps(); 16];
        for i in (0..n).step_by(16) {
            let xv = _mm512_loadu_ps(x.as_ptr().add(i));
            for (r, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(W::load16(w.as_ptr().add(r * n + i)), xv, *acc);
            }
        }
        _mm512_storeu_ps(out.as_mut_ptr(), hsum512x16(acc));
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f32_avx512(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(wp.add(i)), _mm512_loadu_ps(xp.add(i)), acc);
            i += 16;
        }
        let mut s = hsum512(acc);
        for j in i..n {
            s += w[j] * x[j];
        }
        s
    }

    /// 16 bf16 at `p` as f32: the bf16 bits are the high half of the f32.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load_bf16x16(p: *const bf16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_bf16_avx512(w: &[bf16], x: &[f32]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            if i % 32 == 0 {
                super::prefetch_ahead(wp.add(i), super::PREFETCH_AHEAD);
            }
            acc = _mm512_fmadd_ps(load_bf16x16(wp.add(i)), _mm512_loadu_ps(xp.add(i)), acc);
            i += 16;
        }
        let mut s = hsum512(acc);
        for j in i..n {
            s += w[j].to_f32() * x[j];
        }
        s
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot_f16_avx512(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            if i % 32 == 0 {
                super::prefetch_ahead(wp.add(i), super::PREFETCH_AHEAD);
            }
            acc = _mm512_fmadd_ps(
                _mm512_cvtph_ps(_mm256_loadu_si256(wp.add(i) as *const __m256i)),
                _mm512_loadu_ps(xp.add(i)),
                acc,
            );
            i += 16;
        }
        let mut s = hsum512(acc);
        for j in i..n {
            s += w[j].to_f32() * x[j];
        }
        s
    }

    /// A stored weight type that the AVX-512 tile widens to f32 in registers, so that the
    /// sequence path reads 16-bit rows as stored, not converted copies of twice the size.
    pub trait Wide512: Copy {
        /// 16 weights at `p` as f32.
        unsafe fn load16(p: *const Self) -> __m512;
        fn f32(self) -> f32;
    }

    impl Wide512 for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }
        #[inline(always)]
        fn f32(self) -> f32 {
            self
        }
    }

    impl Wide512 for bf16 {
        #[inline(always)]
        unsafe fn load16(p: *const bf16) -> __m512 {
            load_bf16x16(p)
        }
        #[inline(always)]
        fn f32(self) -> f32 {
            self.to_f32()
        }
    }

    impl Wide512 for f16 {
        #[inline(always)]
        unsafe fn load16(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }
        #[inline(always)]
        fn f32(self) -> f32 {
            self.to_f32()
        }
    }

    /// `out[r][t] = w[r] . x[t]` for four rows and four tokens of length `n`: each pair
    /// summed exactly as the one-token dots of the same row type sum it.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn tile4x4_avx512<W: Wide512>(
        w: [&[W]; 4],
        x: [&[f32]; 4],
        out: &mut [[f32; 4]; 4],
    ) {
        let n = w[0].len();
        let wp = w.map(|r| r.as_ptr());
        let xp = x.map(|r| r.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i + 16 <= n {
            let wv = [
                W::load16(wp[0].add(i)),
                W::load16(wp[1].add(i)),
                W::load16(wp[2].add(i)),
                W::load16(wp[3].add(i)),
            ];
            for t in 0..4 {
                let xv = _mm512_loadu_ps(xp[t].add(i));
                for r in 0..4 {
                    acc[r][t] = _mm512_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
            i += 16;
        }
        for r in 0..4 {
            for t in 0..4 {
                let mut s = hsum512(acc[r][t]);
                for j in i..n {
                    s += w[r][j].f32() * x[t][j];
                }
                out[r][t] = s;
            }
        }
    }

    // ---- AVX-512 BF16: activations rounded to bf16, `vdpbf16ps` ----

    /// Whether this CPU has `vdpbf16ps` and `vcvtneps2bf16` (AVX-512 BF16).
    pub fn has_bf16_dot() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    }

    /// `x [n]` rounded to bf16 (to nearest, ties to even) into `out [n]`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn round_bf16_avx512(x: &[f32], out: &mut [bf16]) {
        let n = x.len();
        assert_eq!(out.len(), n, "round_bf16: lengths differ");
        let (xp, op) = (x.as_ptr(), out.as_mut_ptr());
        let mut i = 0;
        while i + 16 <= n {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(xp.add(i)));
            _mm256_storeu_si256(
                op.add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
            i += 16;
        }
        for j in i..n {
            out[j] = bf16::from_f32(x[j]);
        }
    }

    /// Sixteen f32 rounded to bf16 (to nearest, ties to even) and stored at `o`.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    unsafe fn store_bf16x16(o: *mut bf16, v: __m512) {
        let h = _mm512_cvtneps_pbh(v);
        _mm256_storeu_si256(
            o as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(h),
        );
    }

    /// An int8 row (`qs [n]`, `scales [n / 64]`) dequantized and rounded to bf16 into
    /// `out [n]`: the bits [`crate::tensor::quant::dequantize_q8`] then
    /// [`round_bf16_avx512`] give, in one pass.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn q8_row_bf16(qs: &[i8], scales: &[f32], out: &mut [bf16]) {
        assert!(qs.len() == out.len() && qs.len() == scales.len() * BLOCK);
        for (b, &s) in scales.iter().enumerate() {
            let s = _mm512_set1_ps(s);
            for k in 0..BLOCK / 16 {
                let i = b * BLOCK + 16 * k;
                let q = _mm_loadu_si128(qs.as_ptr().add(i) as *const __m128i);
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), s);
                store_bf16x16(out.as_mut_ptr().add(i), v);
            }
        }
    }

    /// An nf4 row (`packed [n / 2]`, `scales [n / 64]`) dequantized and rounded to bf16
    /// into `out [n]`, as [`q8_row_bf16`]: codes looked up in the code book by `vpermps`.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn nf4_row_bf16(packed: &[u8], scales: &[bf16], out: &mut [bf16]) {
        assert!(2 * packed.len() == out.len() && out.len() == scales.len() * BLOCK);
        let book = _mm512_loadu_ps(NF4.as_ptr());
        for (b, s) in scales.iter().enumerate() {
            let s = _mm512_set1_ps(s.to_f32());
            // byte j of a block holds weights j (low nibble) and j + 32 (high)
            for k in 0..2 {
                let p = packed.as_ptr().add(b * BLOCK / 2 + 16 * k) as *const __m128i;
                let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p));
                // `vpermps` reads the low four bits of an index
                let lo = _mm512_permutexvar_ps(bytes, book);
                let hi = _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(bytes), book);
                let o = out.as_mut_ptr().add(b * BLOCK + 16 * k);
                store_bf16x16(o, _mm512_mul_ps(lo, s));
                store_bf16x16(o.add(BLOCK / 2), _mm512_mul_ps(hi, s));
            }
        }
    }

    /// Rows of a panel, the unit of the bf16 sequence kernel: two registers of sixteen.
    pub const PANEL_ROWS: usize = 32;

    /// Tokens one call of [`panel_kernel`] multiplies at most: 2 x 12 accumulators, two
    /// weight registers, the rest for the broadcasts.
    pub const PANEL_TOKENS: usize = 12;

    /// Masks of the first `n` of 32 lanes, as two halves.
    #[inline(always)]
    pub(crate) fn lane_masks(n: usize) -> [__mmask16; 2] {
        let m = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
        [m as __mmask16, (m >> 16) as __mmask16]
    }

    /// The 16 x 16 transpose of 32-bit words: `out[c]` holds word `c` of every `r[i]`.
    #[inline(always)]
    pub(crate) unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        // 4 x 4 transposes within each 128-bit lane: c[g][m], lane l, is word 4l + m of
        // rows 4g..4g + 4.
        let mut c = [[_mm512_setzero_si512(); 4]; 4];
        for g in 0..4 {
            let t0 = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]);
            let t1 = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
            let t2 = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]);
            let t3 = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
            c[g] = [
                _mm512_unpacklo_epi64(t0, t2),
                _mm512_unpackhi_epi64(t0, t2),
                _mm512_unpacklo_epi64(t1, t3),
                _mm512_unpackhi_epi64(t1, t3),
            ];
        }
        // Then the 4 x 4 transpose of the lanes: word 4l + m is lane l of c[0..4][m].
        let mut out = [_mm512_setzero_si512(); 16];
        for m in 0..4 {
            let u0 = _mm512_shuffle_i32x4::<0x44>(c[0][m], c[1][m]);
            let u1 = _mm512_shuffle_i32x4::<0xEE>(c[0][m], c[1][m]);
            let u2 = _mm512_shuffle_i32x4::<0x44>(c[2][m], c[3][m]);
            let u3 = _mm512_shuffle_i32x4::<0xEE>(c[2][m], c[3][m]);
            out[m] = _mm512_shuffle_i32x4::<0x88>(u0, u2);
            out[4 + m] = _mm512_shuffle_i32x4::<0xDD>(u0, u2);
            out[8 + m] = _mm512_shuffle_i32x4::<0x88>(u1, u3);
            out[12 + m] = _mm512_shuffle_i32x4::<0xDD>(u1, u3);
        }
        out
    }

    /// Pack `n` (at most [`PANEL_ROWS`]) rows of bf16 weights for [`panel_kernel`]: row `r`
    /// starts at `base + r * stride` (`stride` even) and holds `2 * pairs` weights; pair
    /// `kk` (columns `2kk`, `2kk + 1`) of row `r` goes to `panel[kk * 32 + r]` as one u32,
    /// rows past `n` are zero. Sixteen rows by sixteen pairs at a time, transposed in
    /// registers.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn pack_panel_avx512(
        base: *const bf16,
        stride: usize,
        n: usize,
        pairs: usize,
        panel: &mut [u32],
    ) {
        assert!(stride.is_multiple_of(2) && n <= PANEL_ROWS && panel.len() >= pairs * 32);
        let (words, s) = (base as *const i32, stride / 2);
        let out = panel.as_mut_ptr() as *mut __m512i;
        for k0 in (0..pairs).step_by(16) {
            let cols = (pairs - k0).min(16);
            let mask = ((1u32 << cols) - 1) as __mmask16;
            for half in 0..2 {
                let here = n.saturating_sub(16 * half).min(16);
                let rows: [__m512i; 16] = std::array::from_fn(|i| {
                    if i < here {
                        _mm512_maskz_loadu_epi32(mask, words.add((16 * half + i) * s + k0))
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                let t = transpose16(rows);
                for (c, v) in t.iter().enumerate().take(cols) {
                    _mm512_storeu_si512(out.add(2 * (k0 + c) + half), *v);
                }
            }
        }
    }

    /// `y[j][r] = sum_kk panel[kk][r] . x[j][kk]` for `N` tokens and the first `n` rows of a
    /// panel ([`pack_panel_avx512`]): `x[j]` points at token `j`'s bf16 activations as
    /// `pairs` u32 pairs, `y[j]` at its 32 outputs. Each output is one f32 lane summing its
    /// pairs in order, so it does not depend on `N`, on the panel or on the thread. With the
    /// panel in L1, 97 % of `vdpbf16ps`'s peak. `ahead`: `(p, lines)`, cache lines from `p`
    /// to ask for into L2 along the way (the next panel's weights).
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub unsafe fn panel_kernel<const N: usize>(
        panel: &[u32],
        pairs: usize,
        x: [*const u32; N],
        y: [*mut f32; N],
        n: usize,
        ahead: (*const u8, usize),
    ) {
        assert!(panel.len() >= pairs * 32);
        let p = panel.as_ptr() as *const __m512i;
        let mut acc = [[_mm512_setzero_ps(); N]; 2];
        // `ahead`: cache lines to ask for, one every `every` pairs, spread over the call.
        let (pf, lines) = ahead;
        let every = (pairs / lines.max(1)).max(1);
        let (mut asked, mut at) = (0, 0);
        for kk in 0..pairs {
            if kk == at && asked < lines {
                super::prefetch_l2(pf.wrapping_add(64 * asked));
                (asked, at) = (asked + 1, at + every);
            }
            let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(p.add(2 * kk)));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(p.add(2 * kk + 1)));
            for j in 0..N {
                let xv = _mm512_set1_epi32(std::ptr::read_unaligned(x[j].add(kk)) as i32);
                let xv: __m512bh = std::mem::transmute(xv);
                acc[0][j] = _mm512_dpbf16_ps(acc[0][j], w0, xv);
                acc[1][j] = _mm512_dpbf16_ps(acc[1][j], w1, xv);
            }
        }
        let [m0, m1] = lane_masks(n);
        for j in 0..N {
            _mm512_mask_storeu_ps(y[j], m0, acc[0][j]);
            _mm512_mask_storeu_ps(y[j].add(16), m1, acc[1][j]);
        }
    }

    // ---- AVX2 + FMA + F16C ----

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum256(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_f32_avx2(w: &[f32], x: &[f32]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc);
            i += 8;
        }
        let mut s = hsum256(acc);
        for j in i..n {
            s += w[j] * x[j];
        }
        s
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_bf16x8(p: *const bf16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_bf16_avx2(w: &[bf16], x: &[f32]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            if i % 32 == 0 {
                super::prefetch_ahead(wp.add(i), super::PREFETCH_AHEAD);
            }
            acc = _mm256_fmadd_ps(load_bf16x8(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc);
            i += 8;
        }
        let mut s = hsum256(acc);
        for j in i..n {
            s += w[j].to_f32() * x[j];
        }
        s
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f16_avx2(w: &[f16], x: &[f32]) -> f32 {
        let n = w.len();
        let (wp, xp) = (w.as_ptr(), x.as_ptr());
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            acc = _mm256_fmadd_ps(
                _mm256_cvtph_ps(_mm_loadu_si128(wp.add(i) as *const __m128i)),
                _mm256_loadu_ps(xp.add(i)),
                acc,
            );
            i += 8;
        }
        let mut s = hsum256(acc);
        for j in i..n {
            s += w[j].to_f32() * x[j];
        }
        s
    }

    /// As [`tile4x4_avx512`], eight lanes.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile4x4_avx2(w: [&[f32]; 4], x: [&[f32]; 4], out: &mut [[f32; 4]; 4]) {
        let n = w[0].len();
        let wp = w.map(|r| r.as_ptr());
        let xp = x.map(|r| r.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); 4]; 4];
        let mut i = 0;
        while i + 8 <= n {
            let wv = [
                _mm256_loadu_ps(wp[0].add(i)),
                _mm256_loadu_ps(wp[1].add(i)),
                _mm256_loadu_ps(wp[2].add(i)),
                _mm256_loadu_ps(wp[3].add(i)),
            ];
            for t in 0..4 {
                let xv = _mm256_loadu_ps(xp[t].add(i));
                for r in 0..4 {
                    acc[r][t] = _mm256_fmadd_ps(wv[r], xv, acc[r][t]);
                }
            }
            i += 8;
        }
        for r in 0..4 {
            for t in 0..4 {
                let mut s = hsum256(acc[r][t]);
                for j in i..n {
                    s += w[r][j] * x[t][j];
                }
                out[r][t] = s;
            }
        }
    }
}
