// The RWKV-6 recurrence (the backend's `Wkv6`) for one stream's T rows, D = H * S, with the
// decay's up-projection and the GroupNorm and gate fused in. One work-group of S items per
// head h; item j owns column j of the head's state [S, S] ([head, key i, value j]), kept
// in registers. Per token t:
//   w[i]  = exp(-exp(bias[c_i] + dl[t] . up[c_i]))           (c_i = h * S + i, up [D, K];
//                                                             K = 0: a fixed decay, RWKV-5.2)
//   out[j] = sum_i r[i] (u[i] k[i] v[j] + s[i][j]);  s[i][j] = k[i] v[j] + w[i] s[i][j]
//   for t >= from: out = GroupNorm(out over the head; ln_x) * g[t - from]
#define WKV_MAX_S 64

__kernel void wkv6(__global const float *r, __global const float *k, __global const float *v,
                   const int rkv_off, __global const float *dl, const int dl_off, const int K,
                   __global const uchar *up, __global const uchar *up_s, const int up_fmt,
                   __global const float *bias, __global const float *u,
                   __global float *state, const int state_off, __global float *out,
                   const int out_off, __global const float *ln_w, __global const float *ln_b,
                   const float eps, __global const float *g, const int g_off, const int from,
                   const int T, const int S) {
    const int h = get_group_id(0);
    const int j = get_local_id(0);
    const int D = get_num_groups(0) * S;
    const int c = h * S + j;
    __local float rl[WKV_MAX_S], kl[WKV_MAX_S], wl[WKV_MAX_S], ul[WKV_MAX_S], red[WKV_MAX_S];
    float st[WKV_MAX_S];
    __global float *sh = state + state_off + (size_t)h * S * S;
    for (int i = 0; i < S; i++) st[i] = sh[i * S + j];
    ul[j] = u[c];
    for (int t = 0; t < T; t++) {
        const size_t row = rkv_off + (size_t)t * D;
        __global const float *dt = dl + dl_off + (size_t)t * K;
        float z = bias[c];
        for (int q = 0; q < K; q++) z += weight1(up_fmt, up, up_s, K, c, q) * dt[q];
        rl[j] = r[row + c];
        kl[j] = k[row + c];
        wl[j] = exp(-exp(z));
        barrier(CLK_LOCAL_MEM_FENCE);
        const float vj = v[row + c];
        float acc = 0.0f;
        for (int i = 0; i < S; i++) {
            const float a = kl[i] * vj;
            acc += rl[i] * (ul[i] * a + st[i]);
            st[i] = a + wl[i] * st[i];
        }
        if (t >= from) {
            // GroupNorm over the head's S outputs, then the gate
            red[j] = acc;
            barrier(CLK_LOCAL_MEM_FENCE);
            float mean = 0.0f;
            for (int i = 0; i < S; i++) mean += red[i];
            mean /= S;
            float var = 0.0f;
            for (int i = 0; i < S; i++) var += (red[i] - mean) * (red[i] - mean);
            var /= S;
            const float o = (acc - mean) / sqrt(var + eps) * ln_w[c] + ln_b[c];
            out[out_off + (size_t)t * D + c] = o * g[g_off + (size_t)(t - from) * D + c];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    for (int i = 0; i < S; i++) sh[i * S + j] = st[i];
}
