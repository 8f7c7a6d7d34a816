use super::*;
use crate::icr::{DestinationMode, Shorthand};
use crate::state::IdFormat;
use crate::timer::ManualClock;
use crate::topology::{Topology, VcpuSet};

const X2_TPR: u32 = 0x808;
const X2_EOI: u32 = 0x80B;
const X2_SVR: u32 = 0x80F;
const X2_ICR: u32 = 0x830;
const X2_SELF_IPI: u32 = 0x83F;
const X2_LVT_TIMER: u32 = 0x832;
const X2_TMICT: u32 = 0x838;
const X2_TMCCT: u32 = 0x839;
const X2_TDCR: u32 = 0x83E;
const X2_ESR: u32 = 0x828;

fn new_apic(id: u32) -> (LocalApic, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let apic = LocalApic::new(Config::new(id), clock.clone()).unwrap();
    (apic, clock)
}

fn mmio_read(a: &LocalApic, reg: u32) -> u32 {
    let mut b = [0u8; 4];
    a.read_mmio(u64::from(reg), &mut b);
    u32::from_le_bytes(b)
}

fn mmio_write(a: &mut LocalApic, reg: u32, v: u32) -> Outcome {
    a.write_mmio(u64::from(reg), &v.to_le_bytes())
}

/// Software-enabled xAPIC.
fn enabled_xapic(id: u32) -> (LocalApic, Arc<ManualClock>) {
    let (mut a, c) = new_apic(id);
    let _ = mmio_write(&mut a, SVR, SVR_ENABLE | 0xFF);
    (a, c)
}

/// Software-enabled x2APIC.
fn enabled_x2apic(id: u32) -> (LocalApic, Arc<ManualClock>) {
    let (mut a, c) = new_apic(id);
    let base = a.apic_base() | APIC_BASE_EXTD;
    assert!(matches!(
        a.write_msr(MSR_APIC_BASE, base),
        Outcome::Effect(Effect::Topology(_))
    ));
    assert!(matches!(
        a.write_msr(X2_SVR, u64::from(SVR_ENABLE | 0xFF)),
        Outcome::Effect(Effect::Topology(id)) if id.software_enabled
    ));
    (a, c)
}

fn value(r: MsrRead) -> u64 {
    match r {
        MsrRead::Value(v) => v,
        MsrRead::Gp => panic!("unexpected #GP"),
    }
}

#[test]
fn config_bounds() {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(0));
    let mut c = Config::new(MAX_APIC_ID + 1);
    assert_eq!(
        LocalApic::new(c, clock.clone()).err(),
        Some(ConfigError::ApicId(MAX_APIC_ID + 1))
    );
    c.apic_id = MAX_APIC_ID;
    assert!(LocalApic::new(c, clock.clone()).is_ok());
    c.bus_cycle_ns = 0;
    assert_eq!(
        LocalApic::new(c, clock.clone()).err(),
        Some(ConfigError::BusCycle(0))
    );
    c.bus_cycle_ns = MAX_BUS_CYCLE_NS + 1;
    assert!(LocalApic::new(c, clock.clone()).is_err());
    c.bus_cycle_ns = MAX_BUS_CYCLE_NS;
    c.phys_addr_bits = 53;
    assert_eq!(
        LocalApic::new(c, clock.clone()).err(),
        Some(ConfigError::PhysAddrBits(53))
    );
    c.phys_addr_bits = 31;
    assert!(LocalApic::new(c, clock).is_err());
}

#[test]
fn power_up_state() {
    let (a, _) = new_apic(3);
    assert_eq!(a.mode(), ApicMode::XApic);
    assert_eq!(a.apic_base(), APIC_DEFAULT_BASE | APIC_BASE_ENABLE);
    assert_eq!(a.mmio_base(), APIC_DEFAULT_BASE);
    assert_eq!(mmio_read(&a, ID), 3 << 24);
    // KVM's value for a vCPU without MCG_CMCI_P: six LVTs.
    assert_eq!(mmio_read(&a, LVR), 0x0005_0014);
    assert_eq!(mmio_read(&a, SVR), 0xFF);
    assert_eq!(mmio_read(&a, DFR), u32::MAX);
    for l in Lvt::ALL {
        let reset = if l == Lvt::Cmci { 0 } else { LVT_MASKED };
        assert_eq!(mmio_read(&a, l.reg()), reset, "{l:?}");
    }
    let (b, _) = new_apic(0);
    assert_ne!(b.apic_base() & APIC_BASE_BSP, 0);
}

#[test]
fn mode_transition_matrix() {
    // (from, to, guest allowed) per SDM 10.12.5.1 / KVM kvm_apic_set_base.
    let en = APIC_DEFAULT_BASE | APIC_BASE_ENABLE;
    let x2 = en | APIC_BASE_EXTD;
    let dis = APIC_DEFAULT_BASE;
    let invalid = APIC_DEFAULT_BASE | APIC_BASE_EXTD;
    let states = [
        (dis, ApicMode::Disabled),
        (en, ApicMode::XApic),
        (x2, ApicMode::X2Apic),
    ];
    for (from, from_mode) in states {
        for (to, to_mode) in states {
            let (mut a, _) = new_apic(1);
            assert_ne!(a.set_apic_base(from, true), Outcome::Gp);
            assert_eq!(a.mode(), from_mode);
            let allowed = !matches!(
                (from_mode, to_mode),
                (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic)
            );
            let out = a.write_msr(MSR_APIC_BASE, to);
            if allowed {
                assert_ne!(out, Outcome::Gp, "{from_mode:?} -> {to_mode:?}");
                assert_eq!(a.mode(), to_mode);
                assert_eq!(value(a.read_msr(MSR_APIC_BASE)), to);
            } else {
                assert_eq!(out, Outcome::Gp, "{from_mode:?} -> {to_mode:?}");
                assert_eq!(a.mode(), from_mode);
            }
            // EXTD without EN is never valid, not even host-initiated.
            assert_eq!(a.write_msr(MSR_APIC_BASE, invalid), Outcome::Gp);
            assert_eq!(a.set_apic_base(invalid, true), Outcome::Gp);
        }
    }
    // The host may restore x2APIC -> xAPIC.
    let (mut a, _) = enabled_x2apic(1);
    assert_ne!(a.set_apic_base(en, true), Outcome::Gp);
    assert_eq!(a.mode(), ApicMode::XApic);
}

#[test]
fn apic_base_reserved_bits() {
    let (mut a, _) = new_apic(1);
    let en = APIC_DEFAULT_BASE | APIC_BASE_ENABLE;
    for bit in [0, 7, 9] {
        assert_eq!(
            a.write_msr(MSR_APIC_BASE, en | 1 << bit),
            Outcome::Gp,
            "bit {bit}"
        );
    }
    // MAXPHYADDR 46: bit 45 is an address bit, bit 46 reserved.
    assert_eq!(a.write_msr(MSR_APIC_BASE, en | 1 << 46), Outcome::Gp);
    assert_ne!(a.write_msr(MSR_APIC_BASE, en | 1 << 45), Outcome::Gp);
    assert_eq!(a.mmio_base(), APIC_DEFAULT_BASE | 1 << 45);
    // BSP is writable.
    assert_ne!(a.write_msr(MSR_APIC_BASE, en | APIC_BASE_BSP), Outcome::Gp);
    // No x2APIC in CPUID: EXTD is reserved.
    let mut c = Config::new(1);
    c.x2apic = false;
    let mut b = LocalApic::new(c, Arc::new(ManualClock::new(0))).unwrap();
    assert_eq!(b.write_msr(MSR_APIC_BASE, en | APIC_BASE_EXTD), Outcome::Gp);
}

#[test]
fn x2apic_id_and_ldr() {
    let (mut a, _) = enabled_x2apic(0x123);
    assert_eq!(value(a.read_msr(0x802)), 0x123);
    assert_eq!(value(a.read_msr(0x80D)), 0x0012_0008);
    assert_eq!(a.identity().ldr, 0x0012_0008);
    // Read-only in x2APIC mode.
    assert_eq!(a.write_msr(0x802, 5), Outcome::Gp);
    assert_eq!(a.write_msr(0x80D, 5), Outcome::Gp);
    // No DFR, no ICR2, no APR.
    assert_eq!(a.read_msr(0x80E), MsrRead::Gp);
    assert_eq!(a.write_msr(0x80E, 0), Outcome::Gp);
    assert_eq!(a.read_msr(0x831), MsrRead::Gp);
    assert_eq!(a.read_msr(0x809), MsrRead::Gp);
}

