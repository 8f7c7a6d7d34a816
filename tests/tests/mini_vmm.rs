//! The `mini_vmm` example on real KVM: a VMM built from the library crates
//! alone (hv-enlightenments, lapic, ipiv) boots its two-vCPU guest, delivers
//! every PV IPI exactly once and completes each by lazy EOI.

#[path = "../examples/mini_vmm.rs"]
#[allow(dead_code, reason = "the example's `main` and its usage text")]
mod mini_vmm;

use hv_tests::kvm_available;

#[test]
fn pv_ipis_are_delivered_once_and_completed_lazily() {
    if !kvm_available("pv_ipis_are_delivered_once_and_completed_lazily") {
        return;
    }
    for ipis in [1, 100, 1000] {
        let s = mini_vmm::run(ipis).unwrap_or_else(|e| panic!("{ipis} IPIs: {e}"));
        let n = u64::from(ipis);
        assert_eq!(s.received, ipis, "{s:?}");
        // The sender waits for each IPI to be handled before the next, so
        // nothing is ever pending behind an in-service vector: lapic arms
        // every completion, and the guest takes every one lazily.
        assert_eq!((s.lazy_eois, s.eoi_exits), (n, 0), "{s:?}");
        assert_eq!(u64::from(s.guest_lazy), s.lazy_eois, "{s:?}");
    }
}
