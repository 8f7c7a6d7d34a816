//! The message slot protocol and event flag delivery into one VP's SynIC
//! pages.
//!
//! A message goes into its SINT's 256-byte slot of the message page only
//! when the slot's `message_type` is [`HVMSG_NONE`]; a busy slot gets its
//! pending flag set instead, and the guest, after freeing the slot, writes
//! EOM so the host tries again (TLFS "Message Buffers"; KVM
//! `synic_deliver_msg`; Linux `vmbus_signal_eom`). An event flag is ORed
//! into the SINT's 2048 flags; only a newly set flag interrupts (TLFS
//! "Event Flag Delivery"; openvmm `GlobalSynic::signal_event`).

use super::memory::SynicMemory;
use super::message::{
    HVMSG_NONE, HvMessage, MESSAGE_FLAG_PENDING, MESSAGE_FLAGS_OFFSET, MESSAGE_TYPE_OFFSET,
    event_flag_position, message_slot_offset,
};
use crate::hypercall::{HvStatus, MemoryError};
use crate::msr::{HV_SINT_COUNT, SintInterrupt, SintInterrupts, Vp};

/// Bytes of `message_type`: the field written last and read first.
const MESSAGE_TYPE_LEN: usize = 4;
/// Tries at a slot the guest frees while the host sets its pending flag
/// (openvmm re-reads the type once after setting the flag).
const SLOT_ATTEMPTS: usize = 2;

/// Why nothing was delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SINT number is 16 or more.
    #[error("SINT {0} does not exist (0..=15)")]
    NoSuchSint(u8),
    /// The event flag number is 2048 or more.
    #[error("event flag {0} does not exist (0..=2047)")]
    NoSuchFlag(u32),
    /// SCONTROL.enable is clear (TLFS; openvmm drops the delivery; KVM
    /// does not look at SCONTROL).
    #[error("SynIC disabled (SCONTROL.enable = 0)")]
    SynicDisabled,
    /// SIMP is disabled (KVM `synic_deliver_msg`: -ENOENT).
    #[error("message page disabled")]
    NoMessagePage,
    /// SIEFP is disabled.
    #[error("event flags page disabled")]
    NoEventFlagsPage,
    /// The SINT is masked (TLFS HvSignalEvent: INVALID_SYNIC_STATE).
    #[error("SINT {0} masked")]
    Masked(u8),
    /// The page could not be read or written.
    #[error(transparent)]
    Memory(#[from] MemoryError),
}

impl Error {
    /// The hypercall status for a guest's HvPostMessage/HvSignalEvent that
    /// failed this way (TLFS: `HV_STATUS_INVALID_SYNIC_STATE` when the
    /// target SynIC, its page or the SINT is not usable; an unknown flag
    /// is `HV_STATUS_INVALID_PARAMETER`).
    pub const fn status(&self) -> HvStatus {
        match self {
            Error::NoSuchFlag(_) => HvStatus::INVALID_PARAMETER,
            _ => HvStatus::INVALID_SYNIC_STATE,
        }
    }
}

/// What to do when the slot is busy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WhenBusy {
    /// Set the slot's pending flag: the guest writes EOM after freeing it
    /// and the caller tries again then (KVM: -EAGAIN).
    SetPending,
    /// Leave the slot alone and drop the message: for periodic timer
    /// ticks, which would otherwise pile up (KVM `stimer_send_msg`
    /// `no_retry`).
    Drop,
}

/// What [`write_message`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SlotWrite {
    /// The message is in the slot; raise this interrupt (`None`: the SINT
    /// is masked, the message waits in the slot without one, as in KVM).
    Delivered(Option<SintInterrupt>),
    /// The slot was busy; its pending flag is set ([`WhenBusy::SetPending`])
    /// or the message was dropped ([`WhenBusy::Drop`]).
    Busy,
}

fn check_sint(sint: u8) -> Result<(), Error> {
    if usize::from(sint) < HV_SINT_COUNT {
        Ok(())
    } else {
        Err(Error::NoSuchSint(sint))
    }
}

fn read_type(mem: &impl SynicMemory, slot: u64) -> Result<u32, Error> {
    let mut ty = [0u8; MESSAGE_TYPE_LEN];
    mem.read(slot + MESSAGE_TYPE_OFFSET, &mut ty)?;
    Ok(u32::from_le_bytes(ty))
}

