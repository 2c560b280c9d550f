// Prelude that nereid-kernels prepends to every kernel source before NVRTC compiles it
// (see `KernelSource::full_source` in src/source.rs).
//
// NVRTC is given no include paths, so neither this file nor any kernel includes a header:
// FP16 values travel as their IEEE binary16 bits in `unsigned short` and are converted with
// the same single PTX instructions that cuda_fp16.h uses. The kernels therefore compile with a
// bare NVRTC (for example the one from the `nvidia-cuda-nvrtc` wheel) and nothing else.

// f16 -> f32: exact.
__device__ __forceinline__ float nereid_f16_to_f32(unsigned short h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

// f32 -> f16: round to nearest, ties to even (what `half::f16::from_f32` does on the host).
__device__ __forceinline__ unsigned short nereid_f32_to_f16(float f) {
    unsigned short h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}

__device__ __forceinline__ bool nereid_isnan(float v) { return v != v; }

#define NEREID_INF __int_as_float(0x7f800000)

// Activation codes; they must match `Activation::code` in src/op.rs.
#define NEREID_ACT_IDENTITY 0
#define NEREID_ACT_RELU 1
#define NEREID_ACT_GELU 2
#define NEREID_ACT_SIGMOID 3
#define NEREID_ACT_TANH 4

// The activations, in f32. The CPU reference (`Activation::apply` in src/op.rs) uses the same
// formulas:
//   relu(v)    = v < 0 ? 0 : v            (NaN stays NaN, -0 stays -0)
//   gelu(v)    = 0.5 * v * erfc(-v / sqrt(2))   (the exact, erf-based GELU; erfc keeps the
//                                                relative accuracy for negative v)
//   sigmoid(v) = 1 / (1 + exp(-v))
//   tanh(v)    = tanh(v)
template <int ACT>
__device__ __forceinline__ float nereid_act(float v) {
    if (ACT == NEREID_ACT_RELU) {
        return v < 0.0f ? 0.0f : v;
    } else if (ACT == NEREID_ACT_GELU) {
        return 0.5f * v * erfcf(-v * 0.70710678118654752440f);
    } else if (ACT == NEREID_ACT_SIGMOID) {
        return 1.0f / (1.0f + expf(-v));
    } else if (ACT == NEREID_ACT_TANH) {
        return tanhf(v);
    } else {
        return v;
    }
}

// Thread mapping shared by the row-major elementwise kernels (bias_act, standardize, histogram).
//
// The matrix is [rows, units]: a unit is one element, or 4 consecutive elements of a row when the
// host picked the vectorised path. Each thread owns one column unit `u` for its whole life (so
// per-column parameters such as the bias stay in registers and no division happens per element)
// and walks rows r0, r0 + row_stride, ... The host launches at least `units` threads.
struct NereidColumnWalk {
    long long u;           // this thread's column unit, or -1 when the thread has no work
    long long r0;          // first row
    long long row_stride;  // rows between two visits
};

__device__ __forceinline__ NereidColumnWalk nereid_column_walk(long long units) {
    NereidColumnWalk w;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)gridDim.x * blockDim.x;
    w.row_stride = total / units;
    if (t >= w.row_stride * units) {
        w.u = -1;
        w.r0 = 0;
        return w;
    }
    w.u = t % units;
    w.r0 = t / units;
    return w;
}
