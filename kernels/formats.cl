// Weight formats, and the elementwise steps that follow a product (the backend's `Then`).
// Shared by the kernels of products.cl, lora.cl and wkv.cl.
//
// A matrix [rows, cols] is stored row-major in one of:
//   F_F32, F_F16, F_BF16: one value per weight;
//   F_Q8:  int8 weights in blocks of 64, one f32 scale per block: w = q * s;
//   F_NF4: 4-bit codes in blocks of 64 (32 bytes: byte j holds weights j and j + 32, low
//          nibble first), one bf16 scale per block: w = NF4[code] * s.
// Quantized matrices have cols % 64 == 0.

// The format codes F_F32, F_F16, F_BF16, F_Q8 and F_NF4 are #defined ahead of this file
// from the Rust side's table (src/backend/opencl/device.rs, Fmt).

// The nf4 code book, NF4_I8 / 127 in src/tensor/quant.rs.
__constant float NF4[16] = {
    -127.0f / 127.0f, -88.0f / 127.0f, -67.0f / 127.0f, -50.0f / 127.0f,
    -36.0f / 127.0f,  -23.0f / 127.0f, -12.0f / 127.0f, 0.0f,
    10.0f / 127.0f,   20.0f / 127.0f,  31.0f / 127.0f,  43.0f / 127.0f,
    56.0f / 127.0f,   71.0f / 127.0f,  92.0f / 127.0f,  127.0f / 127.0f};

inline float bf16_to_f32(ushort b) { return as_float(((uint)b) << 16); }

// Weight (r, c) of a matrix with `cols` columns in format `f`.
inline float weight1(int f, __global const uchar *w, __global const uchar *s, int cols, int r,
                     int c) {
    const size_t i = (size_t)r * cols + c;
    switch (f) {
    case F_F32: return ((__global const float *)w)[i];
    case F_F16: return vload_half(i, (__global const half *)w);
    case F_BF16: return bf16_to_f32(((__global const ushort *)w)[i]);
    case F_Q8: return (float)((__global const char *)w)[i] * ((__global const float *)s)[i / 64];
    default: {
        const size_t b = i / 64;
        const int j = (int)(i % 64);
        const uchar byte = w[b * 32 + (j % 32)];
        const int code = j < 32 ? (byte & 15) : (byte >> 4);
        return NF4[code] * bf16_to_f32(((__global const ushort *)s)[b]);
    }
    }
}

// Weights (r, c .. c + 8) with c % 8 == 0 and c + 8 <= cols.
inline float8 weight8(int f, __global const uchar *w, __global const uchar *s, int cols, int r,
                      int c) {
    const size_t i = (size_t)r * cols + c;
    switch (f) {
    case F_F32: return vload8(0, (__global const float *)w + i);
    case F_F16: return vload_half8(0, (__global const half *)w + i);
    case F_BF16: {
        const ushort8 u = vload8(0, (__global const ushort *)w + i);
        return as_float8(convert_uint8(u) << 16);
    }
    case F_Q8: {
        const char8 q = vload8(0, (__global const char *)w + i);
        return convert_float8(q) * ((__global const float *)s)[i / 64];
    }
    default: {
        const size_t b = i / 64;
        const int j = (int)(i % 64);
        const uchar8 bytes = vload8(0, w + b * 32 + (j % 32));
        const uchar8 code = j < 32 ? (bytes & (uchar8)15) : (bytes >> (uchar8)4);
        const float sc = bf16_to_f32(((__global const ushort *)s)[b]);
        return (float8)(NF4[code.s0], NF4[code.s1], NF4[code.s2], NF4[code.s3], NF4[code.s4],
                        NF4[code.s5], NF4[code.s6], NF4[code.s7]) *
               sc;
    }
    }
}

inline float dot8(float8 a, float8 b) {
    return dot(a.lo, b.lo) + dot(a.hi, b.hi);
}

// The steps after a product (the backend's `Then`), on output (t, o) of a product `rows`
// wide: y is the sum; a, b, c the operands, each aligned with the product's rows
// (element t * rows + o from its offset) or, for a per-column vector, indexed by o.
// The step codes are #defined ahead of this file from the Rust side's table
// (src/backend/mod.rs, StepCode):
//   T_NONE, T_TANH, T_SIGMOID, T_SILU, T_RELU_SQ
//   T_EXP_NEG_EXP    y = exp(-exp(a[o] + y))
//   T_SIGMOID_DECAY  y = exp(-0.606531 * sigmoid(a[o] + y))
//   T_SIGMOID_PLUS   y = sigmoid(a[o] + y)
//   T_MIX            y = a[t, o] + b[t, o] * (c[o] + y)   (xx, sx, maa)
//   T_RESIDUAL       a[t, o] += y
//   T_GATED          y *= b[t, o]; a[t, o] += y           (gate, x)
//   T_SCALE          a[t, o] *= b[o] + y                  (x, bias)

inline float sigmoid(float x) { return 1.0f / (1.0f + exp(-x)); }

// Apply step `then` to y; returns the value for the output itself.
inline float apply_then(int then, float y, int t, int o, int rows, __global float *a,
                        int a_off, __global const float *b, int b_off,
                        __global const float *c, int c_off) {
    const size_t at = (size_t)t * rows + o;
    switch (then) {
    case T_TANH: return tanh(y);
    case T_SIGMOID: return sigmoid(y);
    case T_SILU: return y * sigmoid(y);
    case T_RELU_SQ: { const float v = fmax(y, 0.0f); return v * v; }
    case T_EXP_NEG_EXP: return exp(-exp(a[a_off + o] + y));
    case T_SIGMOID_DECAY: return exp(-0.606531f * sigmoid(a[a_off + o] + y));
    case T_SIGMOID_PLUS: return sigmoid(a[a_off + o] + y);
    case T_MIX: return a[a_off + at] + b[b_off + at] * (c[c_off + o] + y);
    case T_RESIDUAL: a[a_off + at] += y; return y;
    case T_GATED: { const float v = y * b[b_off + at]; a[a_off + at] += v; return v; }
    case T_SCALE: a[a_off + at] *= b[b_off + o] + y; return y;
    default: return y;
    }
}
