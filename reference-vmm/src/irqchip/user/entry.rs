//! The userspace irqchip around each `KVM_RUN`: posted vectors into the
//! IRR, NMIs, interrupt injection
//! ([`crate::kvm::vcpu::KvmVcpu::queue_interrupt`]) and the interrupt
//! window, CR8 both ways, lazy EOI armed at entry and completed at exit
//! (HLT, which KVM leaves to userspace without an in-kernel APIC, is
//! [`mod@super::halt`]).

use std::sync::atomic::{AtomicU32, Ordering};

use ipiv::PendingVectors;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory};

use super::UserIrqchip;
use crate::error::Error;
use crate::irqchip::VcpuCtx;
use crate::metrics::bump;
use crate::vcpu::{State, Vcpu};

/// `apic_assist` bit 0 in the VP assist page: "the guest may skip the EOI
/// of the interrupt in service" (TLFS 10.3.5).
const APIC_ASSIST_NO_EOI: u32 = 1;

/// Runs `f` on the `apic_assist` word (offset 0) of the VP assist page at
/// guest address `page`, as an atomic in guest memory (`None`: not guest
/// RAM). One region lookup and no copy: the word is read at every exit
/// while a lazy EOI is armed and written at every arming, and on a vCPU
/// just woken from HLT vm-memory's generic `read_obj`/`write_obj` cost
/// about 700 and 280 TSC cycles here, a load and an atomic AND about 160
/// and 50. The guest's vCPU is out of guest mode while its own thread
/// does this (`KVM_RUN` orders it), so relaxed ordering is enough. Guest
/// memory here has no dirty bitmap for these writes to skip.
fn with_assist_word<R>(
    mem: &GuestMemoryMmap,
    page: u64,
    f: impl FnOnce(&AtomicU32) -> R,
) -> Option<R> {
    let slice = mem.get_slice(GuestAddress(page), size_of::<u32>()).ok()?;
    // The page's address is the MSR's bits 63:12, so the word is aligned;
    // a page at the end of a region still has its first word inside.
    slice.get_atomic_ref::<AtomicU32>(0).ok().map(f)
}

