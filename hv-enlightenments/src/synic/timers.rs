//! Synthetic timer expiries into the SynIC: [`process_stimers`] runs a
//! VP's timers (kept in its [`Vp`], [`crate::msr::stimer`]) at a
//! reference time and writes the message-mode expiries
//! (`HVMSG_TIMER_EXPIRED`) into the VP's message page.

use super::delivery::{SlotWrite, WhenBusy, write_message};
use super::memory::SynicMemory;
use super::message::TimerMessagePayload;
use crate::msr::stimer::{ExpiryTarget, StimerExpiry};
use crate::msr::{SintInterrupt, Vp};

/// Starts, expires and delivers `vp`'s synthetic timers at reference
/// time `now` (KVM `kvm_hv_process_stimers`): after a
/// [`MsrAction::SyntheticTimersChanged`](crate::msr::MsrAction::SyntheticTimersChanged)
/// or [`MsrAction::EndOfMessage`](crate::msr::MsrAction::EndOfMessage),
/// when the host timer armed for [`Vp::stimer_deadline`] fires, and after
/// [`Vp::sint_eoi`]. Expired message-mode timers write
/// `HVMSG_TIMER_EXPIRED` into the VP's message page through `mem`; the
/// result lists the interrupts to raise on the VP.
///
/// ```
/// use hv_enlightenments::cpuid::Privileges;
/// use hv_enlightenments::msr::{self, MsrAction, MsrOutcome, Vp};
/// use hv_enlightenments::synic::{self, CellMemory};
///
/// let mut vp = Vp::new(0, Privileges::all())?;
/// let ram = |_gpa: u64| true;
/// for (m, v) in [(msr::HV_X64_MSR_SCONTROL, 1), (msr::HV_X64_MSR_SIMP, 0x1001), (msr::HV_X64_MSR_SINT2, 0x52)] {
///     let _ = vp.write(m, v, &ram);
/// }
/// // Linux: stimer0 one-shot, auto-enable, SINT 2; COUNT = now + delta.
/// let _ = vp.write(msr::HV_X64_MSR_STIMER0_CONFIG, (1 << 3) | (2 << 16), &ram);
/// let out = vp.write(msr::HV_X64_MSR_STIMER0_COUNT, 10_000, &ram);
/// assert_eq!(out, MsrOutcome::Action(MsrAction::SyntheticTimersChanged));
/// let mut page = [0u8; 4096];
/// let mem = CellMemory::new(0x1000, &mut page);
/// assert!(synic::process_stimers(&mut vp, 9_000, &mem).is_empty());
/// assert_eq!(vp.stimer_deadline(), Some(10_000)); // arm the host timer
/// let fired = synic::process_stimers(&mut vp, 10_000, &mem);
/// assert_eq!(fired.vectors().next(), Some((0x52, false)));
/// # Ok::<(), msr::Error>(())
/// ```
pub fn process_stimers(vp: &mut Vp, now: u64, mem: &impl SynicMemory) -> StimerExpiry {
    let mut timers = vp.stimers_state();
    let out = timers.process(now, &mut TimerSender { vp, mem });
    vp.set_stimers_state(timers);
    out
}

/// Sends timer messages into the VP's own message page.
struct TimerSender<'a, M> {
    vp: &'a Vp,
    mem: &'a M,
}

impl<M: SynicMemory> ExpiryTarget for TimerSender<'_, M> {
    fn send(
        &mut self,
        index: u8,
        sint: u8,
        expiration: u64,
        now: u64,
        drop_if_busy: bool,
    ) -> Result<Option<SintInterrupt>, ()> {
        let msg = TimerMessagePayload::message(index, expiration, now);
        let when_busy = if drop_if_busy {
            WhenBusy::Drop
        } else {
            WhenBusy::SetPending
        };
        match write_message(self.vp, sint, &msg, self.mem, when_busy) {
            Ok(SlotWrite::Delivered(irq)) => Ok(irq),
            // KVM stimer_send_msg: a dropped periodic tick counts as sent.
            Ok(SlotWrite::Busy) if drop_if_busy => Ok(None),
            Ok(SlotWrite::Busy) | Err(_) => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::{FeaturesEdx, Privileges};
    use crate::hypercall::GuestMemoryRead;
    use crate::msr::{
        HV_X64_MSR_EOM, HV_X64_MSR_SCONTROL, HV_X64_MSR_SIMP, HV_X64_MSR_SINT2,
        HV_X64_MSR_STIMER0_CONFIG, HV_X64_MSR_STIMER0_COUNT, MsrAction, MsrOutcome,
    };
    use crate::synic::{CellMemory, HvMessage};

    const RAM: fn(u64) -> bool = |gpa| gpa < 0x10_0000;

    #[test]
    fn stimer_message_waits_for_eom() {
        let mut v = Vp::with_features(0, Privileges::all(), FeaturesEdx::empty()).unwrap();
        for (m, val) in [
            (HV_X64_MSR_SCONTROL, 1),
            (HV_X64_MSR_SIMP, 0x1001),
            (HV_X64_MSR_SINT2, 0x52),
        ] {
            assert!(!v.write(m, val, &RAM).is_gp());
        }
        let mut page = [0u8; 0x1000];
        let mem = CellMemory::new(0x1000, &mut page);
        // Slot 2 busy with an earlier message.
        let other = HvMessage::new(1, 0, &[]).unwrap();
        let _ = write_message(&v, 2, &other, &mem, WhenBusy::SetPending).unwrap();
        let _ = v.write(HV_X64_MSR_STIMER0_CONFIG, (1 << 3) | (2 << 16), &RAM);
        let _ = v.write(HV_X64_MSR_STIMER0_COUNT, 100, &RAM);
        assert!(process_stimers(&mut v, 100, &mem).is_empty());
        assert!(v.stimer(0).unwrap().message_pending());
        // The guest frees the slot and writes EOM: the expiry goes in.
        SynicMemory::write(&mem, 0x1000 + 2 * 256, &[0; 4]).unwrap();
        assert_eq!(
            v.write(HV_X64_MSR_EOM, 0, &RAM),
            MsrOutcome::Action(MsrAction::EndOfMessage)
        );
        assert!(v.stimers_need_processing(120));
        let out = process_stimers(&mut v, 120, &mem);
        assert_eq!(out.vectors().next(), Some((0x52, false)));
        let mut slot = [0u8; 40];
        GuestMemoryRead::read(&mem, 0x1000 + 2 * 256, &mut slot).unwrap();
        let msg = HvMessage::new(0x8000_0010, 0, &slot[16..40]).ok();
        let payload = msg.and_then(|m| TimerMessagePayload::from_message(&m));
        assert_eq!(
            payload.map(|p| (p.expiration_time.get(), p.delivery_time.get())),
            Some((100, 120))
        );
        // An EOI of the SINT's vector acknowledges it too.
        assert!(v.sint_eoi(0x52));
        assert!(!v.sint_eoi(0x53));
        v.reset();
        assert_eq!(v.stimer_deadline(), None);
    }
}
