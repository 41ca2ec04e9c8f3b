//! Links the binary with an rpath to libtorch, so `target/*/sluice` and the test
//! binaries run without LD_LIBRARY_PATH, and records where the default models live.

fn main() {
    // Set by torch-sys (links = "tch") for its dependents.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", real_dir(&lib));
        // `.venv` is a link to a venv keyed by its pins: when it moves, link again. The
        // pins file is written when a venv is made, so a new venv is newer than the last
        // build even though pip keeps the packaged files' own (old) times.
        println!("cargo:rerun-if-changed={lib}");
        let pins = manifest_dir().join(".venv/.sluice-pins");
        println!("cargo:rerun-if-changed={}", pins.display());
        // The venv's site-packages holds the default-model packages too.
        let real = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.clone().into());
        let site = real
            .ancestors()
            .nth(2)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("cargo:rustc-env=SLUICE_BUILD_SITE_PACKAGES={site}");
        compile_kernels(&lib);
    }
    println!("cargo:rerun-if-changed=build.rs");
}

/// The checkout being built, read when the script runs: `env!` would keep the directory the
/// script was first compiled in, and cargo reuses a compiled script for another checkout
/// that shares its target directory.
fn manifest_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR").into()
}

/// The CPU kernels in kernels/, against libtorch's headers. `-fopenmp` makes `at::parallel_for`
/// run on libtorch's OpenMP pool: the binary already links the libgomp that libtorch uses.
fn compile_kernels(lib: &str) {
    let root = std::path::Path::new(lib).parent().expect("libtorch's lib folder has a parent");
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .flag("-fopenmp")
        .opt_level(3)
        .file("kernels/attention.cpp")
        .file("kernels/prefill_attention.cpp")
        .file("kernels/norm.cpp")
        .file("kernels/rope.cpp")
        .file("kernels/quant.cpp")
        .compile("sluice_kernels");
    compile_dist(&include);
    println!("cargo:rerun-if-changed=kernels/attention.cpp");
    println!("cargo:rerun-if-changed=kernels/prefill_attention.cpp");
    println!("cargo:rerun-if-changed=kernels/simd_math.h");
    println!("cargo:rerun-if-changed=kernels/norm.cpp");
    println!("cargo:rerun-if-changed=kernels/rope.cpp");
    println!("cargo:rerun-if-changed=kernels/quant.cpp");
    println!("cargo:rerun-if-changed=kernels/quant_blocks.h");
    println!("cargo:rerun-if-changed=kernels/quant_simd.h");
    println!("cargo:rerun-if-changed=kernels/quant_panel512.h");
    println!("cargo:rerun-if-changed=kernels/convert.h");
    println!("cargo:rerun-if-changed=kernels/entry.h");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
}

/// kernels/dist.cpp (c10d's Gloo process group, for tensor parallelism): with
/// `SLUICE_HAVE_GLOO` when gloo's headers are where scripts/setup.sh puts them (the venv's
/// `gloo/usr/include`, or `SLUICE_GLOO_INCLUDE`), else without (every call then errs).
fn compile_dist(include: &std::path::Path) {
    let gloo = std::env::var("SLUICE_GLOO_INCLUDE").map(std::path::PathBuf::from).unwrap_or_else(|_| {
        manifest_dir().join(".venv/gloo/usr/include")
    });
    let mut b = cc::Build::new();
    b.cpp(true)
        .pic(true)
        .warnings(false)
        .include(include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={}", std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into())))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .opt_level(2)
        .file("kernels/dist.cpp");
    if gloo.join("gloo/config.h").is_file() {
        b.include(&gloo).define("USE_C10D_GLOO", None).define("SLUICE_HAVE_GLOO", None);
    } else {
        println!("cargo:warning=gloo headers not found at {}: building without tensor parallelism (run scripts/setup.sh)", gloo.display());
    }
    b.compile("sluice_dist");
    println!("cargo:rerun-if-changed=kernels/dist.cpp");
    println!("cargo:rerun-if-changed={}", gloo.join("gloo/config.h").display());
    println!("cargo:rerun-if-env-changed=SLUICE_GLOO_INCLUDE");
}

fn real_dir(p: &str) -> String {
    std::fs::canonicalize(p).map(|p| p.display().to_string()).unwrap_or_else(|_| p.to_string())
}
