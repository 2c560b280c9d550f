// Row-wise top-k: the k first elements of each row in the order
//
//   larger value first; equal values (including -0 == +0): lower column index first;
//   NaN after every number (after -Inf), NaNs among themselves by lower column index.
//
// This is a strict total order on (value, index) pairs, so the result is unique. The host clamps
// k to the row length (k > cols returns the whole row, sorted) and k == 0 launches nothing.
// values[r, j] is the j-th element in that order and indices[r, j] its column.
// The CPU reference is `cpu::topk_rows_f32` (it sorts with the same comparator).
//
// Two kernels, same result:
//
// `topk_rows_warp{8,16,32}_f32` (k <= 8, 16, 32; what classification heads ask for): one warp
// per row. Each lane
// reads the columns lane, lane + 32, ... (coalesced) and keeps its own best K candidates, sorted,
// in registers (K = 8, 16 or 32, the host picks the smallest >= k; the list starts full of a sentinel that comes
// after every real element). Then k rounds of a warp-wide selection: every lane offers the head
// of its list, a butterfly of shuffles picks the first in the order (every lane gets the same
// winner, since the order is total and indices are unique), lane 0 writes it and the lane that
// owned it pops its head. The row is read once; the cost per element is one compare with the
// lane's current K-th best, plus a short insertion when it beats it.
// Launch (see `Gpu::topk_rows_f32`): 1-D grid, blockDim.x a multiple of 32; warp w of the grid
// handles rows w, w + warps_in_grid, ...
//
// `topk_rows_f32` (any k): the rank of element i is the number of elements of its row that come
// before it; the ranks are a permutation of 0..cols, and element i is written to slot rank(i) when
// rank(i) < k. Counting stops at k, so the cost per row is about cols * min(cols, k * cols / rank)
// compares: fine for k of a few hundred on rows of a few thousand, quadratic for huge rows.
// Launch: one block per row (grid-stride over rows); with `use_shared` != 0 the row is staged in
// dynamic shared memory of cols * 4 bytes.

// True when (a, ia) comes before (b, ib).
__device__ __forceinline__ bool topk_before(float a, int ia, float b, int ib) {
    const bool an = nereid_isnan(a);
    const bool bn = nereid_isnan(b);
    if (an || bn) {
        if (an && bn) return ia < ib;
        return bn;  // the number comes before the NaN
    }
    if (a != b) return a > b;
    return ia < ib;
}

// Sentinel index: after every real element (columns are < cols <= INT_MAX), with a NaN value.
#define TOPK_NONE 0x7fffffff

// Offers (x, c) to a lane's sorted candidate list v/idx [K].
template <int K>
__device__ __forceinline__ void topk_offer(float (&v)[K], int (&idx)[K], float x, int c) {
    if (!topk_before(x, c, v[K - 1], idx[K - 1])) return;
    v[K - 1] = x;
    idx[K - 1] = c;
    // One bubble pass moves the new element to its place (the rest stays sorted).
#pragma unroll
    for (int j = K - 1; j > 0; --j) {
        if (topk_before(v[j], idx[j], v[j - 1], idx[j - 1])) {
            const float tv = v[j];
            v[j] = v[j - 1];
            v[j - 1] = tv;
            const int ti = idx[j];
            idx[j] = idx[j - 1];
            idx[j - 1] = ti;
        }
    }
}