/// Moves posted vectors into the APIC's IRR.
pub fn deliver_posted(s: &mut State, pending: PendingVectors) {
    for v in pending.iter() {
        let _ = s.apic.deliver(&lapic::Interrupt::fixed(v));
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
/// `can_take` false), or clear the bit and disarm.
pub fn complete_lazy_eoi(
    mem: &GuestMemoryMmap,
    me: &Vcpu,
    s: &mut State,
    can_take: bool,
) -> LazyEoiExit {
    if !s.apic.lazy_eoi_armed() {
        return LazyEoiExit::None;
    }
    let page = s.vp.as_ref().and_then(|vp| vp.vp_assist_page());
    let hold = !can_take && !s.apic.irr().is_empty();
    let word = page.and_then(|p| {
        with_assist_word(mem, p, |w| {
            let v = w.load(Ordering::Relaxed);
            let pending = v & APIC_ASSIST_NO_EOI != 0;
            if pending && !hold {
                w.fetch_and(!APIC_ASSIST_NO_EOI, Ordering::Relaxed);
            }
            pending
        })
    });
    let cleared = match word {
        Some(true) if hold => return LazyEoiExit::Held,
        Some(pending) => !pending,
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
fn clear_lazy_eoi_bit(mem: &GuestMemoryMmap, s: &State) {
    if let Some(p) = s.vp.as_ref().and_then(|vp| vp.vp_assist_page()) {
        with_assist_word(mem, p, |w| {
            w.fetch_and(!APIC_ASSIST_NO_EOI, Ordering::Relaxed)
        });
    }
}

impl UserIrqchip {
    /// See [`Irqchip::prepare_entry`](crate::irqchip::Irqchip::prepare_entry).
    pub(in crate::irqchip) fn prepare_entry(
        &self,
        cx: &mut VcpuCtx,
        s: &mut State,
        posted: PendingVectors,
        exception: bool,
    ) -> Result<(), Error> {
        let me = cx.me;
        // KVM queues NMIs itself and injects each when NMIs are unblocked
        // (x86.c `process_nmi`, at most one pending behind one in service).
        for _ in 0..std::mem::take(&mut s.nmi_pending) {
            crate::profile::vcpu_ioctl(|| cx.kvm.fd().nmi()).map_err(cx.kvm.err("KVM_NMI"))?;
            bump(&me.metrics.nmis);
        }
        deliver_posted(s, posted);
        let run = cx.kvm.run_area();
        // KVM loads CR8 from kvm_run at every entry without an in-kernel
        // APIC (x86.c `kvm_arch_vcpu_ioctl_run`): TPR[7:4] = CR8[3:0].
        run.cr8 = s.apic.cr8();
        let can_inject = run.ready_for_interrupt_injection != 0 && run.if_flag != 0 && !exception;
        match s.apic.pending() {
            Some(v) if can_inject => {
                if crate::profile::vcpu_ioctl(|| cx.kvm.queue_interrupt(v))? {
                    bump(&me.metrics.injections_synced);
                }
                s.apic.acknowledge(v);
                bump(&me.metrics.injections);
                cx.local.injected = true;
                cx.kvm.run_area().request_interrupt_window = u8::from(s.apic.pending().is_some());
            }
            Some(_) => cx.kvm.run_area().request_interrupt_window = 1,
            None => cx.kvm.run_area().request_interrupt_window = 0,
        }
        if std::mem::take(&mut cx.local.lazy_held) {
            if s.apic.lazy_eoi_armed() {
                // Exit as soon as the guest can take the waiting interrupt.
                cx.kvm.run_area().request_interrupt_window = 1;
                return Ok(());
            }
            clear_lazy_eoi_bit(cx.mem, s);
        }
        self.arm_lazy_eoi(cx.mem, s);
        Ok(())
    }

    /// Sets `apic_assist` bit 0 when lapic says the in-service interrupt
    /// may be completed without an EOI write (DESIGN.md "Lazy EOI").
    fn arm_lazy_eoi(&self, mem: &GuestMemoryMmap, s: &mut State) {
        // lapic first: most entries have nothing to arm, and then the VP
        // state (cold after a halt) is not touched.
        if !self.lazy_eoi || !s.apic.arm_lazy_eoi() {
            return;
        }
        let page = s.vp.as_ref().and_then(|vp| vp.vp_assist_page());
        let shown = page.is_some_and(|p| {
            with_assist_word(mem, p, |w| w.store(APIC_ASSIST_NO_EOI, Ordering::Relaxed)).is_some()
        });
        if !shown {
            // No VP assist page, or not guest RAM: the guest cannot see
            // the bit, so do not arm.
            let _ = s.apic.complete_lazy_eoi(false);
        }
    }

    /// See [`Irqchip::sync_after_exit`](crate::irqchip::Irqchip::sync_after_exit):
    /// the lazy EOI and the guest's CR8, before anything else touches the
    /// APIC.
    pub(in crate::irqchip) fn sync_after_exit(
        &self,
        cx: &mut VcpuCtx,
        s: &mut State,
        posted: PendingVectors,
    ) -> Option<u8> {
        // KVM's `ready_for_interrupt_injection` is 0 while an interrupt
        // queued with KVM_INTERRUPT has not been delivered yet (x86.c
        // `kvm_cpu_accept_dm_intr`).
        let run = cx.kvm.run_area();
        let can_take = run.if_flag != 0 && run.ready_for_interrupt_injection != 0;
        let eoi = match complete_lazy_eoi(cx.mem, cx.me, s, can_take) {
            LazyEoiExit::Completed(ioapic) => ioapic,
            LazyEoiExit::Held => {
                cx.local.lazy_held = true;
                None
            }
            LazyEoiExit::None => None,
        };
        deliver_posted(s, posted);
        // KVM stores CR8 in kvm_run at every exit; a `mov cr8` that lowers
        // it exits with KVM_EXIT_SET_TPR, one that raises it is seen here
        // at the next exit. Unchanged: TPR[3:0] stay.
        let cr8 = cx.kvm.run_area().cr8;
        if cr8 != s.apic.cr8() {
            s.apic.set_cr8(cr8);
        }
        eoi
    }
}
