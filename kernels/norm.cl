// LayerNorm, and LayerNorm with the token shift and the static mixes (the backend's
// `NormShift`). One work-group of NORM_LS items per row.
#define NORM_LS 64

// The mean and 1 / sqrt(var + eps) of row v [n], reduced in `part` by the whole group.
inline float2 row_stats(__global const float *v, int n, float eps, __local float *part) {
    const int l = get_local_id(0);
    float s = 0.0f;
    for (int i = l; i < n; i += NORM_LS) s += v[i];
    part[l] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = NORM_LS / 2; k > 0; k >>= 1) {
        if (l < k) part[l] += part[l + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float mean = part[0] / n;
    barrier(CLK_LOCAL_MEM_FENCE);
    s = 0.0f;
    for (int i = l; i < n; i += NORM_LS) s += (v[i] - mean) * (v[i] - mean);
    part[l] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = NORM_LS / 2; k > 0; k >>= 1) {
        if (l < k) part[l] += part[l + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float inv = 1.0f / sqrt(part[0] / n + eps);
    barrier(CLK_LOCAL_MEM_FENCE);
    return (float2)(mean, inv);
}

// x [rows, D] from element x_off: each row normalised in place, then * w + b.
__kernel __attribute__((reqd_work_group_size(NORM_LS, 1, 1))) void layer_norm(
    __global float *x, const int x_off, const int D, __global const float *w,
    __global const float *b, const float eps) {
    __local float part[NORM_LS];
    __global float *v = x + x_off + (size_t)get_group_id(0) * D;
    const float2 st = row_stats(v, D, eps, part);
    for (int i = get_local_id(0); i < D; i += NORM_LS) v[i] = (v[i] - st.x) * st.y * w[i] + b[i];
}

#define MIX(n) __global const float *maa##n, __global float *out##n
#define MIX_OUT(n)                                                                       \
    if (n < nmix && t >= from) out##n[mix_off + (size_t)(t - from) * D + i] = xv + sv * maa##n[i];

// One stream's rows x [T, D] from x_off: xx = LayerNorm(x); sx[t] = prev(t) - xx[t] with
// prev(0) the shift state [D] (state + shift_off) and prev(t) = xx[t-1]; then for rows t >=
// from, out_m[t - from] = xx + sx * maa_m for the first nmix mixes. The group of row 0 also
// sets the shift state to xx[T-1], after reading it: no other group reads the state. The
// mixes' rows start at element mix_off of each out.
__kernel __attribute__((reqd_work_group_size(NORM_LS, 1, 1))) void norm_shift(
    __global const float *x, const int x_off, __global float *xx, __global float *sx,
    const int xs_off, __global float *state, const int shift_off, __global const float *w,
    __global const float *b, const float eps, const int D, const int T, const int from,
    const int nmix, const int mix_off, MIX(0), MIX(1), MIX(2), MIX(3), MIX(4), MIX(5)) {
    __local float part[NORM_LS];
    const int t = get_group_id(0);
    const int l = get_local_id(0);
    __global const float *row = x + x_off + (size_t)t * D;
    const float2 st = row_stats(row, D, eps, part);
    float2 sp = (float2)(0.0f, 0.0f);
    if (t > 0) sp = row_stats(row - D, D, eps, part);
    __global float *shift = state + shift_off;
    for (int i = l; i < D; i += NORM_LS) {
        const float xv = (row[i] - st.x) * st.y * w[i] + b[i];
        const float prev = t > 0 ? (row[i - D] - sp.x) * sp.y * w[i] + b[i] : shift[i];
        const float sv = prev - xv;
        xx[xs_off + (size_t)t * D + i] = xv;
        sx[xs_off + (size_t)t * D + i] = sv;
        MIX_OUT(0) MIX_OUT(1) MIX_OUT(2) MIX_OUT(3) MIX_OUT(4) MIX_OUT(5)
    }
    if (t == 0) {
        barrier(CLK_GLOBAL_MEM_FENCE);
        __global const float *last = x + x_off + (size_t)(T - 1) * D;
        const float2 sl = row_stats(last, D, eps, part);
        for (int i = l; i < D; i += NORM_LS) shift[i] = (last[i] - sl.x) * sl.y * w[i] + b[i];
    }
}
