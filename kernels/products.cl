// Products: y [T, rows] = x [T, cols] . W^T for up to 8 independent jobs in one launch, each
// with its own matrix (any format of formats.cl), input, output and step (`then`).
//
// A work-group of MM_LS items computes one row of one job for up to MM_TOK tokens: the
// items stride through the row 8 weights at a time (each group of 8 one wide load; the
// group's loads are consecutive), multiply them with every token, and the partial sums are
// reduced in local memory. A (row, token) is summed in an order that does not depend on T,
// so a token's result does not depend on which tokens share the call.
//
// `desc` holds per job, DESC ints each: format, rows, cols, x_off, y_off, then, a_off,
// b_off, c_off, first group; then the total group count. A job's groups are its rows times
// ceil(T / MM_TOK) token groups.
#define MM_LS 64
#define MM_TOK 8
#define DESC 10

#define JOB(n)                                                                           \
    __global const uchar *w##n, __global const uchar *s##n, __global const float *x##n, \
        __global float *y##n, __global float *a##n, __global const float *b##n,         \
        __global const float *c##n
#define PICK(n)                                                                          \
    case n:                                                                              \
        w = w##n;                                                                        \
        s = s##n;                                                                        \
        x = x##n;                                                                        \
        y = y##n;                                                                        \
        a = a##n;                                                                        \
        b = b##n;                                                                        \
        c = c##n;                                                                        \
        break;

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void products(
    JOB(0), JOB(1), JOB(2), JOB(3), JOB(4), JOB(5), JOB(6), JOB(7),
    __global const int *desc, const int njobs, const int T) {
    const int g = get_group_id(0);
    const int l = get_local_id(0);
    int j = 0;
    while (j + 1 < njobs && desc[(j + 1) * DESC + 9] <= g) j++;
    __global const int *d = desc + j * DESC;
    const int fmt = d[0], rows = d[1], cols = d[2], x_off = d[3], y_off = d[4], then = d[5];
    __global const uchar *w = w0;
    __global const uchar *s = s0;
    __global const float *x = x0;
    __global float *y = y0;
    __global float *a = a0;
    __global const float *b = b0;
    __global const float *c = c0;
    switch (j) { PICK(0) PICK(1) PICK(2) PICK(3) PICK(4) PICK(5) PICK(6) PICK(7) }
    const int groups = (T + MM_TOK - 1) / MM_TOK;
    const int local_g = g - d[9];
    const int r = local_g / groups;
    const int t0 = (local_g % groups) * MM_TOK;
    const int nt = min(MM_TOK, T - t0);

    float acc[MM_TOK];
    for (int t = 0; t < MM_TOK; t++) acc[t] = 0.0f;
    const int whole = cols / 8 * 8;
    for (int col = 8 * l; col < whole; col += 8 * MM_LS) {
        const float8 wv = weight8(fmt, w, s, cols, r, col);
        for (int t = 0; t < nt; t++)
            acc[t] += dot8(wv, vload8(0, x + x_off + (size_t)(t0 + t) * cols + col));
    }
    for (int col = whole + l; col < cols; col += MM_LS) {
        const float wv = weight1(fmt, w, s, cols, r, col);
        for (int t = 0; t < nt; t++) acc[t] += wv * x[x_off + (size_t)(t0 + t) * cols + col];
    }

    __local float part[MM_TOK][MM_LS];
    for (int t = 0; t < MM_TOK; t++) part[t][l] = acc[t];
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = MM_LS / 2; h > 0; h >>= 1) {
        if (l < h)
            for (int t = 0; t < MM_TOK; t++) part[t][l] += part[t][l + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l < nt) {
        const int t = t0 + l;
        const float v = apply_then(then, part[l][0], t, r, rows, a, d[6], b, d[7], c, d[8]);
        y[y_off + (size_t)t * rows + r] = v;
    }
}
