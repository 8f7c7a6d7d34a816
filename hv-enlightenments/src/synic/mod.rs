//! The synthetic interrupt controller's data path: the message page slot
//! protocol, event flags, the VMM's queue of messages waiting for a slot,
//! and the connection table that routes a guest's HvPostMessage and
//! HvSignalEvent (TLFS chapter "Inter-Partition Communication"; Linux
//! `hvgdk_mini.h`; KVM `synic_deliver_msg`; openvmm `hv1_emulator` synic).
//!
//! The SynIC registers (SCONTROL, SIMP, SIEFP, SINTx, EOM) are per-VP MSR
//! state in [`crate::msr::Vp`]; the functions here read them and write
//! the guest's pages through [`SynicMemory`]. They run on the thread that
//! owns the target VP's [`Vp`](crate::msr::Vp) (KVM delivers in vCPU
//! context). What they report is an interrupt to raise on that VP
//! ([`SintInterrupt`]: fixed, edge, the SINT's vector, AutoEOI when the
//! SINT says so).
//!
//! ```
//! use hv_enlightenments::cpuid::Privileges;
//! use hv_enlightenments::msr::{self, MsrAction, MsrOutcome, Vp};
//! use hv_enlightenments::synic::{CellMemory, HvMessage, MessageQueue, Posted, SynicMemory};
//!
//! let mut vp = Vp::new(0, Privileges::all())?;
//! let ram = |_gpa: u64| true;
//! let _ = vp.write(msr::HV_X64_MSR_SCONTROL, 1, &ram);
//! let _ = vp.write(msr::HV_X64_MSR_SIMP, 0x1000 | 1, &ram);
//! let _ = vp.write(msr::HV_X64_MSR_SINT2, 0x50, &ram);
//! let mut page = [0u8; 4096];
//! let mem = CellMemory::new(0x1000, &mut page);
//! let mut queue = MessageQueue::new();
//! let msg = HvMessage::new(1, 0, b"first")?;
//! let Posted::Delivered(Some(irq)) = queue.post(&vp, 2, &msg, &mem)? else { unreachable!() };
//! assert_eq!(irq.vector, 0x50); // raise it on this VP
//! assert_eq!(queue.post(&vp, 2, &msg, &mem)?, Posted::Queued); // slot busy
//! // The guest consumes the message, frees the slot, sees msg_pending, writes EOM.
//! mem.write(0x1000 + 2 * 256, &[0; 4])?;
//! let out = vp.write(msr::HV_X64_MSR_EOM, 0, &ram);
//! assert_eq!(out, MsrOutcome::Action(MsrAction::EndOfMessage));
//! assert_eq!(queue.end_of_message(&vp, &mem).iter().next(), Some(irq));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod connection;
mod delivery;
mod hypercall;
mod memory;
mod message;
mod timers;

pub use crate::msr::{SintInterrupt, SintInterrupts};
pub use connection::{
    Connection, Connections, DEFAULT_CONNECTIONS, Error as ConnectionError, PortKind, PortTarget,
    Route,
};
pub use delivery::{
    Error, MessageQueue, PostError, Posted, SlotWrite, WhenBusy, signal_event, write_message,
};
pub use hypercall::{
    CONNECTION_ID_MASK, PostMessage, PostMessageInput, SignalEvent, SynicHypercall, decode_synic,
    post_message_input, signal_event_input,
};
pub use memory::{CellMemory, SynicMemory};
pub use message::{
    Error as MessageError, HV_EVENT_FLAGS_BYTES_PER_SINT, HV_EVENT_FLAGS_PER_SINT,
    HV_MESSAGE_HEADER_SIZE, HV_MESSAGE_PAYLOAD_BYTE_COUNT, HV_MESSAGE_SIZE, HVMSG_HYPERVISOR_BIT,
    HVMSG_NONE, HVMSG_TIMER_EXPIRED, HvMessage, HvMessageHeader, MESSAGE_FLAG_PENDING,
    MESSAGE_FLAGS_OFFSET, MESSAGE_TYPE_OFFSET, TimerMessagePayload, event_flag_position,
    message_slot_offset,
};
pub use timers::process_stimers;
