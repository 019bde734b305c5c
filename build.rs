//! Generates the C header from the Rust source with cbindgen.
//!
//! cbindgen reads the whole crate, so any change under src/ may change it.
//! The header is written to `$OUT_DIR/smallmind.h`; the checked-in `include/smallmind.h` is
//! compared with it by `tests/header.rs`, and `scripts/update-header` copies it over.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let header = out_dir.join("smallmind.h");

    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed=build.rs");

    // The shared library carries a versioned soname, as a C library installed under a prefix
    // does: programs link against libsmallmind.so.0, and scripts/install lays out
    // libsmallmind.so.0.1.0 with the .so.0 and .so links. Bump the 0 with an incompatible ABI
    // change (SMALLMIND_ABI_VERSION).
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libsmallmind.so.0");
    }
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!(
        "cargo:rustc-env=SMALLMIND_GENERATED_HEADER={}",
        header.display()
    );

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    match cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
    {
        Ok(bindings) => {
            bindings.write_to_file(&header);
        }
        Err(e) => panic!("cbindgen could not generate the header: {e}"),
    }
}
