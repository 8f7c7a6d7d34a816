//! The acceptance goals, shared by the `demo` (which checks them on one
//! run) and the `bench` (which reports them over repetitions): each check
//! takes measured figures and says what was claimed, what was measured
//! and whether the claim holds.

use serde::Serialize;

/// One goal checked against measured figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Goal {
    /// What is claimed.
    pub claim: String,
    /// What was measured.
    pub measured: String,
    /// Whether the claim holds.
    pub pass: bool,
}

impl Goal {
    fn new(claim: impl Into<String>, measured: String, pass: bool) -> Self {
        Self {
            claim: claim.into(),
            measured,
            pass,
        }
    }

    /// `PASS` or `FAIL`.
    pub fn verdict(&self) -> &'static str {
        if self.pass { "PASS" } else { "FAIL" }
    }
}

/// Broadcast IPI on `vcpus` vCPUs: the PV form sends with one exit, the
/// native form needs one ICR write (exit) per target.
pub fn broadcast_send(vcpus: u32, pv_sender_exits: f64, native_sender_exits: f64) -> Goal {
    let want_native = f64::from(vcpus.saturating_sub(1).max(1));
    Goal::new(
        format!("broadcast IPI: 1 exit to send by PV IPI, >= {want_native} by native ICR writes"),
        format!("{pv_sender_exits:.2} vs {native_sender_exits:.2}"),
        pv_sender_exits <= 1.0 && native_sender_exits >= want_native,
    )
}

/// PV broadcast flat in N: exactly one sender exit per operation at every
/// vCPU count in `points` (`(vcpus, sender exits per op)`).
pub fn broadcast_flat(points: &[(u32, f64)]) -> Goal {
    let shown: Vec<String> = points.iter().map(|(n, e)| format!("{n}: {e:.2}")).collect();
    Goal::new(
        "PV broadcast IPI flat in N at 1 exit per operation (sender exits/op by vCPUs, N >= 2)",
        shown.join(", "),
        !points.is_empty() && points.iter().all(|&(_, e)| e == 1.0),
    )
}

/// Lazy EOI avoids at least 99% of the EOI exits the architectural EOI
/// takes (`*_eoi_exits` per timer interrupt).
pub fn lazy_eoi(lazy_eoi_exits: f64, x2apic_eoi_exits: f64) -> Goal {
    let avoided = if x2apic_eoi_exits > 0.0 {
        100.0 * (1.0 - lazy_eoi_exits / x2apic_eoi_exits)
    } else {
        0.0
    };
    Goal::new(
        "lazy EOI avoids >= 99% of EOI exits",
        format!(
            "{avoided:.2}% avoided ({:.2}% of interrupts with an EOI exit; x2APIC EOI: {:.0}%)",
            100.0 * lazy_eoi_exits,
            100.0 * x2apic_eoi_exits
        ),
        x2apic_eoi_exits > 0.0 && avoided >= 99.0,
    )
}

/// PV TLB shootdown wakes none of the `halted` halted targets (IPI
/// shootdown wakes them all).
pub fn shootdown_wakeups(halted: u32, pv_wakeups: f64, ipi_wakeups: f64) -> Goal {
    Goal::new(
        format!("PV TLB shootdown wakes 0 of the {halted} halted vCPUs"),
        format!("{pv_wakeups:.2} wakeups/op (IPI shootdown: {ipi_wakeups:.2})"),
        pv_wakeups == 0.0,
    )
}

/// VMM service time of one 64-bank Ex hypercall under 1 us.
pub fn ex64_service(ns: f64) -> Goal {
    Goal::new(
        "VMM service time of a 64-bank Ex hypercall < 1 us",
        format!("{ns:.0} ns"),
        ns < 1000.0,
    )
}

/// Longest a PV broadcast may keep its sender out of its guest, ns.
pub const BROADCAST_RETURN_NS: f64 = 5_000_000.0;