#[test]
fn x2apic_gp_on_nonexistent_registers() {
    let (mut a, _) = enabled_x2apic(1);
    let readable: Vec<u32> = [
        0x802, 0x803, 0x808, 0x80A, 0x80D, 0x80F, 0x828, 0x830, 0x832, 0x833, 0x834, 0x835, 0x836,
        0x837, 0x838, 0x839, 0x83E,
    ]
    .into_iter()
    .chain(0x810..=0x827)
    .collect();
    for msr in MSR_X2APIC_FIRST..=MSR_X2APIC_LAST {
        let r = a.read_msr(msr);
        assert_eq!(r != MsrRead::Gp, readable.contains(&msr), "read {msr:#x}");
    }
    // Write-only and read-only registers.
    assert_eq!(a.read_msr(X2_EOI), MsrRead::Gp);
    assert_eq!(a.read_msr(X2_SELF_IPI), MsrRead::Gp);
    for ro in [
        0x802, 0x803, 0x80A, 0x80D, 0x810, 0x818, 0x820, 0x827, X2_TMCCT,
    ] {
        assert_eq!(a.write_msr(ro, 0), Outcome::Gp, "write {ro:#x}");
    }
    // One past the range is not an x2APIC MSR.
    assert!(!handles_msr(MSR_X2APIC_LAST + 1));
    assert_eq!(a.read_msr(MSR_X2APIC_LAST + 1), MsrRead::Gp);
    assert_eq!(a.write_msr(0x8FF, 0), Outcome::Gp);
}

#[test]
fn x2apic_reserved_bits() {
    let (mut a, _) = enabled_x2apic(1);
    assert_eq!(a.write_msr(X2_TPR, 0x100), Outcome::Gp);
    assert_eq!(a.write_msr(X2_TPR, 1 << 32), Outcome::Gp);
    assert_eq!(a.write_msr(X2_TPR, 0xFF), Outcome::Done);
    assert_eq!(a.write_msr(X2_TPR, 0), Outcome::Done);
    assert_eq!(a.write_msr(X2_EOI, 1), Outcome::Gp);
    assert_eq!(a.write_msr(X2_ESR, 1), Outcome::Gp);
    assert_eq!(a.write_msr(X2_ESR, 0), Outcome::Done);
    assert_eq!(a.write_msr(X2_SELF_IPI, 0x100), Outcome::Gp);
    assert_eq!(a.write_msr(X2_SVR, 1 << 10), Outcome::Gp);
    assert_eq!(a.write_msr(X2_TDCR, 0x4), Outcome::Gp);
    assert_eq!(a.write_msr(X2_LVT_TIMER, 1 << 19), Outcome::Gp);
    assert_eq!(a.write_msr(X2_LVT_TIMER, 1 << 8), Outcome::Gp);
    // LINT0 may carry its read-only remote IRR back.
    assert_eq!(
        a.write_msr(0x835, u64::from(LVT_MASKED | LVT_REMOTE_IRR)),
        Outcome::Done
    );
    assert_eq!(a.write_msr(0x835, 1 << 17), Outcome::Gp);
    for bit in [13, 16, 17, 20, 31] {
        assert_eq!(
            a.write_msr(X2_ICR, 0x40 | 1 << bit),
            Outcome::Gp,
            "ICR bit {bit}"
        );
    }
    // Delivery status (bit 12) is ignored, not #GP.
    assert!(matches!(
        a.write_msr(X2_ICR, 0x1040 | 2 << 32),
        Outcome::Effect(Effect::SendIpi(_))
    ));
    assert_eq!(value(a.read_msr(X2_ICR)), 0x40 | 2 << 32);
}

#[test]
fn x2apic_msrs_gp_outside_x2apic_mode() {
    let (mut a, _) = enabled_xapic(1);
    assert_eq!(a.read_msr(0x802), MsrRead::Gp);
    assert_eq!(a.write_msr(X2_TPR, 0), Outcome::Gp);
    assert_eq!(a.write_msr(X2_SELF_IPI, 0x40), Outcome::Gp);
    assert_eq!(a.read_msr(0x1234), MsrRead::Gp);
    assert_eq!(a.write_msr(0x1234, 0), Outcome::Gp);
}

#[test]
fn mmio_odd_sizes_and_offsets() {
    let (mut a, _) = enabled_xapic(0x12);
    let mut b1 = [0xAAu8; 1];
    a.read_mmio(0x23, &mut b1);
    assert_eq!(b1, [0x12]);
    let mut b2 = [0xAAu8; 2];
    a.read_mmio(0x22, &mut b2);
    assert_eq!(b2, [0, 0x12]);
    // Crossing the 4-byte register: zeros.
    let mut b4 = [0xAAu8; 4];
    a.read_mmio(0x22, &mut b4);
    assert_eq!(b4, [0; 4]);
    let mut b8 = [0xAAu8; 8];
    a.read_mmio(0x20, &mut b8);
    assert_eq!(b8, [0; 8]);
    // Bytes 4..15 of a register slot: zeros.
    a.read_mmio(0x24, &mut b1);
    assert_eq!(b1, [0]);
    // Write-only and non-existent registers read zeros.
    assert_eq!(mmio_read(&a, EOI), 0);
    assert_eq!(mmio_read(&a, SELF_IPI), 0);
    assert_eq!(mmio_read(&a, 0x400), 0);
    assert_eq!(mmio_read(&a, 0xFF0), 0);
    // One past the page, and an access running past it.
    a.read_mmio(MMIO_PAGE_SIZE, &mut b4);
    assert_eq!(b4, [0; 4]);
    a.read_mmio(MMIO_PAGE_SIZE - 1, &mut b4);
    assert_eq!(b4, [0; 4]);
    a.read_mmio(u64::MAX, &mut b4);
    assert_eq!(b4, [0; 4]);
    let mut empty = [0u8; 0];
    a.read_mmio(0x20, &mut empty);
    // Writes other than aligned 4-byte ones are dropped.
    assert_eq!(a.write_mmio(TPR.into(), &[0x50, 0]), Outcome::Done);
    assert_eq!(
        a.write_mmio(u64::from(TPR) + 1, &[0x50, 0, 0, 0]),
        Outcome::Done
    );
    assert_eq!(
        a.write_mmio(TPR.into(), &[0x50, 0, 0, 0, 0, 0, 0, 0]),
        Outcome::Done
    );
    assert_eq!(a.tpr(), 0);
    assert_eq!(a.write_mmio(MMIO_PAGE_SIZE, &[1, 0, 0, 0]), Outcome::Done);
    assert_eq!(a.write_mmio(u64::MAX - 3, &[1, 0, 0, 0]), Outcome::Done);
    assert_eq!(mmio_write(&mut a, 0x400, 1), Outcome::Done);
    // Read-only registers ignore writes; reserved TPR bits are dropped.
    assert_eq!(mmio_write(&mut a, PPR, 0xF0), Outcome::Done);
    assert_eq!(a.ppr(), 0);
    assert_eq!(mmio_write(&mut a, TPR, 0xFFFF_FF50), Outcome::Done);
    assert_eq!(mmio_read(&a, TPR), 0x50);
}

#[test]
fn mmio_off_outside_xapic_mode() {
    let (mut a, _) = enabled_x2apic(1);
    assert_eq!(mmio_read(&a, TPR), u32::MAX);
    assert_eq!(mmio_write(&mut a, TPR, 0x50), Outcome::Done);
    assert_eq!(a.tpr(), 0);
    let (mut d, _) = new_apic(1);
    assert_ne!(d.write_msr(MSR_APIC_BASE, APIC_DEFAULT_BASE), Outcome::Gp);
    assert_eq!(mmio_read(&d, ID), u32::MAX);
}

#[test]
fn xapic_id_ldr_dfr_writes_report_topology() {
    let (mut a, _) = enabled_xapic(1);
    let Outcome::Effect(Effect::Topology(id)) = mmio_write(&mut a, ID, 7 << 24) else {
        panic!("no topology effect")
    };
    assert_eq!(id.apic_id, 7);
    assert_eq!(id.initial_id, 1);
    let Outcome::Effect(Effect::Topology(id)) = mmio_write(&mut a, LDR, 0x0812_3456) else {
        panic!("no topology effect")
    };
    assert_eq!(id.ldr, 0x0800_0000);
    let Outcome::Effect(Effect::Topology(id)) = mmio_write(&mut a, DFR, 0) else {
        panic!("no topology effect")
    };
    assert_eq!(id.dfr, DFR_RESERVED_ONES);
    assert_eq!(mmio_read(&a, DFR), DFR_RESERVED_ONES);
}