template <int K>
__device__ void topk_row_warp(const float* __restrict__ xr,    // [cols]
                              float* __restrict__ vr,          // [k]
                              unsigned int* __restrict__ ir,   // [k]
                              int cols, int k, int lane) {
    float v[K];
    int idx[K];
#pragma unroll
    for (int j = 0; j < K; ++j) {
        v[j] = __int_as_float(0x7fc00000);  // NaN
        idx[j] = TOPK_NONE;
    }
    // Four independent loads in flight per lane before any compare, then the tail.
    int c = lane;
    for (; c < cols - 96; c += 128) {
        const float x0 = xr[c];
        const float x1 = xr[c + 32];
        const float x2 = xr[c + 64];
        const float x3 = xr[c + 96];
        topk_offer<K>(v, idx, x0, c);
        topk_offer<K>(v, idx, x1, c + 32);
        topk_offer<K>(v, idx, x2, c + 64);
        topk_offer<K>(v, idx, x3, c + 96);
    }
    for (; c < cols; c += 32) topk_offer<K>(v, idx, xr[c], c);
    for (int r = 0; r < k; ++r) {
        float bv = v[0];
        int bi = idx[0];
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (topk_before(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        // k <= cols, so the winner of each of the k rounds is a real element.
        if (lane == 0) {
            vr[r] = bv;
            ir[r] = (unsigned int)bi;
        }
        if (idx[0] == bi) {
#pragma unroll
            for (int j = 0; j < K - 1; ++j) {
                v[j] = v[j + 1];
                idx[j] = idx[j + 1];
            }
            v[K - 1] = __int_as_float(0x7fc00000);
            idx[K - 1] = TOPK_NONE;
        }
    }
}

// One entry point per list length, so that the register budget (and so the occupancy) of the
// common small-k case is not that of the 32-entry lists.
template <int K>
__device__ void topk_rows_warp(const float* __restrict__ x,          // [rows, cols]
                               float* __restrict__ values,           // [rows, k]
                               unsigned int* __restrict__ indices,   // [rows, k]
                               int rows, int cols, int k) {
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long r = warp; r < rows; r += warps) {
        topk_row_warp<K>(x + r * cols, values + r * k, indices + r * k, cols, k, lane);
    }
}

extern "C" __global__ void topk_rows_warp8_f32(const float* __restrict__ x,          // [rows, cols]
                                               float* __restrict__ values,           // [rows, k], k <= 8
                                               unsigned int* __restrict__ indices,   // [rows, k]
                                               int rows, int cols, int k) {
    topk_rows_warp<8>(x, values, indices, rows, cols, k);
}

extern "C" __global__ void topk_rows_warp16_f32(const float* __restrict__ x,          // [rows, cols]
                                                float* __restrict__ values,           // [rows, k], k <= 16
                                                unsigned int* __restrict__ indices,   // [rows, k]
                                                int rows, int cols, int k) {
    topk_rows_warp<16>(x, values, indices, rows, cols, k);
}

extern "C" __global__ void topk_rows_warp32_f32(const float* __restrict__ x,          // [rows, cols]
                                                float* __restrict__ values,           // [rows, k], k <= 32
                                                unsigned int* __restrict__ indices,   // [rows, k]
                                                int rows, int cols, int k) {
    topk_rows_warp<32>(x, values, indices, rows, cols, k);
}

extern "C" __global__ void topk_rows_f32(const float* __restrict__ x,            // [rows, cols]
                                         float* __restrict__ values,             // [rows, k]
                                         unsigned int* __restrict__ indices,     // [rows, k]
                                         int rows, int cols, int k, int use_shared) {
    extern __shared__ float topk_row[];  // [cols] when use_shared
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const float* src = x + (long long)r * cols;  // [cols]
        if (use_shared) {
            __syncthreads();  // the previous row is no longer read
            for (int c = threadIdx.x; c < cols; c += blockDim.x) topk_row[c] = src[c];
            __syncthreads();
            src = topk_row;
        }
        float* vr = values + (long long)r * k;          // [k]
        unsigned int* ir = indices + (long long)r * k;  // [k]
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            const float v = src[i];
            int rank = 0;
            for (int j = 0; j < cols && rank < k; ++j) rank += topk_before(src[j], j, v, i) ? 1 : 0;
            if (rank < k) {
                vr[rank] = v;
                ir[rank] = (unsigned int)i;
            }
        }
    }
}
