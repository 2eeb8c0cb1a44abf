//! Embeds the libtorch library folder as an rpath in the `ihs` binary and its tests, so
//! they start without `LD_LIBRARY_PATH`.

fn main() {
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