#[test]
fn self_ipi_both_modes() {
    let (mut a, _) = enabled_xapic(1);
    // Shorthand self, fixed, vector 0x41.
    let out = mmio_write(&mut a, ICR_LOW, 0x0004_4041);
    assert_eq!(
        out,
        Outcome::Effect(Effect::SelfDelivered(Delivery::Accepted))
    );
    assert_eq!(a.pending(), Some(0x41));
    assert_eq!(mmio_read(&a, ICR_LOW) & DELIVERY_STATUS, 0);

    let (mut b, _) = enabled_x2apic(1);
    let out = b.write_msr(X2_SELF_IPI, 0x42);
    assert_eq!(
        out,
        Outcome::Effect(Effect::SelfDelivered(Delivery::Accepted))
    );
    assert_eq!(
        b.write_msr(X2_SELF_IPI, 0x42),
        Outcome::Effect(Effect::SelfDelivered(Delivery::Coalesced))
    );
    assert_eq!(b.pending(), Some(0x42));
    let out = b.write_msr(X2_ICR, 0x0004_4043);
    assert_eq!(
        out,
        Outcome::Effect(Effect::SelfDelivered(Delivery::Accepted))
    );
    assert_eq!(b.pending(), Some(0x43));
    // SELF IPI is x2APIC-only: the xAPIC offset does nothing.
    assert_eq!(mmio_write(&mut a, SELF_IPI, 0x44), Outcome::Done);
    assert!(!a.irr().test(0x44));
}

#[test]
fn xapic_icr_sends_typed_ipi() {
    let (mut a, _) = enabled_xapic(1);
    assert_eq!(mmio_write(&mut a, ICR_HIGH, 0x03FF_FFFF), Outcome::Done);
    assert_eq!(mmio_read(&a, ICR_HIGH), 0x0300_0000);
    let Outcome::Effect(Effect::SendIpi(ipi)) = mmio_write(&mut a, ICR_LOW, 0x0000_4C50) else {
        panic!("no IPI")
    };
    assert_eq!(ipi.destination, 3);
    assert_eq!(ipi.destination_mode, DestinationMode::Logical);
    assert_eq!(ipi.delivery_mode, DeliveryMode::Nmi);
    assert_eq!(ipi.shorthand, Shorthand::None);
}

#[test]
fn deliver_fixed_vectors_reports_new_ones_only() {
    let (mut a, _) = enabled_xapic(0);
    assert!(!a.deliver_fixed_vectors([]));
    assert!(a.deliver_fixed_vectors([0x40, 0x50, 0x40]));
    assert_eq!(a.irr().iter().collect::<Vec<_>>(), [0x40, 0x50]);
    // Coalesced with what is pending: nothing new.
    assert!(!a.deliver_fixed_vectors([0x50, 0x40]));
    // An illegal vector is refused like a single delivery, and does not
    // stop the rest of the batch.
    assert!(a.deliver_fixed_vectors([0x0F, 0x60]));
    assert!(!a.irr().test(0x0F) && a.irr().test(0x60));
    assert_eq!(
        mmio_write(&mut a, ESR, 0),
        Outcome::Done,
        "ESR write latches the error"
    );
    assert_eq!(mmio_read(&a, ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
    // Edge-triggered: the TMR stays clear.
    assert!(a.tmr().is_empty());
}

#[test]
fn tpr_ppr_masking() {
    let (mut a, _) = enabled_xapic(1);
    assert_eq!(a.deliver(&Interrupt::fixed(0x45)), Delivery::Accepted);
    let _ = mmio_write(&mut a, TPR, 0x50);
    assert_eq!(a.ppr(), 0x50);
    assert_eq!(a.pending(), None);
    let _ = mmio_write(&mut a, TPR, 0x40);
    assert_eq!(a.pending(), None, "same class as TPR is masked");
    let _ = mmio_write(&mut a, TPR, 0x3F);
    assert_eq!(a.pending(), Some(0x45));
    a.set_cr8(5);
    assert_eq!(a.tpr(), 0x50);
    assert_eq!(a.cr8(), 5);
    assert_eq!(a.pending(), None);
}

#[test]
fn nested_interrupts_and_eoi_order() {
    let (mut a, _) = enabled_xapic(1);
    let _ = a.deliver(&Interrupt::fixed(0x40));
    assert!(a.acknowledge(0x40));
    assert_eq!(a.ppr(), 0x40);
    let _ = a.deliver(&Interrupt::fixed(0x45));
    assert_eq!(a.pending(), None, "same class as in-service");
    let _ = a.deliver(&Interrupt::fixed(0x80));
    assert_eq!(a.pending(), Some(0x80));
    assert!(a.acknowledge(0x80));
    assert_eq!(a.ppr(), 0x80);
    assert_eq!(mmio_read(&a, ISR + 0x40), 1);
    assert_eq!(mmio_read(&a, ISR + 0x20), 1);
    // EOI retires the highest in-service vector first.
    assert_eq!(
        mmio_write(&mut a, EOI, 0),
        Outcome::Effect(Effect::Eoi(Eoi {
            vector: 0x80,
            level_triggered: false,
            notify_ioapic: false
        }))
    );
    assert_eq!(a.ppr(), 0x40);
    assert_eq!(a.pending(), None);
    assert!(
        matches!(mmio_write(&mut a, EOI, 0), Outcome::Effect(Effect::Eoi(e)) if e.vector == 0x40)
    );
    assert_eq!(a.pending(), Some(0x45));
    assert_eq!(a.acknowledge_pending(), Some(0x45));
    assert!(a.eoi().is_some());
    // Nothing in service: EOI does nothing.
    assert_eq!(mmio_write(&mut a, EOI, 0), Outcome::Done);
    assert!(!a.acknowledge(0x45), "not requested");
}

#[test]
fn level_triggered_eoi_and_suppression() {
    let (mut a, _) = enabled_xapic(1);
    let _ = a.deliver(&Interrupt::fixed_level(0x60));
    assert!(a.tmr().test(0x60));
    assert_eq!(a.acknowledge_pending(), Some(0x60));
    let e = a.eoi().unwrap();
    assert!(e.level_triggered && e.notify_ioapic);
    // Edge delivery of the same vector clears TMR.
    let _ = a.deliver(&Interrupt::fixed(0x60));
    assert!(!a.tmr().test(0x60));
    // Suppression needs support: without it SVR bit 12 is dropped.
    let _ = mmio_write(&mut a, SVR, SVR_ENABLE | SVR_SUPPRESS_EOI_BROADCAST | 0xFF);
    assert_eq!(mmio_read(&a, SVR) & SVR_SUPPRESS_EOI_BROADCAST, 0);

    let mut c = Config::new(2);
    c.eoi_broadcast_suppression = true;
    let mut b = LocalApic::new(c, Arc::new(ManualClock::new(0))).unwrap();
    assert_ne!(mmio_read(&b, LVR) & LVR_EOI_BROADCAST_SUPPRESSION, 0);
    let _ = mmio_write(&mut b, SVR, SVR_ENABLE | SVR_SUPPRESS_EOI_BROADCAST | 0xFF);
    let _ = b.deliver(&Interrupt::fixed_level(0x61));
    let _ = b.acknowledge_pending();
    let e = b.eoi().unwrap();
    assert!(e.level_triggered && !e.notify_ioapic);
}

#[test]
fn auto_eoi_skips_isr() {
    let (mut a, _) = enabled_xapic(1);
    a.set_auto_eoi_vectors([0x50u8].into_iter().collect());
    let _ = a.deliver(&Interrupt::fixed(0x50));
    assert!(a.acknowledge(0x50));
    assert!(a.isr().is_empty());
    assert_eq!(a.ppr(), 0);
    assert_eq!(a.eoi(), None);
    assert!(!a.arm_lazy_eoi());
}

#[test]
fn deliver_auto_eoi_skips_isr_once() {
    let (mut a, _) = enabled_xapic(1);
    assert_eq!(a.deliver_auto_eoi(0x51), Delivery::Accepted);
    assert!(a.acknowledge(0x51));
    assert!(a.isr().is_empty());
    assert_eq!(a.ppr(), 0);
    assert_eq!(a.eoi(), None);
    // The mark is gone: a plain delivery of the vector goes in service.
    let _ = a.deliver(&Interrupt::fixed(0x51));
    assert!(a.acknowledge(0x51));
    assert!(a.isr().test(0x51));
    assert!(a.eoi().is_some());
    // Refused deliveries leave no mark (vector 15 is illegal).
    assert_eq!(a.deliver_auto_eoi(15), Delivery::Ignored);
    let _ = a.deliver(&Interrupt::fixed(0x52));
    let _ = a.deliver_auto_eoi(0x53);
    assert_eq!(a.acknowledge_pending(), Some(0x53));
    assert_eq!(a.acknowledge_pending(), Some(0x52));
    assert_eq!(a.isr().highest(), Some(0x52));
    // Reset drops a pending mark.
    let _ = a.deliver_auto_eoi(0x60);
    a.reset();
    let _ = mmio_write(&mut a, SVR, SVR_ENABLE | 0xFF);
    let _ = a.deliver(&Interrupt::fixed(0x60));
    assert!(a.acknowledge(0x60));
    assert!(a.isr().test(0x60));
}

#[test]
fn software_disable() {
    let (mut a, _) = enabled_xapic(1);
    let _ = mmio_write(&mut a, LVT_LINT0, 0x700);
    assert_eq!(mmio_read(&a, LVT_LINT0), 0x700);
    assert!(a.accepts_pic_interrupt());
    assert!(
        matches!(mmio_write(&mut a, SVR, 0xFF), Outcome::Effect(Effect::Topology(id)) if !id.software_enabled)
    );
    assert_eq!(mmio_read(&a, LVT_LINT0), 0x700 | LVT_MASKED);
    // LVTs stay masked while software-disabled.
    let _ = mmio_write(&mut a, LVT_LINT1, 0x400);
    assert_eq!(mmio_read(&a, LVT_LINT1), 0x400 | LVT_MASKED);
    assert_eq!(a.deliver(&Interrupt::fixed(0x40)), Delivery::Ignored);
    assert_eq!(
        a.deliver(&Interrupt::with_mode(DeliveryMode::Nmi, 0)),
        Delivery::Nmi
    );
    assert_eq!(
        a.deliver(&Interrupt::with_mode(DeliveryMode::Init, 0)),
        Delivery::Init
    );
    assert_eq!(a.local_interrupt(Lvt::Lint1), Delivery::Ignored);
}

#[test]
fn delivery_modes() {
    let (mut a, _) = enabled_xapic(1);
    let m = |d, v| Interrupt::with_mode(d, v);
    assert_eq!(a.deliver(&m(DeliveryMode::Smi, 0)), Delivery::Smi);
    assert_eq!(a.deliver(&m(DeliveryMode::Nmi, 0)), Delivery::Nmi);
    assert_eq!(a.deliver(&m(DeliveryMode::Init, 0)), Delivery::Init);
    let deassert = Interrupt {
        trigger_mode: TriggerMode::Level,
        level_assert: false,
        ..m(DeliveryMode::Init, 0)
    };
    assert_eq!(a.deliver(&deassert), Delivery::Ignored);
    assert_eq!(
        a.deliver(&m(DeliveryMode::StartUp, 0x9F)),
        Delivery::StartUp(0x9F)
    );
    assert_eq!(a.deliver(&m(DeliveryMode::ExtInt, 0)), Delivery::ExtInt);
    assert_eq!(
        a.deliver(&m(DeliveryMode::Reserved, 0x40)),
        Delivery::Ignored
    );
    assert_eq!(
        a.deliver(&m(DeliveryMode::LowestPriority, 0x70)),
        Delivery::Accepted
    );
    assert!(a.irr().test(0x70));
    // LINT1 as NMI.
    let _ = mmio_write(&mut a, LVT_LINT1, 0x400);
    assert_eq!(a.local_interrupt(Lvt::Lint1), Delivery::Nmi);
    // A disabled APIC accepts nothing.
    assert_ne!(a.write_msr(MSR_APIC_BASE, APIC_DEFAULT_BASE), Outcome::Gp);
    assert_eq!(a.deliver(&m(DeliveryMode::Nmi, 0)), Delivery::Ignored);
    assert_eq!(a.pending(), None);
    assert!(a.accepts_pic_interrupt());
}

#[test]
fn illegal_vectors_and_esr() {
    let (mut a, _) = enabled_xapic(1);
    let _ = mmio_write(&mut a, LVT_ERROR, 0xFE);
    // Vector 15 is illegal, 16 is the first legal one.
    assert_eq!(a.deliver(&Interrupt::fixed(15)), Delivery::Ignored);
    assert_eq!(a.deliver(&Interrupt::fixed(16)), Delivery::Accepted);
    // The error LVT fired.
    assert!(a.irr().test(0xFE));
    // ESR shows errors only after a write latches them.
    assert_eq!(mmio_read(&a, ESR), 0);
    let _ = mmio_write(&mut a, ESR, 0);
    assert_eq!(mmio_read(&a, ESR), ESR_RECEIVE_ILLEGAL_VECTOR);
    let _ = mmio_write(&mut a, ESR, 0);
    assert_eq!(mmio_read(&a, ESR), 0);
    // Sending an illegal vector is not sent.
    assert_eq!(mmio_write(&mut a, ICR_LOW, 0x4003), Outcome::Done);
    let _ = mmio_write(&mut a, ESR, 0);
    assert_eq!(mmio_read(&a, ESR), ESR_SEND_ILLEGAL_VECTOR);
    // NMI ignores the vector field.
    assert!(matches!(
        mmio_write(&mut a, ICR_LOW, 0x4403),
        Outcome::Effect(Effect::SendIpi(_))
    ));
}

#[test]
fn one_shot_timer() {
    let (mut a, clock) = enabled_xapic(1);
    clock.set(10_000);
    let _ = mmio_write(&mut a, LVT_TIMER, 0x30);
    let _ = mmio_write(&mut a, TIMER_DIVIDE, 0xB); // divide by 1
    assert_eq!(
        mmio_write(&mut a, TIMER_INITIAL, 1000),
        Outcome::Effect(Effect::Timer(Some(11_000)))
    );
    assert_eq!(a.next_deadline(), Some(11_000));
    clock.set(10_400);
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 600);
    clock.set(10_999);
    assert_eq!(
        a.poll_timer(),
        TimerPoll {
            expired: false,
            next_deadline: Some(11_000)
        }
    );
    assert_eq!(a.pending(), None);
    clock.set(11_000);
    assert_eq!(
        a.poll_timer(),
        TimerPoll {
            expired: true,
            next_deadline: None
        }
    );
    assert_eq!(a.pending(), Some(0x30));
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 0);
    assert_eq!(mmio_read(&a, TIMER_INITIAL), 1000);
    assert!(!a.poll_timer().expired);
    // Writing 0 stops the timer.
    let _ = mmio_write(&mut a, TIMER_INITIAL, 1000);
    assert_eq!(
        mmio_write(&mut a, TIMER_INITIAL, 0),
        Outcome::Effect(Effect::Timer(None))
    );
}

