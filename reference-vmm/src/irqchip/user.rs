//! Interrupt plumbing between the vCPUs and their local APICs: posted
//! vectors into the IRR, lazy EOI completion, and what lapic asks for after
//! a register write (IPI routing through ipiv, timers, topology).

use ipiv::PendingVectors;
use lapic::{
    DeliveryMode, Destination, DestinationMode, Effect, Interrupt, Outcome, Shorthand, TriggerMode,
    VcpuSet,
};
use vm_memory::{Bytes, GuestAddress};

use crate::metrics::bump;
use crate::platform::msi::{
    MSI_DATA_TRIGGER_LEVEL, is_init_deassert, msi_destination, msi_logical,
};
use crate::vcpu::{State, Vcpu};
use crate::vm::Machine;

/// Lowest vector a fixed interrupt may carry (SDM 10.5.2).
const FIRST_LEGAL_VECTOR: u8 = 16;

/// Moves posted vectors into the APIC's IRR.
pub fn deliver_posted(s: &mut State, pending: PendingVectors) {
    for v in pending.iter() {
        let _ = s.apic.deliver(&Interrupt::fixed(v));
    }
}

/// What became of an armed lazy EOI at an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LazyEoiExit {
    /// Nothing was armed, or the guest had not completed the interrupt:
    /// the bit is clear and lapic disarmed (the guest writes the EOI).
    None,
    /// The guest completed the interrupt lazily; `Some(vector)`: it was
    /// level-triggered, tell the IOAPIC (with no vCPU lock held: the
    /// IOAPIC may deliver to this vCPU).
    Completed(Option<u8>),
    /// The guest has not completed it yet, cannot take an interrupt now
    /// (IF=0, or the interrupt KVM_INTERRUPT queued is still being
    /// delivered, after which its handler runs with IF=0) and another
    /// interrupt waits behind it: the bit stays set and lapic stays armed,
    /// and the next entry asks KVM to exit once the guest can take an
    /// interrupt again (after its IRET), where the lazy EOI is seen and
    /// the waiting one injected. Disarming instead would cost the guest an
    /// EOI write for every interrupt that arrives during a handler.
    Held,
}

/// After an exit: if lazy EOI was armed, read `apic_assist` bit 0 and let
/// lapic complete the EOI the guest skipped, keep it armed
/// ([`LazyEoiExit::Held`], only while the guest cannot take an interrupt:
/// `can_take` false), or clear the
/// bit and disarm.
pub fn complete_lazy_eoi(m: &Machine, me: &Vcpu, s: &mut State, can_take: bool) -> LazyEoiExit {
    if !s.apic.lazy_eoi_armed() {
        return LazyEoiExit::None;
    }
    let page = s.vp.as_ref().and_then(|vp| vp.vp_assist_page());
    let word = page.and_then(|p| m.mem.read_obj::<u32>(GuestAddress(p)).ok().map(|v| (p, v)));
    let cleared = match word {
        Some((_, v)) if v & 1 != 0 && !can_take && !s.apic.irr().is_empty() => {
            return LazyEoiExit::Held;
        }
        Some((p, v)) => {
            if v & 1 != 0 {
                let _ = m.mem.write_obj(v & !1, GuestAddress(p));
            }
            v & 1 == 0
        }
        None => false,
    };
    // lapic arms lazy EOI only for an edge-triggered vector (KVM's rule),
    // but the same vector may be accepted again as level-triggered while
    // it is in service (the TMR follows the last acceptance): the EOI
    // then goes to the IOAPIC like any other.
    match s.apic.complete_lazy_eoi(cleared) {
        Some(eoi) => {
            bump(&me.metrics.eoi_lazy);
            LazyEoiExit::Completed(eoi.notify_ioapic.then_some(eoi.vector))
        }
        None => LazyEoiExit::None,
    }
}

/// Clears `apic_assist` bit 0 (a held lazy EOI that lapic no longer has
/// armed, e.g. after an EOI write).
pub fn clear_lazy_eoi_bit(m: &Machine, s: &State) {
    if let Some(p) = s.vp.as_ref().and_then(|vp| vp.vp_assist_page()) {
        if let Ok(v) = m.mem.read_obj::<u32>(GuestAddress(p)) {
            let _ = m.mem.write_obj(v & !1, GuestAddress(p));
        }
    }
}

