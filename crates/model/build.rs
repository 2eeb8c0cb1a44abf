//! Embeds the libtorch library folder as an rpath in this crate's tests, so
//! they start without `LD_LIBRARY_PATH`, and records it for loading the CUDA
//! backend at run time.

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        println!("cargo:rustc-env=IHS_LIBTORCH_LIB={lib}");
    }
}