#[test]
fn divide_configuration() {
    use crate::timer::divisor;
    let expected = [
        (0x0, 2),
        (0x1, 4),
        (0x2, 8),
        (0x3, 16),
        (0x8, 32),
        (0x9, 64),
        (0xA, 128),
        (0xB, 1),
    ];
    for (tdcr, div) in expected {
        assert_eq!(divisor(tdcr), div, "tdcr {tdcr:#x}");
    }
    let (mut a, clock) = enabled_xapic(1);
    let _ = mmio_write(&mut a, LVT_TIMER, 0x30);
    let _ = mmio_write(&mut a, TIMER_DIVIDE, 0x3); // 16
    assert_eq!(
        mmio_write(&mut a, TIMER_INITIAL, 100),
        Outcome::Effect(Effect::Timer(Some(1600)))
    );
    clock.set(800);
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 50);
    // Halving the divisor halves what is left (KVM update_target_expiration).
    assert_eq!(
        mmio_write(&mut a, TIMER_DIVIDE, 0x2),
        Outcome::Effect(Effect::Timer(Some(1200)))
    );
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 50);
    assert_eq!(mmio_read(&a, TIMER_DIVIDE), 0x2);
    // Undefined bits are dropped in xAPIC mode.
    let _ = mmio_write(&mut a, TIMER_DIVIDE, 0xFFFF_FFF4);
    assert_eq!(mmio_read(&a, TIMER_DIVIDE), 0x0);
}

#[test]
fn periodic_timer() {
    let (mut a, clock) = enabled_xapic(1);
    let _ = mmio_write(&mut a, LVT_TIMER, 0x30 | 1 << 17);
    let _ = mmio_write(&mut a, TIMER_DIVIDE, 0xB);
    assert_eq!(
        mmio_write(&mut a, TIMER_INITIAL, 1_000_000),
        Outcome::Effect(Effect::Timer(Some(1_000_000)))
    );
    clock.set(1_000_000);
    assert_eq!(
        a.poll_timer(),
        TimerPoll {
            expired: true,
            next_deadline: Some(2_000_000)
        }
    );
    assert!(a.acknowledge(0x30));
    clock.set(2_500_000);
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 500_000);
    // Late by more than two periods: one interrupt, next deadline on the grid.
    clock.set(4_200_000);
    assert_eq!(
        a.poll_timer(),
        TimerPoll {
            expired: true,
            next_deadline: Some(5_000_000)
        }
    );
    assert!(a.irr().test(0x30));
    // A period below the floor is clamped.
    assert_eq!(
        mmio_write(&mut a, TIMER_INITIAL, 1),
        Outcome::Effect(Effect::Timer(Some(4_200_000 + DEFAULT_MIN_PERIODIC_NS)))
    );
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 1);
}

