//! Multiprocessor start-up in the userspace-irqchip mode: INIT and
//! STARTUP IPIs (SDM Vol. 3 8.4, "MP initialization"), matched to KVM's
//! `kvm_apic_accept_events` and `kvm_vcpu_deliver_sipi_vector`.
//!
//! The local APIC only says `Delivery::Init` / `Delivery::StartUp(v)`; the
//! VMM latches them on the target (like KVM's `pending_events`) and kicks
//! or wakes it. The target's own thread then acts on them before its next
//! entry: INIT resets its APIC and puts it into wait-for-SIPI, where its
//! thread blocks on its condition variable and costs nothing; a SIPI that
//! finds it waiting starts it in real mode at `vector << 12`. A SIPI that
//! finds it running is dropped, as on hardware.
//!
//! In the kernel-irqchip mode KVM does all of this itself (application
//! processors are created `KVM_MP_STATE_UNINITIALIZED`), so none of this
//! module is used there.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use lapic::{ApicIdentity, Delivery};

use crate::error::Error;
use crate::irqchip::VcpuCtx;
use crate::vcpu::{MpState, State, Vcpu};

/// CR0 after INIT: CD | NW | ET (SDM Vol. 3 Table 10-1).
const CR0_INIT: u64 = 0x6000_0010;
/// RFLAGS after INIT: only the reserved bit 1.
const RFLAGS_INIT: u64 = 0x2;
/// Real-mode segment limit.
const REAL_MODE_LIMIT: u32 = 0xFFFF;
/// Code segment type after INIT: execute/read, accessed.
const TYPE_CODE: u8 = 0xB;
/// Data segment type after INIT: read/write, accessed.
const TYPE_DATA: u8 = 0x3;
/// System segment types after INIT: LDT and 16-bit busy TSS.
const TYPE_LDT: u8 = 0x2;
const TYPE_TSS: u8 = 0xB;

/// Latches an INIT or STARTUP delivery on `target` (its lock held as `s`)
/// and makes its thread look. Other deliveries go to the usual
/// kick-or-wake path. Used only where the VMM runs the INIT/SIPI protocol
/// (external guests in the userspace-irqchip mode).
pub fn latch(target: &Vcpu, s: &mut State, d: Delivery) {
    match d {
        Delivery::Init => s.mp.init_pending = true,
        // KVM `__apic_accept_irq`: the SIPI is latched whatever the state;
        // it is dropped later unless the vCPU waits for it.
        Delivery::StartUp(v) => s.mp.sipi_pending = Some(v),
        _ => {
            target.notify_apic_locked(s);
            return;
        }
    }
    target.notify_mp_locked(s);
}

/// Acts on latched INIT/SIPI events and blocks while the vCPU waits for
/// a SIPI; `new_identity` records the APIC identity an INIT reset gave.
/// Returns `false` when `stop()`.
pub(super) fn accept_events(
    cx: &mut VcpuCtx,
    stop: &dyn Fn() -> bool,
    new_identity: impl Fn(ApicIdentity),
) -> Result<bool, Error> {
    let me = cx.me;
    let mut s = me.lock();
    loop {
        if stop() {
            return Ok(false);
        }
        if s.mp.init_pending {
            // KVM: INIT resets the vCPU; an application processor (and,
            // with no firmware to run here, the BSP too) then waits for
            // a SIPI. Pending fixed interrupts are gone with the reset.
            s.mp.init_pending = false;
            s.mp.state = MpState::WaitForSipi;
            new_identity(s.apic.init_reset());
            log::debug!("vCPU {}: INIT, waiting for SIPI", me.index);
        }
        if let Some(v) = s.mp.sipi_pending.take() {
            if s.mp.state == MpState::WaitForSipi {
                s.mp.state = MpState::Runnable;
                drop(s);
                log::debug!("vCPU {}: SIPI vector {v:#x}", me.index);
                return start_at_sipi(cx, v).map(|()| true);
            }
            log::debug!("vCPU {}: SIPI {v:#x} while running: dropped", me.index);
        }
        if s.mp.state == MpState::Runnable {
            return Ok(true);
        }
        s = me.wait_event(s);
    }
}

fn start_at_sipi(cx: &mut VcpuCtx, vector: u8) -> Result<(), Error> {
    let k = &mut *cx.kvm;
    // An I/O exit from before the INIT completes first, or KVM would
    // finish it on the new state.
    k.complete_pending_exit()?;
    let sregs = k.fd().get_sregs().map_err(k.err("KVM_GET_SREGS"))?;
    k.fd()
        .set_sregs(&sipi_sregs(sregs, vector))
        .map_err(k.err("KVM_SET_SREGS (SIPI)"))?;
    k.fd()
        .set_regs(&sipi_regs())
        .map_err(k.err("KVM_SET_REGS (SIPI)"))?;
    k.drop_synced_regs();
    Ok(())
}

fn real_mode_segment(selector: u16, base: u64, type_: u8, s: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit: REAL_MODE_LIMIT,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 0,
        s,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The special registers a STARTUP IPI with `vector` gives: the INIT state
/// (real mode, paging and protection off) with CS.selector = vector << 8
/// and CS.base = vector << 12 (KVM `kvm_vcpu_deliver_sipi_vector`).
pub fn sipi_sregs(mut sregs: kvm_sregs, vector: u8) -> kvm_sregs {
    let data = real_mode_segment(0, 0, TYPE_DATA, 1);
    sregs.cs = real_mode_segment(
        u16::from(vector) << 8,
        u64::from(vector) << 12,
        TYPE_CODE,
        1,
    );
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.ldt = real_mode_segment(0, 0, TYPE_LDT, 0);
    sregs.tr = real_mode_segment(0, 0, TYPE_TSS, 0);
    sregs.gdt.base = 0;
    sregs.gdt.limit = REAL_MODE_LIMIT as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = REAL_MODE_LIMIT as u16;
    sregs.cr0 = CR0_INIT;
    sregs.cr2 = 0;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    // Leave apic_base to the VMM's APIC (it is filtered to userspace).
    sregs.interrupt_bitmap = [0; 4];
    sregs
}

/// The general registers at the SIPI entry: IP = 0, RFLAGS reset value.
pub fn sipi_regs() -> kvm_regs {
    kvm_regs {
        rip: 0,
        rflags: RFLAGS_INIT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu::MpEvents;

    #[test]
    fn sipi_state_matches_the_sdm() {
        let s = sipi_sregs(kvm_sregs::default(), 0x9A);
        assert_eq!(s.cs.selector, 0x9A00);
        assert_eq!(s.cs.base, 0x9A000);
        assert_eq!(s.cs.limit, 0xFFFF);
        assert_eq!(s.cr0 & 1, 0, "protection off");
        assert_eq!(s.cr0 & (1 << 31), 0, "paging off");
        assert_eq!(s.efer, 0);
        assert_eq!(s.ss.base, 0);
        assert_eq!(s.ss.db, 0, "16-bit stack");
        assert_eq!(sipi_regs().rip, 0);
        let s = sipi_sregs(kvm_sregs::default(), 0xFF);
        assert_eq!(s.cs.base, 0xFF000, "the highest start page");
    }

    #[test]
    fn events_pending() {
        let mut e = MpEvents::default();
        assert!(!e.pending());
        e.sipi_pending = Some(1);
        assert!(e.pending());
    }
}
