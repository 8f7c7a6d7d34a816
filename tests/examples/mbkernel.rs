//! Writes a multiboot v1 test kernel to a file, to boot it by hand:
//!
//! ```sh
//! cargo run -p hv-tests --example mbkernel -- /tmp/mbkernel.elf [xapic|x2apic] [exit-code]
//! cargo run --release -p reference-vmm -- boot --kernel /tmp/mbkernel.elf --vcpus 4
//! ```

use hv_tests::mbkernel::{self, Apic, Flavor, Target};

/// How to call it.
const USAGE: &str = "usage: mbkernel OUT.elf [xapic|x2apic] [exit-code]";

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or(USAGE)?;
    if path == "-h" || path == "--help" {
        println!("{USAGE}");
        return Ok(());
    }
    if path.starts_with('-') {
        return Err(format!("unknown option {path}\n{USAGE}"));
    }
    let apic = match args.next().as_deref() {
        None | Some("x2apic") => Apic::X2apic,
        Some("xapic") => Apic::Xapic,
        Some(other) => return Err(format!("unknown APIC mode {other}")),
    };
    let exit_code = match args.next() {
        Some(c) => c.parse().map_err(|e| format!("exit code {c}: {e}"))?,
        None => 0,
    };
    let image = mbkernel::build(Flavor::Smp {
        apic,
        target: Target::EachApicId,
        exit_code,
    })?;
    std::fs::write(&path, image).map_err(|e| format!("{path}: {e}"))?;
    eprintln!("wrote {path}");
    Ok(())
}
