// y [T, rows] = x [T, cols] . W^T, W [rows, cols] in its stored format.
//
// One work-group of MM_LS items per (row, group of up to MM_TOK tokens). Each item reads
// 16-byte pieces of the row (consecutive items read consecutive pieces, so a group's reads
// are coalesced), multiplies every piece with each token of its group, and a tree reduction
// in local memory sums the items' partial sums per token. Reading a weight once for up to
// MM_TOK tokens cuts the weight traffic of sequence mode by that factor.
// Global size (rows * MM_LS, ceil(T / MM_TOK)), local (MM_LS, 1).
//
// Formats: f32; f16 and bf16 (ushort bits); int8 blocks of 64 with f32 scales (q * s);
// nf4 blocks of 64 (byte j of a block holds weights j and j + 32) with f32 scales.
// The piece kernels need cols % 8 == 0 (f32, f16, bf16; int8 and nf4 always have
// cols % 64 == 0); the `_any` kernels take any width, one weight per item and step.
#define MM_LS 64
#define MM_TOK 4 // the partial sums are a float4: MM_TOKEN and MM_END spell out 4

// The ids, this group's tokens [t0, t0 + nt) and their partial sums.
#define MM_BEGIN                                                                   \
    const int r = get_group_id(0);                                                 \
    const int l = get_local_id(0);                                                 \
    const int t0 = get_group_id(1) * MM_TOK;                                       \
    const int nt = min(MM_TOK, tokens - t0);                                       \
    const __global float *x0 = x + (size_t)t0 * cols;                              \
    float4 acc = (float4)(0.0f); /* a vector, not an array: it stays in registers */

// acc.sI += SCALE * (the EXPR of token I's activations at xt = x0 + I * cols).
#define MM_TOKEN(I, SCALE, EXPR)                                                   \
    if (I < nt) {                                                                  \
        const __global float *xt = x0 + (size_t)I * cols;                          \
        acc.s##I += (SCALE) * (EXPR);                                              \
    }
#define MM_EACH_TOKEN(SCALE, EXPR)                                                 \
    MM_TOKEN(0, SCALE, EXPR)                                                       \
    MM_TOKEN(1, SCALE, EXPR) MM_TOKEN(2, SCALE, EXPR) MM_TOKEN(3, SCALE, EXPR)

// Sums each token's partial sums over the group and writes y.
#define MM_END                                                                     \
    __local float part[MM_TOK][MM_LS];                                             \
    part[0][l] = acc.s0;                                                           \
    part[1][l] = acc.s1;                                                           \
    part[2][l] = acc.s2;                                                           \
    part[3][l] = acc.s3;                                                           \
    barrier(CLK_LOCAL_MEM_FENCE);                                                  \
    for (int s = MM_LS / 2; s > 0; s >>= 1) {                                      \
        if (l < s)                                                                 \
            for (int t = 0; t < MM_TOK; t++) part[t][l] += part[t][l + s];         \
        barrier(CLK_LOCAL_MEM_FENCE);                                              \
    }                                                                              \
    if (l < nt) y[(size_t)(t0 + l) * rows + r] = part[l][0];

#define MM_ARGS                                                                    \
    __global const uchar *w, __global const float *scales, __global const float *x, \
        __global float *y, const int rows, const int cols, const int tokens

inline float dot8(float8 a, float8 b) { return dot(a.lo, b.lo) + dot(a.hi, b.hi); }
inline float dot16(float16 a, float16 b) { return dot8(a.lo, b.lo) + dot8(a.hi, b.hi); }

