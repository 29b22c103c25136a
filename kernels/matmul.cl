// y [T, rows] = x [T, cols] . W^T, W [rows, cols] in its stored format.
// One work-group of MM_LS items per (row, token): strided partial sums (coalesced reads),
// then a tree reduction in local memory. Global size (rows * MM_LS, T), local (MM_LS, 1).
// Formats: f32; f16 and bf16 (ushort bits); int8 blocks of 64 with f32 scales (q * s);
// nf4 blocks of 64 (byte j of a block holds weights j and j + 32) with f32 scales.
#define MM_LS 64

#define MATMUL_BODY(LOAD)                                                          \
    const int r = get_group_id(0);                                                 \
    const int t = get_global_id(1);                                                \
    const int l = get_local_id(0);                                                 \
    __local float part[MM_LS];                                                     \
    const __global float *xt = x + (size_t)t * cols;                               \
    const size_t row0 = (size_t)r * cols;                                          \
    float acc = 0.0f;                                                              \
    for (int c = l; c < cols; c += MM_LS) acc += (LOAD) * xt[c];                   \
    part[l] = acc;                                                                 \
    barrier(CLK_LOCAL_MEM_FENCE);                                                  \
    for (int s = MM_LS / 2; s > 0; s >>= 1) {                                      \
        if (l < s) part[l] += part[l + s];                                         \
        barrier(CLK_LOCAL_MEM_FENCE);                                              \
    }                                                                              \
    if (l == 0) y[(size_t)t * rows + r] = part[0];

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1)))
void matmul_f32(__global const uchar *w, __global const float *scales,
                __global const float *x, __global float *y, const int rows, const int cols) {
    const __global float *wf = (const __global float *)w;
    MATMUL_BODY(wf[row0 + c])
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1)))
void matmul_f16(__global const uchar *w, __global const float *scales,
                __global const float *x, __global float *y, const int rows, const int cols) {
    const __global half *wh = (const __global half *)w;
    MATMUL_BODY(vload_half(row0 + c, wh))
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1)))
void matmul_bf16(__global const uchar *w, __global const float *scales,
                 __global const float *x, __global float *y, const int rows, const int cols) {
    const __global ushort *wb = (const __global ushort *)w;
    MATMUL_BODY(as_float(((uint)wb[row0 + c]) << 16))
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1)))
void matmul_q8(__global const uchar *w, __global const float *scales,
               __global const float *x, __global float *y, const int rows, const int cols) {
    const __global char *wq = (const __global char *)w;
    const int nb = cols / 64;
    MATMUL_BODY((float)wq[row0 + c] * scales[(size_t)r * nb + c / 64])
}

// The code book, NF4_I8 / 127 in src/tensor/quant.rs.
__constant float NF4[16] = {
    -127.0f / 127.0f, -88.0f / 127.0f, -67.0f / 127.0f, -50.0f / 127.0f,
    -36.0f / 127.0f,  -23.0f / 127.0f, -12.0f / 127.0f, 0.0f,
    10.0f / 127.0f,   20.0f / 127.0f,  31.0f / 127.0f,  43.0f / 127.0f,
    56.0f / 127.0f,   71.0f / 127.0f,  92.0f / 127.0f,  127.0f / 127.0f};

inline float nf4_at(const __global uchar *p, const __global float *scales, int r, int cols,
                    int c) {
    const int b = c / 64, j = c % 64;
    const uchar byte = p[(size_t)r * (cols / 2) + b * 32 + (j & 31)];
    const int nib = j < 32 ? (byte & 15) : (byte >> 4);
    return NF4[nib] * scales[(size_t)r * (cols / 64) + b];
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1)))
void matmul_nf4(__global const uchar *w, __global const float *scales,
                __global const float *x, __global float *y, const int rows, const int cols) {
    MATMUL_BODY(nf4_at(w, scales, r, cols, c))
}
