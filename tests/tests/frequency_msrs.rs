//! The Hyper-V frequency MSRs on the reference VMM: a multiboot test kernel
//! ([`Flavor::FrequencyMsrs`]) reads HV_X64_MSR_TSC_FREQUENCY and
//! HV_X64_MSR_APIC_FREQUENCY. With Hyper-V on they must hold the guest TSC
//! frequency KVM reports (KVM_GET_TSC_KHZ * 1000) and the frequency the
//! APIC timer counts at with divide-by-1 (the lapic crate's bus in the
//! userspace-irqchip mode, KVM's 1 GHz APIC bus in the kernel mode), as
//! the CPUID plan the vCPUs got publishes; with Hyper-V off both #GP.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::kvm_available;
use hv_tests::mbkernel::{self, Flavor, MsrRead};
use reference_vmm::irqchip::{apic_timer_hz, kernel::KVM_APIC_TIMER_HZ};
use reference_vmm::kvm::cpuid;
use reference_vmm::platform::console::Console;
use reference_vmm::vm::{ExternalConfig, GuestExit, Vm};

const MEM: u64 = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(60);
/// CPUID 0x40000003 EAX bit 11: AccessFrequencyMsrs.
const PRIV_FREQUENCY_MSRS: u32 = 1 << 11;
/// CPUID 0x40000003 EDX bit 8: frequency MSRs available.
const FEATURE_FREQUENCY_MSRS: u32 = 1 << 8;

/// Boots the frequency kernel; returns the plan the vCPUs got and the two
/// reads.
fn boot(
    test: &str,
    irqchip: IrqchipMode,
    hyperv: bool,
) -> (
    Option<hv_enlightenments::cpuid::CpuidPlan>,
    MsrRead,
    MsrRead,
) {
    let image = mbkernel::build(Flavor::FrequencyMsrs).unwrap_or_else(|e| panic!("{e}"));
    let path: PathBuf =
        std::env::temp_dir().join(format!("hv-tests-{}-{test}.elf", std::process::id()));
    std::fs::write(&path, &image).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let console = Console::default();
    let vm = Vm::new_external(ExternalConfig {
        vcpus: 1,
        mem_size: MEM,
        irqchip,
        hyperv,
        kernel: path.clone(),
        cmdline: String::new(),
        initrd: None,
        modules: Vec::new(),
        timeout: TIMEOUT,
        console: console.clone(),
        until: None,
    });
    let _ = std::fs::remove_file(&path);
    let vm = vm.unwrap_or_else(|e| panic!("{test}: {e}"));
    let plan = vm.cpuid_plan().copied();
    let start = Instant::now();
    let report = vm.boot();
    let text = console.contents();
    let report = report.unwrap_or_else(|e| panic!("{test}: {e}\nconsole:\n{text}"));
    eprintln!("{test}: {:?} in {:?}", report.exit, start.elapsed());
    assert_eq!(report.exit, GuestExit::DebugExit(1), "console:\n{text}");
    let (tsc, apic) = mbkernel::parse_freq(&text)
        .unwrap_or_else(|| panic!("{test}: no valid frequency line:\n{text}"));
    eprintln!("{test}: TSC_FREQUENCY {tsc:?}, APIC_FREQUENCY {apic:?}");
    (plan, tsc, apic)
}

fn serves_configured_values(test: &str, irqchip: IrqchipMode) {
    if !kvm_available(test) {
        return;
    }
    let (plan, tsc, apic) = boot(test, irqchip, true);
    let plan = plan.unwrap_or_else(|| panic!("{test}: Hyper-V on but no plan"));
    let f = plan
        .frequencies
        .unwrap_or_else(|| panic!("{test}: the VM published no frequencies"));
    // The VMM's value against an independent KVM_GET_TSC_KHZ.
    let khz = cpuid::host_tsc_khz().unwrap_or_else(|| panic!("{test}: KVM_GET_TSC_KHZ failed"));
    assert_eq!(f.tsc_hz, u64::from(khz) * 1000, "TSC frequency configured");
    let want_apic = match irqchip {
        IrqchipMode::User => apic_timer_hz(IrqchipMode::User),
        IrqchipMode::Kernel => KVM_APIC_TIMER_HZ,
    };
    assert_eq!(f.apic_hz, want_apic, "APIC frequency configured");
    // The guest reads exactly those.
    assert_eq!(tsc, Some(f.tsc_hz), "HV_X64_MSR_TSC_FREQUENCY");
    assert_eq!(apic, Some(f.apic_hz), "HV_X64_MSR_APIC_FREQUENCY");
    // And the CPUID leaves the guest got say so.
    let features = plan
        .cpuid
        .entries()
        .iter()
        .find(|l| l.function == 0x4000_0003)
        .copied()
        .unwrap_or_else(|| panic!("{test}: no leaf 0x40000003"));
    assert_ne!(features.eax & PRIV_FREQUENCY_MSRS, 0, "AccessFrequencyMsrs");
    assert_ne!(
        features.edx & FEATURE_FREQUENCY_MSRS,
        0,
        "frequency MSRs available"
    );
}

#[test]
fn frequency_msrs_user_irqchip() {
    serves_configured_values("frequency_msrs_user_irqchip", IrqchipMode::User);
}

#[test]
fn frequency_msrs_kernel_irqchip() {
    serves_configured_values("frequency_msrs_kernel_irqchip", IrqchipMode::Kernel);
}

#[test]
fn user_irqchip_apic_frequency_is_1ghz() {
    // The lapic crate models KVM's default 1 ns APIC bus cycle.
    assert_eq!(apic_timer_hz(IrqchipMode::User), 1_000_000_000);
    assert_eq!(apic_timer_hz(IrqchipMode::Kernel), KVM_APIC_TIMER_HZ);
}

#[test]
fn frequency_msrs_gp_with_hyperv_off() {
    let test = "frequency_msrs_gp_with_hyperv_off";
    if !kvm_available(test) {
        return;
    }
    for irqchip in [IrqchipMode::User, IrqchipMode::Kernel] {
        let (plan, tsc, apic) = boot(test, irqchip, false);
        assert!(plan.is_none(), "{irqchip:?}: no plan is published");
        assert_eq!((tsc, apic), (None, None), "{irqchip:?}: both must #GP");
    }
}
