// (mix_shift) out [T, D] = xx + sx * (maa[c] + delta) where delta [T, D] is used when has_delta.
// Global size (T * D).
__kernel void mix_shift(__global const float *xx, __global const float *sx,
                  __global const float *maa, __global const float *delta,
                  __global float *out, const int D, const int has_delta) {
    const int i = get_global_id(0);
    const float d = has_delta ? delta[i] : 0.0f;
    out[i] = xx[i] + sx[i] * (maa[i % D] + d);
}

// dst [T, n] = src[:, off .. off + n] for src [T, cols]. Global size (T * n).
__kernel void take_cols(__global const float *src, __global float *dst, const int cols,
                        const int off, const int n) {
    const int i = get_global_id(0);
    const int t = i / n, j = i % n;
    dst[i] = src[(size_t)t * cols + off + j];
}

// dst [n] = src[off .. off + n]. Global size (n).
__kernel void copy_range(__global const float *src, __global float *dst, const int off) {
    const int i = get_global_id(0);
    dst[i] = src[off + i];
}
