//! The kernel-irqchip mode on real KVM: every built-in scenario with KVM's
//! in-kernel local APIC, the synthetic EOI/ICR replay, PV IPI by
//! KVM_SIGNAL_MSI up to x2APIC IDs above 255, and PV TLB flushes of
//! vCPUs halted inside KVM_RUN.

use std::time::Duration;

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::kvm_available;
use reference_vmm::guest::hostile;
use reference_vmm::guest::scenarios::{self, EoiMode, FlushMode, IpiMode};
use reference_vmm::irqchip::kernel as kirq;
use reference_vmm::scenario::{self, Figures, RunOptions, Scenario};
use reference_vmm::vm::{FlushMethod, Vm, VmConfig};

fn run(s: Scenario, vcpus: u32) -> Figures {
    let opts = RunOptions {
        vcpus,
        timeout: Duration::from_secs(60),
        flush: FlushMethod::MmuReset,
        irqchip: IrqchipMode::Kernel,
        halt_poll: None,
    };
    match scenario::run(s, opts) {
        Ok((_, f)) => f,
        Err(e) => panic!("{} on {vcpus} vCPUs, kernel irqchip: {e}", s.name()),
    }
}

/// Every scenario the kernel mode supports completes (each checks its own
/// result in the guest), and nothing the VMM no longer serves reaches it.
fn all_at(vcpus: u32) {
    for s in Scenario::ALL {
        if !s.supports(vcpus) {
            continue;
        }
        let f = run(s, vcpus);
        let t = &f.metrics.total;
        assert_eq!(f.irqchip, IrqchipMode::Kernel);
        // KVM serves the APIC and HLT: no APIC MSR exit, no HLT exit, no
        // userspace injection.
        assert_eq!(t.msr_x2apic, 0, "{}: {t:?}", s.name());
        assert_eq!(t.exit_hlt, 0, "{}: {t:?}", s.name());
        assert_eq!(t.injections, 0, "{}: {t:?}", s.name());
        assert_eq!(t.wakeups, 0, "{}: {t:?}", s.name());
        assert!(f.unobserved.contains(&"wakeups_per_op"));
        if let Some(k) = &f.kvm {
            assert!(
                k.total.get("exits").is_some(),
                "KVM statistics without exits: {k:?}"
            );
        }
    }
}

#[test]
fn kernel_scenarios_on_2_vcpus() {
    if !kvm_available("kernel_scenarios_on_2_vcpus") {
        return;
    }
    all_at(2);
}

#[test]
fn kernel_scenarios_on_8_vcpus() {
    if !kvm_available("kernel_scenarios_on_8_vcpus") {
        return;
    }
    all_at(8);
}

#[test]
fn pv_broadcast_costs_one_sender_exit() {
    if !kvm_available("pv_broadcast_costs_one_sender_exit") {
        return;
    }
    for mode in [IpiMode::PvFast, IpiMode::PvEx] {
        let f = run(Scenario::Broadcast(mode), 8);
        assert_eq!(f.sender_exits_per_op, 1.0, "{f:?}");
        assert_eq!(f.metrics.total.hc_send_ipi, f.ops);
        assert_eq!(f.metrics.total.ipis_posted, 7 * f.ops);
        // The MSIs went through KVM, not through the VMM's kicks.
        assert_eq!(f.metrics.total.kicks, 0);
    }
    // Native x2APIC ICR writes never leave the kernel.
    let native = run(Scenario::Broadcast(IpiMode::Native), 8);
    assert_eq!(native.sender_exits_per_op, 0.0, "{native:?}");
}

#[test]
fn synthetic_eoi_is_replayed_on_the_kernel_apic() {
    if !kvm_available("synthetic_eoi_is_replayed_on_the_kernel_apic") {
        return;
    }
    // Periodic timer interrupts completed only through HV_X64_MSR_EOI: if
    // the replayed x2APIC EOI did not reach KVM's APIC, the timer vector
    // would stay in service and no second interrupt would be delivered.
    let f = run(Scenario::Timer(EoiMode::Synthetic), 1);
    let t = &f.metrics.total;
    // (A periodic tick may land between the last counted one and
    // MARK_END on a loaded host.)
    assert!(t.eoi_msr >= f.ops, "{t:?}");
    assert_eq!(t.msr_synthetic, t.eoi_msr, "{t:?}");
    if let Some(k) = &f.kvm {
        // KVM injected every one of them.
        assert!(
            k.total.get("irq_injections").unwrap_or(f.ops) >= f.ops,
            "{k:?}"
        );
    }
}

