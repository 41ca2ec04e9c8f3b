//! Device selection helpers.
//!
//! PyTorch's wheels keep the CUDA backend in `libtorch_cuda.so`, which registers itself
//! when loaded. Nothing in sluice's own code refers to it, so the linker may drop it; it is
//! loaded explicitly when a CUDA device may be used.

use std::sync::Once;

static LOAD: Once = Once::new();

/// Loads libtorch's CUDA backend once, if this machine has an NVIDIA driver.
pub fn load_cuda_backend() {
    LOAD.call_once(|| {
        if !std::path::Path::new("/dev/nvidiactl").exists() {
            return;
        }
        for name in [c"libtorch_cuda.so"] {
            // SAFETY: dlopen with a valid C string; the handle is kept for the process's life.
            let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if handle.is_null() {
                tracing::warn!("could not load {name:?}: CUDA will not be available");
            }
        }
    });
}