/// Puts `msg` into SINT `sint`'s slot of `vp`'s message page, or marks the
/// slot pending.
///
/// The slot is written as openvmm's userspace SynIC does it, so a guest
/// running on another CPU never sees a half-written message: the bytes
/// after `message_type` first, `message_type` last. For a busy slot the
/// pending flag is set and the type read again; if the guest freed the
/// slot meanwhile, the message goes in after all.
///
/// ```
/// use hv_enlightenments::cpuid::Privileges;
/// use hv_enlightenments::msr::{self, Vp};
/// use hv_enlightenments::synic::{self, CellMemory, HvMessage, SlotWrite, WhenBusy};
///
/// let mut vp = Vp::new(0, Privileges::all())?;
/// let ram = |_gpa: u64| true;
/// let _ = vp.write(msr::HV_X64_MSR_SCONTROL, 1, &ram);
/// let _ = vp.write(msr::HV_X64_MSR_SIMP, 0x1000 | 1, &ram);
/// let _ = vp.write(msr::HV_X64_MSR_SINT2, 0x50, &ram);
/// let mut page = [0u8; 4096];
/// let mem = CellMemory::new(0x1000, &mut page);
/// let msg = HvMessage::new(1, 0, b"hi")?;
/// let SlotWrite::Delivered(Some(irq)) = synic::write_message(&vp, 2, &msg, &mem, WhenBusy::SetPending)? else {
///     unreachable!()
/// };
/// assert_eq!((irq.sint, irq.vector), (2, 0x50));
/// // The guest has not freed the slot: the next one waits.
/// assert_eq!(synic::write_message(&vp, 2, &msg, &mem, WhenBusy::SetPending)?, SlotWrite::Busy);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_message(
    vp: &Vp,
    sint: u8,
    msg: &HvMessage,
    mem: &impl SynicMemory,
    when_busy: WhenBusy,
) -> Result<SlotWrite, Error> {
    check_sint(sint)?;
    let value = vp.sint(usize::from(sint)).ok_or(Error::NoSuchSint(sint))?;
    if !vp.synic_enabled() {
        return Err(Error::SynicDisabled);
    }
    let page = vp.message_page().ok_or(Error::NoMessagePage)?;
    let slot = page + message_slot_offset(sint);
    let bytes = msg.wire_bytes();
    for _ in 0..SLOT_ATTEMPTS {
        if read_type(mem, slot)? == HVMSG_NONE {
            let (ty, rest) = bytes.split_at(MESSAGE_TYPE_LEN.min(bytes.len()));
            // The pending flag of the new message is the host's to set.
            mem.write(slot + MESSAGE_TYPE_LEN as u64, rest)?;
            mem.write(slot + MESSAGE_TYPE_OFFSET, ty)?;
            return Ok(SlotWrite::Delivered(SintInterrupt::of(sint, value)));
        }
        if when_busy == WhenBusy::Drop {
            return Ok(SlotWrite::Busy);
        }
        mem.fetch_or_u8(slot + MESSAGE_FLAGS_OFFSET, MESSAGE_FLAG_PENDING)?;
        if read_type(mem, slot)? != HVMSG_NONE {
            return Ok(SlotWrite::Busy);
        }
    }
    Ok(SlotWrite::Busy)
}

