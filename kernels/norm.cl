// Normalise groups of `group` consecutive values of x [n] in place, then the affine part:
// x = (x - mean) / sqrt(var + eps) * weight[i % width] + bias[i % width].
// LayerNorm: group = width = D. GroupNorm of ln_x: group = S, width = D.
// One work-group of NORM_LS items per group; global size (groups * NORM_LS).
#define NORM_LS 64

__kernel __attribute__((reqd_work_group_size(NORM_LS, 1, 1)))
void norm_affine(__global float *x, __global const float *weight, __global const float *bias,
          const int group, const int width, const float eps) {
    const int g = get_group_id(0);
    const int l = get_local_id(0);
    __local float part[NORM_LS];
    __global float *v = x + (size_t)g * group;
    float s = 0.0f;
    for (int i = l; i < group; i += NORM_LS) s += v[i];
    part[l] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = NORM_LS / 2; k > 0; k >>= 1) {
        if (l < k) part[l] += part[l + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float mean = part[0] / group;
    barrier(CLK_LOCAL_MEM_FENCE);
    s = 0.0f;
    for (int i = l; i < group; i += NORM_LS) s += (v[i] - mean) * (v[i] - mean);
    part[l] = s;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int k = NORM_LS / 2; k > 0; k >>= 1) {
        if (l < k) part[l] += part[l + k];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const float inv = 1.0f / sqrt(part[0] / group + eps);
    for (int i = l; i < group; i += NORM_LS) {
        const int c = ((size_t)g * group + i) % width;
        v[i] = (v[i] - mean) * inv * weight[c] + bias[c];
    }
}
