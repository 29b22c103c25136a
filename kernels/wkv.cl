// The RWKV-6 recurrence over T tokens, D = H * S: r, k, v, w [T, D], u [H, S] (= [D]),
// state [H, S, S] ([head, key i, value j], updated), out [T, D]. Per head and token:
//   out[j] = sum_i r[i] (u[i] k[i] v[j] + s[i][j]);  s[i][j] = k[i] v[j] + w[i] s[i][j].
// One work-item per (head, value j): it alone owns column j of its head's state.
// Global size (H * S).
__kernel void wkv(__global const float *r, __global const float *k,
                  __global const float *v, __global const float *w,
                  __global const float *u, __global float *state, __global float *out,
                  const int T, const int S) {
    const int g = get_global_id(0);
    const int h = g / S, j = g % S;
    const int D = get_global_size(0);
    __global float *st = state + (size_t)h * S * S;
    for (int t = 0; t < T; t++) {
        const size_t row = (size_t)t * D + h * S;
        const float vj = v[row + j];
        float acc = 0.0f;
        for (int i = 0; i < S; i++) {
            const float a = k[row + i] * vj;
            const float s = st[i * S + j];
            acc += r[row + i] * (u[h * S + i] * a + s);
            st[i * S + j] = a + w[row + i] * s;
        }
        out[row + j] = acc;
    }
}
