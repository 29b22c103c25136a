// A product per row with the row's own small matrix (the backend's `RowProduct`): one
// work-group of J items per row r, item j computing
//   out[r, j] = sum_i x[r, i] * m[r, i * J + j]          (x [n, I], m [n, I * J], out [n, J])
// RWKV-7a's DeepEmbed multiplies each token's FFN factor by its own 32 x 32 matrix.
__kernel void row_products(__global const float *x, const int x_off, __global const float *m,
                           const int m_off, __global float *out, const int out_off,
                           const int I, const int J) {
    const int r = get_group_id(0);
    const int j = get_local_id(0);
    __global const float *xr = x + x_off + (size_t)r * I;
    __global const float *mr = m + m_off + (size_t)r * I * J;
    float acc = 0.0f;
    for (int i = 0; i < I; i++) acc += xr[i] * mr[i * J + j];
    out[out_off + (size_t)r * J + j] = acc;
}
