//! The userspace irqchip's INIT/SIPI protocol on the vCPU thread: acting
//! on latched INIT and STARTUP events (`irqchip::mp` latches them) and
//! starting the vCPU in real mode at the SIPI vector.

use super::{MpState, Runner, kvm_err};
use crate::error::Error;
use crate::irqchip::mp::{sipi_regs, sipi_sregs};

impl Runner<'_> {
    /// Acts on latched INIT/SIPI events and blocks while the vCPU waits for
    /// a SIPI. Returns `false` when the machine is stopping.
    pub(crate) fn accept_mp_events(&mut self) -> Result<bool, Error> {
        let me = self.me;
        let mut s = me.lock();
        loop {
            if self.m.stopping() {
                return Ok(false);
            }
            if s.mp.init_pending {
                // KVM: INIT resets the vCPU; an application processor (and,
                // with no firmware to run here, the BSP too) then waits for
                // a SIPI. Pending fixed interrupts are gone with the reset.
                s.mp.init_pending = false;
                s.mp.state = MpState::WaitForSipi;
                let id = s.apic.init_reset();
                if let Err(e) = self.m.topology_mut().update(me.index as usize, id) {
                    log::warn!("vCPU {}: topology update after INIT: {e}", me.index);
                }
                log::debug!("vCPU {}: INIT, waiting for SIPI", me.index);
            }
            if let Some(v) = s.mp.sipi_pending.take() {
                if s.mp.state == MpState::WaitForSipi {
                    s.mp.state = MpState::Runnable;
                    drop(s);
                    log::debug!("vCPU {}: SIPI vector {v:#x}", me.index);
                    return self.start_at_sipi(v).map(|()| true);
                }
                log::debug!("vCPU {}: SIPI {v:#x} while running: dropped", me.index);
            }
            if s.mp.state == MpState::Runnable {
                return Ok(true);
            }
            s = me.wait_event(s);
        }
    }

    fn start_at_sipi(&mut self, vector: u8) -> Result<(), Error> {
        let idx = self.me.index;
        // An I/O exit from before the INIT completes first, or KVM would
        // finish it on the new state.
        self.complete_pending_exit()?;
        let sregs = self.fd.get_sregs().map_err(kvm_err(idx, "KVM_GET_SREGS"))?;
        self.fd
            .set_sregs(&sipi_sregs(sregs, vector))
            .map_err(kvm_err(idx, "KVM_SET_SREGS (SIPI)"))?;
        self.fd
            .set_regs(&sipi_regs())
            .map_err(kvm_err(idx, "KVM_SET_REGS (SIPI)"))?;
        // The synced copies in kvm_run are stale now.
        self.fd.get_kvm_run().kvm_dirty_regs = 0;
        Ok(())
    }
}
