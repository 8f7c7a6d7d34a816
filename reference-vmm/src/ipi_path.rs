//! The path of a posted interrupt from the exit of the vCPU that sent it
//! to the entry of the vCPU that takes it, split into what the VMM's own
//! code spends on it and what the host's notification takes.
//!
//! An IPI's path through a userspace irqchip has four parts:
//!
//! 1. the sender's exit reaches the VMM (the host's);
//! 2. the sender's turn, from `KVM_RUN`'s return to the post and, if the
//!    target must be told, the start of its kick or wake-up (the VMM's);
//! 3. the target notices: its halt poll sees the descriptor at once, a
//!    sleeping thread wakes up, a thread in guest mode is signalled out
//!    of `KVM_RUN` (the host's notification latency; nothing when the
//!    target was already in a VMM turn of its own);
//! 4. the target's turn from noticing to the `KVM_RUN` that injects the
//!    vector (the VMM's), then the host's entry (the host's).
//!
//! Each vCPU keeps the last interrupt sent to it ([`Inbound`], one slot:
//! the figures are meant for one IPI in flight per target, as in a
//! ping-pong); the thread of each vCPU keeps the TSC at which its current
//! VMM turn started ([`turn_started`]). Parts 2 and 4 are counted as the
//! VMM's time on the path, part 3 as the host's notification latency.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::tsc;

thread_local! {
    /// TSC at which this vCPU thread's current VMM turn started (0 on
    /// threads that run no vCPU).
    static TURN_START: Cell<u64> = const { Cell::new(0) };
}

/// This vCPU thread's VMM turn starts now (at TSC `now`): `KVM_RUN`
/// returned, a halt poll saw an event, or a sleep ended.
#[inline]
pub fn turn_started(now: u64) {
    TURN_START.with(|t| t.set(now));
}

/// When an interrupt was sent, and the sender's turn: read once per send
/// and shared by the targets of a multicast, which thus count the posts
/// before theirs as notification latency. Read per target, it took a PV
/// IPI's posts to 1023 targets from 17 to 44 us without KVM (criterion
/// `ex64_ipi`) and doubled that hypercall's service time in the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// TSC at which the sender's turn started (0: not a vCPU thread).
    turn: u64,
    /// TSC of the send.
    tsc: u64,
}

impl Stamp {
    /// The send starts now, on this thread.
    #[inline]
    pub fn now() -> Self {
        Self {
            turn: TURN_START.with(Cell::get),
            tsc: tsc(),
        }
    }
}

/// The last interrupt sent to one vCPU, until the vCPU takes it.
#[derive(Debug, Default)]
pub struct Inbound {
    /// TSC at which the sender's turn started.
    sender_turn: AtomicU64,
    /// TSC at which the sender posted it or started notifying (0: none).
    sent: AtomicU64,
}

/// Where the time of one interrupt's path went, in TSC cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Path {
    /// The sender's turn up to the post or notification, and the target's
    /// turn from noticing to entry.
    pub vmm: u64,
    /// From the post or notification to the target noticing.
    pub notify: u64,
}

impl Inbound {
    /// The sender posted an interrupt to this vCPU, or starts notifying it
    /// (called again then). A thread that runs no vCPU (the fan-out
    /// thread's deferred wake-up) moves only the notification's time.
    #[inline]
    pub fn sent(&self) {
        self.sent_at(Stamp::now());
    }

    /// [`Inbound::sent`] with a stamp read earlier, for the targets of a
    /// multicast.
    #[inline]
    pub fn sent_at(&self, stamp: Stamp) {
        if stamp.turn != 0 {
            self.sender_turn.store(stamp.turn, Ordering::Relaxed);
        }
        self.sent.store(stamp.tsc, Ordering::Release);
    }

    /// This vCPU's thread enters with an injected interrupt at TSC `entry`:
    /// the path of the last interrupt sent to it, if one is recorded (and
    /// forgets it).
    pub fn taken(&self, entry: u64) -> Option<Path> {
        let sent = self.sent.swap(0, Ordering::Acquire);
        let sender_turn = self.sender_turn.load(Ordering::Relaxed);
        if sent == 0 || sender_turn == 0 || sender_turn > sent || entry < sent {
            return None;
        }
        // A target that was in a turn of its own when the interrupt came
        // noticed it at once.
        let noticed = TURN_START.with(Cell::get).clamp(sent, entry);
        Some(Path {
            vmm: (sent - sender_turn) + (entry - noticed),
            notify: noticed - sent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends to `inbound` from a vCPU thread whose turn started `ago`
    /// cycles before; returns the sender's time on the path so far.
    fn send_from_vcpu(inbound: &Inbound, ago: u64) -> u64 {
        std::thread::scope(|s| {
            s.spawn(|| {
                turn_started(tsc() - ago);
                inbound.sent();
            });
        });
        inbound.sent.load(Ordering::Relaxed) - inbound.sender_turn.load(Ordering::Relaxed)
    }

    #[test]
    fn a_kicked_targets_wait_is_the_hosts_its_turns_are_the_vmms() {
        let inbound = Inbound::default();
        assert_eq!(inbound.taken(tsc()), None);
        let sender = send_from_vcpu(&inbound, 1000);
        assert!(sender >= 1000);
        let sent = inbound.sent.load(Ordering::Relaxed);
        // The target was in guest mode; its turn starts 5000 cycles after
        // the post and it enters 300 cycles later.
        turn_started(sent + 5000);
        let p = inbound.taken(sent + 5300).unwrap();
        assert_eq!(
            p,
            Path {
                vmm: sender + 300,
                notify: 5000
            }
        );
        // Taken once.
        assert_eq!(inbound.taken(sent + 6000), None);
    }

    #[test]
    fn a_target_busy_in_its_own_turn_noticed_at_once() {
        let inbound = Inbound::default();
        let sender = send_from_vcpu(&inbound, 200);
        let sent = inbound.sent.load(Ordering::Relaxed);
        turn_started(sent - 50);
        let p = inbound.taken(sent + 700).unwrap();
        assert_eq!(
            p,
            Path {
                vmm: sender + 700,
                notify: 0
            }
        );
    }

    #[test]
    fn a_deferred_wake_up_moves_only_the_notification() {
        let inbound = Inbound::default();
        let sender = send_from_vcpu(&inbound, 100);
        let posted = inbound.sent.load(Ordering::Relaxed);
        // The fan-out thread runs no vCPU.
        std::thread::scope(|s| {
            s.spawn(|| inbound.sent());
        });
        let woken = inbound.sent.load(Ordering::Relaxed);
        assert!(woken >= posted);
        turn_started(woken + 400);
        let p = inbound.taken(woken + 500).unwrap();
        assert_eq!(
            p,
            Path {
                vmm: sender + (woken - posted) + 100,
                notify: 400
            }
        );
    }

    #[test]
    fn a_multicasts_targets_share_its_stamp() {
        let (first, last) = (Inbound::default(), Inbound::default());
        std::thread::scope(|s| {
            s.spawn(|| {
                turn_started(tsc() - 100);
                let stamp = Stamp::now();
                first.sent_at(stamp);
                last.sent_at(stamp);
            });
        });
        let sent = first.sent.load(Ordering::Relaxed);
        assert_eq!(last.sent.load(Ordering::Relaxed), sent);
        // The last target noticed 900 cycles after the stamp: the posts
        // before its own are counted in its notification.
        turn_started(sent + 900);
        let p = last.taken(sent + 1000).unwrap();
        assert_eq!(p.notify, 900);
        assert!(p.vmm >= 100 + 100);
    }
}
