//! Connections: where a guest's HvPostMessage and HvSignalEvent go.
//!
//! In Hyper-V a connection id names a port: a message port delivers into
//! a SINT's message slot of a target VP, an event port sets a flag in a
//! target VP's event flags (TLFS "Inter-Partition Communication":
//! `HV_PORT_INFO` message and event ports, `TargetSint`, `TargetVp`,
//! `BaseFlagNumber`, `FlagCount`). Here the VMM fills the table; a port
//! may also be the VMM's own (its VMBus server, say), which KVM models as
//! the userspace exit of `kvm_hv_hypercall` and QEMU as
//! `hyperv_set_msg_handler` / `hyperv_set_event_flag_handler`.

use super::hypercall::{CONNECTION_ID_MASK, SynicHypercall};
use super::message::{HV_EVENT_FLAGS_PER_SINT, HvMessage};
use crate::cpuid::MAX_VP_INDEX;
use crate::hypercall::HvStatus;
use crate::msr::HV_SINT_COUNT;

/// Connections a default table holds (VMBus uses a handful).
pub const DEFAULT_CONNECTIONS: usize = 64;

/// What a port takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortKind {
    /// Messages (HvPostMessage).
    Message,
    /// Events (HvSignalEvent): flags `base_flag..base_flag + flag_count`
    /// of the target SINT; the guest's flag number indexes this range.
    Event {
        /// First flag of the range.
        base_flag: u16,
        /// Number of flags, 1..=2048 - `base_flag`.
        flag_count: u16,
    },
}

/// Who receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortTarget {
    /// A SINT of a VP of this guest.
    Vp {
        /// The VP index (<= 4095).
        vp_index: u32,
        /// The SINT, 0..=15.
        sint: u8,
    },
    /// The VMM itself: it handles the message or event.
    Vmm,
}

/// One connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Connection {
    /// The port id the receiver sees (a message's header `sender`; bits
    /// 23:0).
    pub port_id: u32,
    /// Message or event port.
    pub kind: PortKind,
    /// Who receives.
    pub target: PortTarget,
}

/// Why the VMM's table change was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connection ids have 24 bits.
    #[error("connection id {0:#x} has bits above 23")]
    ConnectionIdTooLarge(u32),
    /// The id is taken.
    #[error("connection id {0:#x} already exists")]
    Exists(u32),
    /// The table is full.
    #[error("connection table full ({0} entries)")]
    Full(usize),
    /// SINTs are 0..=15.
    #[error("SINT {0} does not exist (0..=15)")]
    NoSuchSint(u8),
    /// VP indices are <= 4095.
    #[error("VP index {0} exceeds {MAX_VP_INDEX}")]
    VpIndexTooLarge(u32),
    /// The flag range is empty or runs past flag 2047.
    #[error("event flags {base}..{base}+{count} outside 0..2048 or empty")]
    FlagRange {
        /// First flag.
        base: u16,
        /// Count.
        count: u16,
    },
}

/// Where a guest's call goes, once the table has been consulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Route {
    /// Post `message` to SINT `sint` of VP `vp_index`
    /// ([`MessageQueue::post`](super::MessageQueue::post) on that VP; its
    /// `PostError::status` answers the guest). A VP index that names no
    /// vCPU is `HV_STATUS_INVALID_VP_INDEX`.
    Message {
        /// Target VP.
        vp_index: u32,
        /// Target SINT.
        sint: u8,
        /// The message, `sender` = port id.
        message: HvMessage,
    },
    /// Set event flag `flag` of SINT `sint` of VP `vp_index`
    /// ([`signal_event`](super::signal_event) on that VP).
    Event {
        /// Target VP.
        vp_index: u32,
        /// Target SINT.
        sint: u8,
        /// The flag, base + the guest's flag number (< 2048).
        flag: u32,
    },
    /// The VMM's own port `port_id` receives the call.
    Vmm {
        /// The port.
        port_id: u32,
    },
}

/// The connection table, fixed size (`N` entries, no allocation). Lookup
/// is a scan: tables are small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connections<const N: usize = DEFAULT_CONNECTIONS> {
    entries: [Option<(u32, Connection)>; N],
}

impl<const N: usize> Default for Connections<N> {
    fn default() -> Self {
        Self { entries: [None; N] }
    }
}

