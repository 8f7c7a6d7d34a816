//! The SynIC message page and event flags page layouts (TLFS "SynIC
//! Message Page", "SynIC Event Flags Page"; Linux `hvgdk_mini.h`:
//! `struct hv_message_header`, `struct hv_message`, `struct
//! hv_message_page`, `struct hv_timer_message_payload`).

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::HV_PAGE_SIZE;
use crate::msr::HV_SINT_COUNT;

/// Bytes of one message slot (`HV_MESSAGE_SIZE`).
pub const HV_MESSAGE_SIZE: usize = 256;
/// Bytes of a message payload (`HV_MESSAGE_PAYLOAD_BYTE_COUNT`).
pub const HV_MESSAGE_PAYLOAD_BYTE_COUNT: usize = 240;
/// Bytes of a message header.
pub const HV_MESSAGE_HEADER_SIZE: usize = HV_MESSAGE_SIZE - HV_MESSAGE_PAYLOAD_BYTE_COUNT;
/// Event flags per SINT: 256 bytes of the event flags page each
/// (`HV_EVENT_FLAGS_COUNT`, 2048).
pub const HV_EVENT_FLAGS_PER_SINT: u32 = (HV_PAGE_SIZE / HV_SINT_COUNT * 8) as u32;
/// Bytes of one SINT's event flags.
pub const HV_EVENT_FLAGS_BYTES_PER_SINT: usize = HV_PAGE_SIZE / HV_SINT_COUNT;

/// A free slot (`HVMSG_NONE`): the host may write a message there.
pub const HVMSG_NONE: u32 = 0;
/// A synthetic timer expired (`HVMSG_TIMER_EXPIRED`); payload
/// [`TimerMessagePayload`].
pub const HVMSG_TIMER_EXPIRED: u32 = 0x8000_0010;
/// Message types with bit 31 set are the hypervisor's: a guest may not
/// post them (TLFS HvPostMessage: `HV_STATUS_INVALID_PARAMETER`).
pub const HVMSG_HYPERVISOR_BIT: u32 = 1 << 31;

/// Offset of `message_type` in a slot.
pub const MESSAGE_TYPE_OFFSET: u64 = 0;
/// Offset of `message_flags` in a slot.
pub const MESSAGE_FLAGS_OFFSET: u64 = 5;
/// `message_flags` bit 0: another message is pending for this slot; the
/// guest writes EOM after freeing the slot (`hv_message_flags.msg_pending`).
pub const MESSAGE_FLAG_PENDING: u8 = 1 << 0;

/// Offset of SINT `sint`'s slot in the message page (`sint_message[sint]`).
pub const fn message_slot_offset(sint: u8) -> u64 {
    sint as u64 * HV_MESSAGE_SIZE as u64
}

/// Byte offset and bit of event flag `flag` of SINT `sint` in the event
/// flags page: byte `sint * 256 + flag / 8`, bit `flag % 8` (TLFS "SynIC
/// Event Flags Page"). `None` when `flag` is 2048 or more or `sint` is
/// 16 or more.
pub const fn event_flag_position(sint: u8, flag: u32) -> Option<(u64, u8)> {
    if sint as usize >= HV_SINT_COUNT || flag >= HV_EVENT_FLAGS_PER_SINT {
        return None;
    }
    let byte = sint as u64 * HV_EVENT_FLAGS_BYTES_PER_SINT as u64 + (flag / 8) as u64;
    Some((byte, 1 << (flag % 8)))
}

/// `struct hv_message_header`, 16 bytes, little-endian.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct HvMessageHeader {
    /// The message type; [`HVMSG_NONE`] marks a free slot.
    pub message_type: U32,
    /// Payload bytes that are meaningful, at most 240.
    pub payload_size: u8,
    /// Bit 0: [`MESSAGE_FLAG_PENDING`].
    pub message_flags: u8,
    /// Reserved, zero.
    pub reserved: [u8; 2],
    /// The sender, or the port id of the receiving port (bits 23:0).
    pub sender: U64,
}

