//! The hostile guest: malformed hypercalls and MSR accesses, each checked
//! for its exact status or exception, with the VMM still running after.

use std::time::Duration;

use hv_tests::kvm_available;
use reference_vmm::guest::hostile;
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
        flush: FlushMethod::Sregs,
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
