//! Builds the C test programs and examples against the shared library with
//! `-Wall -Wextra -Werror` (and once more under AddressSanitizer + UBSan) and runs them.

#[path = "support/models.rs"]
mod models;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding libsmallmind.so. Cargo builds the library's cdylib next to this test
/// executable (target/<profile>/deps) from the same source, so that copy is never stale;
/// `cargo build` also copies it one level up.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("target/<profile>/deps").to_path_buf();
    let candidates = [
        deps.clone(),
        deps.parent().expect("target/<profile>").to_path_buf(),
    ];
    candidates
        .iter()
        .find(|dir| dir.join("libsmallmind.so").exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{} has no libsmallmind.so; build the library first (`cargo build --release`)",
                deps.display()
            )
        })
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    let dir = library_dir().join("c-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `sources` into `name`, linked against the shared library.
fn compile(name: &str, sources: &[&str], extra_flags: &[&str]) -> PathBuf {
    let lib_dir = library_dir();
    let output = out_dir().join(name);
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()));
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g"])
        .args(extra_flags)
        .arg("-I")
        .arg(repo().join("include"))
        .arg("-I")
        .arg(repo().join("tests/c"));
    for s in sources {
        cmd.arg(repo().join(s));
    }
    cmd.arg("-o")
        .arg(&output)
        .arg("-L")
        .arg(&lib_dir)
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lsmallmind", "-lpthread", "-lm"]);
    let result = cmd.output().expect("run the C compiler");
    assert!(
        result.status.success(),
        "compiling {name} failed:\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    output
}

fn run(program: &Path, args: &[&Path]) -> String {
    let result = Command::new(program)
        .args(args)
        .env("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        .env("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        .output()
        .expect("run the C test program");
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success(),
        "{} failed ({}):\n{stdout}\n{stderr}",
        program.display(),
        result.status
    );
    stdout
}

fn not_a_gguf_file() -> PathBuf {
    let path = out_dir().join("not-a-model.gguf");
    std::fs::write(&path, b"this is a text file, not a GGUF model\n").unwrap();
    path
}

#[test]
fn c_engine_tests_pass() {
    let program = compile("test_engine", &["tests/c/test_engine.c"], &[]);
    let out = run(&program, &[&models::smollm2(), &not_a_gguf_file()]);
    assert!(out.contains(" 0 failed"), "{out}");
}

#[test]
fn c_engine_tests_pass_under_address_and_undefined_behaviour_sanitizers() {
    let program = compile(
        "test_engine_asan",
        &["tests/c/test_engine.c"],
        &[
            "-fsanitize=address,undefined",
            "-fno-omit-frame-pointer",
            "-fno-sanitize-recover=undefined",
        ],
    );
    let out = run(&program, &[&models::smollm2(), &not_a_gguf_file()]);
    assert!(out.contains(" 0 failed"), "{out}");
}