// Eight bf16 weights (little-endian pairs in each uint) as floats.
inline float8 bf16x8(uint4 p) {
    return (float8)(as_float(p.x << 16), as_float(p.x & 0xffff0000u), as_float(p.y << 16),
                    as_float(p.y & 0xffff0000u), as_float(p.z << 16),
                    as_float(p.z & 0xffff0000u), as_float(p.w << 16),
                    as_float(p.w & 0xffff0000u));
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_f32(MM_ARGS) {
    MM_BEGIN
    const __global float8 *wr = (const __global float8 *)(w + (size_t)r * cols * 4);
    for (int c = l; c < cols / 8; c += MM_LS) {
        const float8 wv = wr[c];
        MM_EACH_TOKEN(1.0f, dot8(wv, vload8(c, xt)))
    }
    MM_END
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_f16(MM_ARGS) {
    MM_BEGIN
    const __global half *wr = (const __global half *)(w + (size_t)r * cols * 2);
    for (int c = l; c < cols / 8; c += MM_LS) {
        const float8 wv = vload_half8(c, wr);
        MM_EACH_TOKEN(1.0f, dot8(wv, vload8(c, xt)))
    }
    MM_END
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_bf16(MM_ARGS) {
    MM_BEGIN
    const __global uint4 *wr = (const __global uint4 *)(w + (size_t)r * cols * 2);
    for (int c = l; c < cols / 8; c += MM_LS) {
        const float8 wv = bf16x8(wr[c]);
        MM_EACH_TOKEN(1.0f, dot8(wv, vload8(c, xt)))
    }
    MM_END
}

// 16 int8 weights a piece; four pieces share a block's scale.
__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_q8(MM_ARGS) {
    MM_BEGIN
    const __global char16 *wr = (const __global char16 *)(w + (size_t)r * cols);
    const __global float *sr = scales + (size_t)r * (cols / 64);
    for (int c = l; c < cols / 16; c += MM_LS) {
        const float16 wv = convert_float16(wr[c]);
        MM_EACH_TOKEN(sr[c / 4], dot16(wv, vload16(c, xt)))
    }
    MM_END
}

// The code book, NF4_I8 / 127 in src/tensor/quant.rs.
__constant float NF4[16] = {
    -127.0f / 127.0f, -88.0f / 127.0f, -67.0f / 127.0f, -50.0f / 127.0f,
    -36.0f / 127.0f,  -23.0f / 127.0f, -12.0f / 127.0f, 0.0f,
    10.0f / 127.0f,   20.0f / 127.0f,  31.0f / 127.0f,  43.0f / 127.0f,
    56.0f / 127.0f,   71.0f / 127.0f,  92.0f / 127.0f,  127.0f / 127.0f};

// The code book entries of the 16 low (or, shifted, high) nibbles of a piece.
#define NF4_16(p, OP)                                                              \
    (float16)(tab[(p).s0 OP], tab[(p).s1 OP], tab[(p).s2 OP], tab[(p).s3 OP],      \
              tab[(p).s4 OP], tab[(p).s5 OP], tab[(p).s6 OP], tab[(p).s7 OP],      \
              tab[(p).s8 OP], tab[(p).s9 OP], tab[(p).sa OP], tab[(p).sb OP],      \
              tab[(p).sc OP], tab[(p).sd OP], tab[(p).se OP], tab[(p).sf OP])

// A piece is half a block's 32 bytes: bytes h * 16 .. h * 16 + 15 of block b hold weights
// b * 64 + h * 16 + (0..15) in their low nibbles and the same + 32 in their high nibbles.
// The code book is copied to local memory: items index it with different nibbles, which
// constant memory serves one address at a time.
__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_nf4(MM_ARGS) {
    MM_BEGIN
    __local float tab[16];
    if (l < 16) tab[l] = NF4[l];
    barrier(CLK_LOCAL_MEM_FENCE);
    const __global uchar16 *wr = (const __global uchar16 *)(w + (size_t)r * (cols / 2));
    const __global float *sr = scales + (size_t)r * (cols / 64);
    for (int c = l; c < cols / 32; c += MM_LS) {
        const uchar16 p = wr[c];
        const float16 lo = NF4_16(p, &15), hi = NF4_16(p, >> 4);
        const int col = (c / 2) * 64 + (c % 2) * 16;
        MM_EACH_TOKEN(sr[c / 2], dot16(lo, vload16(0, xt + col)) + dot16(hi, vload16(0, xt + col + 32)))
    }
    MM_END
}

// Any width: one weight per item and step.
#define MM_ANY(LOAD)                                                               \
    MM_BEGIN                                                                       \
    for (int c = l; c < cols; c += MM_LS) {                                        \
        const float wv = (LOAD);                                                   \
        MM_EACH_TOKEN(wv, xt[c])                                                   \
    }                                                                              \
    MM_END

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_f32_any(MM_ARGS) {
    MM_ANY(((const __global float *)w)[(size_t)r * cols + c])
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_f16_any(MM_ARGS) {
    MM_ANY(vload_half((size_t)r * cols + c, (const __global half *)w))
}

__kernel __attribute__((reqd_work_group_size(MM_LS, 1, 1))) void matmul_bf16_any(MM_ARGS) {
    MM_ANY(as_float(((uint)((const __global ushort *)w)[(size_t)r * cols + c]) << 16))
}
