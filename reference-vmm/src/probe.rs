//! `probe`: what this host's KVM offers for the enlightenments and APIC
//! acceleration: KVM capabilities, then ipiv's probe of module parameters
//! and CPUID with the APICv/AVIC inhibits that apply.

use std::fmt::Write;

use kvm_ioctls::{Cap, Kvm};

use crate::error::Error;

/// Capabilities by number that kvm-ioctls has no name for.
const RAW_CAPS: [(&str, u64); 8] = [
    ("KVM_CAP_HYPERV", 44),
    ("KVM_CAP_HYPERV_SYNIC", 123),
    ("KVM_CAP_X2APIC_API", 129),
    ("KVM_CAP_HYPERV_TLBFLUSH", 155),
    ("KVM_CAP_HYPERV_SEND_IPI", 161),
    ("KVM_CAP_X86_USER_SPACE_MSR", 188),
    ("KVM_CAP_X86_MSR_FILTER", 189),
    ("KVM_CAP_SPLIT_IRQCHIP", 121),
];

/// A report of the host.
pub fn report() -> Result<String, Error> {
    let kvm = Kvm::new().map_err(|err| Error::Kvm {
        op: "open /dev/kvm",
        err,
    })?;
    let mut s = String::new();
    let _ = writeln!(s, "KVM API version {}", kvm.get_api_version());
    let _ = writeln!(
        s,
        "vCPUs: recommended {} (KVM_CAP_NR_VCPUS), max {} (KVM_CAP_MAX_VCPUS)",
        kvm.get_nr_vcpus(),
        kvm.get_max_vcpus()
    );
    for (name, nr) in RAW_CAPS {
        let _ = writeln!(s, "{name:<28} {}", kvm.check_extension_raw(nr));
    }
    for (name, cap) in [
        ("KVM_CAP_IRQCHIP", Cap::Irqchip),
        ("KVM_CAP_IMMEDIATE_EXIT", Cap::ImmediateExit),
        ("KVM_CAP_SIGNAL_MSI", Cap::SignalMsi),
    ] {
        let _ = writeln!(s, "{name:<28} {}", kvm.check_extension_int(cap));
    }
    let host = ipiv::HostProbe::run();
    let _ = writeln!(s, "\n{host}");
    let inhibits = ipiv::InhibitManager::new(ipiv::InhibitConfig {
        host: host.accel,
        irqchip: hv_enlightenments::accel::IrqchipMode::User,
        pit_reinject: false,
        sev: false,
    });
    let _ = writeln!(
        s,
        "APICv/AVIC inhibits for this VMM (userspace irqchip):\n{}",
        inhibits.explain()
    );
    let hv = kvm.check_extension_raw(44) > 0;
    let _ = writeln!(
        s,
        "in-kernel Hyper-V: {}; this VMM serves the enlightenments in userspace either way",
        if hv { "present" } else { "absent" }
    );
    Ok(s)
}
