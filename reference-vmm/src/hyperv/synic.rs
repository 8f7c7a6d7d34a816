//! The SynIC services: synthetic timers run on reference time, messages
//! and events between VPs (HvPostMessage / HvSignalEvent through the
//! connection table), and the end-of-message retry, on hv-enlightenments'
//! state machines. What must be raised on a vCPU comes back as
//! [`SintInterrupt`]s for the irqchip; nothing here knows which irqchip
//! it is.

use hv_enlightenments::hypercall::HvStatus;
use hv_enlightenments::synic::{
    self, Connection, HvMessage, Posted, Route, SintInterrupt, SintInterrupts, SynicHypercall,
};
use vm_memory::GuestMemoryMmap;

use super::HyperV;
use crate::metrics::bump;
use crate::vcpu::Vcpu;

/// Up to 16 SINT interrupts and the direct-mode timer vectors of one pass
/// over a VP's timers, to raise on that VP.
#[derive(Debug, Default)]
pub struct Raise {
    list: Vec<(u8, bool)>,
}

impl Raise {
    /// `(vector, auto_eoi)` to raise.
    pub fn iter(&self) -> impl Iterator<Item = (u8, bool)> + '_ {
        self.list.iter().copied()
    }

    fn push_sints(&mut self, irqs: SintInterrupts) {
        self.list
            .extend(irqs.iter().map(|i: SintInterrupt| (i.vector, i.auto_eoi)));
    }
}

impl HyperV {
    /// Registers a connection the guest may post messages or signal
    /// events on (TLFS "Connection IDs"; a VMM's VMBus-like channels).
    pub fn add_connection(&self, id: u32, c: Connection) -> Result<(), synic::ConnectionError> {
        self.connections().insert(id, c)
    }

    /// Starts, expires and delivers `me`'s synthetic timers at the current
    /// reference time; returns what to raise on `me` and the next expiry
    /// (reference time) to arm a host timer for.
    pub fn run_stimers(&self, me: &Vcpu, mem: &GuestMemoryMmap) -> (Raise, Option<u64>) {
        let now = self.reference_time();
        let mut s = me.lock();
        let Some(vp) = s.vp.as_mut() else {
            return (Raise::default(), None);
        };
        let fired = synic::process_stimers(vp, now, mem);
        let mut out = Raise::default();
        for v in fired.vectors() {
            bump(&me.metrics.stimer_expiries);
            out.list.push(v);
        }
        (out, vp.stimer_deadline())
    }

    /// After an EOM (HV_X64_MSR_EOM): the VMM's queued messages for `me`
    /// retry their slots; what to raise on `me`.
    pub fn end_of_message(&self, me: &Vcpu, mem: &GuestMemoryMmap) -> Raise {
        let mut s = me.lock();
        let st = &mut *s;
        let mut out = Raise::default();
        if let Some(vp) = st.vp.as_ref() {
            out.push_sints(st.messages.end_of_message(vp, mem));
        }
        out
    }

    /// Serves HvPostMessage / HvSignalEvent from the guest: routes `call`
    /// through the connection table and delivers into the target VP's
    /// message or event flags page, calling `raise(target, vector,
    /// auto_eoi)` for the interrupt to raise. Returns the status for the
    /// caller.
    pub fn synic_call(
        &self,
        call: &SynicHypercall,
        vcpus: &[Vcpu],
        mem: &GuestMemoryMmap,
        raise: impl Fn(&Vcpu, u8, bool),
    ) -> HvStatus {
        let route = match self.connections().route(call) {
            Ok(r) => r,
            Err(status) => return status,
        };
        let target = |vp_index: u32| vcpus.iter().find(|v| v.index == vp_index);
        match route {
            Route::Message {
                vp_index,
                sint,
                message,
            } => {
                let Some(t) = target(vp_index) else {
                    return HvStatus::INVALID_VP_INDEX;
                };
                let posted = {
                    let mut s = t.lock();
                    let st = &mut *s;
                    match st.vp.as_ref() {
                        Some(vp) => st.messages.post(vp, sint, &message, mem),
                        None => return HvStatus::INVALID_SYNIC_STATE,
                    }
                };
                match posted {
                    Ok(Posted::Delivered(Some(irq))) => raise(t, irq.vector, irq.auto_eoi),
                    Ok(_) => {}
                    Err(e) => return e.status(),
                }
            }
            Route::Event {
                vp_index,
                sint,
                flag,
            } => {
                let Some(t) = target(vp_index) else {
                    return HvStatus::INVALID_VP_INDEX;
                };
                let signalled = match t.lock().vp.as_ref() {
                    Some(vp) => synic::signal_event(vp, sint, flag, mem),
                    None => return HvStatus::INVALID_SYNIC_STATE,
                };
                match signalled {
                    Ok(Some(irq)) => raise(t, irq.vector, irq.auto_eoi),
                    Ok(None) => {}
                    Err(e) => return e.status(),
                }
            }
            Route::Vmm { port_id } => {
                log::debug!("SynIC call to the VMM's port {port_id:#x}: no handler, dropped");
            }
        }
        HvStatus::SUCCESS
    }

    /// Posts `message` from the VMM to SINT `sint` of `target` (queued
    /// behind a busy slot, re-delivered at the guest's EOM). Returns the
    /// interrupt to raise now, if any.
    pub fn post_message(
        &self,
        target: &Vcpu,
        sint: u8,
        message: &HvMessage,
        mem: &GuestMemoryMmap,
    ) -> Result<Option<(u8, bool)>, synic::PostError> {
        let mut s = target.lock();
        let st = &mut *s;
        let Some(vp) = st.vp.as_ref() else {
            return Err(synic::PostError::Delivery(synic::Error::SynicDisabled));
        };
        Ok(match st.messages.post(vp, sint, message, mem)? {
            Posted::Delivered(Some(irq)) => Some((irq.vector, irq.auto_eoi)),
            _ => None,
        })
    }
}
