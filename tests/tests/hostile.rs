//! The hostile guest: malformed hypercalls and MSR accesses, each checked
//! for its exact status or exception, with the VMM still running after.

use std::time::Duration;

use hv_enlightenments::accel::IrqchipMode;
use hv_enlightenments::msr::{HV_X64_MSR_TPR, HV_X64_MSR_VP_INDEX};
use hv_tests::kvm_available;
use reference_vmm::guest::{hostile, scenarios};
use reference_vmm::vm::{FlushMethod, Vm, VmConfig};

#[test]
fn hostile_guest_gets_statuses_and_faults() {
    if !kvm_available("hostile_guest_gets_statuses_and_faults") {
        return;
    }
    let vm = Vm::new(VmConfig {
        vcpus: 2,
        hyperv: true,
        timeout: Duration::from_secs(60),
        flush: FlushMethod::MmuReset,
        irqchip: IrqchipMode::User,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let program = hostile::program().unwrap_or_else(|e| panic!("{e}"));
    let cases = hostile::cases();
    let r = match vm.run(&program) {
        Ok(r) => r,
        Err(e) => panic!("hostile run: {e}"),
    };
    // The guest reports DONE with the number of cases only after every one
    // got its expected answer: the VMM kept running through all of them.
    assert_eq!(r.detail, cases.len() as u64);
    for (vcpu, case, got) in &r.values {
        let c = &cases[*case as usize];
        eprintln!("case {case:2} {:<48} -> {got:#x} (vCPU {vcpu})", c.name);
    }
    assert_eq!(r.values.len(), cases.len());
    let m = &r.metrics.total;
    assert!(m.hypercalls_failed >= 10, "{m:?}");
}

#[test]
fn synthetic_msrs_do_not_exist_with_hyperv_off() {
    if !kvm_available("synthetic_msrs_do_not_exist_with_hyperv_off") {
        return;
    }
    // Neither the per-VP MSRs nor the APIC aliases that lapic could serve.
    for msr in [HV_X64_MSR_VP_INDEX, HV_X64_MSR_TPR] {
        let vm = Vm::new(VmConfig {
            vcpus: 1,
            hyperv: false,
            timeout: Duration::from_secs(30),
            flush: FlushMethod::MmuReset,
            irqchip: IrqchipMode::User,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let program = scenarios::rdmsr_program(msr).unwrap_or_else(|e| panic!("{e}"));
        let r = vm.run(&program).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.detail, hostile::GP, "rdmsr {msr:#x} with Hyper-V off");
    }
}
