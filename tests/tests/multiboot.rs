//! Booting multiboot v1 test kernels ([`hv_tests::mbkernel`]) on the
//! reference VMM: the loader, COM1, fw_cfg, the debug-exit port and
//! INIT/SIPI start-up of the application processors, with 1, 2 and 4
//! vCPUs, xAPIC and x2APIC, shorthand and per-ID IPIs, in both irqchip
//! modes; plus the ways a boot must fail clearly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::kvm_available;
use hv_tests::mbkernel::{self, Apic, Flavor, Target};
use reference_vmm::Error;
use reference_vmm::platform::console::Console;
use reference_vmm::vm::{BootReport, ExternalConfig, GuestExit, Vm};

const MEM: u64 = 64 << 20;
const CMDLINE: &str = "mbtest alpha=1 beta";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Writes `image` to a file of its own for this test.
fn kernel_file(test: &str, image: &[u8]) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hv-tests-{}-{test}.elf", std::process::id()));
    std::fs::write(&p, image).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

fn boot(
    test: &str,
    image: &[u8],
    vcpus: u32,
    irqchip: IrqchipMode,
) -> (Result<BootReport, Error>, String) {
    let path = kernel_file(test, image);
    let console = Console::default();
    let r = Vm::new_external(ExternalConfig {
        vcpus,
        mem_size: MEM,
        irqchip,
        hyperv: true,
        kernel: path.clone(),
        cmdline: CMDLINE.into(),
        initrd: None,
        modules: Vec::new(),
        timeout: TIMEOUT,
        console: console.clone(),
        until: None,
    })
    .and_then(Vm::boot);
    let _ = std::fs::remove_file(path);
    (r, console.contents())
}

