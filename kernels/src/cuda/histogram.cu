// Per-feature histogram counts against fixed bin edges (drift profiles of live traffic).
//
// Feature c has n_edges strictly increasing, finite edges e_0 < e_1 < ... < e_n (n = n_edges - 1
// bins; the host validates this when it builds `HistogramEdges`). A value v of feature c counts in
//   bin i        when e_i <= v < e_{i+1}   (the last bin also takes v == e_n),
//   underflow    when v < e_0              (including -Inf),
//   overflow     when v > e_n              (including +Inf),
//   nan          when v is NaN.
// counts[c] has n + 3 slots: [bin_0 .. bin_{n-1}, underflow, overflow, nan], and the kernel ADDS to
// them, so one window can be accumulated over many batches. The CPU reference is
// `cpu::histogram_f32` (same slot function, same layout).
//
// Launch (see `Gpu::histogram_f32`): 1-D grid, blockDim.x a multiple of 32, at least `cols`
// threads in the grid. `shared_mode` says what lives in dynamic shared memory:
//   bit 0: the block's counts, cols * (n + 3) u32, zeroed first and added to global memory once at
//          the end (one atomic per non-zero slot per block instead of one per element);
//   bit 1: a copy of the edges, cols * n_edges f32 (after the counts when bit 0 is set), so the
//          binary search does not wait on global/L1 loads.
// The launch provides exactly the bytes the set bits need. Each thread loads four rows before
// it counts any, so that enough loads are in flight to stream x at full bandwidth.

// Slot of v among the edges e[0..n_edges).
__device__ __forceinline__ int histogram_slot(float v,
                                              const float* __restrict__ e,  // [n_edges]
                                              int n_edges) {
    const int bins = n_edges - 1;
    if (nereid_isnan(v)) return bins + 2;
    if (v < e[0]) return bins;
    const float last = e[n_edges - 1];
    if (v > last) return bins + 1;
    if (v == last) return bins - 1;
    // Invariant: e[lo] <= v < e[hi].
    int lo = 0;
    int hi = n_edges - 1;
    while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        if (e[mid] <= v) lo = mid; else hi = mid;
    }
    return lo;
}

extern "C" __global__ void histogram_f32(const float* __restrict__ x,         // [rows, cols]
                                         const float* __restrict__ edges,     // [cols, n_edges]
                                         unsigned int* __restrict__ counts,   // [cols, n_edges + 2], accumulated
                                         long long rows, int cols, int n_edges, int shared_mode) {
    extern __shared__ unsigned int histogram_block[];  // see `shared_mode` above
    const bool shared_counts = (shared_mode & 1) != 0;
    const bool shared_edges = (shared_mode & 2) != 0;
    const int slots = n_edges + 2;
    const int total_slots = cols * slots;
    unsigned int* block_counts = histogram_block;  // [cols, slots] when shared_counts
    float* block_edges =                           // [cols, n_edges] when shared_edges
        reinterpret_cast<float*>(histogram_block + (shared_counts ? total_slots : 0));
    if (shared_counts) {
        for (int i = threadIdx.x; i < total_slots; i += blockDim.x) block_counts[i] = 0u;
    }
    if (shared_edges) {
        const int total_edges = cols * n_edges;
        for (int i = threadIdx.x; i < total_edges; i += blockDim.x) block_edges[i] = edges[i];
    }
    if (shared_counts || shared_edges) __syncthreads();
    const NereidColumnWalk w = nereid_column_walk(cols);
    if (w.u >= 0) {
        const float* e = (shared_edges ? block_edges : edges) + w.u * n_edges;  // [n_edges]
        unsigned int* h = (shared_counts ? block_counts : counts) + w.u * slots;  // [slots]
        const long long s = w.row_stride;
        long long r = w.r0;
        for (; r + 3 * s < rows; r += 4 * s) {
            const float v0 = x[r * cols + w.u];
            const float v1 = x[(r + s) * cols + w.u];
            const float v2 = x[(r + 2 * s) * cols + w.u];
            const float v3 = x[(r + 3 * s) * cols + w.u];
            atomicAdd(h + histogram_slot(v0, e, n_edges), 1u);
            atomicAdd(h + histogram_slot(v1, e, n_edges), 1u);
            atomicAdd(h + histogram_slot(v2, e, n_edges), 1u);
            atomicAdd(h + histogram_slot(v3, e, n_edges), 1u);
        }
        for (; r < rows; r += s) atomicAdd(h + histogram_slot(x[r * cols + w.u], e, n_edges), 1u);
    }
    if (shared_counts) {
        __syncthreads();
        for (int i = threadIdx.x; i < total_slots; i += blockDim.x) {
            const unsigned int v = block_counts[i];
            if (v != 0u) atomicAdd(counts + i, v);
        }
    }
}