/// `struct hv_message`: one 256-byte slot of the message page.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvMessage {
    /// The header.
    pub header: HvMessageHeader,
    /// The payload; bytes past `payload_size` are not meaningful.
    pub payload: [u8; HV_MESSAGE_PAYLOAD_BYTE_COUNT],
}

impl Default for HvMessage {
    fn default() -> Self {
        Self::new_zeroed()
    }
}

/// Why a message could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The payload is longer than 240 bytes.
    #[error("payload of {0} bytes exceeds the {HV_MESSAGE_PAYLOAD_BYTE_COUNT} bytes of a message")]
    PayloadTooLarge(usize),
    /// [`HVMSG_NONE`] would mark the slot free.
    #[error("message type 0 (HVMSG_NONE) marks a free slot")]
    NoneType,
}

impl HvMessage {
    /// A message of `message_type` from `sender` carrying `payload`.
    ///
    /// ```
    /// use hv_enlightenments::synic::{HvMessage, MessageError};
    ///
    /// let msg = HvMessage::new(1, 7, b"hello")?;
    /// assert_eq!((msg.message_type(), msg.payload_size()), (1, 5));
    /// assert_eq!(HvMessage::new(1, 7, &[0; 241]), Err(MessageError::PayloadTooLarge(241)));
    /// # Ok::<(), MessageError>(())
    /// ```
    pub fn new(message_type: u32, sender: u64, payload: &[u8]) -> Result<Self, Error> {
        if message_type == HVMSG_NONE {
            return Err(Error::NoneType);
        }
        let mut msg = Self::default();
        let dst = msg
            .payload
            .get_mut(..payload.len())
            .ok_or(Error::PayloadTooLarge(payload.len()))?;
        dst.copy_from_slice(payload);
        msg.header.message_type = U32::new(message_type);
        // payload.len() <= 240 here.
        msg.header.payload_size = payload.len() as u8;
        msg.header.sender = U64::new(sender);
        Ok(msg)
    }

    /// The message type.
    pub fn message_type(&self) -> u32 {
        self.header.message_type.get()
    }

    /// The payload size as stored (the guest's bound is 240).
    pub fn payload_size(&self) -> u8 {
        self.header.payload_size
    }

    /// Whether the pending flag is set.
    pub fn pending(&self) -> bool {
        self.header.message_flags & MESSAGE_FLAG_PENDING != 0
    }

    /// The bytes the host writes into a free slot: the header and the
    /// meaningful payload (KVM `synic_deliver_msg` writes `sizeof(header)
    /// + payload_size`), at most the whole slot.
    pub fn wire_bytes(&self) -> &[u8] {
        let len = HV_MESSAGE_HEADER_SIZE
            + usize::from(self.header.payload_size).min(HV_MESSAGE_PAYLOAD_BYTE_COUNT);
        let bytes = self.as_bytes();
        bytes.get(..len).unwrap_or(bytes)
    }
}

/// `struct hv_timer_message_payload`: what [`HVMSG_TIMER_EXPIRED`]
/// carries, 24 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TimerMessagePayload {
    /// Which timer (0..=3).
    pub timer_index: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// When the timer expired (reference time, 100 ns).
    pub expiration_time: U64,
    /// When the message was delivered (reference time, 100 ns).
    pub delivery_time: U64,
}

impl TimerMessagePayload {
    /// The timer expiry message (KVM `stimer_prepare_msg`,
    /// `stimer_send_msg`): sender 0, payload size 24.
    pub fn message(timer_index: u8, expiration_time: u64, delivery_time: u64) -> HvMessage {
        let payload = Self {
            timer_index: U32::new(u32::from(timer_index)),
            reserved: U32::new(0),
            expiration_time: U64::new(expiration_time),
            delivery_time: U64::new(delivery_time),
        };
        let mut msg = HvMessage::default();
        msg.header.message_type = U32::new(HVMSG_TIMER_EXPIRED);
        msg.header.payload_size = core::mem::size_of::<Self>() as u8;
        if let Some(dst) = msg.payload.get_mut(..core::mem::size_of::<Self>()) {
            dst.copy_from_slice(payload.as_bytes());
        }
        msg
    }

