//! Runs that must end with a clear error instead of a hang: a guest that
//! never reports (bounded wait), a fatal guest exception (vCPU, vector and
//! RIP named).

use std::time::{Duration, Instant};

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::kvm_available;
use reference_vmm::Error;
use reference_vmm::guest::scenarios;
use reference_vmm::vm::{FlushMethod, Vm, VmConfig};

fn vm(vcpus: u32, timeout: Duration) -> Vm {
    Vm::new(VmConfig {
        vcpus,
        hyperv: true,
        timeout,
        flush: FlushMethod::MmuReset,
        irqchip: IrqchipMode::User,
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn silent_guest_times_out_with_vcpu_states() {
    if !kvm_available("silent_guest_times_out_with_vcpu_states") {
        return;
    }
    let program = scenarios::spin_forever().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    match vm(4, Duration::from_secs(2)).run(&program) {
        Err(e @ Error::Timeout { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("DONE report"), "{msg}");
            assert!(
                msg.contains("vCPU 0: InGuest"),
                "vCPU 0 was spinning: {msg}"
            );
            assert!(msg.contains("vCPU 3: Halted"), "vCPU 3 was halted: {msg}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the stop took too long"
    );
}

#[test]
fn guest_exception_names_vcpu_vector_and_rip() {
    if !kvm_available("guest_exception_names_vcpu_vector_and_rip") {
        return;
    }
    let (program, ud2) = scenarios::fault_ud2().unwrap_or_else(|e| panic!("{e}"));
    match vm(2, Duration::from_secs(30)).run(&program) {
        Err(Error::Guest { vcpu, reason, rip }) => {
            assert_eq!(vcpu, 0);
            assert!(reason.contains("vector 6"), "{reason}");
            assert_eq!(rip, ud2);
        }
        other => panic!("expected a guest exception, got {other:?}"),
    }
}

#[test]
fn cpl0_instruction_the_host_cannot_emulate_ends_cleanly() {
    if !kvm_available("cpl0_instruction_the_host_cannot_emulate_ends_cleanly") {
        return;
    }
    // Where guest CPL0 runs natively this simply completes; where KVM
    // emulates CPL0 and cannot emulate the instruction, the run must end
    // with an error naming the vCPU, the emulation failure and the RIP.
    let program = scenarios::cpl0_cmpxchg16b().unwrap_or_else(|e| panic!("{e}"));
    match vm(2, Duration::from_secs(30)).run(&program) {
        Ok(_) => eprintln!("lock cmpxchg16b ran at CPL0 on this host"),
        Err(Error::Guest { vcpu, reason, rip }) => {
            assert_eq!(vcpu, 0);
            assert!(reason.contains("emulation failure"), "{reason}");
            assert!(
                rip > reference_vmm::guest::layout::USER_CODE,
                "RIP {rip:#x}"
            );
            eprintln!("vCPU {vcpu}: {reason} at {rip:#x}");
        }
        Err(e) => panic!("expected completion or an emulation failure, got {e}"),
    }
}
