//! Embeds the BPF object built by `cargo xtask build` (the one place that builds it). Without
//! it the binary still builds, and the dataplane commands say how to get the object.
use std::{env, fs, path::PathBuf};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let default = manifest.join("../target/bpf/bpfel-unknown-none/release/portcullis-ebpf");
    let src = env::var_os("PORTCULLIS_BPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or(default);
    println!("cargo:rerun-if-env-changed=PORTCULLIS_BPF_OBJECT");
    println!("cargo:rerun-if-changed={}", src.display());
    let bytes = fs::read(&src).unwrap_or_default();
    fs::write(out.join("portcullis.bpf.o"), bytes).expect("write embedded BPF object");
}
