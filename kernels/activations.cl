// Element-wise steps of the RWKV-6 block. Global size: the element count.

// x = tanh(x)
__kernel void act_tanh(__global float *x) { const int i = get_global_id(0); x[i] = tanh(x[i]); }

// x = x * sigmoid(x) (the gate)
__kernel void act_silu(__global float *x) {
    const int i = get_global_id(0);
    x[i] = x[i] / (1.0f + exp(-x[i]));
}

// x = relu(x)^2 (channel-mix key)
__kernel void act_relu_sq(__global float *x) {
    const int i = get_global_id(0);
    const float v = fmax(x[i], 0.0f);
    x[i] = v * v;
}

// w = exp(-exp(decay[c] + w)), decay [D]: the per-channel decay in (0, 1)
__kernel void act_decay(__global float *w, __global const float *decay, const int D) {
    const int i = get_global_id(0);
    w[i] = exp(-exp(decay[i % D] + w[i]));
}

// a *= b
__kernel void mul_into(__global float *a, __global const float *b) {
    const int i = get_global_id(0);
    a[i] *= b[i];
}

// a += b
__kernel void add_into(__global float *a, __global const float *b) {
    const int i = get_global_id(0);
    a[i] += b[i];
}

// x += sigmoid(r) * v (channel-mix output)
__kernel void ffn_out(__global float *x, __global const float *r, __global const float *v) {
    const int i = get_global_id(0);
    x[i] += v[i] / (1.0f + exp(-r[i]));
}