#[test]
fn xapic_synthetic_icr_and_eoi() {
    if !kvm_available("xapic_synthetic_icr_and_eoi") {
        return;
    }
    // xAPIC guests: HV_X64_MSR_ICR (destination in bits 63:56) becomes an
    // MSI. Without APIC_ACCESS_RECOMMENDED (never published with the
    // kernel irqchip) the guest completes interrupts through the MMIO EOI
    // register, inside KVM: the synthetic EOI would #GP in xAPIC mode.
    // Both sides' counts are checked by the guest.
    let p = run(Scenario::PingPong(IpiMode::SyntheticIcr), 2);
    let t = &p.metrics.total;
    assert_eq!(t.ipis_posted, 2 * p.ops, "{t:?}");
    assert_eq!(t.eoi_msr, 0, "{t:?}");
    let b = run(Scenario::Broadcast(IpiMode::SyntheticIcr), 8);
    assert_eq!(b.sender_exits_per_op, 7.0, "one MSR exit per target: {b:?}");
    assert_eq!(b.metrics.total.ipis_posted, 7 * b.ops);
}

#[test]
fn pv_flush_kicks_and_flushes_halted_targets() {
    if !kvm_available("pv_flush_kicks_and_flushes_halted_targets") {
        return;
    }
    // Same guest as tlb_flush.rs: vCPU 1 reads the page, vCPUs 2..7 are
    // halted. With the kernel irqchip a halted vCPU sits inside KVM_RUN,
    // so it is kicked out and flushed before the hypercall returns; the
    // guest checks each sees the new page when it runs again.
    let f = run(Scenario::Shootdown(FlushMode::Pv), 8);
    let t = &f.metrics.total;
    assert_eq!(t.flush_requested, 7 * f.ops, "{t:?}");
    // Each request either kicked a target in KVM_RUN (halted ones
    // included) or found it outside (it was re-entering after an earlier
    // kick) and was deferred to its next entry; requests that meet a
    // pending flush share it.
    assert_eq!(t.kicks + t.flush_deferred, t.flush_requested, "{t:?}");
    for (i, c) in f.metrics.vcpus.iter().enumerate().skip(2) {
        assert!(
            c.kicks >= 1 && c.flushes_done >= 1,
            "halted vCPU {i} was kicked and flushed during the measured phase: {c:?}"
        );
    }
    assert!(
        t.kicks > t.flush_deferred,
        "halted targets are kicked: {t:?}"
    );
    assert_eq!(t.wakeups, 0, "{t:?}");
    assert_eq!(f.sender_exits_per_op, 1.0);
}

#[test]
fn pv_ipi_reaches_vp_indices_above_255() {
    if !kvm_available("pv_ipi_reaches_vp_indices_above_255") {
        return;
    }
    // 300 vCPUs: the Ex form's VP set spans 5 banks; each target gets a
    // KVM_SIGNAL_MSI with its 32-bit x2APIC ID (ID bits 31:8 in
    // address_hi). The guest checks every target counted every IPI.
    let f = run(Scenario::Broadcast(IpiMode::PvEx), 300);
    assert_eq!(f.sender_exits_per_op, 1.0);
    assert_eq!(f.metrics.total.ipis_posted, 299 * f.ops);
    for i in [255usize, 256, 299] {
        assert!(
            f.metrics.vcpus[i].msr_synthetic > 0 || f.metrics.vcpus[i].exits > 0,
            "vCPU {i} handled the IPI: {:?}",
            f.metrics.vcpus[i]
        );
    }
}

