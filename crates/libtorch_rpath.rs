// Shared build script of every crate whose binaries or tests link libtorch (included by each
// crate's build.rs). Link arguments do not propagate between packages, so each one needs this.
//
// torch-sys declares `links = "tch"` and exports its library folder as DEP_TCH_LIBTORCH_LIB to
// crates that depend on it directly. We turn it into an rpath so `target/release/fpt` and the
// test executables run without LD_LIBRARY_PATH, and we keep libtorch_cuda as a needed library
// (the linker's --as-needed would drop it, and CUDA would then look absent at run time).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report its library folder; binaries will need LD_LIBRARY_PATH");
        return;
    };
    let lib = std::path::Path::new(&lib_dir);
    let lib = lib.canonicalize().unwrap_or_else(|_| lib.to_path_buf());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