/// A PV broadcast to `targets` halted vCPUs returns to the sender within
/// [`BROADCAST_RETURN_NS`]: the hypercall's VMM service time, wakes off
/// the sender's path (`irqchip` names the mode).
pub fn broadcast_return(targets: u32, irqchip: &str, ns: f64) -> Goal {
    Goal::new(
        format!(
            "PV broadcast to {targets} halted vCPUs returns to the sender within 5 ms ({irqchip} irqchip)"
        ),
        format!("{:.0} us", ns / 1000.0),
        ns <= BROADCAST_RETURN_NS,
    )
}

/// Most VMM memory per vCPU the goal allows, KiB.
pub const VMM_KIB_PER_VCPU: f64 = 256.0;

/// The VMM's own resident memory per vCPU on `vcpus` vCPUs (guest RAM
/// and KVM's kernel memory left out) at most [`VMM_KIB_PER_VCPU`];
/// `worst_kib` is the largest over the runs, `median_kib` their median,
/// `shared_kib` the file/shared pages per vCPU (`kvm_run`, not judged).
pub fn vmm_memory(vcpus: u32, median_kib: f64, worst_kib: f64, shared_kib: f64) -> Goal {
    Goal::new(
        format!("VMM RSS per vCPU <= {VMM_KIB_PER_VCPU:.0} KiB beyond guest RAM and KVM's own"),
        format!(
            "{median_kib:.1} KiB median, {worst_kib:.1} KiB worst at {vcpus} vCPUs \
             (+ {shared_kib:.1} KiB/vCPU of file/shared pages: kvm_run, not judged)"
        ),
        worst_kib <= VMM_KIB_PER_VCPU,
    )
}

/// User-irqchip unicast IPI round trip within 1.5x of the kernel
/// irqchip's.
pub fn user_vs_kernel_ipi(user_ns: f64, kernel_ns: f64) -> Goal {
    let ratio = if kernel_ns > 0.0 {
        user_ns / kernel_ns
    } else {
        f64::INFINITY
    };
    Goal::new(
        "user-irqchip unicast IPI round trip <= 1.5x the kernel irqchip's",
        format!(
            "{:.1} us vs {:.1} us ({ratio:.2}x)",
            user_ns / 1000.0,
            kernel_ns / 1000.0
        ),
        ratio <= 1.5,
    )
}

/// A goal that could not be measured in this run.
pub fn not_measured(claim: &str, why: &str) -> Goal {
    Goal::new(claim, format!("not measured: {why}"), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert!(broadcast_send(8, 1.0, 7.0).pass);
        assert!(!broadcast_send(8, 2.0, 7.0).pass);
        assert!(!broadcast_send(8, 1.0, 3.0).pass);
        assert!(broadcast_flat(&[(2, 1.0), (1024, 1.0)]).pass);
        assert!(!broadcast_flat(&[(2, 1.0), (1024, 1.1)]).pass);
        assert!(!broadcast_flat(&[]).pass);
        assert!(lazy_eoi(0.005, 1.0).pass);
        assert!(!lazy_eoi(0.02, 1.0).pass);
        assert!(!lazy_eoi(0.0, 0.0).pass);
        assert!(shootdown_wakeups(6, 0.0, 6.0).pass);
        assert!(!shootdown_wakeups(6, 0.5, 6.0).pass);
        assert!(vmm_memory(1024, 100.0, 256.0, 4.0).pass);
        assert!(!vmm_memory(1024, 100.0, 256.1, 4.0).pass);
        assert!(ex64_service(999.0).pass);
        assert!(!ex64_service(1000.0).pass);
        assert!(user_vs_kernel_ipi(150.0, 100.0).pass);
        assert!(!user_vs_kernel_ipi(151.0, 100.0).pass);
        assert!(!user_vs_kernel_ipi(1.0, 0.0).pass);
        assert_eq!(not_measured("x", "y").verdict(), "FAIL");
    }
}
