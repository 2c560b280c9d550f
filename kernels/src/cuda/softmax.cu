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
// multiple of 32 and at most 1024. With `cached` != 0 the launch provides cols * 4 bytes of
// dynamic shared memory: the row is read from global memory once (while taking the maximum), each
// exp(x - m) is computed once and kept there, and the output is written from it, so the kernel
// moves one read and one write of the matrix. With `vec` != 0 as well (the host checks cols % 4
// == 0 and 16-byte alignment of x and y) it moves float4s. Without `cached` (rows longer than
// the shared memory) it reads the row three times. Every path evaluates the same expressions,
// so they agree bit for bit except for the order of the block's sum.

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

// The cached path for one row; `row` is the block's shared copy of it.
template <bool VEC>
__device__ void softmax_row_cached(const float* __restrict__ xr,  // [cols]
                                   float* __restrict__ yr,        // [cols]
                                   float* __restrict__ row,       // [cols] shared
                                   int cols, float* scratch) {
    float m = -NEREID_INF;
    if (VEC) {
        const int units = cols >> 2;
        const float4* x4 = reinterpret_cast<const float4*>(xr);  // [cols / 4]
        float4* r4 = reinterpret_cast<float4*>(row);             // [cols / 4]
#pragma unroll 4
        for (int u = threadIdx.x; u < units; u += blockDim.x) {
            const float4 v = x4[u];
            r4[u] = v;
            m = fmaxf(m, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
        }
    } else {
#pragma unroll 4
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float v = xr[c];
            row[c] = v;
            m = fmaxf(m, v);
        }
    }
    m = softmax_block_max(m, scratch);
    // Each thread only touches the elements it stored itself, so no barrier is needed between
    // the passes (the reductions have their own).
    float s = 0.0f;
    if (VEC) {
        const int units = cols >> 2;
        float4* r4 = reinterpret_cast<float4*>(row);  // [cols / 4]
        for (int u = threadIdx.x; u < units; u += blockDim.x) {
            float4 v = r4[u];
            v.x = expf(v.x - m);
            v.y = expf(v.y - m);
            v.z = expf(v.z - m);
            v.w = expf(v.w - m);
            s += v.x;
            s += v.y;
            s += v.z;
            s += v.w;
            r4[u] = v;
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            const float e = expf(row[c] - m);
            row[c] = e;
            s += e;
        }
    }
    s = softmax_block_sum(s, scratch);
    if (VEC) {
        const int units = cols >> 2;
        const float4* r4 = reinterpret_cast<const float4*>(row);  // [cols / 4]
        float4* y4 = reinterpret_cast<float4*>(yr);               // [cols / 4]
        for (int u = threadIdx.x; u < units; u += blockDim.x) {
            float4 v = r4[u];
            v.x = v.x / s;
            v.y = v.y / s;
            v.z = v.z / s;
            v.w = v.w / s;
            y4[u] = v;
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = row[c] / s;
    }
}

extern "C" __global__ void softmax_rows_f32(const float* __restrict__ x,  // [rows, cols]
                                            float* __restrict__ y,        // [rows, cols]
                                            int rows, int cols, int cached, int vec) {
    extern __shared__ float softmax_cache[];  // [cols] when cached
    __shared__ float scratch[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* xr = x + (long long)r * cols;  // [cols]
        float* yr = y + (long long)r * cols;        // [cols]
        if (cached) {
            if (vec) {
                softmax_row_cached<true>(xr, yr, softmax_cache, cols, scratch);
            } else {
                softmax_row_cached<false>(xr, yr, softmax_cache, cols, scratch);
            }
            continue;
        }
        float m = -NEREID_INF;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) m = fmaxf(m, xr[c]);
        m = softmax_block_max(m, scratch);
        float s = 0.0f;
        for (int c = threadIdx.x; c < cols; c += blockDim.x) s += expf(xr[c] - m);
        s = softmax_block_sum(s, scratch);
        for (int c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = expf(xr[c] - m) / s;
    }
}