/// Sets event flag `flag` of SINT `sint` in `vp`'s event flags page.
///
/// `Ok(Some(interrupt))`: the flag was newly set, raise the interrupt.
/// `Ok(None)`: it was already set, the guest has yet to see it: no
/// interrupt (KVM `kvm_hv_synic_set_irq` callers and openvmm raise one
/// only on a 0 -> 1 change). A masked SINT, a disabled SynIC or event
/// flags page is an error and sets nothing (TLFS HvSignalEvent:
/// `HV_STATUS_INVALID_SYNIC_STATE`).
///
/// ```
/// use hv_enlightenments::cpuid::Privileges;
/// use hv_enlightenments::msr::{self, Vp};
/// use hv_enlightenments::synic::{self, CellMemory};
///
/// let mut vp = Vp::new(0, Privileges::all())?;
/// let ram = |_gpa: u64| true;
/// let _ = vp.write(msr::HV_X64_MSR_SCONTROL, 1, &ram);
/// let _ = vp.write(msr::HV_X64_MSR_SIEFP, 0x2000 | 1, &ram);
/// let _ = vp.write(msr::HV_X64_MSR_SINT3, 0x51, &ram);
/// let mut page = [0u8; 4096];
/// let mem = CellMemory::new(0x2000, &mut page);
/// assert!(synic::signal_event(&vp, 3, 9, &mem)?.is_some());
/// assert_eq!(synic::signal_event(&vp, 3, 9, &mem)?, None); // still set
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn signal_event(
    vp: &Vp,
    sint: u8,
    flag: u32,
    mem: &impl SynicMemory,
) -> Result<Option<SintInterrupt>, Error> {
    check_sint(sint)?;
    let (offset, mask) = event_flag_position(sint, flag).ok_or(Error::NoSuchFlag(flag))?;
    let value = vp.sint(usize::from(sint)).ok_or(Error::NoSuchSint(sint))?;
    if !vp.synic_enabled() {
        return Err(Error::SynicDisabled);
    }
    let page = vp.event_flags_page().ok_or(Error::NoEventFlagsPage)?;
    let irq = SintInterrupt::of(sint, value).ok_or(Error::Masked(sint))?;
    let old = mem.fetch_or_u8(page + offset, mask)?;
    Ok((old & mask == 0).then_some(irq))
}

/// Messages the VMM posted to one VP that found their slot busy: at most
/// one per SINT (16 x 256 bytes), sent again when the guest writes EOM.
///
/// A second message for a SINT whose slot is busy and whose queue entry is
/// taken is refused, which a guest's HvPostMessage sees as
/// `HV_STATUS_INSUFFICIENT_BUFFERS` (Linux `hv_post_message` callers
/// retry). Messages for one SINT stay in order: a new message never
/// overtakes a queued one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageQueue {
    pending: [Option<HvMessage>; HV_SINT_COUNT],
}

/// What [`MessageQueue::post`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Posted {
    /// In the slot; raise this interrupt (`None`: SINT masked).
    Delivered(Option<SintInterrupt>),
    /// The slot was busy: queued, with the slot's pending flag set.
    Queued,
}

/// Why [`MessageQueue::post`] refused a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PostError {
    /// The slot is busy and this SINT already has a queued message.
    #[error("SINT {0}: slot busy and a message already queued")]
    InsufficientBuffers(u8),
    /// The SynIC could not take it.
    #[error(transparent)]
    Delivery(#[from] Error),
}

impl PostError {
    /// The hypercall status for a guest's HvPostMessage that failed this
    /// way.
    pub const fn status(&self) -> HvStatus {
        match self {
            PostError::InsufficientBuffers(_) => HvStatus::INSUFFICIENT_BUFFERS,
            PostError::Delivery(e) => e.status(),
        }
    }
}

