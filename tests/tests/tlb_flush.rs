//! The TLB flush mechanism, proven with a guest that would observe a stale
//! translation: vCPU 1 keeps reading a page through a cached translation
//! while vCPU 0 changes the PTE.

use std::time::Duration;

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::kvm_available;
use reference_vmm::Error;
use reference_vmm::guest::scenarios::{FlushMode, failure};
use reference_vmm::scenario::{self, RunOptions, Scenario};
use reference_vmm::vm::FlushMethod;

fn opts(vcpus: u32, flush: FlushMethod) -> RunOptions {
    RunOptions {
        vcpus,
        timeout: Duration::from_secs(60),
        flush,
        irqchip: IrqchipMode::User,
        halt_poll: None,
    }
}

#[test]
fn stale_translation_without_flush() {
    if !kvm_available("stale_translation_without_flush") {
        return;
    }
    // No flush at all: the reading vCPU keeps seeing the old page.
    match scenario::run(
        Scenario::Shootdown(FlushMode::None),
        opts(2, FlushMethod::MmuReset),
    ) {
        Err(Error::ScenarioFailed { code, detail, .. }) => {
            assert_eq!(code, failure::STALE);
            assert_eq!(detail, 1, "vCPU 1 saw the stale page");
        }
        other => panic!("expected a stale translation on vCPU 1, got {other:?}"),
    }
}

#[test]
fn pv_flush_removes_stale_translations() {
    if !kvm_available("pv_flush_removes_stale_translations") {
        return;
    }
    // Same guest, but vCPU 0 asks for a PV flush: vCPU 1 (running) is
    // kicked and flushed before the hypercall returns, vCPUs 2..7 (halted)
    // are flushed at their next entry and see the new page when woken.
    let (r, f) = scenario::run(
        Scenario::Shootdown(FlushMode::Pv),
        opts(8, FlushMethod::MmuReset),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let v = &f.metrics.vcpus;
    assert!(
        v[1].flushes_done >= f.ops,
        "running target flushed: {:?}",
        v[1]
    );
    // Halted targets flush when they next run (woken after the measured
    // phase), once whatever the number of requests.
    for (i, h) in v.iter().enumerate().skip(2) {
        assert_eq!(h.flushes_done, 0, "halted vCPU {i} was not run to flush");
    }
    for (i, h) in r.metrics.vcpus.iter().enumerate().skip(2) {
        assert!(h.flushes_done >= 1, "halted vCPU {i} flushed at next entry");
    }
    assert_eq!(f.metrics.total.wakeups, 0);
}

#[test]
fn kick_without_flush_on_this_host() {
    if !kvm_available("kick_without_flush_on_this_host") {
        return;
    }
    // Leaving guest mode without KVM_SET_SREGS: on hosts whose VM entry
    // drops the guest's translations (PVM with shadow paging) this passes;
    // with EPT/NPT and tagged TLBs it need not. The outcome is printed as
    // evidence, the VMM itself always flushes with KVM_SET_SREGS.
    let r = scenario::run(
        Scenario::Shootdown(FlushMode::Pv),
        opts(2, FlushMethod::KickOnly),
    );
    match &r {
        Ok(_) => eprintln!("kick without flush: no stale translation seen on this host"),
        Err(Error::ScenarioFailed { code, .. }) if *code == failure::STALE => {
            eprintln!("kick without flush: stale translation seen (the flush is needed)")
        }
        Err(e) => panic!("unexpected failure: {e}"),
    }
}
