//! Every built-in scenario on real KVM at 1, 2, 8 and 64 vCPUs, and the
//! x2APIC-mode run with 288 vCPUs (APIC IDs above 255, Ex hypercalls).

use std::time::Duration;

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::kvm_available;
use reference_vmm::guest::scenarios::{EoiMode, FlushMode, IpiMode};
use reference_vmm::scenario::{self, Figures, RunOptions, Scenario};
use reference_vmm::vm::{FlushMethod, RunReport};

fn run(s: Scenario, vcpus: u32) -> Figures {
    run_polled(s, vcpus, None).1
}

/// Runs `s` on `vcpus` vCPUs, user irqchip, with the halt-polling window
/// `halt_poll` (`None`: the default).
fn run_polled(s: Scenario, vcpus: u32, halt_poll: Option<Duration>) -> (RunReport, Figures) {
    let opts = RunOptions {
        vcpus,
        timeout: Duration::from_secs(120),
        flush: FlushMethod::MmuReset,
        irqchip: IrqchipMode::User,
        halt_poll,
    };
    match scenario::run(s, opts) {
        Ok(r) => r,
        Err(e) => panic!("{} on {vcpus} vCPUs: {e}", s.name()),
    }
}

/// Runs every scenario and checks the figures that do not depend on the
/// host's speed.
fn all_at(vcpus: u32) {
    for s in Scenario::ALL {
        if !s.supports(vcpus) {
            continue;
        }
        let f = run(s, vcpus);
        let t = &f.metrics.total;
        // Each IPI sent by an ICR MSR write (x2APIC or HV_X64_MSR_ICR) is
        // one exit of the ICR class; xAPIC ICR writes are MMIO.
        if let Scenario::PingPong(m) | Scenario::Broadcast(m) = s {
            match m {
                IpiMode::Native | IpiMode::SyntheticIcr if vcpus > 1 => {
                    assert!(t.msr_icr_writes > 0, "{}: {t:?}", s.name());
                    assert_eq!(t.msr_icr_writes, t.ipis_posted, "{}: {t:?}", s.name());
                }
                IpiMode::Xapic => assert_eq!(t.msr_icr_writes, 0, "{}: {t:?}", s.name()),
                _ => {}
            }
        }
        match s {
            Scenario::Broadcast(IpiMode::PvFast | IpiMode::PvEx) if vcpus > 1 => {
                assert_eq!(f.sender_exits_per_op, 1.0, "{}: {f:?}", s.name());
                // Targets complete lazily, except when an exit (a kick
                // racing with the entry) withdrew the bit first.
                assert!(
                    t.eoi_msr * 10 <= t.eoi_lazy,
                    "{}: lazy EOI on the targets: {t:?}",
                    s.name()
                );
            }
            Scenario::Broadcast(IpiMode::Native) if vcpus > 1 => {
                assert!(
                    f.sender_exits_per_op >= f64::from(vcpus - 1),
                    "{}: {f:?}",
                    s.name()
                );
            }
            Scenario::Broadcast(IpiMode::Xapic) if vcpus > 1 => {
                // ICR high and ICR low: two MMIO exits per target.
                assert!(
                    f.sender_exits_per_op >= f64::from(2 * (vcpus - 1)),
                    "{}: {f:?}",
                    s.name()
                );
                assert!(t.exit_mmio > 0);
            }
            Scenario::Shootdown(FlushMode::Pv) => {
                assert_eq!(t.wakeups, 0, "PV flush woke a halted vCPU: {t:?}");
                if (2..=64).contains(&vcpus) {
                    // The encoder's list flush fits RDX, R8 and XMM0.
                    assert_eq!(t.hc_xmm_input, t.hc_flush, "{t:?}");
                }
                if vcpus > 2 {
                    assert!(
                        t.flush_deferred > 0,
                        "halted targets flush at next entry: {t:?}"
                    );
                }
            }
            Scenario::Shootdown(FlushMode::Native) if vcpus > 2 => {
                assert!(t.wakeups > 0, "flush IPIs wake halted vCPUs: {t:?}");
            }
            Scenario::Timer(EoiMode::Lazy) => {
                assert!(
                    t.eoi_msr * 100 <= f.ops,
                    "lazy EOI left {} of {} interrupts with an EOI exit",
                    t.eoi_msr,
                    f.ops
                );
            }
            Scenario::Timer(_) => assert!(t.eoi_msr >= f.ops, "{t:?}"),
            // One probe per exit, no hypercall: the call's flush
            // requests go to the VPs its set names that exist (VP 1).
            Scenario::HypercallEx64Probe => {
                assert!(t.probes >= f.ops && t.probe_cycles > 0, "{t:?}");
                assert_eq!(t.hypercalls, 0, "{t:?}");
                assert_eq!(t.hc_flush, t.probes, "{t:?}");
                let named = if vcpus > 1 { t.probes } else { 0 };
                assert_eq!(t.flush_requested, named, "{t:?}");
                assert!(f.probe_ns > 0.0, "{f:?}");
            }
            _ => {}
        }
    }
}

#[test]
fn scenarios_on_1_vcpu() {
    if !kvm_available("scenarios_on_1_vcpu") {
        return;
    }
    all_at(1);
}

#[test]
fn scenarios_on_2_vcpus() {
    if !kvm_available("scenarios_on_2_vcpus") {
        return;
    }
    all_at(2);
}

#[test]
fn scenarios_on_8_vcpus() {
    if !kvm_available("scenarios_on_8_vcpus") {
        return;
    }
    all_at(8);
}

#[test]
fn scenarios_on_64_vcpus() {
    if !kvm_available("scenarios_on_64_vcpus") {
        return;
    }
    all_at(64);
}

