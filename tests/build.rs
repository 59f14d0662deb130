//! Builds the shared library the exec-identity scenario preloads (`evil.so`: its constructor
//! prints `PWNED`) with the host's C compiler, so the test carries it as bytes and needs no
//! compiler where it runs (the VM tier's guests have none).
use std::{path::PathBuf, process::Command};

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let src = out.join("evil.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\n__attribute__((constructor)) static void f(void) { write(1, \"PWNED\\n\", 6); }\n",
    )
    .expect("write evil.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let st = Command::new(&cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(out.join("evil.so"))
        .arg(&src)
        .status()
        .unwrap_or_else(|e| panic!("{cc} (build-essential) builds the preloaded test library: {e}"));
    assert!(st.success(), "{cc} failed to build evil.so");
    println!("cargo:rerun-if-changed=build.rs");
}
