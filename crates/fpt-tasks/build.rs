include!("../libtorch_rpath.rs");