    /// The payload of a timer message, if `msg` is one.
    pub fn from_message(msg: &HvMessage) -> Option<Self> {
        if msg.message_type() != HVMSG_TIMER_EXPIRED {
            return None;
        }
        Self::read_from_prefix(&msg.payload).ok().map(|(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layouts_match_hvgdk_mini() {
        assert_eq!(core::mem::size_of::<HvMessageHeader>(), 16);
        assert_eq!(core::mem::size_of::<HvMessage>(), HV_MESSAGE_SIZE);
        assert_eq!(core::mem::size_of::<TimerMessagePayload>(), 24);
        assert_eq!(HV_MESSAGE_SIZE * HV_SINT_COUNT, HV_PAGE_SIZE);
        assert_eq!(HV_EVENT_FLAGS_PER_SINT, 2048);
        let mut m = HvMessage::new(0x1234_5678, 0xAABB, &[9; 3]).unwrap();
        m.header.message_flags = MESSAGE_FLAG_PENDING;
        let b = m.as_bytes();
        assert_eq!(&b[0..4], &[0x78, 0x56, 0x34, 0x12]);
        assert_eq!(b[4], 3);
        assert_eq!(b[MESSAGE_FLAGS_OFFSET as usize], 1);
        assert_eq!(&b[8..10], &[0xBB, 0xAA]);
        assert_eq!(&b[16..19], &[9, 9, 9]);
        assert_eq!(m.wire_bytes().len(), 19);
    }

    #[test]
    fn payload_bound_one_past() {
        assert!(HvMessage::new(1, 0, &[0; HV_MESSAGE_PAYLOAD_BYTE_COUNT]).is_ok());
        assert_eq!(
            HvMessage::new(1, 0, &[0; HV_MESSAGE_PAYLOAD_BYTE_COUNT + 1]),
            Err(Error::PayloadTooLarge(241))
        );
        assert_eq!(HvMessage::new(HVMSG_NONE, 0, &[]), Err(Error::NoneType));
        // A stored size past 240 (never built here) still writes one slot.
        let mut m = HvMessage::default();
        m.header.payload_size = 255;
        assert_eq!(m.wire_bytes().len(), HV_MESSAGE_SIZE);
    }

    #[test]
    fn event_flag_positions() {
        assert_eq!(event_flag_position(0, 0), Some((0, 1)));
        assert_eq!(event_flag_position(2, 9), Some((2 * 256 + 1, 2)));
        assert_eq!(event_flag_position(15, 2047), Some((4095, 0x80)));
        assert_eq!(event_flag_position(15, 2048), None);
        assert_eq!(event_flag_position(16, 0), None);
        assert_eq!(message_slot_offset(15), 3840);
    }

    #[test]
    fn timer_message_matches_kvm() {
        let m = TimerMessagePayload::message(2, 100, 150);
        assert_eq!(m.message_type(), 0x8000_0010);
        assert_eq!(m.payload_size(), 24);
        let p = TimerMessagePayload::from_message(&m).unwrap();
        assert_eq!(
            (
                p.timer_index.get(),
                p.expiration_time.get(),
                p.delivery_time.get()
            ),
            (2, 100, 150)
        );
        assert_eq!(
            TimerMessagePayload::from_message(&HvMessage::new(1, 0, &[]).unwrap()),
            None
        );
    }

    proptest! {
        #[test]
        fn message_round_trips_through_bytes(ty in 1u32.., sender in any::<u64>(), len in 0usize..=240, fill in any::<u8>()) {
            let payload = [fill; 240];
            let m = HvMessage::new(ty, sender, &payload[..len]).unwrap();
            let back = HvMessage::read_from_bytes(m.as_bytes()).unwrap();
            prop_assert_eq!(back, m);
            prop_assert_eq!(m.wire_bytes().len(), 16 + len);
        }
    }
}
