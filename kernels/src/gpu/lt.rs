//! cuBLASLt GEMMs with the bias (and ReLU) fused into the GEMM's own epilogue: the alternative
//! to GEMM + `bias_act` for the activations cuBLASLt computes exactly as the CPU reference does
//! (identity and ReLU). Its GELU epilogue is the tanh approximation, not the exact erf form of
//! `nereid_act`, and it has no sigmoid or tanh, so those stay on the crate's kernel.
//!
//! Rounding: cuBLASLt adds the bias to the f32 accumulator and rounds once; the kernel path rounds
//! the GEMM result to the output type first. In f32 the two agree up to the order of that one
//! addition (identical in practice); in f16 they can differ by one unit in the last place.
//!
//! Descriptors, layouts and the algorithm the heuristic picks are built once per batch size and
//! kept in the [`Linear`](super::Linear) ([`LtPlans`]); each call only sets the bias pointer and
//! enqueues `cublasLtMatmul` on the handle's stream.

use std::ffi::c_void;
use std::sync::Mutex;

use cudarc::cublaslt::{result as lt_result, sys as lt_sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::libs::{guard, load_env_libraries};
use super::{driver, lock, to_i32, Gpu, GpuFloat};
use crate::op::check_len;
use crate::{Activation, KernelError};

/// Workspace per handle. cuBLASLt recommends 32 MiB on Hopper; 8 MiB leaves the fast algorithms
/// for serving-sized GEMMs available at a quarter of the memory per model instance.
const WORKSPACE_BYTES: usize = 8 << 20;

/// Pointer alignment the heuristic's algorithms may assume (cuBLASLt's default for
/// `CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_*_BYTES`).
const LT_ALIGNMENT: u64 = 256;

fn lt_err(op: &'static str) -> impl FnOnce(lt_result::CublasError) -> KernelError {
    move |e| KernelError::CublasLt {
        op,
        message: format!("{e:?}"),
    }
}

/// Whether cuBLASLt can be loaded (after `NEREID_CUDA_LIB_DIRS` has been honoured).
pub fn cublaslt_present() -> bool {
    if load_env_libraries().is_err() {
        return false;
    }
    // SAFETY: only tries `dlopen` on cudarc's candidate names for libcublasLt and drops the
    // handles.
    unsafe { lt_sys::is_culib_present() }
}

/// A cuBLASLt handle and its workspace, one per [`Gpu`] handle.
pub(crate) struct LtHandle {
    handle: lt_sys::cublasLtHandle_t,
    /// `WORKSPACE_BYTES` of device memory on the handle's stream.
    workspace: CudaSlice<u8>,
}

// SAFETY: a cuBLASLt handle may be used from any thread, one call at a time; `Inner` keeps it
// under a mutex.
unsafe impl Send for LtHandle {}
// SAFETY: as above: every use goes through the mutex.
unsafe impl Sync for LtHandle {}

impl Drop for LtHandle {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `create_handle` and is destroyed once, here. A failure only
        // leaks it.
        let _ = unsafe { lt_result::destroy_handle(self.handle) };
    }
}

/// Descriptors and algorithm of one GEMM shape + epilogue.
struct LtPlan {
    desc: lt_sys::cublasLtMatmulDesc_t,
    a: lt_sys::cublasLtMatrixLayout_t,
    b: lt_sys::cublasLtMatrixLayout_t,
    c: lt_sys::cublasLtMatrixLayout_t,
    algo: lt_sys::cublasLtMatmulAlgo_t,
}

impl Drop for LtPlan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created for this plan and is destroyed once, here; a
        // failure only leaks it.
        unsafe {
            for layout in [self.a, self.b, self.c] {
                if !layout.is_null() {
                    let _ = lt_result::destroy_matrix_layout(layout);
                }
            }
            let _ = lt_result::destroy_matmul_desc(self.desc);
        }
    }
}

/// The prepared cuBLASLt GEMMs of one [`Linear`](super::Linear), by batch size; `None` where
/// cuBLASLt offered no algorithm for the shape (those batches take the kernel path).
#[derive(Default)]
pub(crate) struct LtPlans(Mutex<Vec<(usize, Option<LtPlan>)>>);

