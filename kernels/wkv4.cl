// The RWKV-4 recurrence (the backend's `Wkv4`) for one stream's T rows: one work item per
// channel c, tokens in order, the channel's state aa, bb, pp ([3, D] in the stream's state)
// in registers. Per token, with pp read as minus infinity while bb is 0 (the empty state):
//   q = u + k;  p = max(pp, q);  out = r * (e^(pp-p) aa + e^(q-p) v) / (e^(pp-p) bb + e^(q-p))
//   q = w + pp; p = max(q, k);   aa = e^(q-p) aa + e^(k-p) v;  bb = e^(q-p) bb + e^(k-p);  pp = p
// out is written for rows t >= from (r's row 0 is row `from`).
__kernel void wkv4(__global const float *k, __global const float *v, const int kv_off,
                   __global const float *r, const int r_off, __global const float *w,
                   __global const float *u, __global float *state, const int state_off,
                   __global float *out, const int out_off, const int from, const int T) {
    const int c = get_global_id(0);
    const int D = get_global_size(0);
    __global float *st = state + state_off;
    float aa = st[c], bb = st[D + c], pp = st[2 * D + c];
    for (int t = 0; t < T; t++) {
        const size_t at = (size_t)t * D + c;
        const float kt = k[kv_off + at], vt = v[kv_off + at];
        const float p0 = bb == 0.0f ? -INFINITY : pp;
        if (t >= from) {
            const float q = u[c] + kt;
            const float p = fmax(p0, q);
            const float e1 = exp(p0 - p), e2 = exp(q - p);
            const float y = (e1 * aa + e2 * vt) / (e1 * bb + e2);
            out[out_off + at] = r[r_off + (size_t)(t - from) * D + c] * y;
        }
        const float q = w[c] + p0;
        const float p = fmax(q, kt);
        const float e1 = exp(q - p), e2 = exp(kt - p);
        aa = e1 * aa + e2 * vt;
        bb = e1 * bb + e2;
        pp = p;
    }
    st[c] = aa;
    st[D + c] = bb;
    st[2 * D + c] = pp;
}