fn smp(test: &str, vcpus: u32, irqchip: IrqchipMode, apic: Apic, target: Target) {
    if !kvm_available(test) {
        return;
    }
    let image = mbkernel::build(Flavor::Smp {
        apic,
        target,
        exit_code: 0,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let (r, console) = boot(test, &image, vcpus, irqchip);
    let report = r.unwrap_or_else(|e| panic!("{test}: {e}\nconsole:\n{console}"));
    eprintln!("{test}: {:?} in {:?}", report.exit, start.elapsed());
    assert_eq!(
        report.exit,
        GuestExit::DebugExit(1),
        "exit code 0 (status 1) expected; console:\n{console}"
    );
    assert!(console.starts_with(mbkernel::BOOT_LINE), "{console}");
    let res = mbkernel::parse_result(&console)
        .unwrap_or_else(|| panic!("no result line in the console:\n{console}"));
    assert_eq!(res.cpus, vcpus, "fw_cfg CPU count");
    assert_eq!(res.started, vcpus - 1, "every AP started once");
    assert_eq!(res.mem_upper, (MEM - (1 << 20)) / 1024, "mem_upper in KiB");
    assert_eq!(res.cmdline, CMDLINE);
    assert_eq!(
        report.kind,
        reference_vmm::loader::KernelKind::Multiboot,
        "loaded as multiboot"
    );
}

#[test]
fn user_irqchip_1_vcpu() {
    smp(
        "user_irqchip_1_vcpu",
        1,
        IrqchipMode::User,
        Apic::X2apic,
        Target::AllButSelf,
    );
}

#[test]
fn user_irqchip_2_vcpus_xapic_each_id() {
    smp(
        "user_irqchip_2_vcpus_xapic_each_id",
        2,
        IrqchipMode::User,
        Apic::Xapic,
        Target::EachApicId,
    );
}

#[test]
fn user_irqchip_2_vcpus_x2apic_shorthand() {
    smp(
        "user_irqchip_2_vcpus_x2apic_shorthand",
        2,
        IrqchipMode::User,
        Apic::X2apic,
        Target::AllButSelf,
    );
}

#[test]
fn user_irqchip_4_vcpus_xapic_shorthand() {
    smp(
        "user_irqchip_4_vcpus_xapic_shorthand",
        4,
        IrqchipMode::User,
        Apic::Xapic,
        Target::AllButSelf,
    );
}

#[test]
fn user_irqchip_4_vcpus_x2apic_each_id() {
    smp(
        "user_irqchip_4_vcpus_x2apic_each_id",
        4,
        IrqchipMode::User,
        Apic::X2apic,
        Target::EachApicId,
    );
}

#[test]
fn failing_kernel_reports_its_exit_code() {
    let test = "failing_kernel_reports_its_exit_code";
    if !kvm_available(test) {
        return;
    }
    let image = mbkernel::build(Flavor::Smp {
        apic: Apic::X2apic,
        target: Target::AllButSelf,
        exit_code: 0x2A,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let (r, console) = boot(test, &image, 2, IrqchipMode::User);
    let report = r.unwrap_or_else(|e| panic!("{e}\nconsole:\n{console}"));
    assert_eq!(
        report.exit,
        GuestExit::DebugExit((0x2A << 1) | 1),
        "{console}"
    );
}

#[test]
fn non_bootable_file_is_a_clear_error() {
    let test = "non_bootable_file_is_a_clear_error";
    if !kvm_available(test) {
        return;
    }
    let junk: Vec<u8> = (0..16384u32).map(|i| (i * 7 + 3) as u8).collect();
    let (r, _) = boot(test, &junk, 1, IrqchipMode::User);
    match r {
        Err(e @ Error::Load(_)) => {
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains("kernel"), "names what was wrong: {msg}");
        }
        other => panic!("expected a load error, got {other:?}"),
    }
    // A file that is not there is named.
    let missing = Vm::new_external(ExternalConfig {
        vcpus: 1,
        mem_size: MEM,
        irqchip: IrqchipMode::User,
        hyperv: true,
        kernel: "/nonexistent/kernel.elf".into(),
        cmdline: String::new(),
        initrd: None,
        modules: Vec::new(),
        timeout: TIMEOUT,
        console: Console::default(),
        until: None,
    });
    match missing {
        Err(e) => assert!(e.to_string().contains("/nonexistent/kernel.elf"), "{e}"),
        Ok(_) => panic!("a missing kernel file was accepted"),
    }
}

#[test]
fn unemulatable_instruction_is_a_clear_error() {
    let test = "unemulatable_instruction_is_a_clear_error";
    if !kvm_available(test) {
        return;
    }
    let image = mbkernel::build(Flavor::BadInstruction).unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let (r, console) = boot(test, &image, 2, IrqchipMode::User);
    assert!(
        start.elapsed() < TIMEOUT,
        "ended by the timeout, not by the failure"
    );
    assert!(console.contains(mbkernel::BOOT_LINE), "{console}");
    match r {
        Err(Error::Guest { vcpu, reason, rip }) => {
            eprintln!("vCPU {vcpu}: {reason} at {rip:#x}");
            assert_eq!(vcpu, 0);
            // Where KVM emulates CPL0 it cannot run int3 there; where CPL0
            // runs natively, #BP without an IDT ends in a triple fault.
            if reason.contains("emulation failure") {
                // int3 is 0xCC; the disasm feature also names it.
                assert!(
                    reason.contains("instruction at") && reason.contains(": cc "),
                    "names the instruction: {reason}"
                );
                assert!(rip > u64::from(mbkernel::LOAD_ADDR), "RIP {rip:#x}");
            } else {
                assert!(reason.contains("triple fault"), "{reason}");
            }
        }
        other => panic!("expected a vCPU failure, got {other:?}\nconsole:\n{console}"),
    }
}

#[test]
fn kernel_irqchip_1_vcpu() {
    smp(
        "kernel_irqchip_1_vcpu",
        1,
        IrqchipMode::Kernel,
        Apic::X2apic,
        Target::AllButSelf,
    );
}

#[test]
fn kernel_irqchip_2_vcpus_x2apic_each_id() {
    smp(
        "kernel_irqchip_2_vcpus_x2apic_each_id",
        2,
        IrqchipMode::Kernel,
        Apic::X2apic,
        Target::EachApicId,
    );
}

#[test]
fn kernel_irqchip_2_vcpus_xapic_shorthand() {
    smp(
        "kernel_irqchip_2_vcpus_xapic_shorthand",
        2,
        IrqchipMode::Kernel,
        Apic::Xapic,
        Target::AllButSelf,
    );
}

#[test]
fn kernel_irqchip_4_vcpus_x2apic_shorthand() {
    smp(
        "kernel_irqchip_4_vcpus_x2apic_shorthand",
        4,
        IrqchipMode::Kernel,
        Apic::X2apic,
        Target::AllButSelf,
    );
}

#[test]
fn kernel_irqchip_4_vcpus_xapic_each_id() {
    smp(
        "kernel_irqchip_4_vcpus_xapic_each_id",
        4,
        IrqchipMode::Kernel,
        Apic::Xapic,
        Target::EachApicId,
    );
}

#[test]
fn power_off_and_reset_stop_the_vm() {
    let test = "power_off_and_reset_stop_the_vm";
    if !kvm_available(test) {
        return;
    }
    for (flavor, want) in [
        (Flavor::PowerOff, GuestExit::PowerOff),
        (Flavor::Reset, GuestExit::Reset),
    ] {
        let image = mbkernel::build(flavor).unwrap_or_else(|e| panic!("{e}"));
        let (r, console) = boot(test, &image, 2, IrqchipMode::User);
        let report = r.unwrap_or_else(|e| panic!("{flavor:?}: {e}\nconsole:\n{console}"));
        assert_eq!(report.exit, want, "{console}");
    }
}

#[test]
fn a_hung_guest_ends_at_the_timeout() {
    let test = "a_hung_guest_ends_at_the_timeout";
    if !kvm_available(test) {
        return;
    }
    let path = kernel_file(
        test,
        &mbkernel::build(Flavor::Hang).unwrap_or_else(|e| panic!("{e}")),
    );
    let start = Instant::now();
    let r = Vm::new_external(ExternalConfig {
        vcpus: 2,
        mem_size: MEM,
        irqchip: IrqchipMode::User,
        hyperv: true,
        kernel: path.clone(),
        cmdline: String::new(),
        initrd: None,
        modules: Vec::new(),
        timeout: Duration::from_secs(1),
        console: Console::default(),
        until: None,
    })
    .and_then(Vm::boot);
    let _ = std::fs::remove_file(path);
    match r {
        Err(e @ Error::Timeout { .. }) => {
            let msg = e.to_string();
            // The BSP halted with interrupts off; the AP never got a SIPI
            // and waits for one without running.
            assert!(msg.contains("vCPU 0: Halted"), "{msg}");
            assert!(msg.contains("vCPU 1: WaitForSipi"), "{msg}");
        }
        other => panic!("expected the timeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(10), "bounded");
}

/// The hypercall page works for a guest that is not the built-in one, and
/// in 32-bit protected mode (register-pair ABI), in both irqchip modes.
#[test]
fn hypercalls_from_a_32_bit_guest() {
    let test = "hypercalls_from_a_32_bit_guest";
    if !kvm_available(test) {
        return;
    }
    let image = mbkernel::build(Flavor::Hypercall).unwrap_or_else(|e| panic!("{e}"));
    for irqchip in [IrqchipMode::User, IrqchipMode::Kernel] {
        let (r, console) = boot(test, &image, 1, irqchip);
        let report = r.unwrap_or_else(|e| panic!("{irqchip:?}: {e}\nconsole:\n{console}"));
        assert_eq!(report.exit, GuestExit::DebugExit(1), "{console}");
        // NotifyLongSpinWait is HV_STATUS_ACCESS_DENIED (6: spinlock
        // retries "never", KVM's ENFORCE_CPUID answer); an unknown code is
        // HV_STATUS_INVALID_HYPERCALL_CODE (2). Both went through the
        // 32-bit register-pair ABI.
        assert!(
            console.contains(&format!("{}6 2 ", mbkernel::HYPERCALL_PREFIX)),
            "{irqchip:?}: {console}"
        );
    }
}

/// A level-triggered IOAPIC interrupt is completed by the guest's EOI: the
/// EOI reaches the IOAPIC (remote IRR cleared), so the next one arrives.
/// Userspace irqchip: lapic's EOI broadcast; kernel irqchip: the IOAPIC
/// routes mirrored into KVM's GSI routing make KVM report the EOI.
#[test]
fn level_triggered_eoi_reaches_the_ioapic() {
    let test = "level_triggered_eoi_reaches_the_ioapic";
    if !kvm_available(test) {
        return;
    }
    let image = mbkernel::build(Flavor::LevelIrq).unwrap_or_else(|e| panic!("{e}"));
    for irqchip in [IrqchipMode::User, IrqchipMode::Kernel] {
        let (r, console) = boot(test, &image, 1, irqchip);
        let report = r.unwrap_or_else(|e| panic!("{irqchip:?}: {e}\nconsole:\n{console}"));
        assert_eq!(report.exit, GuestExit::DebugExit(1), "{console}");
        assert!(
            console.contains(&format!("{}2\n", mbkernel::LEVEL_PREFIX)),
            "{irqchip:?}: {console}"
        );
    }
}

#[test]
fn boot_needs_an_external_vm() {
    let test = "boot_needs_an_external_vm";
    if !kvm_available(test) {
        return;
    }
    let vm = Vm::new(reference_vmm::vm::VmConfig {
        vcpus: 1,
        hyperv: true,
        timeout: TIMEOUT,
        flush: reference_vmm::vm::FlushMethod::MmuReset,
        irqchip: IrqchipMode::User,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    match vm.boot() {
        Err(e @ Error::Usage(_)) => assert!(e.to_string().contains("new_external"), "{e}"),
        other => panic!("expected a usage error, got {other:?}"),
    }
}

/// INIT resets a running (halted) AP to wait-for-SIPI and a new SIPI
/// starts it again, in both irqchip modes.
#[test]
fn init_restarts_halted_aps() {
    let test = "init_restarts_halted_aps";
    if !kvm_available(test) {
        return;
    }
    for (irqchip, apic, target) in [
        (IrqchipMode::User, Apic::X2apic, Target::EachApicId),
        (IrqchipMode::User, Apic::Xapic, Target::AllButSelf),
        (IrqchipMode::Kernel, Apic::X2apic, Target::AllButSelf),
    ] {
        let image =
            mbkernel::build(Flavor::Restart { apic, target }).unwrap_or_else(|e| panic!("{e}"));
        let (r, console) = boot(test, &image, 3, irqchip);
        let report = r.unwrap_or_else(|e| panic!("{irqchip:?}: {e}\nconsole:\n{console}"));
        assert_eq!(
            report.exit,
            GuestExit::DebugExit(1),
            "{irqchip:?}: {console}"
        );
        let res = mbkernel::parse_result(&console)
            .unwrap_or_else(|| panic!("no result line in the console:\n{console}"));
        assert_eq!(res.started, 4, "two rounds of 2 APs: {console}");
    }
}
