//! Declares `cfg(loom)`, under which the descriptor is built on loom's
//! atomics for model checking (see README).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