impl<const N: usize> Connections<N> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds connection `id`.
    ///
    /// ```
    /// use hv_enlightenments::hypercall::HvStatus;
    /// use hv_enlightenments::synic::{SignalEvent, SynicHypercall};
    /// use hv_enlightenments::synic::{Connection, Connections, PortKind, PortTarget, Route};
    ///
    /// let mut table: Connections = Connections::new();
    /// let to_vp1 = PortTarget::Vp { vp_index: 1, sint: 2 };
    /// table.insert(0x10, Connection { port_id: 0x10, kind: PortKind::Event { base_flag: 0, flag_count: 4 }, target: to_vp1 })?;
    /// let call = SynicHypercall::SignalEvent(SignalEvent { connection_id: 0x10, flag_number: 3 });
    /// assert_eq!(table.route(&call), Ok(Route::Event { vp_index: 1, sint: 2, flag: 3 }));
    /// let past = SynicHypercall::SignalEvent(SignalEvent { connection_id: 0x10, flag_number: 4 });
    /// assert_eq!(table.route(&past), Err(HvStatus::INVALID_PARAMETER));
    /// # Ok::<(), hv_enlightenments::synic::ConnectionError>(())
    /// ```
    pub fn insert(&mut self, id: u32, connection: Connection) -> Result<(), Error> {
        if id & !CONNECTION_ID_MASK != 0 {
            return Err(Error::ConnectionIdTooLarge(id));
        }
        if let PortTarget::Vp { vp_index, sint } = connection.target {
            if vp_index > MAX_VP_INDEX {
                return Err(Error::VpIndexTooLarge(vp_index));
            }
            if usize::from(sint) >= HV_SINT_COUNT {
                return Err(Error::NoSuchSint(sint));
            }
        }
        if let PortKind::Event {
            base_flag,
            flag_count,
        } = connection.kind
        {
            if flag_count == 0
                || u32::from(base_flag) + u32::from(flag_count) > HV_EVENT_FLAGS_PER_SINT
            {
                return Err(Error::FlagRange {
                    base: base_flag,
                    count: flag_count,
                });
            }
        }
        if self.get(id).is_some() {
            return Err(Error::Exists(id));
        }
        let free = self
            .entries
            .iter_mut()
            .find(|e| e.is_none())
            .ok_or(Error::Full(N))?;
        *free = Some((id, connection));
        Ok(())
    }

    /// Removes connection `id`, returning it.
    pub fn remove(&mut self, id: u32) -> Option<Connection> {
        let entry = self
            .entries
            .iter_mut()
            .find(|e| matches!(e, Some((i, _)) if *i == id))?;
        entry.take().map(|(_, c)| c)
    }

    /// Connection `id`.
    pub fn get(&self, id: u32) -> Option<&Connection> {
        self.entries
            .iter()
            .flatten()
            .find(|(i, _)| *i == id)
            .map(|(_, c)| c)
    }

    /// Where `call` goes, or the status to answer at once:
    /// `HV_STATUS_INVALID_CONNECTION_ID` for an unknown id (TLFS; openvmm),
    /// `HV_STATUS_INVALID_PORT_ID` for a port of the other kind (TLFS:
    /// "not a message port" / "not an event port"),
    /// `HV_STATUS_INVALID_PARAMETER` for a flag number past the port's
    /// flag count (TLFS HvSignalEvent).
    pub fn route(&self, call: &SynicHypercall) -> Result<Route, HvStatus> {
        match call {
            SynicHypercall::PostMessage(post) => {
                let c = self
                    .get(post.connection_id)
                    .ok_or(HvStatus::INVALID_CONNECTION_ID)?;
                if c.kind != PortKind::Message {
                    return Err(HvStatus::INVALID_PORT_ID);
                }
                Ok(match c.target {
                    PortTarget::Vp { vp_index, sint } => Route::Message {
                        vp_index,
                        sint,
                        message: post.to_message(c.port_id),
                    },
                    PortTarget::Vmm => Route::Vmm { port_id: c.port_id },
                })
            }
            SynicHypercall::SignalEvent(signal) => {
                let c = self
                    .get(signal.connection_id)
                    .ok_or(HvStatus::INVALID_CONNECTION_ID)?;
                let PortKind::Event {
                    base_flag,
                    flag_count,
                } = c.kind
                else {
                    return Err(HvStatus::INVALID_PORT_ID);
                };
                if signal.flag_number >= flag_count {
                    return Err(HvStatus::INVALID_PARAMETER);
                }
                Ok(match c.target {
                    PortTarget::Vp { vp_index, sint } => Route::Event {
                        vp_index,
                        sint,
                        flag: u32::from(base_flag) + u32::from(signal.flag_number),
                    },
                    PortTarget::Vmm => Route::Vmm { port_id: c.port_id },
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synic::{PostMessage, SignalEvent};

    fn msg_port(vp_index: u32, sint: u8) -> Connection {
        Connection {
            port_id: 0x77,
            kind: PortKind::Message,
            target: PortTarget::Vp { vp_index, sint },
        }
    }

    fn event_port(base_flag: u16, flag_count: u16) -> Connection {
        Connection {
            port_id: 0x78,
            kind: PortKind::Event {
                base_flag,
                flag_count,
            },
            target: PortTarget::Vmm,
        }
    }

    fn post(connection_id: u32) -> SynicHypercall {
        SynicHypercall::PostMessage(PostMessage {
            connection_id,
            message_type: 5,
            payload_size: 2,
            payload: [9; 240],
        })
    }

    fn signal(connection_id: u32, flag_number: u16) -> SynicHypercall {
        SynicHypercall::SignalEvent(SignalEvent {
            connection_id,
            flag_number,
        })
    }

    #[test]
    fn insert_checks_every_bound_one_past() {
        let mut t: Connections<2> = Connections::new();
        assert_eq!(
            t.insert(0x100_0000, msg_port(0, 0)),
            Err(Error::ConnectionIdTooLarge(0x100_0000))
        );
        assert_eq!(
            t.insert(1, msg_port(MAX_VP_INDEX + 1, 0)),
            Err(Error::VpIndexTooLarge(MAX_VP_INDEX + 1))
        );
        assert_eq!(t.insert(1, msg_port(0, 16)), Err(Error::NoSuchSint(16)));
        assert_eq!(
            t.insert(1, event_port(2047, 2)),
            Err(Error::FlagRange {
                base: 2047,
                count: 2
            })
        );
        assert_eq!(
            t.insert(1, event_port(0, 0)),
            Err(Error::FlagRange { base: 0, count: 0 })
        );
        assert_eq!(t.insert(0xFF_FFFF, event_port(2047, 1)), Ok(()));
        assert_eq!(
            t.insert(0xFF_FFFF, msg_port(0, 0)),
            Err(Error::Exists(0xFF_FFFF))
        );
        assert_eq!(t.insert(2, msg_port(MAX_VP_INDEX, 15)), Ok(()));
        assert_eq!(t.insert(3, msg_port(0, 0)), Err(Error::Full(2)));
        assert_eq!(t.remove(2), Some(msg_port(MAX_VP_INDEX, 15)));
        assert_eq!(t.remove(2), None);
        assert_eq!(t.insert(3, msg_port(0, 0)), Ok(()));
    }

    #[test]
    fn routes_and_statuses() {
        let mut t: Connections = Connections::new();
        t.insert(1, msg_port(3, 2)).unwrap();
        t.insert(2, event_port(100, 10)).unwrap();
        let Ok(Route::Message {
            vp_index,
            sint,
            message,
        }) = t.route(&post(1))
        else {
            panic!("message port routes")
        };
        assert_eq!((vp_index, sint), (3, 2));
        assert_eq!(message.header.sender.get(), 0x77);
        assert_eq!(message.payload_size(), 2);
        assert_eq!(t.route(&signal(2, 9)), Ok(Route::Vmm { port_id: 0x78 }));
        assert_eq!(t.route(&signal(2, 10)), Err(HvStatus::INVALID_PARAMETER));
        assert_eq!(t.route(&post(2)), Err(HvStatus::INVALID_PORT_ID));
        assert_eq!(t.route(&signal(1, 0)), Err(HvStatus::INVALID_PORT_ID));
        assert_eq!(t.route(&post(9)), Err(HvStatus::INVALID_CONNECTION_ID));
        assert_eq!(t.route(&signal(9, 0)), Err(HvStatus::INVALID_CONNECTION_ID));
        t.insert(
            4,
            Connection {
                port_id: 4,
                kind: PortKind::Event {
                    base_flag: 100,
                    flag_count: 10,
                },
                target: PortTarget::Vp {
                    vp_index: 0,
                    sint: 1,
                },
            },
        )
        .unwrap();
        assert_eq!(
            t.route(&signal(4, 9)),
            Ok(Route::Event {
                vp_index: 0,
                sint: 1,
                flag: 109
            })
        );
    }
}
