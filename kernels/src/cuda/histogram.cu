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
// Launch (see `Gpu::histogram_f32`): 1-D grid of 256-thread blocks, at least `cols` threads; with
// `use_shared` != 0 each block first counts into dynamic shared memory of cols * (n + 3) * 4 bytes
// and then adds its non-zero counts to global memory.

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
                                         long long rows, int cols, int n_edges, int use_shared) {
    extern __shared__ unsigned int histogram_block[];  // [cols, n_edges + 2] when use_shared
    const int slots = n_edges + 2;
    const int total_slots = cols * slots;
    if (use_shared) {
        for (int i = threadIdx.x; i < total_slots; i += blockDim.x) histogram_block[i] = 0u;
        __syncthreads();
    }
    const NereidColumnWalk w = nereid_column_walk(cols);
    if (w.u >= 0) {
        const float* e = edges + w.u * n_edges;  // [n_edges]
        unsigned int* h = (use_shared ? histogram_block : counts) + w.u * slots;  // [slots]
        for (long long r = w.r0; r < rows; r += w.row_stride) {
            atomicAdd(h + histogram_slot(x[r * cols + w.u], e, n_edges), 1u);
        }
    }
    if (use_shared) {
        __syncthreads();
        for (int i = threadIdx.x; i < total_slots; i += blockDim.x) {
            const unsigned int v = histogram_block[i];
            if (v != 0u) atomicAdd(counts + i, v);
        }
    }
}
