//! Links the binary with an rpath to libtorch, so `target/*/sluice` and the test
//! binaries run without LD_LIBRARY_PATH, and records where the default models live.

fn main() {
    // Set by torch-sys (links = "tch") for its dependents.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", real_dir(&lib));
        // `.venv` is a link to a venv keyed by its pins: when it moves, link again.
        println!("cargo:rerun-if-changed={lib}");
        // The venv's site-packages holds the default-model packages too.
        let real = std::fs::canonicalize(&lib).unwrap_or_else(|_| lib.clone().into());
        let site = real
            .ancestors()
            .nth(2)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        println!("cargo:rustc-env=SLUICE_BUILD_SITE_PACKAGES={site}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}

fn real_dir(p: &str) -> String {
    std::fs::canonicalize(p).map(|p| p.display().to_string()).unwrap_or_else(|_| p.to_string())
}