#[test]
fn hostile_guest_with_kernel_irqchip() {
    if !kvm_available("hostile_guest_with_kernel_irqchip") {
        return;
    }
    let vm = Vm::new(VmConfig {
        vcpus: 2,
        hyperv: true,
        timeout: Duration::from_secs(60),
        flush: FlushMethod::MmuReset,
        irqchip: IrqchipMode::Kernel,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let program = hostile::program().unwrap_or_else(|e| panic!("{e}"));
    let r = vm
        .run(&program)
        .unwrap_or_else(|e| panic!("hostile run: {e}"));
    assert_eq!(r.detail, hostile::cases().len() as u64);
}

#[test]
fn deliver_msi_in_user_mode_resolves_destinations() {
    if !kvm_available("deliver_msi_in_user_mode_resolves_destinations") {
        return;
    }
    // No vCPU runs: a fixed MSI lands in the target's posted-interrupt
    // descriptor, where the vCPU would pick it up at its next entry.
    let vm = Vm::new(VmConfig {
        vcpus: 8,
        hyperv: false,
        timeout: Duration::from_secs(10),
        flush: FlushMethod::MmuReset,
        irqchip: IrqchipMode::User,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let m = vm.machine();
    let pending = |v: u8| -> Vec<usize> {
        (0..8)
            .filter(|&i| m.vcpus[i].posted.descriptor().is_pending(v))
            .collect()
    };
    m.deliver_msi(kirq::msi_address(5), 0x41);
    assert_eq!(pending(0x41), vec![5]);
    // Broadcast destination from an MSI: every APIC.
    m.deliver_msi(kirq::msi_address(0xFF), 0x42);
    assert_eq!(pending(0x42), (0..8).collect::<Vec<_>>());
    // A destination no APIC has: nobody.
    m.deliver_msi(kirq::msi_address(300), 0x43);
    assert!(pending(0x43).is_empty());
    // Vectors below 16 are not posted.
    m.deliver_msi(kirq::msi_address(1), 0x0F);
    assert!(pending(0x0F).is_empty());
}

#[test]
fn lazy_eoi_is_counted_the_same_by_guest_and_vmm() {
    if !kvm_available("lazy_eoi_is_counted_the_same_by_guest_and_vmm") {
        return;
    }
    // The guest's own count of lazily completed EOIs (what the kernel
    // mode reports) agrees with the VMM's in the userspace mode.
    let user = RunOptions {
        vcpus: 1,
        timeout: Duration::from_secs(60),
        flush: FlushMethod::MmuReset,
        irqchip: IrqchipMode::User,
        halt_poll: None,
    };
    let (r, f) =
        scenario::run(Scenario::Timer(EoiMode::Lazy), user).unwrap_or_else(|e| panic!("{e}"));
    let m = r.measured.unwrap_or_else(|| panic!("no measured phase"));
    assert_eq!(m.guest_lazy_eois, f.metrics.total.eoi_lazy);
    assert!(m.guest_lazy_eois * 100 >= 99 * f.ops, "{f:?}");
    // Kernel mode: every timer interrupt is completed exactly one way,
    // lazily through KVM's PV EOI or by a synthetic EOI exit; which one
    // depends on the host (this one: never lazily, see the README).
    let k = run(Scenario::Timer(EoiMode::Lazy), 1);
    let lazy = (k.eoi_lazy_per_op * k.ops as f64).round() as u64;
    let completed = lazy + k.metrics.total.eoi_msr;
    assert!((k.ops..=k.ops + 2).contains(&completed), "{k:?}");
    eprintln!(
        "kernel irqchip: {lazy} of {} timer EOIs completed lazily",
        k.ops
    );
}

#[test]
fn interrupt_before_halt_does_not_strand_the_vcpu() {
    if !kvm_available("interrupt_before_halt_does_not_strand_the_vcpu") {
        return;
    }
    // The wake-up interrupt is handled after the guest decided to halt and
    // before its halt system call: the kernel re-checks the count with
    // interrupts off and returns instead of halting for good (the
    // pingpong-pv hang of the kernel-irqchip mode).
    let program = scenarios::wakeup_before_halt().unwrap_or_else(|e| panic!("{e}"));
    for irqchip in [IrqchipMode::Kernel, IrqchipMode::User] {
        let vm = Vm::new(VmConfig {
            vcpus: 2,
            hyperv: false,
            timeout: Duration::from_secs(20),
            flush: FlushMethod::MmuReset,
            irqchip,
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let r = vm
            .run(&program)
            .unwrap_or_else(|e| panic!("{irqchip:?}: {e}"));
        assert_eq!(r.detail, 1, "{irqchip:?}: PONG_COUNT");
        if irqchip == IrqchipMode::User {
            // HLT exits reach the VMM in this mode: vCPU 0 never halted.
            assert_eq!(r.metrics.vcpus[0].exit_hlt, 0, "{:?}", r.metrics.vcpus[0]);
        }
    }
}