#[test]
fn masked_timer_counts_without_interrupt() {
    let (mut a, clock) = enabled_xapic(1);
    let _ = mmio_write(&mut a, LVT_TIMER, 0x30 | LVT_MASKED);
    let _ = mmio_write(&mut a, TIMER_DIVIDE, 0xB);
    let _ = mmio_write(&mut a, TIMER_INITIAL, 100);
    clock.set(50);
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 50);
    clock.set(100);
    assert!(a.poll_timer().expired);
    assert!(a.irr().is_empty());
}

#[test]
fn tsc_deadline_timer() {
    // 1 GHz guest TSC: 1 tick = 1 ns.
    let (mut a, clock) = enabled_xapic(1);
    // Ignored outside TSC-deadline mode.
    assert_eq!(a.write_msr(MSR_TSC_DEADLINE, 500), Outcome::Done);
    assert_eq!(value(a.read_msr(MSR_TSC_DEADLINE)), 0);
    let _ = mmio_write(&mut a, TIMER_DIVIDE, 0xB);
    let _ = mmio_write(&mut a, TIMER_INITIAL, 100);
    // Entering TSC-deadline mode disarms the count-down timer.
    assert_eq!(
        mmio_write(&mut a, LVT_TIMER, 0x31 | 2 << 17),
        Outcome::Effect(Effect::Timer(None))
    );
    assert_eq!(mmio_read(&a, TIMER_INITIAL), 0);
    // TMICT is ignored in TSC-deadline mode; TMCCT reads 0.
    assert_eq!(mmio_write(&mut a, TIMER_INITIAL, 100), Outcome::Done);
    assert_eq!(mmio_read(&a, TIMER_CURRENT), 0);
    assert_eq!(
        a.write_msr(MSR_TSC_DEADLINE, 5_000),
        Outcome::Effect(Effect::Timer(Some(5_000)))
    );
    assert_eq!(value(a.read_msr(MSR_TSC_DEADLINE)), 5_000);
    clock.set(4_999);
    assert!(!a.poll_timer().expired);
    clock.set(5_000);
    assert_eq!(
        a.poll_timer(),
        TimerPoll {
            expired: true,
            next_deadline: None
        }
    );
    assert_eq!(a.pending(), Some(0x31));
    assert_eq!(value(a.read_msr(MSR_TSC_DEADLINE)), 0);
    // Writing 0 disarms; leaving the mode disarms.
    let _ = a.write_msr(MSR_TSC_DEADLINE, 9_000);
    assert_eq!(
        a.write_msr(MSR_TSC_DEADLINE, 0),
        Outcome::Effect(Effect::Timer(None))
    );
    let _ = a.write_msr(MSR_TSC_DEADLINE, 9_000);
    assert_eq!(
        mmio_write(&mut a, LVT_TIMER, 0x31),
        Outcome::Effect(Effect::Timer(None))
    );
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn hyperv_synthetic_icr_layouts() {
    use hv_enlightenments::msr::{HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR};
    // xAPIC mode: destination in bits 63:56.
    let (mut a, _) = enabled_xapic(1);
    let Outcome::Effect(Effect::SendIpi(ipi)) = a.write_msr(HV_X64_MSR_ICR, 0x1200_0000_0000_4050)
    else {
        panic!("no IPI")
    };
    assert_eq!(ipi.destination, 0x12);
    assert_eq!(ipi.vector, 0x50);
    assert_eq!(mmio_read(&a, ICR_HIGH), 0x1200_0000);
    assert_eq!(value(a.read_msr(HV_X64_MSR_ICR)), 0x1200_0000_0000_4050);
    // Bits 55:32 are not part of an xAPIC destination.
    let Outcome::Effect(Effect::SendIpi(ipi)) = a.write_msr(HV_X64_MSR_ICR, 0x0000_0012_0000_4050)
    else {
        panic!("no IPI")
    };
    assert_eq!(ipi.destination, 0);
    // x2APIC mode: unshifted 32-bit destination in bits 63:32.
    let (mut b, _) = enabled_x2apic(1);
    let Outcome::Effect(Effect::SendIpi(ipi)) = b.write_msr(HV_X64_MSR_ICR, 0x0000_0123_0000_4050)
    else {
        panic!("no IPI")
    };
    assert_eq!(ipi.destination, 0x123);
    // Same as the architectural ICR.
    assert_eq!(
        b.write_msr(X2_ICR, 0x0000_0123_0000_4050),
        Outcome::Effect(Effect::SendIpi(ipi))
    );
    assert_eq!(b.write_msr(HV_X64_MSR_ICR, 0x4050 | 1 << 13), Outcome::Gp);
    // TPR alias.
    assert_eq!(a.write_msr(HV_X64_MSR_TPR, 0x70), Outcome::Done);
    assert_eq!(a.tpr(), 0x70);
    assert_eq!(value(a.read_msr(HV_X64_MSR_TPR)), 0x70);
    assert_eq!(a.write_msr(HV_X64_MSR_TPR, 1 << 32), Outcome::Gp);
    // EOI alias: write-only, value ignored.
    assert_eq!(a.read_msr(HV_X64_MSR_EOI), MsrRead::Gp);
    let _ = a.deliver(&Interrupt::fixed(0x90));
    let _ = a.acknowledge_pending();
    assert!(
        matches!(a.write_msr(HV_X64_MSR_EOI, 0xDEAD), Outcome::Effect(Effect::Eoi(e)) if e.vector == 0x90)
    );
    // Disabled APIC: #GP.
    assert_ne!(a.write_msr(MSR_APIC_BASE, APIC_DEFAULT_BASE), Outcome::Gp);
    assert_eq!(a.write_msr(HV_X64_MSR_EOI, 0), Outcome::Gp);
    assert_eq!(a.read_msr(HV_X64_MSR_TPR), MsrRead::Gp);
}

/// A software-enabled APIC of either mode with vector 0x90 in service.
fn with_one_in_service(x2: bool) -> LocalApic {
    let (mut a, _) = if x2 {
        enabled_x2apic(1)
    } else {
        enabled_xapic(1)
    };
    let _ = a.deliver(&Interrupt::fixed(0x90));
    assert_eq!(a.acknowledge_pending(), Some(0x90));
    a
}

#[test]
fn hyperv_synthetic_eoi_reserved_bits() {
    use hv_enlightenments::msr::HV_X64_MSR_EOI;
    // Both modes: bits 63:32 are reserved (KVM kvm_lapic_msr_write).
    for x2 in [false, true] {
        let mut a = with_one_in_service(x2);
        for bit in [32, 63] {
            assert_eq!(a.write_msr(HV_X64_MSR_EOI, 1 << bit), Outcome::Gp);
        }
        assert!(a.isr().test(0x90), "a refused EOI completes nothing");
        assert!(matches!(
            a.write_msr(HV_X64_MSR_EOI, 0),
            Outcome::Effect(Effect::Eoi(e)) if e.vector == 0x90
        ));
    }
    // xAPIC mode: bits 31:0 are ignored, up to the last one below the bound.
    let mut a = with_one_in_service(false);
    assert!(matches!(
        a.write_msr(HV_X64_MSR_EOI, 0xFFFF_FFFF),
        Outcome::Effect(Effect::Eoi(_))
    ));
    // x2APIC mode: any non-zero value faults, as for the x2APIC EOI.
    let mut b = with_one_in_service(true);
    assert_eq!(b.write_msr(HV_X64_MSR_EOI, 1), Outcome::Gp);
    assert_eq!(b.write_msr(X2_EOI, 1), Outcome::Gp);
    assert!(b.isr().test(0x90));
}

#[test]
fn hyperv_synthetic_tpr_reserved_bits() {
    use hv_enlightenments::msr::HV_X64_MSR_TPR;
    for x2 in [false, true] {
        let (mut a, _) = if x2 {
            enabled_x2apic(1)
        } else {
            enabled_xapic(1)
        };
        assert_eq!(a.write_msr(HV_X64_MSR_TPR, 0xFF), Outcome::Done);
        assert_eq!(a.tpr(), 0xFF);
        // One past the 8-bit field, and the top bit, are reserved.
        for v in [0x100, 1 << 31, 1 << 32, 1 << 63] {
            assert_eq!(a.write_msr(HV_X64_MSR_TPR, v), Outcome::Gp, "{v:#x}");
        }
        assert_eq!(a.tpr(), 0xFF, "a refused write keeps the TPR");
        assert_eq!(value(a.read_msr(HV_X64_MSR_TPR)), 0xFF);
    }
}

#[test]
fn hyperv_synthetic_icr_reserved_bits() {
    use hv_enlightenments::msr::HV_X64_MSR_ICR;
    // KVM X2APIC_ICR_RESERVED_BITS (31:20, 17:16, 13), in both modes.
    let reserved: Vec<u32> = (20..32).chain([16, 17, 13]).collect();
    for x2 in [false, true] {
        let (mut a, _) = if x2 {
            enabled_x2apic(1)
        } else {
            enabled_xapic(1)
        };
        let dest = if x2 { 2u64 << 32 } else { 2u64 << 56 };
        let before = value(a.read_msr(HV_X64_MSR_ICR));
        for bit in &reserved {
            assert_eq!(
                a.write_msr(HV_X64_MSR_ICR, dest | 0x4040 | 1 << bit),
                Outcome::Gp,
                "bit {bit}, x2APIC {x2}"
            );
        }
        assert_eq!(value(a.read_msr(HV_X64_MSR_ICR)), before);
        // Their neighbours: shorthand 19:18, trigger 15, level 14,
        // delivery status 12 (ignored), destination mode 11.
        for bit in [19, 18, 15, 14, 12, 11] {
            assert!(
                !a.write_msr(HV_X64_MSR_ICR, dest | 0x4040 | 1 << bit)
                    .is_gp(),
                "bit {bit}, x2APIC {x2}"
            );
        }
    }
}

#[test]
fn hyperv_synthetic_msrs_gp_while_disabled() {
    use hv_enlightenments::msr::{HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR};
    let (mut a, _) = enabled_xapic(1);
    assert_ne!(a.write_msr(MSR_APIC_BASE, APIC_DEFAULT_BASE), Outcome::Gp);
    assert_eq!(a.mode(), ApicMode::Disabled);
    for msr in [HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR] {
        assert_eq!(a.read_msr(msr), MsrRead::Gp, "{msr:#x}");
        assert_eq!(a.write_msr(msr, 0), Outcome::Gp, "{msr:#x}");
    }
    // Not even a valid fixed IPI leaves.
    assert_eq!(a.write_msr(HV_X64_MSR_ICR, 0x4040), Outcome::Gp);
    // Enabled again: served.
    let en = APIC_DEFAULT_BASE | APIC_BASE_ENABLE;
    assert_ne!(a.write_msr(MSR_APIC_BASE, en), Outcome::Gp);
    assert_eq!(a.write_msr(HV_X64_MSR_TPR, 0x20), Outcome::Done);
    assert_eq!(value(a.read_msr(HV_X64_MSR_TPR)), 0x20);
}

#[test]
fn init_level_deassert_is_never_delivered() {
    use hv_enlightenments::msr::HV_X64_MSR_ICR;
    const INIT_DEASSERT: u32 = 0x8500; // level-triggered, level 0, INIT
    // Routes the outcome and returns every delivery it caused.
    fn route(vm: &mut Vm, out: Outcome) -> Vec<Delivery> {
        match out {
            Outcome::Effect(Effect::SendIpi(ipi)) => {
                assert!(ipi.interrupt().is_level_deassert());
                let mut t = VcpuSet::new();
                vm.topo.resolve_ipi(0, &ipi, &mut t);
                assert!(!t.is_empty(), "the message still reaches its targets");
                t.iter()
                    .map(|i| vm.apics[i].deliver(&ipi.interrupt()))
                    .collect()
            }
            Outcome::Effect(Effect::SelfDelivered(d)) => vec![d],
            other => panic!("unexpected {other:?}"),
        }
    }
    // xAPIC: MMIO ICR and the synthetic ICR, to APIC 1, self and all.
    let mut vm = Vm::new(2, false);
    let _ = mmio_write(&mut vm.apics[0], ICR_HIGH, 1 << 24);
    let mut deliveries = Vec::new();
    for low in [
        INIT_DEASSERT,
        INIT_DEASSERT | 1 << 18,
        INIT_DEASSERT | 2 << 18,
    ] {
        let out = mmio_write(&mut vm.apics[0], ICR_LOW, low);
        deliveries.extend(route(&mut vm, out));
        let out = vm.apics[0].write_msr(HV_X64_MSR_ICR, 1 << 56 | u64::from(low));
        deliveries.extend(route(&mut vm, out));
    }
    // x2APIC: MSR 0x830 and the synthetic ICR.
    let mut vm2 = Vm::new(2, true);
    for low in [
        INIT_DEASSERT,
        INIT_DEASSERT | 1 << 18,
        INIT_DEASSERT | 2 << 18,
    ] {
        let icr = 1 << 32 | u64::from(low);
        let out = vm2.apics[0].write_msr(X2_ICR, icr);
        deliveries.extend(route(&mut vm2, out));
        let out = vm2.apics[0].write_msr(HV_X64_MSR_ICR, icr);
        deliveries.extend(route(&mut vm2, out));
    }
    assert!(!deliveries.is_empty());
    assert!(
        deliveries.iter().all(|d| *d == Delivery::Ignored),
        "{deliveries:?}"
    );
    // Level asserted it is an INIT; an edge-triggered INIT ignores the
    // level bit.
    let init = Interrupt::with_mode(DeliveryMode::Init, 0);
    assert_eq!(vm.apics[1].deliver(&init), Delivery::Init);
    let edge_deassert = Interrupt {
        level_assert: false,
        ..init
    };
    assert!(!edge_deassert.is_level_deassert());
    assert_eq!(vm.apics[1].deliver(&edge_deassert), Delivery::Init);
}

#[test]
fn level_deassert_of_fixed_and_lowest_priority_is_dropped() {
    // KVM __apic_accept_irq: "trig_mode && !level" is not accepted.
    let (mut a, _) = enabled_xapic(1);
    for mode in [DeliveryMode::Fixed, DeliveryMode::LowestPriority] {
        let deassert = Interrupt {
            vector: 0x40,
            delivery_mode: mode,
            trigger_mode: TriggerMode::Level,
            level_assert: false,
        };
        assert!(deassert.is_level_deassert());
        assert_eq!(a.deliver(&deassert), Delivery::Ignored);
        assert!(!a.irr().test(0x40) && !a.tmr().test(0x40));
    }
    // Through the ICR: a level-triggered fixed IPI with level 0.
    let _ = mmio_write(&mut a, ICR_HIGH, 1 << 24);
    let Outcome::Effect(Effect::SendIpi(ipi)) = mmio_write(&mut a, ICR_LOW, 0x8041) else {
        panic!("no IPI")
    };
    assert_eq!(a.deliver(&ipi.interrupt()), Delivery::Ignored);
    assert_eq!(a.pending(), None);
}

#[test]
fn lazy_eoi() {
    let (mut a, _) = enabled_xapic(1);
    assert!(!a.arm_lazy_eoi(), "nothing in service");
    let _ = a.deliver(&Interrupt::fixed(0x40));
    let _ = a.acknowledge_pending();
    assert!(a.arm_lazy_eoi());
    // The guest cleared the bit: the EOI happens here.
    let e = a.complete_lazy_eoi(true).unwrap();
    assert_eq!(e.vector, 0x40);
    assert!(a.isr().is_empty());
    assert!(a.complete_lazy_eoi(true).is_none(), "one EOI per arm");

    // Something pending in the IRR: no lazy EOI.
    let _ = a.deliver(&Interrupt::fixed(0x40));
    let _ = a.acknowledge_pending();
    let _ = a.deliver(&Interrupt::fixed(0x30));
    assert!(!a.arm_lazy_eoi());
    let _ = a.eoi();
    let _ = a.acknowledge_pending();
    let _ = a.eoi();

    // Level-triggered: the IOAPIC needs the EOI exit.
    let _ = a.deliver(&Interrupt::fixed_level(0x41));
    let _ = a.acknowledge_pending();
    assert!(!a.arm_lazy_eoi());
    let _ = a.eoi();

    // After an EOI the remaining in-service vector is not known (nested).
    let _ = a.deliver(&Interrupt::fixed(0x40));
    let _ = a.acknowledge_pending();
    let _ = a.deliver(&Interrupt::fixed(0x80));
    let _ = a.acknowledge_pending();
    assert!(a.arm_lazy_eoi());
    assert_eq!(a.complete_lazy_eoi(true).map(|e| e.vector), Some(0x80));
    assert!(!a.arm_lazy_eoi());
    let _ = a.eoi();

    // A guest that ignores the bit and writes EOI stays correct.
    let _ = a.deliver(&Interrupt::fixed(0x50));
    let _ = a.acknowledge_pending();
    assert!(a.arm_lazy_eoi());
    assert!(
        matches!(mmio_write(&mut a, EOI, 0), Outcome::Effect(Effect::Eoi(e)) if e.vector == 0x50)
    );
    assert!(!a.lazy_eoi_armed());
    assert!(a.complete_lazy_eoi(false).is_none());
    assert!(a.isr().is_empty());

    // Bit still set on exit: nothing happens, state kept.
    let _ = a.deliver(&Interrupt::fixed(0x50));
    let _ = a.acknowledge_pending();
    assert!(a.arm_lazy_eoi());
    assert!(a.complete_lazy_eoi(false).is_none());
    assert!(a.isr().test(0x50));
    assert!(a.arm_lazy_eoi(), "re-armed on the next entry");
}

#[test]
fn init_reset_keeps_id_and_mode() {
    let (mut a, clock) = enabled_x2apic(0x21);
    let _ = a.write_msr(X2_TPR, 0x20);
    let _ = a.write_msr(X2_LVT_TIMER, 0x30);
    let _ = a.write_msr(X2_TMICT, 100);
    clock.set(1);
    let id = a.init_reset();
    assert_eq!(id.mode, ApicMode::X2Apic);
    assert_eq!(id.ldr, x2apic_ldr(0x21));
    assert!(!id.software_enabled);
    assert_eq!(a.tpr(), 0);
    assert_eq!(a.next_deadline(), None);
    assert_eq!(value(a.read_msr(0x802)), 0x21);
}

#[test]
fn disable_resets_to_power_up_state() {
    let (mut a, _) = enabled_xapic(1);
    let _ = mmio_write(&mut a, ID, 9 << 24);
    let _ = a.deliver(&Interrupt::fixed(0x40));
    let Outcome::Effect(Effect::Topology(id)) = a.write_msr(MSR_APIC_BASE, APIC_DEFAULT_BASE)
    else {
        panic!("no topology effect")
    };
    assert_eq!(id.mode, ApicMode::Disabled);
    assert_ne!(
        a.write_msr(MSR_APIC_BASE, APIC_DEFAULT_BASE | APIC_BASE_ENABLE),
        Outcome::Gp
    );
    assert_eq!(mmio_read(&a, ID), 1 << 24);
    assert_eq!(mmio_read(&a, SVR), SVR_RESET);
    assert!(a.irr().is_empty());
}

#[test]
fn snapshot_round_trip_both_modes() {
    for x2 in [false, true] {
        let (mut a, clock) = if x2 {
            enabled_x2apic(0x105)
        } else {
            enabled_xapic(5)
        };
        clock.set(1_000);
        let _ = a.deliver(&Interrupt::fixed_level(0x61));
        let _ = a.acknowledge_pending();
        let _ = a.deliver(&Interrupt::fixed(0x91));
        let _ = a.deliver(&Interrupt::fixed(0x31));
        a.set_cr8(2);
        if x2 {
            let _ = a.write_msr(X2_LVT_TIMER, 0x30 | 1 << 17);
            let _ = a.write_msr(X2_TDCR, 0xB);
            let _ = a.write_msr(X2_TMICT, 1_000_000);
            let _ = a.write_msr(X2_ICR, 0x0000_0777_0000_0420);
        } else {
            let _ = mmio_write(&mut a, LDR, 0x0400_0000);
            let _ = mmio_write(&mut a, DFR, 0x0FFF_FFFF);
            let _ = mmio_write(&mut a, LVT_TIMER, 0x30 | 1 << 17);
            let _ = mmio_write(&mut a, TIMER_DIVIDE, 0xB);
            let _ = mmio_write(&mut a, TIMER_INITIAL, 1_000_000);
            let _ = mmio_write(&mut a, ICR_HIGH, 0x0700_0000);
        }
        clock.set(301_000);
        for format in [IdFormat::Legacy, IdFormat::X2ApicApi] {
            let page = a.save_state(format);
            let id = u32::from_le_bytes(page[0x20..0x24].try_into().unwrap());
            match (x2, format) {
                (true, IdFormat::X2ApicApi) => assert_eq!(id, 0x105),
                (true, IdFormat::Legacy) => assert_eq!(id, 0x105 << 24),
                (false, _) => assert_eq!(id, 5 << 24),
            }
            if x2 {
                assert_eq!(
                    u32::from_le_bytes(page[0x310..0x314].try_into().unwrap()),
                    0x777
                );
            }
            assert_eq!(
                u32::from_le_bytes(page[0x390..0x394].try_into().unwrap()),
                700_000
            );
            let (mut b, clock_b) = new_apic(a.config().apic_id);
            clock_b.set(5_000);
            let _ = b.set_apic_base(a.apic_base(), true);
            let ident = b.restore_state(&page, format).unwrap();
            assert_eq!(ident, a.identity());
            assert_eq!(b.pending(), a.pending());
            assert_eq!(b.ppr(), a.ppr());
            assert_eq!(b.next_deadline(), Some(705_000));
            let again = b.save_state(format);
            assert_eq!(&again[..0x390], &page[..0x390]);
            assert_eq!(&again[0x394..], &page[0x394..]);
        }
        if x2 {
            let mut page = a.save_state(IdFormat::X2ApicApi);
            page[0x20] ^= 1;
            let (mut b, _) = new_apic(0x105);
            let _ = b.set_apic_base(a.apic_base(), true);
            assert!(b.restore_state(&page, IdFormat::X2ApicApi).is_err());
            // The legacy format ignores the ID.
            assert!(b.restore_state(&page, IdFormat::Legacy).is_ok());
        }
    }
}

/// A small VM: APICs, topology and IPI routing as a VMM would do it.
struct Vm {
    apics: Vec<LocalApic>,
    topo: Topology,
}

impl Vm {
    fn new(n: u32, x2: bool) -> Self {
        let mut apics = Vec::new();
        let mut topo = Topology::new();
        for i in 0..n {
            let (a, _) = if x2 {
                enabled_x2apic(i)
            } else {
                enabled_xapic(i)
            };
            topo.add(i as usize, a.identity()).unwrap();
            apics.push(a);
        }
        Self { apics, topo }
    }

    fn apply(&mut self, src: usize, out: Outcome) -> VcpuSet {
        let mut targets = VcpuSet::new();
        match out {
            Outcome::Effect(Effect::Topology(id)) => self.topo.update(src, id).unwrap(),
            Outcome::Effect(Effect::SendIpi(ipi)) => {
                self.topo.resolve_ipi(src, &ipi, &mut targets);
                for t in targets.iter() {
                    let _ = self.apics[t].deliver(&ipi.interrupt());
                }
            }
            _ => {}
        }
        targets
    }
}

#[test]
fn physical_and_logical_broadcast_and_multicast_xapic() {
    let mut vm = Vm::new(4, false);
    for i in 0..4 {
        let out = mmio_write(&mut vm.apics[i], LDR, (1 << i) << 24);
        vm.apply(i, out);
    }
    let _ = mmio_write(&mut vm.apics[0], ICR_HIGH, 0xFF00_0000);
    let out = mmio_write(&mut vm.apics[0], ICR_LOW, 0x4051);
    assert_eq!(vm.apply(0, out).len(), 4, "physical broadcast");
    let out = mmio_write(&mut vm.apics[0], ICR_LOW, 0x4852);
    assert_eq!(vm.apply(0, out).len(), 4, "logical broadcast");
    let _ = mmio_write(&mut vm.apics[0], ICR_HIGH, 0x0A00_0000);
    let out = mmio_write(&mut vm.apics[0], ICR_LOW, 0x4853);
    let t = vm.apply(0, out);
    assert_eq!(
        t.iter().collect::<Vec<_>>(),
        vec![1, 3],
        "logical multicast"
    );
    assert_eq!(vm.apics[3].pending(), Some(0x53));
    assert_eq!(vm.apics[2].pending(), Some(0x52));
    // All-excluding-self shorthand.
    let out = mmio_write(&mut vm.apics[2], ICR_LOW, 0x000C_4054);
    assert_eq!(vm.apply(2, out).iter().collect::<Vec<_>>(), vec![0, 1, 3]);
}

#[test]
fn physical_and_logical_broadcast_x2apic() {
    let mut vm = Vm::new(20, true);
    let out = vm.apics[0].write_msr(X2_ICR, 0xFFFF_FFFF_0000_4051);
    assert_eq!(vm.apply(0, out).len(), 20);
    let out = vm.apics[0].write_msr(X2_ICR, 0xFFFF_FFFF_0000_4852);
    assert_eq!(vm.apply(0, out).len(), 20);
    // Cluster 1 (IDs 16-19), members 1 and 3.
    let out = vm.apics[0].write_msr(X2_ICR, 0x0001_000A_0000_4853);
    assert_eq!(vm.apply(0, out).iter().collect::<Vec<_>>(), vec![17, 19]);
    let out = vm.apics[0].write_msr(X2_ICR, 0x0000_0013_0000_4054);
    assert_eq!(vm.apply(0, out).iter().collect::<Vec<_>>(), vec![19]);
}

#[test]
fn timer_arithmetic_saturates_at_the_bounds() {
    let mut c = Config::new(1);
    c.bus_cycle_ns = MAX_BUS_CYCLE_NS;
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut a = LocalApic::new(c, clock.clone()).unwrap();
    let _ = mmio_write(&mut a, SVR, SVR_ENABLE | 0xFF);
    let _ = mmio_write(&mut a, LVT_TIMER, 0x30 | 1 << 17);
    let _ = mmio_write(&mut a, TIMER_DIVIDE, 0xA); // 128, the largest divisor
    let longest = u64::from(u32::MAX) * 128 * MAX_BUS_CYCLE_NS;
    assert_eq!(
        mmio_write(&mut a, TIMER_INITIAL, u32::MAX),
        Outcome::Effect(Effect::Timer(Some(longest)))
    );
    assert_eq!(mmio_read(&a, TIMER_CURRENT), u32::MAX);
    // A clock at the end of time saturates instead of wrapping.
    clock.set(u64::MAX - 1);
    let _ = mmio_write(&mut a, TIMER_INITIAL, u32::MAX);
    assert_eq!(a.next_deadline(), Some(u64::MAX));
    clock.set(u64::MAX);
    let p = a.poll_timer();
    assert!(p.expired);
    assert_eq!(p.next_deadline, Some(u64::MAX));
    // TSC deadline at the largest value.
    let _ = mmio_write(&mut a, LVT_TIMER, 0x30 | 2 << 17);
    assert_eq!(
        a.write_msr(MSR_TSC_DEADLINE, u64::MAX),
        Outcome::Effect(Effect::Timer(Some(u64::MAX)))
    );
}

#[test]
fn cmci_lvt_only_when_configured() {
    // The default, as KVM without MCG_CMCI_P: no CMCI LVT.
    let (mut a, _) = new_apic(1);
    assert_eq!(mmio_read(&a, LVR), 0x0005_0014);
    assert_eq!(mmio_read(&a, LVT_CMCI), 0);
    assert_eq!(a.local_interrupt(Lvt::Cmci), Delivery::Ignored);
    assert_ne!(
        a.write_msr(MSR_APIC_BASE, a.apic_base() | APIC_BASE_EXTD),
        Outcome::Gp
    );
    assert_eq!(a.read_msr(0x82F), MsrRead::Gp);
    assert_eq!(a.write_msr(0x82F, u64::from(LVT_MASKED)), Outcome::Gp);
    // With it: seven LVTs.
    let mut c = Config::new(2);
    c.cmci = true;
    let mut b = LocalApic::new(c, Arc::new(ManualClock::new(0))).unwrap();
    assert_eq!(mmio_read(&b, LVR), 0x0006_0014);
    assert_eq!(mmio_read(&b, LVT_CMCI), LVT_MASKED);
    let _ = mmio_write(&mut b, SVR, SVR_ENABLE | 0xFF);
    let _ = mmio_write(&mut b, LVT_CMCI, 0x44);
    assert_eq!(b.local_interrupt(Lvt::Cmci), Delivery::Accepted);
    assert_ne!(
        b.write_msr(MSR_APIC_BASE, b.apic_base() | APIC_BASE_EXTD),
        Outcome::Gp
    );
    assert_eq!(value(b.read_msr(0x82F)), 0x44);
}

#[test]
fn version_register_matches_kvm() {
    // (cmci, eoi_broadcast_suppression) -> KVM's LVR: 0x50014 by default
    // (read with KVM_GET_LAPIC), bit 24 with a split irqchip and x2APIC in
    // CPUID, 0x60000 with MCG_CMCI_P.
    for (cmci, suppression, lvr) in [
        (false, false, 0x0005_0014),
        (false, true, 0x0105_0014),
        (true, false, 0x0006_0014),
        (true, true, 0x0106_0014),
    ] {
        let mut c = Config::new(1);
        c.cmci = cmci;
        c.eoi_broadcast_suppression = suppression;
        let mut a = LocalApic::new(c, Arc::new(ManualClock::new(0))).unwrap();
        assert_eq!(mmio_read(&a, LVR), lvr);
        // SVR bit 12 is writable only when bit 24 is advertised.
        let _ = mmio_write(&mut a, SVR, SVR_ENABLE | SVR_SUPPRESS_EOI_BROADCAST | 0xFF);
        assert_eq!(
            mmio_read(&a, SVR) & SVR_SUPPRESS_EOI_BROADCAST != 0,
            suppression
        );
        // The version register is read-only: MMIO drops, x2APIC faults.
        let _ = mmio_write(&mut a, LVR, 0);
        assert_eq!(mmio_read(&a, LVR), lvr);
        let _ = a.write_msr(MSR_APIC_BASE, a.apic_base() | APIC_BASE_EXTD);
        assert_eq!(a.write_msr(0x803, 0), Outcome::Gp);
        assert_eq!(value(a.read_msr(0x803)), u64::from(lvr));
    }
}

#[test]
fn x2apic_esr_latches_and_refuses_non_zero_writes() {
    let (mut a, _) = enabled_x2apic(1);
    assert_eq!(a.deliver(&Interrupt::fixed(15)), Delivery::Ignored);
    assert_eq!(value(a.read_msr(X2_ESR)), 0);
    // A non-zero write is #GP (KVM kvm_lapic_reg_write) and latches nothing.
    assert_eq!(a.write_msr(X2_ESR, 1), Outcome::Gp);
    assert_eq!(value(a.read_msr(X2_ESR)), 0);
    assert_eq!(a.write_msr(X2_ESR, 0), Outcome::Done);
    assert_eq!(
        value(a.read_msr(X2_ESR)),
        u64::from(ESR_RECEIVE_ILLEGAL_VECTOR)
    );
    // Sending vector 15 through SELF IPI: "send illegal vector", nothing sent.
    assert_eq!(a.write_msr(X2_SELF_IPI, 15), Outcome::Done);
    assert_eq!(a.write_msr(X2_ESR, 0), Outcome::Done);
    assert_eq!(
        value(a.read_msr(X2_ESR)),
        u64::from(ESR_SEND_ILLEGAL_VECTOR)
    );
    assert_eq!(a.write_msr(X2_ESR, 0), Outcome::Done);
    assert_eq!(value(a.read_msr(X2_ESR)), 0);
    // SELF IPI: bits 31:8 reserved, one past the vector field faults.
    assert!(matches!(
        a.write_msr(X2_SELF_IPI, 0xFF),
        Outcome::Effect(Effect::SelfDelivered(Delivery::Accepted))
    ));
    assert_eq!(a.write_msr(X2_SELF_IPI, 0x1FF), Outcome::Gp);
}

#[test]
fn init_and_startup_ipis_through_the_icr() {
    let mut vm = Vm::new(2, false);
    let _ = mmio_write(&mut vm.apics[0], ICR_HIGH, 1 << 24);
    // INIT assert, level-triggered, to APIC 1.
    let Outcome::Effect(Effect::SendIpi(ipi)) = mmio_write(&mut vm.apics[0], ICR_LOW, 0xC500)
    else {
        panic!("no IPI")
    };
    let mut t = VcpuSet::new();
    assert_eq!(vm.topo.resolve_ipi(0, &ipi, &mut t), 1);
    assert_eq!(vm.apics[1].deliver(&ipi.interrupt()), Delivery::Init);
    // INIT de-assert is ignored.
    let Outcome::Effect(Effect::SendIpi(ipi)) = mmio_write(&mut vm.apics[0], ICR_LOW, 0x8500)
    else {
        panic!("no IPI")
    };
    assert_eq!(vm.apics[1].deliver(&ipi.interrupt()), Delivery::Ignored);
    // SIPI with start page 0x9A.
    let Outcome::Effect(Effect::SendIpi(ipi)) = mmio_write(&mut vm.apics[0], ICR_LOW, 0x469A)
    else {
        panic!("no IPI")
    };
    assert_eq!(
        vm.apics[1].deliver(&ipi.interrupt()),
        Delivery::StartUp(0x9A)
    );
    // The VMM resets the target on INIT; the topology follows.
    let id = vm.apics[1].init_reset();
    vm.topo.update(1, id).unwrap();
    assert!(!vm.topo.identity(1).unwrap().software_enabled);
}

#[test]
fn local_apic_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<LocalApic>();
    assert_send_sync::<Topology>();
}

#[test]
fn spurious_vector_and_outcome_helpers() {
    let (mut a, _) = new_apic(1);
    assert_eq!(a.spurious_vector(), 0xFF);
    let out = mmio_write(&mut a, SVR, SVR_ENABLE | 0x2F);
    assert!(!out.is_gp());
    assert!(matches!(out.effect(), Some(Effect::Topology(id)) if id.software_enabled));
    assert_eq!(a.spurious_vector(), 0x2F);
    assert!(a.write_msr(0x1234, 0).is_gp());
    assert_eq!(Outcome::Done.effect(), None);
}