impl MessageQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Posts `msg` to SINT `sint` of `vp`: into the slot if it is free,
    /// else into the queue (once per SINT).
    ///
    /// ```
    /// use hv_enlightenments::cpuid::Privileges;
    /// use hv_enlightenments::hypercall::HvStatus;
    /// use hv_enlightenments::msr::{self, Vp};
    /// use hv_enlightenments::synic::{CellMemory, HvMessage, MessageQueue, Posted};
    ///
    /// let mut vp = Vp::new(0, Privileges::all())?;
    /// let ram = |_gpa: u64| true;
    /// for (m, v) in [(msr::HV_X64_MSR_SCONTROL, 1), (msr::HV_X64_MSR_SIMP, 0x1001), (msr::HV_X64_MSR_SINT0, 0x40)] {
    ///     let _ = vp.write(m, v, &ram);
    /// }
    /// let mut page = [0u8; 4096];
    /// let mem = CellMemory::new(0x1000, &mut page);
    /// let mut q = MessageQueue::new();
    /// let msg = HvMessage::new(1, 0, &[])?;
    /// assert!(matches!(q.post(&vp, 0, &msg, &mem)?, Posted::Delivered(Some(_))));
    /// assert_eq!(q.post(&vp, 0, &msg, &mem)?, Posted::Queued);
    /// let refused = q.post(&vp, 0, &msg, &mem).unwrap_err();
    /// assert_eq!(refused.status(), HvStatus::INSUFFICIENT_BUFFERS);
    /// // The guest frees the slot (message_type = 0) and writes EOM.
    /// let _ = hv_enlightenments::synic::SynicMemory::write(&mem, 0x1000, &[0; 4]);
    /// assert_eq!(q.end_of_message(&vp, &mem).iter().count(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn post(
        &mut self,
        vp: &Vp,
        sint: u8,
        msg: &HvMessage,
        mem: &impl SynicMemory,
    ) -> Result<Posted, PostError> {
        check_sint(sint)?;
        let entry = self
            .pending
            .get_mut(usize::from(sint))
            .ok_or(Error::NoSuchSint(sint))?;
        if entry.is_some() {
            return Err(PostError::InsufficientBuffers(sint));
        }
        match write_message(vp, sint, msg, mem, WhenBusy::SetPending)? {
            SlotWrite::Delivered(irq) => Ok(Posted::Delivered(irq)),
            SlotWrite::Busy => {
                *entry = Some(*msg);
                Ok(Posted::Queued)
            }
        }
    }

    /// Whether SINT `sint` has a queued message.
    pub fn is_queued(&self, sint: u8) -> bool {
        self.pending
            .get(usize::from(sint))
            .is_some_and(Option::is_some)
    }

    /// The guest wrote EOM: try every queued message again (KVM acks
    /// every SINT on EOM, `synic_set_msr`). Messages whose slot is still
    /// busy stay queued, with the pending flag set again; messages the
    /// SynIC can no longer take (page or SynIC disabled) are dropped.
    pub fn end_of_message(&mut self, vp: &Vp, mem: &impl SynicMemory) -> SintInterrupts {
        let mut out = SintInterrupts::default();
        for sint in 0..HV_SINT_COUNT as u8 {
            if let Some(irq) = self.retry(vp, sint, mem) {
                out.push(irq);
            }
        }
        out
    }

    /// SINT `sint` was acknowledged (an EOI of its vector, KVM
    /// `kvm_hv_synic_send_eoi`): try its queued message again. Returns the
    /// interrupt to raise if it went in.
    pub fn retry(&mut self, vp: &Vp, sint: u8, mem: &impl SynicMemory) -> Option<SintInterrupt> {
        let entry = self.pending.get_mut(usize::from(sint))?;
        let msg = (*entry)?;
        match write_message(vp, sint, &msg, mem, WhenBusy::SetPending) {
            Ok(SlotWrite::Delivered(irq)) => {
                *entry = None;
                irq
            }
            Ok(SlotWrite::Busy) => None,
            // The page or SynIC went away: the message cannot be delivered.
            Err(_) => {
                *entry = None;
                None
            }
        }
    }

    /// Drops every queued message (VP reset).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::Privileges;
    use crate::hypercall::GuestMemoryRead;
    use crate::msr::{
        HV_X64_MSR_SCONTROL, HV_X64_MSR_SIEFP, HV_X64_MSR_SIMP, HV_X64_MSR_SINT0, MsrOutcome,
    };
    use crate::synic::memory::CellMemory;
    use crate::synic::message::HV_MESSAGE_SIZE;

    const SIMP: u64 = 0x1000;
    const SIEFP: u64 = 0x2000;
    const MASKED: u64 = 1 << 16;
    const AUTO_EOI: u64 = 1 << 17;

    fn vp() -> Vp {
        let mut v = Vp::new(0, Privileges::all()).unwrap();
        let ram = |_| true;
        for (m, val) in [
            (HV_X64_MSR_SCONTROL, 1),
            (HV_X64_MSR_SIMP, SIMP | 1),
            (HV_X64_MSR_SIEFP, SIEFP | 1),
        ] {
            assert_ne!(v.write(m, val, &ram), MsrOutcome::InjectGp);
        }
        for n in 0..16u32 {
            let _ = v.write(HV_X64_MSR_SINT0 + n, 0x40 + u64::from(n), &ram);
        }
        v
    }

    fn set_sint(v: &mut Vp, n: u32, val: u64) {
        assert_ne!(
            v.write(HV_X64_MSR_SINT0 + n, val, &|_| true),
            MsrOutcome::InjectGp
        );
    }

    fn slot_type(mem: &CellMemory<'_>, sint: u8) -> u32 {
        read_type(mem, SIMP + message_slot_offset(sint)).unwrap()
    }

    fn free_slot(mem: &CellMemory<'_>, sint: u8) -> u8 {
        let slot = SIMP + message_slot_offset(sint);
        let mut flags = [0u8];
        mem.read(slot + MESSAGE_FLAGS_OFFSET, &mut flags).unwrap();
        mem.write(slot, &[0; 4]).unwrap();
        flags[0]
    }

    #[test]
    fn message_goes_into_a_free_slot_and_interrupts() {
        let v = vp();
        let mut page = [0u8; 0x2000];
        let mem = CellMemory::new(SIMP, &mut page);
        let msg = HvMessage::new(7, 3, &[1, 2, 3]).unwrap();
        assert_eq!(
            write_message(&v, 15, &msg, &mem, WhenBusy::SetPending),
            Ok(SlotWrite::Delivered(Some(SintInterrupt {
                sint: 15,
                vector: 0x4F,
                auto_eoi: false
            })))
        );
        let mut slot = [0u8; HV_MESSAGE_SIZE];
        mem.read(SIMP + 15 * 256, &mut slot).unwrap();
        assert_eq!(&slot[..19], &msg.wire_bytes()[..19]);
        assert_eq!(slot_type(&mem, 14), HVMSG_NONE);
    }

    #[test]
    fn busy_slot_sets_pending_or_drops() {
        let v = vp();
        let mut page = [0u8; 0x2000];
        let mem = CellMemory::new(SIMP, &mut page);
        let msg = HvMessage::new(7, 3, &[]).unwrap();
        let _ = write_message(&v, 1, &msg, &mem, WhenBusy::SetPending).unwrap();
        assert_eq!(
            write_message(&v, 1, &msg, &mem, WhenBusy::Drop),
            Ok(SlotWrite::Busy)
        );
        assert_eq!(free_slot(&mem, 1), 0, "Drop leaves the flag alone");
        let _ = write_message(&v, 1, &msg, &mem, WhenBusy::SetPending).unwrap();
        assert_eq!(
            write_message(&v, 1, &msg, &mem, WhenBusy::SetPending),
            Ok(SlotWrite::Busy)
        );
        assert_eq!(free_slot(&mem, 1), MESSAGE_FLAG_PENDING);
    }

    #[test]
    fn masked_sint_gets_the_message_without_an_interrupt() {
        let mut v = vp();
        set_sint(&mut v, 4, 0x44 | MASKED);
        let mut page = [0u8; 0x2000];
        let mem = CellMemory::new(SIMP, &mut page);
        let msg = HvMessage::new(7, 3, &[]).unwrap();
        assert_eq!(
            write_message(&v, 4, &msg, &mem, WhenBusy::SetPending),
            Ok(SlotWrite::Delivered(None))
        );
        assert_eq!(slot_type(&mem, 4), 7);
    }

    #[test]
    fn refusals() {
        let mut page = [0u8; 0x2000];
        let mem = CellMemory::new(SIMP, &mut page);
        let msg = HvMessage::new(7, 3, &[]).unwrap();
        let v = vp();
        assert_eq!(
            write_message(&v, 16, &msg, &mem, WhenBusy::SetPending),
            Err(Error::NoSuchSint(16))
        );
        let off = Vp::new(0, Privileges::all()).unwrap();
        assert_eq!(
            write_message(&off, 0, &msg, &mem, WhenBusy::SetPending),
            Err(Error::SynicDisabled)
        );
        let mut no_page = vp();
        let _ = no_page.write(HV_X64_MSR_SIMP, 0, &|_| true);
        assert_eq!(
            write_message(&no_page, 0, &msg, &mem, WhenBusy::SetPending),
            Err(Error::NoMessagePage)
        );
        // The page is not backed: an error, nothing written.
        let mut small = [0u8; 16];
        let tiny = CellMemory::new(SIMP, &mut small);
        assert!(matches!(
            write_message(&v, 3, &msg, &tiny, WhenBusy::SetPending),
            Err(Error::Memory(_))
        ));
        assert_eq!(Error::SynicDisabled.status(), HvStatus::INVALID_SYNIC_STATE);
    }

    #[test]
    fn event_flags_interrupt_only_when_newly_set() {
        let mut v = vp();
        set_sint(&mut v, 2, 0x60 | AUTO_EOI);
        let mut page = [0u8; 0x2000];
        let mem = CellMemory::new(SIMP, &mut page);
        let irq = signal_event(&v, 2, 2047, &mem).unwrap().unwrap();
        assert_eq!(
            irq,
            SintInterrupt {
                sint: 2,
                vector: 0x60,
                auto_eoi: true
            }
        );
        assert_eq!(signal_event(&v, 2, 2047, &mem), Ok(None));
        let mut b = [0u8];
        mem.read(SIEFP + 2 * 256 + 255, &mut b).unwrap();
        assert_eq!(b, [0x80]);
        // The guest clears it: the next signal interrupts again.
        mem.write(SIEFP + 2 * 256 + 255, &[0]).unwrap();
        assert!(signal_event(&v, 2, 2047, &mem).unwrap().is_some());
        // One past the last flag, one past the last SINT.
        assert_eq!(
            signal_event(&v, 2, 2048, &mem),
            Err(Error::NoSuchFlag(2048))
        );
        assert_eq!(signal_event(&v, 16, 0, &mem), Err(Error::NoSuchSint(16)));
        assert_eq!(
            Error::NoSuchFlag(2048).status(),
            HvStatus::INVALID_PARAMETER
        );
        set_sint(&mut v, 5, 0x45 | MASKED);
        assert_eq!(signal_event(&v, 5, 0, &mem), Err(Error::Masked(5)));
        mem.read(SIEFP + 5 * 256, &mut b).unwrap();
        assert_eq!(b, [0], "a masked SINT's flag stays clear");
    }

    #[test]
    fn queue_redelivers_on_eom_in_order() {
        let v = vp();
        let mut page = [0u8; 0x2000];
        let mem = CellMemory::new(SIMP, &mut page);
        let mut q = MessageQueue::new();
        let first = HvMessage::new(1, 0, &[1]).unwrap();
        let second = HvMessage::new(2, 0, &[2]).unwrap();
        assert!(matches!(
            q.post(&v, 6, &first, &mem),
            Ok(Posted::Delivered(Some(_)))
        ));
        assert_eq!(q.post(&v, 6, &second, &mem), Ok(Posted::Queued));
        assert!(q.is_queued(6));
        assert_eq!(
            q.post(&v, 6, &first, &mem),
            Err(PostError::InsufficientBuffers(6))
        );
        // EOM with the slot still busy: stays queued.
        assert!(q.end_of_message(&v, &mem).is_empty());
        assert!(q.is_queued(6));
        assert_eq!(free_slot(&mem, 6), MESSAGE_FLAG_PENDING);
        let irqs = q.end_of_message(&v, &mem);
        let mut it = irqs.iter();
        assert_eq!(it.next().map(|i| i.sint), Some(6));
        assert_eq!(it.next(), None);
        assert_eq!(slot_type(&mem, 6), 2);
        assert!(!q.is_queued(6));
        // Other SINTs are independent.
        assert!(matches!(
            q.post(&v, 7, &first, &mem),
            Ok(Posted::Delivered(_))
        ));
        q.clear();
        assert_eq!(q, MessageQueue::new());
    }

    #[test]
    fn queued_message_is_dropped_when_the_page_goes_away() {
        let mut v = vp();
        let mut page = [0u8; 0x2000];
        let mem = CellMemory::new(SIMP, &mut page);
        let mut q = MessageQueue::new();
        let msg = HvMessage::new(1, 0, &[]).unwrap();
        let _ = q.post(&v, 0, &msg, &mem);
        assert_eq!(q.post(&v, 0, &msg, &mem), Ok(Posted::Queued));
        let _ = v.write(HV_X64_MSR_SIMP, 0, &|_| true);
        assert_eq!(q.retry(&v, 0, &mem), None);
        assert!(!q.is_queued(0));
        assert_eq!(q.retry(&v, 16, &mem), None);
    }
}
