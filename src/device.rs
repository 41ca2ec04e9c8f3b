//! Device selection helpers.
//!
//! PyTorch's wheels keep the CUDA backend in `libtorch_cuda.so`, which registers itself
//! when loaded. Nothing in sluice's own code refers to it, so the linker may drop it; it is
//! loaded explicitly when a CUDA device may be used.

use std::sync::OnceLock;

/// The `dlopen` handle of `libtorch_cuda.so`, kept for the process's life (null: not loaded).
struct Handle(*mut libc::c_void);
// SAFETY: a dlopen handle is an opaque token that libdl accepts from any thread.
unsafe impl Send for Handle {}
unsafe impl Sync for Handle {}

static CUDA: OnceLock<Handle> = OnceLock::new();

/// Loads libtorch's CUDA backend once, if this machine has an NVIDIA driver.
pub fn load_cuda_backend() {
    CUDA.get_or_init(|| {
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            return Handle(std::ptr::null_mut());
        }
        let name = c"libtorch_cuda.so";
        // SAFETY: dlopen with a valid C string; the handle is never closed.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        if handle.is_null() {
            tracing::warn!("could not load {name:?}: CUDA will not be available");
        }
        Handle(handle)
    });
}

/// Free and total memory of the current CUDA device in bytes, from the CUDA runtime that
/// `libtorch_cuda.so` brought in (`cudaMemGetInfo`); `None` without CUDA.
pub fn cuda_memory() -> Option<(u64, u64)> {
    let handle = CUDA.get().filter(|h| !h.0.is_null())?;
    // SAFETY: dlsym on a live handle searches the library and its dependencies.
    let sym = unsafe { libc::dlsym(handle.0, c"cudaMemGetInfo".as_ptr()) };
    if sym.is_null() {
        return None;
    }
    // SAFETY: cudaMemGetInfo's C signature is `cudaError_t (size_t *free, size_t *total)`.
    let get: extern "C" fn(*mut usize, *mut usize) -> i32 = unsafe { std::mem::transmute(sym) };
    let (mut free, mut total) = (0usize, 0usize);
    (get(&mut free, &mut total) == 0).then_some((free as u64, total as u64))
}
