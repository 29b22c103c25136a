// A LoRA (the backend's `Lora`): per token t, h = act(x[t] . down^T) (`down [W, D]`), then
// for each up-projection u (at most 5), y_u[t] = h[from_u .. from_u + in_u] . up_u^T, then
// up u's step. One work-group per token: the hidden layer stays in local memory.
#define LORA_LS 128
#define LORA_MAX_HIDDEN 1024

#define UP(n)                                                                            \
    __global const uchar *uw##n, __global const uchar *us##n, __global float *uy##n,    \
        __global float *ua##n, __global const float *ub##n, __global const float *uc##n
#define UP_PICK(n)                                                                       \
    case n:                                                                              \
        w = uw##n;                                                                       \
        s = us##n;                                                                       \
        y = uy##n;                                                                       \
        a = ua##n;                                                                       \
        b = ub##n;                                                                       \
        c = uc##n;                                                                       \
        break;

// `desc`: x_off, D, down format, W, act, nups; then per up, UP_DESC ints: format, rows,
// cols, from, y_off, then, a_off, b_off, c_off.
#define UP_DESC 9

__kernel __attribute__((reqd_work_group_size(LORA_LS, 1, 1))) void lora(
    __global const float *x, __global const uchar *dw, __global const uchar *ds, UP(0), UP(1),
    UP(2), UP(3), UP(4), __global const int *desc) {
    const int t = get_group_id(0);
    const int l = get_local_id(0);
    const int x_off = desc[0], D = desc[1], dfmt = desc[2], W = desc[3], act = desc[4];
    const int nups = desc[5];
    __local float h[LORA_MAX_HIDDEN];
    __global const float *xt = x + x_off + (size_t)t * D;
    for (int u = l; u < W; u += LORA_LS) {
        float acc = 0.0f;
        int col = 0;
        for (; col + 8 <= D; col += 8) acc += dot8(weight8(dfmt, dw, ds, D, u, col), vload8(0, xt + col));
        for (; col < D; col++) acc += weight1(dfmt, dw, ds, D, u, col) * xt[col];
        h[u] = apply_then(act, acc, t, u, W, 0, 0, 0, 0, 0, 0);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = 0; k < nups; k++) {
        __global const int *d = desc + 6 + k * UP_DESC;
        const int fmt = d[0], rows = d[1], cols = d[2], from = d[3], y_off = d[4], then = d[5];
        __global const uchar *w = uw0;
        __global const uchar *s = us0;
        __global float *y = uy0;
        __global float *a = ua0;
        __global const float *b = ub0;
        __global const float *c = uc0;
        switch (k) { UP_PICK(0) UP_PICK(1) UP_PICK(2) UP_PICK(3) UP_PICK(4) }
        for (int o = l; o < rows; o += LORA_LS) {
            float acc = 0.0f;
            for (int i = 0; i < cols; i++) acc += weight1(fmt, w, s, cols, o, i) * h[from + i];
            const float v = apply_then(then, acc, t, o, rows, a, d[6], b, d[7], c, d[8]);
            y[y_off + (size_t)t * rows + o] = v;
        }
    }
}