// SAFETY: the descriptors are plain host objects owned by the plans; the mutex serialises every
// use (including the attribute writes before each call).
unsafe impl Send for LtPlans {}
// SAFETY: as above.
unsafe impl Sync for LtPlans {}

impl std::fmt::Debug for LtPlans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let batches: Vec<(usize, bool)> = lock(&self.0)
            .iter()
            .map(|(batch, plan)| (*batch, plan.is_some()))
            .collect();
        f.debug_struct("LtPlans")
            .field("batches", &batches)
            .finish()
    }
}

/// The epilogue for `act` with or without a bias; `None` when cuBLASLt cannot compute `act`
/// exactly as the CPU reference does.
pub(crate) fn lt_epilogue(act: Activation, bias: bool) -> Option<lt_sys::cublasLtEpilogue_t> {
    use lt_sys::cublasLtEpilogue_t as E;
    match (act, bias) {
        (Activation::Identity, false) => Some(E::CUBLASLT_EPILOGUE_DEFAULT),
        (Activation::Identity, true) => Some(E::CUBLASLT_EPILOGUE_BIAS),
        (Activation::Relu, false) => Some(E::CUBLASLT_EPILOGUE_RELU),
        (Activation::Relu, true) => Some(E::CUBLASLT_EPILOGUE_RELU_BIAS),
        _ => None,
    }
}

/// Creates a plan: `D [out, batch] = op(W) · X` in cuBLASLt's column-major terms, which is
/// `y = x · wᵀ` for the row-major `x [batch, in]`, `w [out, in]`, `y [batch, out]`.
fn new_plan(
    handle: lt_sys::cublasLtHandle_t,
    data_type: lt_sys::cudaDataType,
    epilogue: lt_sys::cublasLtEpilogue_t,
    (batch, in_features, out_features): (usize, usize, usize),
) -> Result<LtPlan, KernelError> {
    let (m, n, k) = (out_features as u64, batch as u64, in_features as u64);
    let desc = lt_result::create_matmul_desc(
        lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        lt_sys::cudaDataType::CUDA_R_32F,
    )
    .map_err(lt_err("cublasLtMatmulDescCreate"))?;
    let mut plan = LtPlan {
        desc,
        a: std::ptr::null_mut(),
        b: std::ptr::null_mut(),
        c: std::ptr::null_mut(),
        algo: lt_sys::cublasLtMatmulAlgo_t { data: [0; 8] },
    };
    let set = |attr: lt_sys::cublasLtMatmulDescAttributes_t, value: *const c_void, size: usize| {
        // SAFETY: `plan.desc` is live; `value` points to `size` readable bytes of the type the
        // attribute expects (i32 for TRANSA/TRANSB, cublasLtEpilogue_t for EPILOGUE).
        unsafe { lt_result::set_matmul_desc_attribute(desc, attr, value, size) }
            .map_err(lt_err("cublasLtMatmulDescSetAttribute"))
    };
    let (trans, no_trans): (i32, i32) = (1, 0);
    use lt_sys::cublasLtMatmulDescAttributes_t as A;
    set(
        A::CUBLASLT_MATMUL_DESC_TRANSA,
        (&trans as *const i32).cast(),
        std::mem::size_of::<i32>(),
    )?;
    set(
        A::CUBLASLT_MATMUL_DESC_TRANSB,
        (&no_trans as *const i32).cast(),
        std::mem::size_of::<i32>(),
    )?;
    set(
        A::CUBLASLT_MATMUL_DESC_EPILOGUE,
        (&epilogue as *const lt_sys::cublasLtEpilogue_t).cast(),
        std::mem::size_of::<lt_sys::cublasLtEpilogue_t>(),
    )?;
    let layout = |rows: u64, cols: u64, ld: u64| {
        lt_result::create_matrix_layout(data_type, rows, cols, ld as i64)
            .map_err(lt_err("cublasLtMatrixLayoutCreate"))
    };
    // A = w, column-major [in, out] (ld = in), transposed; B = x, [in, batch]; C = D = y,
    // [out, batch] (ld = out).
    plan.a = layout(k, m, k)?;
    plan.b = layout(k, n, k)?;
    plan.c = layout(m, n, m)?;
    let pref = lt_result::create_matmul_pref().map_err(lt_err("cublasLtMatmulPreferenceCreate"))?;
    let workspace = WORKSPACE_BYTES;
    // SAFETY: `pref` is live; the attribute is a usize, and `workspace` lives across the call.
    let r = unsafe {
        lt_result::set_matmul_pref_attribute(
            pref,
            lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            (&workspace as *const usize).cast(),
            std::mem::size_of::<usize>(),
        )
    }
    .map_err(lt_err("cublasLtMatmulPreferenceSetAttribute"))
    .and_then(|()| {
        // The bias pointer is not part of the heuristic's inputs, but the epilogue is; cuBLASLt
        // reads the pointer at `cublasLtMatmul` time.
        // SAFETY: every descriptor passed is live and describes the same GEMM.
        unsafe {
            lt_result::get_matmul_algo_heuristic(
                handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref,
            )
        }
        .map_err(lt_err("cublasLtMatmulAlgoGetHeuristic"))
    });
    // SAFETY: `pref` was created above and is not used after this.
    let _ = unsafe { lt_result::destroy_matmul_pref(pref) };
    plan.algo = r?.algo;
    Ok(plan)
}

