//! Host side of HvPostMessage (0x005C) and HvSignalEvent (0x005D): the
//! guest sends a message or signals an event on a connection (TLFS
//! "HvCallPostMessage", "HvCallSignalEvent"; KVM `kvm_hv_hypercall`,
//! `kvm_hvcall_signal_event`; openvmm `hv1_hypercall`).
//!
//! [`hypercall::decode`](crate::hypercall::decode) keeps its answer for
//! these codes (INVALID_HYPERCALL_CODE) so that a VMM matching on
//! [`Hypercall`](crate::hypercall::Hypercall) is unaffected;
//! [`decode_synic`] decodes them, and [`Connections`](super::Connections)
//! says where they go.

use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::message::{HV_MESSAGE_PAYLOAD_BYTE_COUNT, HVMSG_HYPERVISOR_BIT, HVMSG_NONE, HvMessage};
use crate::hypercall::{CallCode, GuestMemoryRead, HvStatus, HypercallRegs, Input, input};

/// Bits of a connection id that name it (`HV_CONNECTION_ID` `u.id : 24`,
/// KVM `KVM_HYPERV_CONN_ID_MASK`); bits 31:24 are reserved.
pub const CONNECTION_ID_MASK: u32 = 0x00FF_FFFF;
/// Input words of HvPostMessage: 256 bytes.
const POST_MESSAGE_WORDS: usize = core::mem::size_of::<PostMessageInput>() / 8;
/// Bytes of the HvSignalEvent input.
const SIGNAL_EVENT_BYTES: u64 = 8;
/// HvSignalEvent input: `flag_number` is bits 47:32 (KVM
/// `kvm_hvcall_signal_event`: "bits 32-47 contain the extra flag number").
const FLAG_NUMBER_SHIFT: u32 = 32;
/// HvSignalEvent input bits that must be zero: 31:24 and 63:48.
const SIGNAL_EVENT_RESERVED: u64 = !(CONNECTION_ID_MASK as u64 | (0xFFFF << FLAG_NUMBER_SHIFT));

/// `HV_INPUT_POST_MESSAGE` as it sits in guest memory (256 bytes,
/// little-endian).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PostMessageInput {
    /// Connection id (bits 23:0; 31:24 reserved).
    pub connection_id: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// Message type: not 0, bit 31 clear.
    pub message_type: U32,
    /// Payload bytes, at most 240.
    pub payload_size: U32,
    /// The payload.
    pub payload: [u8; HV_MESSAGE_PAYLOAD_BYTE_COUNT],
}

/// A decoded HvPostMessage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PostMessage {
    /// The connection, bits 23:0 only.
    pub connection_id: u32,
    /// The message type (1..=0x7FFFFFFF).
    pub message_type: u32,
    /// Meaningful payload bytes, 0..=240.
    pub payload_size: u8,
    /// The payload (bytes past `payload_size` as the guest left them).
    pub payload: [u8; HV_MESSAGE_PAYLOAD_BYTE_COUNT],
}

impl PostMessage {
    /// The meaningful payload bytes.
    pub fn payload(&self) -> &[u8] {
        self.payload
            .get(..usize::from(self.payload_size))
            .unwrap_or(&self.payload)
    }

    /// The message to put into the receiver's slot, with the receiving
    /// port's id in the header's sender field (TLFS: the header names the
    /// port the message arrived on).
    pub fn to_message(&self, port_id: u32) -> HvMessage {
        let mut msg = HvMessage::default();
        let src = self.payload();
        if let Some(dst) = msg.payload.get_mut(..src.len()) {
            dst.copy_from_slice(src);
        }
        msg.header.message_type.set(self.message_type);
        // At most 240: `payload` never returns more.
        msg.header.payload_size = src.len() as u8;
        msg.header
            .sender
            .set(u64::from(port_id & CONNECTION_ID_MASK));
        msg
    }
}

/// A decoded HvSignalEvent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SignalEvent {
    /// The connection, bits 23:0 only.
    pub connection_id: u32,
    /// Which flag of the port's range (checked against the port).
    pub flag_number: u16,
}

/// A decoded SynIC messaging hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)]
pub enum SynicHypercall {
    /// HvPostMessage.
    PostMessage(PostMessage),
    /// HvSignalEvent.
    SignalEvent(SignalEvent),
}

