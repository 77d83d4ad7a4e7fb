mod libtorch_rpath {
    include!("../libtorch_rpath.rs");
    pub fn emit() {
        main()
    }
}

/// Compiles the C++ autograd nodes of the CPU attention and dropout (src/kernels/autograd.cpp)
/// against the headers of the libtorch torch-sys links, with the same flags torch-sys uses for
/// its own C++.
fn main() {
    libtorch_rpath::emit();
    let source = "src/kernels/autograd.cpp";
    println!("cargo:rerun-if-changed={source}");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its library folder (DEP_TCH_LIBTORCH_LIB)");
    let root = std::path::Path::new(&lib_dir).join("..");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        // The PyPI wheels of torch ≥ 2.6 are built with the C++11 ABI.
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .opt_level(2)
        .file(source)
        .compile("fpt_autograd_nodes");
}
