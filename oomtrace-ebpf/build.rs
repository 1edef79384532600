//! Rebuilds the eBPF object when bpf-linker changes (as in the aya template).

fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(err) => println!("cargo:warning=bpf-linker not found ({err}): run `cargo xtask setup`"),
    }
}