#[test]
fn x2apic_288_vcpus() {
    if !kvm_available("x2apic_288_vcpus") {
        return;
    }
    // Native IPIs to APIC IDs up to 287 through the 32-bit x2APIC ICR
    // destination.
    let native = run(Scenario::Broadcast(IpiMode::Native), 288);
    assert_eq!(native.sender_exits_per_op, 287.0);
    // The Ex forms: VP sets spanning 5 banks.
    let ex = run(Scenario::Broadcast(IpiMode::PvEx), 288);
    assert_eq!(ex.sender_exits_per_op, 1.0);
    assert_eq!(ex.metrics.total.ipis_posted, 287 * ex.ops);
    let flush = run(Scenario::Shootdown(FlushMode::Pv), 288);
    assert_eq!(flush.metrics.total.wakeups, 0);
    assert_eq!(flush.sender_exits_per_op, 1.0);
    run(Scenario::PingPong(IpiMode::PvFast), 288);
}

#[test]
fn pv_paths_at_1024_vcpus() {
    if !kvm_available("pv_paths_at_1024_vcpus") {
        return;
    }
    // The largest VM: 16 banks in every Ex set; 1022 halted vCPUs that the
    // PV flush must not wake.
    let ex = run(Scenario::Broadcast(IpiMode::PvEx), 1024);
    assert_eq!(ex.sender_exits_per_op, 1.0);
    assert_eq!(ex.metrics.total.ipis_posted, 1023 * ex.ops);
    let flush = run(Scenario::Shootdown(FlushMode::Pv), 1024);
    assert_eq!(flush.metrics.total.wakeups, 0);
    // Every target is either deferred (halted, or outside guest mode) or
    // kicked (still in guest mode: a vCPU that has not reached its HLT yet
    // when the first flush comes, which a loaded host makes possible).
    let t = &flush.metrics.total;
    assert!(
        t.flush_deferred + t.kicks >= 1023 * flush.ops,
        "deferred {} + kicked {} < 1023 per flush over {} flushes",
        t.flush_deferred,
        t.kicks,
        flush.ops
    );
}

/// HLT polls as KVM's does: a vCPU whose halts are short takes its next
/// interrupt while polling (an IPI posted by the other vCPU, an APIC timer
/// latched under its lock), with no wake-up; with polling off it never
/// polls. The window is wide so that this host's slow exits stay inside
/// it.
#[test]
fn halt_polling_catches_ipis_and_timers_without_wakeups() {
    if !kvm_available("halt_polling_catches_ipis_and_timers_without_wakeups") {
        return;
    }
    for s in [
        Scenario::PingPong(IpiMode::PvFast),
        Scenario::Timer(EoiMode::X2apic),
    ] {
        let with = |max: Duration| run_polled(s, 2, Some(max)).0.metrics.total;
        let on = with(Duration::from_millis(20));
        assert!(on.halt_polls_ok > 0, "{}: {on:?}", s.name());
        assert!(on.halt_poll_ns > 0, "{}: {on:?}", s.name());
        assert!(on.wakeups < on.exit_hlt, "{}: {on:?}", s.name());
        let off = with(Duration::ZERO);
        assert_eq!(
            (off.halt_polls_ok, off.halt_polls_failed, off.halt_poll_ns),
            (0, 0, 0),
            "{}: {off:?}",
            s.name()
        );
    }
}

/// Where KVM synchronizes the vCPU events in `kvm_run`, interrupts ride on
/// the next `KVM_RUN` instead of a `KVM_INTERRUPT` ioctl each; every
/// scenario's own count checks still hold. Without the capability, every
/// injection takes the ioctl.
#[test]
fn injections_ride_on_kvm_run_where_kvm_syncs_events() {
    if !kvm_available("injections_ride_on_kvm_run_where_kvm_syncs_events") {
        return;
    }
    let synced = kvm_ioctls::Kvm::new()
        .map(|k| k.check_extension_int(kvm_ioctls::Cap::SyncRegs))
        .unwrap_or(0) as u32
        & kvm_bindings::KVM_SYNC_X86_EVENTS
        != 0;
    for s in [
        Scenario::PingPong(IpiMode::Native),
        Scenario::PingPong(IpiMode::PvFast),
        Scenario::Timer(EoiMode::X2apic),
    ] {
        let t = run(s, 2).metrics.total;
        assert!(t.injections > 0, "{}: {t:?}", s.name());
        if synced {
            assert!(
                t.injections_synced > 0 && t.injections_synced <= t.injections,
                "{}: {t:?}",
                s.name()
            );
        } else {
            eprintln!("KVM_SYNC_X86_EVENTS not offered: every injection is an ioctl");
            assert_eq!(t.injections_synced, 0, "{}: {t:?}", s.name());
        }
    }
}

/// Every IPI of a ping-pong has its path timed once, from the sender's
/// exit to the target's entry: two per round trip, parts of the round trip.
#[test]
fn every_ping_pong_ipi_has_its_path_timed() {
    if !kvm_available("every_ping_pong_ipi_has_its_path_timed") {
        return;
    }
    for s in [
        Scenario::PingPong(IpiMode::Native),
        Scenario::PingPong(IpiMode::PvFast),
    ] {
        let f = run(s, 2);
        let t = &f.metrics.total;
        assert_eq!(t.ipi_paths, 2 * f.ops, "{}: {t:?}", s.name());
        assert!(t.ipi_path_vmm_cycles > 0, "{}: {t:?}", s.name());
        assert!(
            f.ipi_path_vmm_ns_per_op + f.ipi_path_notify_ns_per_op < f.guest_ns_per_op,
            "{}: {f:?}",
            s.name()
        );
    }
}
