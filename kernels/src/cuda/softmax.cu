// Row-wise softmax, numerically stabilised by the row maximum:
//
//   m = max_c x[r, c]                 (fmaxf: NaN entries are skipped by the max itself)
//   y[r, c] = exp(x[r, c] - m) / sum_c' exp(x[r, c'] - m)
//
// evaluated in f32 IEEE arithmetic exactly as written, which fixes the edge cases:
//   - a NaN anywhere in a row makes the whole row NaN (it poisons the sum);
//   - +Inf in a row gives exp(Inf - Inf) = NaN, so the whole row is NaN;
//   - a row of only -Inf has m = -Inf and exp(-Inf - -Inf) = NaN: the whole row is NaN;
//   - -Inf entries in a row with a finite maximum get probability 0;
//   - cols == 0 writes nothing.
// PyTorch's softmax agrees on all of these. The CPU reference is `cpu::softmax_rows_f32`.
//
// Launch (see `Gpu::softmax_rows_f32`): one block per row (grid-stride over rows), blockDim.x a
// multiple of 32 and at most 1024.

__device__ __forceinline__ float softmax_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float softmax_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide reductions; every thread gets the result. `scratch` holds 32 floats.
__device__ float softmax_block_max(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = softmax_warp_max(v);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -NEREID_INF;
    return softmax_warp_max(v);
}

__device__ float softmax_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = softmax_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return softmax_warp_sum(v);
}

extern "C" __global__ void softmax_rows_f32(const float* __restrict__ x,  // [rows, cols]
                                            float* __restrict__ y,        // [rows, cols]
                                            int rows, int cols) {
    __shared__ float scratch[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (long long)r * cols;  // [cols]
        float* yr = y + (long long)r * cols;        // [cols]
        float m = -NEREID_INF;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, xr[c]);
        m = softmax_block_max(m, scratch);
        float s = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) s += expf(xr[c] - m);
        s = softmax_block_sum(s, scratch);
        for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = expf(xr[c] - m) / s;
    }
}