impl Gpu {
    /// `y = act(x · wᵀ + bias)` through cuBLASLt with the bias and `act` in the GEMM's epilogue
    /// (`act` must be identity or ReLU, see [`lt_epilogue`]). Shapes as [`Gpu::gemm`].
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn lt_linear<T: GpuFloat, X: DevicePtr<T>, W: DevicePtr<T>, Y: DevicePtrMut<T>>(
        &self,
        plans: &LtPlans,
        x: &X,
        w: &W,
        bias: Option<&CudaSlice<T>>,
        y: &mut Y,
        (batch, in_features, out_features): (usize, usize, usize),
        act: Activation,
    ) -> Result<(), KernelError> {
        const OP: &str = "Linear::forward (cuBLASLt)";
        check_len(OP, "x", x.len(), batch, in_features)?;
        check_len(OP, "w", w.len(), out_features, in_features)?;
        check_len(OP, "y", y.len(), batch, out_features)?;
        if let Some(b) = bias {
            check_len(OP, "bias", b.len(), 1, out_features)?;
            self.check_owner(OP, b)?;
        }
        self.check_owner(OP, x)?;
        self.check_owner(OP, w)?;
        self.check_owner(OP, y)?;
        to_i32(OP, "out_features", out_features)?;
        to_i32(OP, "batch", batch)?;
        to_i32(OP, "in_features", in_features)?;
        let epilogue = lt_epilogue(act, bias.is_some()).ok_or_else(|| {
            KernelError::invalid(
                OP,
                format!("cuBLASLt has no exact epilogue for {}", act.name()),
            )
        })?;
        if batch == 0 || out_features == 0 {
            return Ok(());
        }
        // cuBLASLt's heuristic assumes 256-byte aligned pointers unless told otherwise (fresh
        // allocations are); views that start elsewhere, and the empty sum of in_features == 0,
        // take the kernel path, which computes the same values.
        let aligned = {
            let stream = &self.inner.stream;
            let (xp, _xs) = x.device_ptr(stream);
            let (wp, _ws) = w.device_ptr(stream);
            let (yp, _ys) = y.device_ptr_mut(stream);
            let bp = bias.map(|b| b.device_ptr(stream));
            [xp, wp, yp, bp.as_ref().map_or(0, |(p, _)| *p)]
                .iter()
                .all(|p| p % LT_ALIGNMENT == 0)
        };
        if in_features == 0 || !aligned {
            self.gemm(x, w, y, batch, in_features, out_features)?;
            return self.bias_act(y, bias, batch, out_features, act);
        }
        self.inner
            .device
            .ctx
            .bind_to_thread()
            .map_err(driver("cuCtxSetCurrent"))?;
        let mut lt_slot = lock(&self.inner.lt);
        if lt_slot.is_none() {
            if !cublaslt_present() {
                return Err(KernelError::NoCublasLt);
            }
            let stream = &self.inner.stream;
            let lt = guard("cublasLtCreate", || {
                let handle = lt_result::create_handle().map_err(lt_err("cublasLtCreate"))?;
                // SAFETY: the workspace is scratch space for cuBLASLt; nothing reads it first.
                let workspace = match unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) } {
                    Ok(ws) => ws,
                    Err(e) => {
                        // SAFETY: created above, not used elsewhere.
                        let _ = unsafe { lt_result::destroy_handle(handle) };
                        return Err(driver("cuMemAllocAsync")(e));
                    }
                };
                Ok(LtHandle { handle, workspace })
            })?;
            *lt_slot = Some(lt);
        }
        let Some(lt) = lt_slot.as_ref() else {
            return Err(KernelError::NoCublasLt);
        };
        let mut plans = lock(&plans.0);
        let index = match plans.iter().position(|(b, _)| *b == batch) {
            Some(i) => i,
            None => {
                let plan = match guard("cuBLASLt plan", || {
                    new_plan(
                        lt.handle,
                        T::LT_DATA_TYPE,
                        epilogue,
                        (batch, in_features, out_features),
                    )
                }) {
                    Ok(plan) => Some(plan),
                    // No algorithm for this shape/type/epilogue (odd f16 leading dimensions, for
                    // example): remembered, and served by the kernel path below.
                    Err(KernelError::CublasLt { message, .. })
                        if message.contains("NOT_SUPPORTED") =>
                    {
                        None
                    }
                    Err(e) => return Err(e),
                };
                plans.push((batch, plan));
                plans.len() - 1
            }
        };
        let Some(plan) = &plans[index].1 else {
            drop(plans);
            drop(lt_slot);
            self.gemm(x, w, y, batch, in_features, out_features)?;
            return self.bias_act(y, bias, batch, out_features, act);
        };
        let stream = &self.inner.stream;
        let (x_ptr, _x_sync) = x.device_ptr(stream);
        let (w_ptr, _w_sync) = w.device_ptr(stream);
        let (y_ptr, _y_sync) = y.device_ptr_mut(stream);
        let (ws_ptr, _ws_sync) = lt.workspace.device_ptr(stream);
        let bias_sync = match bias {
            Some(b) => {
                let (b_ptr, sync) = b.device_ptr(stream);
                // SAFETY: `plan.desc` is live and only used under the `plans` lock; the
                // attribute is a device pointer (u64) read from `b_ptr`, which lives across the
                // call; the bias buffer holds out_features elements of T (checked above).
                unsafe {
                    lt_result::set_matmul_desc_attribute(
                        plan.desc,
                        lt_sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                        (&b_ptr as *const u64).cast(),
                        std::mem::size_of::<u64>(),
                    )
                }
                .map_err(lt_err("cublasLtMatmulDescSetAttribute"))?;
                Some(sync)
            }
            None => None,
        };
        let alpha: f32 = 1.0;
        let beta: f32 = 0.0;
        // SAFETY: the plan describes exactly this GEMM (m = out, n = batch, k = in, the layouts
        // of `w`, `x`, `y` with lda = ldb = in, ldc = out, element type T), and the buffers hold
        // out * in, batch * in and batch * out elements (checked above); beta = 0 so C (= D) is
        // not read; alpha/beta are f32 as the f32 scale type requires and live across the call;
        // the workspace holds WORKSPACE_BYTES, the limit the heuristic was given; the stream
        // belongs to this context, which is current on this thread.
        unsafe {
            lt_result::matmul(
                lt.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                w_ptr as *const c_void,
                plan.a,
                x_ptr as *const c_void,
                plan.b,
                y_ptr as *const c_void,
                plan.c,
                y_ptr as *mut c_void,
                plan.c,
                &plan.algo,
                ws_ptr as *mut c_void,
                WORKSPACE_BYTES,
                stream.cu_stream() as lt_sys::cudaStream_t,
            )
        }
        .map_err(lt_err("cublasLtMatmul"))?;
        drop(bias_sync);
        Ok(())
    }
}
