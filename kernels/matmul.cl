// y [T, rows] = x [T, cols] . W^T, W [rows, cols] in its stored format.
//
// Formats: f32; f16 and bf16 (ushort bits); int8 blocks of 64 with f32 scales (q * s);
// nf4 blocks of 64 (byte j of a block holds weights j and j + 32) with bf16 scales. The
// scales arrive as their stored bytes.
//
// Two shapes of kernel, each where it measured faster on an NVIDIA H200 (README, GPU):
// - f32, f16, bf16, int8: one work-group of MM_LS items per (row, token). Items stride
//   through the row one weight at a time (a group's reads are coalesced), then a tree
//   reduction in local memory. Global size (rows * MM_LS, T), local (MM_LS, 1).
//   Against 16-byte pieces read for groups of 4 tokens, bf16 prompts ran 1.6-1.7x faster
//   and int8 prompts 2.1-2.2x.
// - nf4: one work-group per (row, group of up to MM_TOK tokens). Each item decodes 16-byte
//   pieces (32 weights) and multiplies them with every token of its group. Global size
//   (rows * MM_LS, ceil(T / MM_TOK)), local (MM_LS, 1). Against one weight at a time,
//   generation ran 1.2x faster and prompts 1.6x.
#define MM_LS 64
#define MM_TOK 4 // nf4's partial sums are a float4: NF4_TOKEN and the reduction spell out 4

#define MM_ARGS                                                                    \
    __global const uchar *w, __global const uchar *scales, __global const float *x, \
        __global float *y, const int rows, const int cols

// One (row, token) per group; LOAD is the weight at column c of row r (offset row0).
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

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_f32(MM_ARGS) {
    const __global float *wf = (const __global float *)w;
    MATMUL_BODY(wf[row0 + c])
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_f16(MM_ARGS) {
    const __global half *wh = (const __global half *)w;
    MATMUL_BODY(vload_half(row0 + c, wh))
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_bf16(MM_ARGS) {
    const __global ushort *wb = (const __global ushort *)w;
    MATMUL_BODY(as_float(((uint)wb[row0 + c]) << 16))
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_q8(MM_ARGS) {
    const __global char *wq = (const __global char *)w;
    const __global float *sf = (const __global float *)scales;
    const int nb = cols / 64;
    MATMUL_BODY((float)wq[row0 + c] * sf[(size_t)r * nb + c / 64])
}

// The code book, NF4_I8 / 127 in src/tensor/quant.rs.
__constant float NF4[16] = {
    -127.0f / 127.0f, -88.0f / 127.0f, -67.0f / 127.0f, -50.0f / 127.0f,
    -36.0f / 127.0f,  -23.0f / 127.0f, -12.0f / 127.0f, 0.0f,
    10.0f / 127.0f,   20.0f / 127.0f,  31.0f / 127.0f,  43.0f / 127.0f,
    56.0f / 127.0f,   71.0f / 127.0f,  92.0f / 127.0f,  127.0f / 127.0f};

inline float dot8(float8 a, float8 b) { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }
inline float dot16(float16 a, float16 b) { return dot8(a.lo, b.lo) + dot8(a.hi, b.hi); }

// The code book entries of the 16 low (or, shifted, high) nibbles of a piece.
#define NF4_16(p, OP)                                                              \
    (float16)(tab[(p).s0 OP], tab[(p).s1 OP], tab[(p).s2 OP], tab[(p).s3 OP],      \
              tab[(p).s4 OP], tab[(p).s5 OP], tab[(p).s6 OP], tab[(p).s7 OP],      \
              tab[(p).s8 OP], tab[(p).s9 OP], tab[(p).sa OP], tab[(p).sb OP],      \
              tab[(p).sc OP], tab[(p).sd OP], tab[(p).se OP], tab[(p).sf OP])

// acc.sI += the piece's products with token I of the group (acc is a vector, not an array,
// so that it stays in registers).
#define NF4_TOKEN(I)                                                               \
    if (I < nt) {                                                                  \
        const __global float *xt = x0 + (size_t)I * cols + col;                    \
        acc.s##I += s * (dot16(lo, vload16(0, xt)) + dot16(hi, vload16(0, xt + 32))); \
    }

// A piece is half a block's 32 bytes: bytes h * 16 .. h * 16 + 15 of block b hold weights
// b * 64 + h * 16 + (0..15) in their low nibbles and the same + 32 in their high nibbles.
// The code book is copied to local memory: items index it with different nibbles, which
// constant memory serves one address at a time.
__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_nf4(
    MM_ARGS, const int tokens) {
    const int r = get_group_id(0);
    const int l = get_local_id(0);
    const int t0 = get_group_id(1) * MM_TOK;
    const int nt = min(MM_TOK, tokens - t0);
    const __global float *x0 = x + (size_t)t0 * cols;
    __local float tab[16];
    __local float part[MM_TOK][MM_LS];
    if (l < 16) tab[l] = NF4[l];
    barrier(CLK_LOCAL_MEM_FENCE);

    const __global uchar16 *wr = (const __global uchar16 *)(w + (size_t)r * (cols / 2));
    const __global ushort *sr = (const __global ushort *)scales + (size_t)r * (cols / 64);
    float4 acc = (float4)(0.0f);
    for (int c = l; c < cols / 32; c += MM_LS) {
        const uchar16 p = wr[c];
        const float16 lo = NF4_16(p, &15), hi = NF4_16(p, >> 4);
        const float s = as_float(((uint)sr[c / 2]) << 16);
        const int col = (c / 2) * 64 + (c % 2) * 16;
        NF4_TOKEN(0) NF4_TOKEN(1) NF4_TOKEN(2) NF4_TOKEN(3)
    }

    part[0][l] = acc.s0;
    part[1][l] = acc.s1;
    part[2][l] = acc.s2;
    part[3][l] = acc.s3;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int h = MM_LS / 2; h > 0; h >>= 1) {
        if (l < h)
            for (int t = 0; t < MM_TOK; t++) part[t][l] += part[t][l + h];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (l < nt) y[(size_t)(t0 + l) * rows + r] = part[l][0];
}
