// Token shift over xx [T, D]: sx[t] = prev(t) - xx[t], prev(0) = shift [D], prev(t) = xx[t-1].
// Global size (T * D).
__kernel void shift_diff(__global const float *xx, __global const float *shift,
                         __global float *sx, const int D) {
    const int i = get_global_id(0);
    const int t = i / D, c = i % D;
    const float prev = t == 0 ? shift[c] : xx[i - D];
    sx[i] = prev - xx[i];
}

// shift [D] = xx[T-1]. Global size (D).
__kernel void shift_store(__global const float *xx, __global float *shift, const int T,
                          const int D) {
    const int c = get_global_id(0);
    shift[c] = xx[(size_t)(T - 1) * D + c];
}
