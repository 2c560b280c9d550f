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
// Method: the rank of element i is the number of elements of its row that come before it; the
// ranks are a permutation of 0..cols, and element i is written to slot rank(i) when rank(i) < k.
// Counting stops at k, so the cost per row is about cols * min(cols, k * cols / rank) compares;
// fine for classification heads (cols up to a few thousand), quadratic for huge rows.
//
// Launch (see `Gpu::topk_rows_f32`): one block per row (grid-stride over rows); with
// `use_shared` != 0 the row is staged in dynamic shared memory of cols * 4 bytes.

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
