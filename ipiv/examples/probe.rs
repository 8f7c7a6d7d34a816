//! Prints what the host offers for APIC virtualization and which
//! APICv/AVIC inhibits a VM with the default configuration (userspace
//! irqchip) would have on it, with what would lift each.

use hv_enlightenments::accel::IrqchipMode;
use ipiv::{HostProbe, InhibitConfig, InhibitManager};

fn main() -> std::process::ExitCode {
    if let Some(arg) = std::env::args().nth(1) {
        // No options: `--help` says so; anything else is an error.
        println!("usage: probe (prints the host's APIC acceleration and the inhibit decisions)");
        return if arg == "-h" || arg == "--help" {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::FAILURE
        };
    }
    let probe = HostProbe::run();
    println!("{probe}");
    println!();
    for irqchip in [IrqchipMode::User, IrqchipMode::Kernel] {
        let manager = InhibitManager::new(InhibitConfig {
            host: probe.accel,
            irqchip,
            ..InhibitConfig::default()
        });
        println!("with irqchip {irqchip:?}:");
        print!("{}", manager.explain());
    }
    std::process::ExitCode::SUCCESS
}
