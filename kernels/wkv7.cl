// The RWKV-7 recurrence (the backend's `Wkv7`) for one stream's T rows, D = H * N, with its
// GroupNorm, bonus and gate. One work-group of N items per head h; item i owns row i of
// the head's state [N, N] ([head, value i, key j]), kept in registers. Per token t, on the
// head's channels c_j = h * N + j:
//   kk = normalize(k * k_k);  k' = k * (1 + (a - 1) * k_a)
//   v' = v + (v_first - v) * vg, or in layer 0 (no vg) v_first = v' = v
//   sa = sum_j s[j] (-kk[j]);  s[j] = s[j] w[j] + sa kk[j] a[j] + v'[i] k'[j]
//   out = sum_j s[j] r[j]; for t >= from:
//   out = (GroupNorm(out over the head; ln_x) + (sum_j r[j] k'[j] r_k[c_j]) v'[i]) * g[t - from]
#define WKV7_MAX_N 64

__kernel void wkv7(__global const float *r, __global const float *w, __global const float *k,
                   __global const float *v, __global const float *a, __global const float *vg,
                   __global float *v_first, const int row_off, const int has_vg,
                   __global const float *k_k, __global const float *k_a,
                   __global const float *r_k, __global float *state, const int state_off,
                   __global float *out, const int out_off, __global const float *ln_w,
                   __global const float *ln_b, const float eps, __global const float *g,
                   const int g_off, const int from, const int T, const int N) {
    const int h = get_group_id(0);
    const int i = get_local_id(0);
    const int D = get_num_groups(0) * N;
    const int c = h * N + i;
    __local float kkl[WKV7_MAX_N], kal[WKV7_MAX_N], kl[WKV7_MAX_N], rl[WKV7_MAX_N],
        wl[WKV7_MAX_N], red[WKV7_MAX_N];
    float st[WKV7_MAX_N];
    __global float *sh = state + state_off + (size_t)h * N * N + (size_t)i * N;
    for (int j = 0; j < N; j++) st[j] = sh[j];
    for (int t = 0; t < T; t++) {
        const size_t at = row_off + (size_t)t * D + c;
        const float kraw = k[at] * k_k[c];
        red[i] = kraw * kraw;
        barrier(CLK_LOCAL_MEM_FENCE);
        float sq = 0.0f;
        for (int j = 0; j < N; j++) sq += red[j];
        const float kk = kraw / fmax(sqrt(sq), 1e-12f);
        const float av = a[at];
        kkl[i] = kk;
        kal[i] = kk * av;
        kl[i] = k[at] * (1.0f + (av - 1.0f) * k_a[c]);
        rl[i] = r[at];
        wl[i] = w[at];
        float vv = v[at];
        if (has_vg) vv = vv + (v_first[at] - vv) * vg[at];
        else v_first[at] = vv;
        barrier(CLK_LOCAL_MEM_FENCE);
        float sa = 0.0f;
        for (int j = 0; j < N; j++) sa += st[j] * -kkl[j];
        float acc = 0.0f;
        for (int j = 0; j < N; j++) {
            st[j] = st[j] * wl[j] + sa * kal[j] + vv * kl[j];
            acc += st[j] * rl[j];
        }
        if (t >= from) {
            red[i] = acc;
            barrier(CLK_LOCAL_MEM_FENCE);
            float mean = 0.0f;
            for (int j = 0; j < N; j++) mean += red[j];
            mean /= N;
            float var = 0.0f;
            for (int j = 0; j < N; j++) var += (red[j] - mean) * (red[j] - mean);
            var /= N;
            const float o = (acc - mean) / sqrt(var + eps) * ln_w[c] + ln_b[c];
            float bonus = 0.0f;
            for (int j = 0; j < N; j++) bonus += rl[j] * kl[j] * r_k[h * N + j];
            out[out_off + (size_t)t * D + c] = (o + bonus * vv) * g[g_off + (size_t)(t - from) * D + c];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int j = 0; j < N; j++) sh[j] = st[j];
}
