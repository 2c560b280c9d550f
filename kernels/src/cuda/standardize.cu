// Per-feature standardisation (preprocessing):
//
//   y[r, c] = (x[r, c] - mean[c]) / std[c]
//
// in f32 with an IEEE-rounded subtraction and division (no reciprocal, no fused multiply-add),
// so the result is bit-identical to the CPU reference `cpu::standardize_f32`. NaN/Inf inputs and
// std[c] == 0 follow IEEE arithmetic (Inf or NaN); callers that want std > 0 check it when they
// build the statistics.
//
// Launch (see `Gpu::launch_elementwise`): 1-D grid of 256-thread blocks, at least `units` threads;
// units = cols / 4 when `vec` != 0 (the host checks cols % 4 == 0 and 16-byte alignment of all
// four pointers), units = cols otherwise.

__device__ __forceinline__ float standardize_one(float x, float mean, float std) {
    return __fdiv_rn(__fsub_rn(x, mean), std);
}

extern "C" __global__ void standardize_f32(const float* __restrict__ x,     // [rows, cols]
                                           const float* __restrict__ mean,  // [cols]
                                           const float* __restrict__ std,   // [cols]
                                           float* __restrict__ y,           // [rows, cols]
                                           long long rows, int cols, int vec) {
    if (vec) {
        const long long units = cols / 4;
        const NereidColumnWalk w = nereid_column_walk(units);
        if (w.u < 0) return;
        const float4 m = reinterpret_cast<const float4*>(mean)[w.u];
        const float4 s = reinterpret_cast<const float4*>(std)[w.u];
        const float4* x4 = reinterpret_cast<const float4*>(x);  // [rows, cols / 4]
        float4* y4 = reinterpret_cast<float4*>(y);              // [rows, cols / 4]
        for (long long r = w.r0; r < rows; r += w.row_stride) {
            const float4 v = x4[r * units + w.u];
            float4 o;
            o.x = standardize_one(v.x, m.x, s.x);
            o.y = standardize_one(v.y, m.y, s.y);
            o.z = standardize_one(v.z, m.z, s.z);
            o.w = standardize_one(v.w, m.w, s.w);
            y4[r * units + w.u] = o;
        }
    } else {
        const NereidColumnWalk w = nereid_column_walk(cols);
        if (w.u < 0) return;
        const float m = mean[w.u];
        const float s = std[w.u];
        for (long long r = w.r0; r < rows; r += w.row_stride) {
            y[r * cols + w.u] = standardize_one(x[r * cols + w.u], m, s);
        }
    }
}
