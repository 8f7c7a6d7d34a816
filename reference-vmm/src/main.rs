//! Reference VMM: runs guests on KVM with the Hyper-V enlightenments served
//! in userspace.

fn main() {
    println!("reference-vmm: not wired yet");
}