/// Applies what lapic asked for after a register write. `false`: #GP.
pub fn apply_apic_outcome(m: &Machine, me: &Vcpu, o: Outcome) -> bool {
    match o {
        Outcome::Done => true,
        Outcome::Gp => false,
        Outcome::Effect(e) => {
            match e {
                Effect::SendIpi(ipi) => {
                    let mut targets = VcpuSet::new();
                    m.topology()
                        .resolve_ipi(me.index as usize, &ipi, &mut targets);
                    let irq = ipi.interrupt();
                    let fixed = matches!(
                        irq.delivery_mode,
                        DeliveryMode::Fixed | DeliveryMode::LowestPriority
                    ) && irq.vector >= FIRST_LEGAL_VECTOR;
                    deliver_to(m, &targets, &irq, fixed, || bump(&me.metrics.ipis_posted));
                }
                Effect::SelfDelivered(_) => {}
                Effect::Eoi(e) => {
                    bump(&me.metrics.eoi_msr);
                    if e.notify_ioapic {
                        m.broadcast_eoi(e.vector);
                    }
                }
                Effect::Timer(Some(deadline)) => m.timers.arm(me.index as usize, deadline),
                Effect::Timer(None) => m.timers.disarm(me.index as usize),
                Effect::Topology(id) => {
                    if let Err(e) = m.topology_mut().update(me.index as usize, id) {
                        log::warn!("vCPU {}: topology update: {e}", me.index);
                    }
                }
            }
            true
        }
    }
}

/// Delivers an MSI-format message (`address`: bits 19:12 destination ID,
/// 11:5 extended ID, 2 logical mode, 63:40 the X2APIC_API high ID bits;
/// `data`: 7:0 vector, 10:8 delivery mode, 14 level, 15 trigger).
/// Userspace irqchip: resolved against the APIC topology and delivered to
/// each target's lapic (fixed vectors through the posted-interrupt path),
/// which is notified. Kernel irqchip: `KVM_SIGNAL_MSI`.
pub fn deliver_msi(m: &Machine, address: u64, data: u32) {
    if let Some(k) = m.kernel.as_ref() {
        crate::irqchip::kernel::signal_msi(k, address, data);
        return;
    }
    let irq = Interrupt {
        vector: data as u8,
        delivery_mode: DeliveryMode::from_reg(data),
        trigger_mode: if data & MSI_DATA_TRIGGER_LEVEL != 0 {
            TriggerMode::Level
        } else {
            TriggerMode::Edge
        },
        // KVM `kvm_set_msi_irq` asserts every MSI; only an INIT level
        // de-assert is dropped (a no-op since the P4, SDM 10.6.1), in both
        // irqchips (`kirq::signal_msi` does not send it).
        level_assert: !is_init_deassert(data),
    };
    let dest = Destination {
        mode: if msi_logical(address) {
            DestinationMode::Logical
        } else {
            DestinationMode::Physical
        },
        shorthand: Shorthand::None,
        id: msi_destination(address),
    };
    let mut targets = VcpuSet::new();
    m.topology().resolve(None, dest, &irq, &mut targets);
    let fixed = matches!(
        irq.delivery_mode,
        DeliveryMode::Fixed | DeliveryMode::LowestPriority
    ) && irq.vector >= FIRST_LEGAL_VECTOR
        && irq.trigger_mode == TriggerMode::Edge;
    deliver_to(m, &targets, &irq, fixed, || {});
}

/// Delivers `irq` to every vCPU in `targets` (userspace irqchip), calling
/// `each` once per existing target. `posted`: a fixed edge vector, which
/// goes through the posted-interrupt path; anything else is delivered to
/// the lapic under the target's lock (NMIs latched for `KVM_NMI`, INIT
/// and SIPI latched for the MP protocol when the VMM runs it).
fn deliver_to(
    m: &Machine,
    targets: &VcpuSet,
    irq: &Interrupt,
    posted: bool,
    mut each: impl FnMut(),
) {
    for t in targets.iter() {
        let Some(tv) = m.vcpus.get(t) else { continue };
        each();
        if posted {
            tv.post(irq.vector);
        } else {
            let mut s = tv.lock();
            match s.apic.deliver(irq) {
                lapic::Delivery::Nmi => tv.latch_nmi_locked(&mut s),
                d if m.user_mp => crate::irqchip::mp::latch(tv, &mut s, d),
                _ => tv.notify_apic_locked(&mut s),
            }
        }
    }
}
