// Fused bias + activation epilogue over a GEMM output, in place.
//
//   y[r, c] = act(y[r, c] + bias[c])        when bias is given
//   y[r, c] = act(y[r, c])                  when bias == nullptr (no addition at all, so -0 stays -0)
//
// Computed in f32. The f16 variant widens y and bias exactly, computes in f32 and rounds the
// result to nearest-even once. The CPU reference is `cpu::bias_act_f32` / `cpu::bias_act_f16`.
//
// Launch (see `Gpu::launch_elementwise`): 1-D grid of 256-thread blocks, at least `units` threads,
// where units = cols / 4 when `vec` != 0 (the host checks cols % 4 == 0 and 16-byte alignment for
// f32, 8-byte alignment for f16) and units = cols otherwise.

template <int ACT, bool HAS_BIAS>
__device__ void bias_act_f32_impl(float* __restrict__ y,           // [rows, cols]
                                  const float* __restrict__ bias,  // [cols], or nullptr
                                  long long rows, int cols, int vec) {
    if (vec) {
        const long long units = cols / 4;
        const NereidColumnWalk w = nereid_column_walk(units);
        if (w.u < 0) return;
        float4 b = {0.0f, 0.0f, 0.0f, 0.0f};
        if (HAS_BIAS) b = reinterpret_cast<const float4*>(bias)[w.u];
        float4* y4 = reinterpret_cast<float4*>(y);  // [rows, cols / 4]
        for (long long r = w.r0; r < rows; r += w.row_stride) {
            float4 v = y4[r * units + w.u];
            if (HAS_BIAS) {
                v.x += b.x;
                v.y += b.y;
                v.z += b.z;
                v.w += b.w;
            }
            v.x = nereid_act<ACT>(v.x);
            v.y = nereid_act<ACT>(v.y);
            v.z = nereid_act<ACT>(v.z);
            v.w = nereid_act<ACT>(v.w);
            y4[r * units + w.u] = v;
        }
    } else {
        const NereidColumnWalk w = nereid_column_walk(cols);
        if (w.u < 0) return;
        const float b = HAS_BIAS ? bias[w.u] : 0.0f;
        for (long long r = w.r0; r < rows; r += w.row_stride) {
            float v = y[r * cols + w.u];
            if (HAS_BIAS) v += b;
            y[r * cols + w.u] = nereid_act<ACT>(v);
        }
    }
}

template <int ACT, bool HAS_BIAS>
__device__ __forceinline__ unsigned int bias_act_f16_pair(unsigned int v, unsigned int b) {
    float lo = nereid_f16_to_f32((unsigned short)(v & 0xffffu));
    float hi = nereid_f16_to_f32((unsigned short)(v >> 16));
    if (HAS_BIAS) {
        lo += nereid_f16_to_f32((unsigned short)(b & 0xffffu));
        hi += nereid_f16_to_f32((unsigned short)(b >> 16));
    }
    const unsigned int rlo = nereid_f32_to_f16(nereid_act<ACT>(lo));
    const unsigned int rhi = nereid_f32_to_f16(nereid_act<ACT>(hi));
    return rlo | (rhi << 16);
}

template <int ACT, bool HAS_BIAS>
__device__ void bias_act_f16_impl(unsigned short* __restrict__ y,           // [rows, cols] f16 bits
                                  const unsigned short* __restrict__ bias,  // [cols] f16 bits, or nullptr
                                  long long rows, int cols, int vec) {
    if (vec) {
        // A unit is 4 halves = one 8-byte uint2; element 0 sits in the low bits of .x.
        const long long units = cols / 4;
        const NereidColumnWalk w = nereid_column_walk(units);
        if (w.u < 0) return;
        uint2 b = {0u, 0u};
        if (HAS_BIAS) b = reinterpret_cast<const uint2*>(bias)[w.u];
        uint2* y4 = reinterpret_cast<uint2*>(y);  // [rows, cols / 4]
        for (long long r = w.r0; r < rows; r += w.row_stride) {
            uint2 v = y4[r * units + w.u];
            v.x = bias_act_f16_pair<ACT, HAS_BIAS>(v.x, b.x);
            v.y = bias_act_f16_pair<ACT, HAS_BIAS>(v.y, b.y);
            y4[r * units + w.u] = v;
        }
    } else {
        const NereidColumnWalk w = nereid_column_walk(cols);
        if (w.u < 0) return;
        const float b = HAS_BIAS ? nereid_f16_to_f32(bias[w.u]) : 0.0f;
        for (long long r = w.r0; r < rows; r += w.row_stride) {
            float v = nereid_f16_to_f32(y[r * cols + w.u]);
            if (HAS_BIAS) v += b;
            y[r * cols + w.u] = nereid_f32_to_f16(nereid_act<ACT>(v));
        }
    }
}

// `act` is an activation code (NEREID_ACT_*); the switch picks a specialised loop once per thread.
#define NEREID_BIAS_ACT_DISPATCH(IMPL)                                        \
    if (bias != nullptr) {                                                    \
        switch (act) {                                                        \
            case NEREID_ACT_RELU: IMPL<NEREID_ACT_RELU, true>(y, bias, rows, cols, vec); break;       \
            case NEREID_ACT_GELU: IMPL<NEREID_ACT_GELU, true>(y, bias, rows, cols, vec); break;       \
            case NEREID_ACT_SIGMOID: IMPL<NEREID_ACT_SIGMOID, true>(y, bias, rows, cols, vec); break; \
            case NEREID_ACT_TANH: IMPL<NEREID_ACT_TANH, true>(y, bias, rows, cols, vec); break;       \
            default: IMPL<NEREID_ACT_IDENTITY, true>(y, bias, rows, cols, vec); break;                \
        }                                                                     \
    } else {                                                                  \
        switch (act) {                                                        \
            case NEREID_ACT_RELU: IMPL<NEREID_ACT_RELU, false>(y, bias, rows, cols, vec); break;       \
            case NEREID_ACT_GELU: IMPL<NEREID_ACT_GELU, false>(y, bias, rows, cols, vec); break;       \
            case NEREID_ACT_SIGMOID: IMPL<NEREID_ACT_SIGMOID, false>(y, bias, rows, cols, vec); break; \
            case NEREID_ACT_TANH: IMPL<NEREID_ACT_TANH, false>(y, bias, rows, cols, vec); break;       \
            default: IMPL<NEREID_ACT_IDENTITY, false>(y, bias, rows, cols, vec); break;                \
        }                                                                     \
    }

extern "C" __global__ void bias_act_f32(float* __restrict__ y,           // [rows, cols]
                                        const float* __restrict__ bias,  // [cols], or nullptr
                                        long long rows, int cols, int act, int vec) {
    NEREID_BIAS_ACT_DISPATCH(bias_act_f32_impl)
}

extern "C" __global__ void bias_act_f16(unsigned short* __restrict__ y,           // [rows, cols] f16 bits
                                        const unsigned short* __restrict__ bias,  // [cols] f16 bits, or nullptr
                                        long long rows, int cols, int act, int vec) {
    NEREID_BIAS_ACT_DISPATCH(bias_act_f16_impl)
}