/// Decodes an HvPostMessage or HvSignalEvent in `regs`.
///
/// | Input | Status |
/// |---|---|
/// | reserved control bits | INVALID_HYPERCALL_INPUT |
/// | other call code | INVALID_HYPERCALL_CODE |
/// | rep count, rep start or variable header non-zero | INVALID_HYPERCALL_INPUT (KVM) |
/// | PostMessage: fast (256 bytes do not fit the 112 of RDX, R8, XMM0-5) | INVALID_HYPERCALL_INPUT |
/// | PostMessage: input crossing a page / not 8-byte aligned / unreadable | INVALID_HYPERCALL_INPUT / INVALID_ALIGNMENT / INVALID_HYPERCALL_INPUT |
/// | PostMessage: connection id bits 31:24 or the reserved word set | INVALID_HYPERCALL_INPUT |
/// | PostMessage: payload size > 240, type 0 or type bit 31 set | INVALID_PARAMETER (TLFS, openvmm) |
/// | SignalEvent (memory): GPA not 8-byte aligned, or unreadable | INVALID_ALIGNMENT (KVM) |
/// | SignalEvent: bits 31:24 or 63:48 set | INVALID_HYPERCALL_INPUT (KVM) |
///
/// Whether the connection exists, is of the right kind and has the flag
/// is the [`Connections`](super::Connections)' to say.
///
/// ```
/// use hv_enlightenments::hypercall::{HypercallRegs, NoMemory};
/// use hv_enlightenments::synic::{decode_synic, SignalEvent, SynicHypercall};
///
/// // Fast HvSignalEvent as Linux's vmbus_set_event makes it: connection 0x2000, flag 0.
/// let regs = HypercallRegs { rcx: 0x5D | 1 << 16, rdx: 0x2000, ..Default::default() };
/// assert_eq!(
///     decode_synic(&regs, &NoMemory),
///     Ok(SynicHypercall::SignalEvent(SignalEvent { connection_id: 0x2000, flag_number: 0 }))
/// );
/// ```
pub fn decode_synic<M: GuestMemoryRead + ?Sized>(
    regs: &HypercallRegs,
    mem: &M,
) -> Result<SynicHypercall, HvStatus> {
    let control = regs.control();
    if control.has_reserved_bits() {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    let code = control.call_code();
    if code != CallCode::POST_MESSAGE && code != CallCode::SIGNAL_EVENT {
        return Err(HvStatus::INVALID_HYPERCALL_CODE);
    }
    // kvm_hv_hypercall: "hc.rep || hc.var_cnt" for both calls.
    if control.is_rep() || control.variable_header_size() != 0 {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    if code == CallCode::POST_MESSAGE {
        decode_post_message(regs, mem).map(SynicHypercall::PostMessage)
    } else {
        decode_signal_event(regs, mem).map(SynicHypercall::SignalEvent)
    }
}

fn decode_post_message<M: GuestMemoryRead + ?Sized>(
    regs: &HypercallRegs,
    mem: &M,
) -> Result<PostMessage, HvStatus> {
    // A fast call cannot carry the 32 words: `input` refuses it.
    let Input::Memory { mem, gpa } = input(regs, mem, POST_MESSAGE_WORDS)? else {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    };
    let mut raw = PostMessageInput::new_zeroed();
    mem.read(gpa, raw.as_mut_bytes())
        .map_err(|_| HvStatus::INVALID_HYPERCALL_INPUT)?;
    let connection_id = raw.connection_id.get();
    if connection_id & !CONNECTION_ID_MASK != 0 || raw.reserved.get() != 0 {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    let message_type = raw.message_type.get();
    let payload_size = raw.payload_size.get();
    if message_type == HVMSG_NONE
        || message_type & HVMSG_HYPERVISOR_BIT != 0
        || payload_size > HV_MESSAGE_PAYLOAD_BYTE_COUNT as u32
    {
        return Err(HvStatus::INVALID_PARAMETER);
    }
    Ok(PostMessage {
        connection_id,
        message_type,
        // <= 240, checked above.
        payload_size: payload_size as u8,
        payload: raw.payload,
    })
}

fn decode_signal_event<M: GuestMemoryRead + ?Sized>(
    regs: &HypercallRegs,
    mem: &M,
) -> Result<SignalEvent, HvStatus> {
    let value = if regs.control().fast() {
        regs.rdx
    } else {
        // kvm_hvcall_signal_event: misaligned, page-crossing (impossible
        // once aligned) and unreadable input are all INVALID_ALIGNMENT.
        let gpa = regs.rdx;
        if gpa % SIGNAL_EVENT_BYTES != 0 {
            return Err(HvStatus::INVALID_ALIGNMENT);
        }
        let mut b = [0u8; SIGNAL_EVENT_BYTES as usize];
        mem.read(gpa, &mut b)
            .map_err(|_| HvStatus::INVALID_ALIGNMENT)?;
        u64::from_le_bytes(b)
    };
    if value & SIGNAL_EVENT_RESERVED != 0 {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    Ok(SignalEvent {
        connection_id: value as u32 & CONNECTION_ID_MASK,
        flag_number: (value >> FLAG_NUMBER_SHIFT) as u16,
    })
}

/// The memory input of an HvPostMessage, for the guest side and tests.
///
/// ```
/// use hv_enlightenments::hypercall::{HypercallRegs, SliceMemory};
/// use hv_enlightenments::synic::{decode_synic, post_message_input, SynicHypercall};
///
/// let input = post_message_input(7, 1, b"ping").expect("payload fits");
/// let mem = SliceMemory::new(0x3000, &input);
/// let regs = HypercallRegs { rcx: 0x5C, rdx: 0x3000, ..Default::default() };
/// let Ok(SynicHypercall::PostMessage(m)) = decode_synic(&regs, &mem) else { unreachable!() };
/// assert_eq!((m.connection_id, m.message_type, m.payload()), (7, 1, &b"ping"[..]));
/// ```
pub fn post_message_input(
    connection_id: u32,
    message_type: u32,
    payload: &[u8],
) -> Option<[u8; core::mem::size_of::<PostMessageInput>()]> {
    let mut raw = PostMessageInput::new_zeroed();
    raw.payload
        .get_mut(..payload.len())?
        .copy_from_slice(payload);
    raw.connection_id.set(connection_id);
    raw.message_type.set(message_type);
    raw.payload_size.set(payload.len() as u32);
    Some(zerocopy::transmute!(raw))
}

/// The fast HvSignalEvent input word (RDX).
pub const fn signal_event_input(connection_id: u32, flag_number: u16) -> u64 {
    (connection_id & CONNECTION_ID_MASK) as u64 | (flag_number as u64) << FLAG_NUMBER_SHIFT
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypercall::{NoMemory, SliceMemory};
    use proptest::prelude::*;

    const POST: u64 = 0x5C;
    const SIGNAL: u64 = 0x5D;
    const FAST: u64 = 1 << 16;
    const BASE: u64 = 0x1000;

    fn post(bytes: &[u8; 256], gpa_off: u64) -> Result<SynicHypercall, HvStatus> {
        let mut page = [0u8; 0x2000];
        let off = gpa_off as usize;
        if let Some(dst) = page.get_mut(off..off + 256) {
            dst.copy_from_slice(bytes);
        }
        let mem = SliceMemory::new(BASE, &page);
        let regs = HypercallRegs {
            rcx: POST,
            rdx: BASE + gpa_off,
            ..Default::default()
        };
        decode_synic(&regs, &mem)
    }

    #[test]
    fn layout_is_256_bytes() {
        assert_eq!(core::mem::size_of::<PostMessageInput>(), 256);
    }

    #[test]
    fn post_message_statuses() {
        let ok = post_message_input(5, 1, &[1, 2, 3]).unwrap();
        assert!(matches!(post(&ok, 0), Ok(SynicHypercall::PostMessage(_))));
        // Misaligned; crossing the page (0x1F08 + 256 > 0x2000).
        assert_eq!(post(&ok, 4), Err(HvStatus::INVALID_ALIGNMENT));
        assert_eq!(post(&ok, 0xF08), Err(HvStatus::INVALID_HYPERCALL_INPUT));
        // The last offset that fits the page.
        assert!(post(&ok, 0xF00).is_ok());
        // Payload size: 240 fits, 241 does not.
        let mut raw = PostMessageInput::read_from_bytes(&ok).unwrap();
        raw.payload_size.set(240);
        assert!(post(&zerocopy::transmute!(raw), 0).is_ok());
        raw.payload_size.set(241);
        assert_eq!(
            post(&zerocopy::transmute!(raw), 0),
            Err(HvStatus::INVALID_PARAMETER)
        );
        raw.payload_size.set(0);
        raw.message_type.set(0);
        assert_eq!(
            post(&zerocopy::transmute!(raw), 0),
            Err(HvStatus::INVALID_PARAMETER)
        );
        raw.message_type.set(0x8000_0010);
        assert_eq!(
            post(&zerocopy::transmute!(raw), 0),
            Err(HvStatus::INVALID_PARAMETER)
        );
        raw.message_type.set(0x7FFF_FFFF);
        assert!(post(&zerocopy::transmute!(raw), 0).is_ok());
        raw.connection_id.set(0x0100_0000);
        assert_eq!(
            post(&zerocopy::transmute!(raw), 0),
            Err(HvStatus::INVALID_HYPERCALL_INPUT)
        );
        raw.connection_id.set(0x00FF_FFFF);
        raw.reserved.set(1);
        assert_eq!(
            post(&zerocopy::transmute!(raw), 0),
            Err(HvStatus::INVALID_HYPERCALL_INPUT)
        );
        // Fast, rep, variable header, unreadable.
        for rcx in [POST | FAST, POST | 1 << 32, POST | 1 << 48, POST | 1 << 17] {
            let regs = HypercallRegs {
                rcx,
                rdx: BASE,
                ..Default::default()
            };
            assert_eq!(
                decode_synic(&regs, &NoMemory),
                Err(HvStatus::INVALID_HYPERCALL_INPUT),
                "{rcx:#x}"
            );
        }
        let regs = HypercallRegs {
            rcx: POST,
            rdx: BASE,
            ..Default::default()
        };
        assert_eq!(
            decode_synic(&regs, &NoMemory),
            Err(HvStatus::INVALID_HYPERCALL_INPUT)
        );
    }

    #[test]
    fn signal_event_statuses_match_kvm() {
        let fast = |rdx| {
            decode_synic(
                &HypercallRegs {
                    rcx: SIGNAL | FAST,
                    rdx,
                    ..Default::default()
                },
                &NoMemory,
            )
        };
        assert_eq!(
            fast(signal_event_input(0xFF_FFFF, 0xFFFF)),
            Ok(SynicHypercall::SignalEvent(SignalEvent {
                connection_id: 0xFF_FFFF,
                flag_number: 0xFFFF
            }))
        );
        assert_eq!(fast(1 << 24), Err(HvStatus::INVALID_HYPERCALL_INPUT));
        assert_eq!(fast(1 << 48), Err(HvStatus::INVALID_HYPERCALL_INPUT));
        let word = signal_event_input(3, 2).to_le_bytes();
        let mem = SliceMemory::new(BASE, &word);
        let slow = |rdx| {
            decode_synic(
                &HypercallRegs {
                    rcx: SIGNAL,
                    rdx,
                    ..Default::default()
                },
                &mem,
            )
        };
        assert_eq!(
            slow(BASE),
            Ok(SynicHypercall::SignalEvent(SignalEvent {
                connection_id: 3,
                flag_number: 2
            }))
        );
        assert_eq!(slow(BASE + 4), Err(HvStatus::INVALID_ALIGNMENT));
        assert_eq!(slow(BASE + 8), Err(HvStatus::INVALID_ALIGNMENT));
        let rep = HypercallRegs {
            rcx: SIGNAL | FAST | 1 << 32,
            ..Default::default()
        };
        assert_eq!(
            decode_synic(&rep, &NoMemory),
            Err(HvStatus::INVALID_HYPERCALL_INPUT)
        );
        let other = HypercallRegs {
            rcx: 0x0B,
            ..Default::default()
        };
        assert_eq!(
            decode_synic(&other, &NoMemory),
            Err(HvStatus::INVALID_HYPERCALL_CODE)
        );
        let reserved = HypercallRegs {
            rcx: SIGNAL | FAST | 1 << 27,
            ..Default::default()
        };
        assert_eq!(
            decode_synic(&reserved, &NoMemory),
            Err(HvStatus::INVALID_HYPERCALL_INPUT)
        );
    }

    #[test]
    fn to_message_copies_the_payload() {
        let input = post_message_input(9, 0x42, b"abc").unwrap();
        let Ok(SynicHypercall::PostMessage(m)) = post(&input, 0) else {
            panic!("decodes")
        };
        let msg = m.to_message(0x1234);
        assert_eq!(msg.message_type(), 0x42);
        assert_eq!(msg.payload_size(), 3);
        assert_eq!(&msg.payload[..3], b"abc");
        assert_eq!(msg.header.sender.get(), 0x1234);
        assert_eq!(post_message_input(1, 1, &[0; 241]), None);
    }

    proptest! {
        #[test]
        fn post_message_round_trips(conn in 0u32..=CONNECTION_ID_MASK, ty in 1u32..0x8000_0000, len in 0usize..=240, fill in any::<u8>()) {
            let payload = [fill; 240];
            let input = post_message_input(conn, ty, &payload[..len]).unwrap();
            let Ok(SynicHypercall::PostMessage(m)) = post(&input, 0) else {
                return Err(TestCaseError::fail("valid input refused"));
            };
            prop_assert_eq!((m.connection_id, m.message_type, m.payload()), (conn, ty, &payload[..len]));
        }

        #[test]
        fn signal_event_round_trips(conn in 0u32..=CONNECTION_ID_MASK, flag in any::<u16>()) {
            let regs = HypercallRegs { rcx: SIGNAL | FAST, rdx: signal_event_input(conn, flag), ..Default::default() };
            prop_assert_eq!(
                decode_synic(&regs, &NoMemory),
                Ok(SynicHypercall::SignalEvent(SignalEvent { connection_id: conn, flag_number: flag }))
            );
        }

        #[test]
        fn any_input_decodes_or_fails_without_panic(rcx in any::<u64>(), rdx in any::<u64>(), bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mem = SliceMemory::new(BASE, &bytes);
            let regs = HypercallRegs { rcx, rdx, ..Default::default() };
            let _ = decode_synic(&regs, &mem);
        }
    }
}
