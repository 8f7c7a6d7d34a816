//! Deferring inhibit updates from a vCPU's exit path to a safe point.
//!
//! KVM once updated the inhibit from `synic_update_vector`, on the exit
//! path of a SINT write, with the vCPU still inside its `kvm->srcu` read
//! side; the update waits for every SRCU reader (`synchronize_srcu` while
//! the APIC-access memslot is dropped), so the vCPU waited for itself.
//! The first fix dropped the SRCU read lock around the call
//! (`synic_toggle_avic`); KVM now serialises updates with
//! `apicv_update_lock` and has the vCPUs apply them through
//! `KVM_REQ_APICV_UPDATE` at their next entry.
//!
//! Here the same mistake does not compile:
//!
//! * The exit path only calls [`InhibitRequests::request`], which appends
//!   to the queue under the queue's own short lock and returns a
//!   [`RequestTicket`]. It never touches the manager.
//! * Applying ([`InhibitManager::apply_pending`]) takes a [`SafePoint`],
//!   which only a [`VcpuGate`] hands out, by `&mut` borrow. Guest-memory
//!   access in the VMM goes through the same gate
//!   ([`VcpuGate::read_side`]), also by `&mut` borrow. While a read-side
//!   guard is alive the gate is borrowed, so no safe point can exist.
//! * A gate is `!Send` and there is at most one per thread, so a second
//!   gate cannot be used to sidestep the borrow.
//!
//! The exit path requests; the loop applies at its next safe point:
//!
//! ```
//! use ipiv::inhibit::{InhibitConfig, InhibitEvent, InhibitManager, InhibitRequests, VcpuGate};
//! use std::sync::RwLock;
//! let memory = RwLock::new(vec![0u8; 4096]);
//! let requests = InhibitRequests::new();
//! let mut manager = InhibitManager::new(InhibitConfig::default());
//! let mut gate = VcpuGate::for_this_thread()?;
//! {
//!     // Exit path: guest memory is read-locked while the SINT write is handled.
//!     let mem = gate.read_side(|| memory.read().unwrap());
//!     let _ticket = requests.request(0, InhibitEvent::SintWrite { sint: 0, value: 1 << 17 | 0x40 });
//!     assert_eq!(mem.len(), 4096);
//! }
//! // Top of the vCPU loop, no guard alive: a safe point.
//! let update = manager.apply_pending(&requests, &gate.safe_point());
//! assert!(update.after.contains(ipiv::InhibitReason::Hyperv));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ```compile_fail
//! use ipiv::inhibit::{InhibitConfig, InhibitManager, InhibitRequests, VcpuGate};
//! use std::sync::RwLock;
//! let memory = RwLock::new(vec![0u8; 4096]);
//! let requests = InhibitRequests::new();
//! let mut manager = InhibitManager::new(InhibitConfig::default());
//! let mut gate = VcpuGate::for_this_thread().unwrap();
//! let mem = gate.read_side(|| memory.read().unwrap());
//! // Applying while guest memory is read-locked: rejected by the borrow checker.
//! manager.apply_pending(&requests, &gate.safe_point());
//! drop(mem);
//! ```
//!
//! [`InhibitManager::apply_pending`]: super::InhibitManager::apply_pending

use std::cell::Cell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

use super::event::InhibitEvent;

/// Errors of the deferral machinery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// This thread already has a [`VcpuGate`].
    #[error("this thread already has a VcpuGate")]
    GateExists,
}

/// A receipt for a queued request: the request is applied once
/// [`InhibitManager::applied_through`](super::InhibitManager::applied_through)
/// reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestTicket(pub(crate) u64);

impl RequestTicket {
    /// The request's sequence number (1 for the first request).
    pub fn sequence(self) -> u64 {
        self.0
    }
}

/// One queued request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Queued {
    pub(crate) ticket: RequestTicket,
    pub(crate) vcpu: u32,
    pub(crate) event: InhibitEvent,
}

#[derive(Debug, Default)]
struct Queue {
    next: u64,
    items: VecDeque<Queued>,
}

/// The per-VM queue of inhibit requests raised on vCPU exit paths.
///
/// Requesting takes only this queue's lock, for a push; nothing else is
/// ever acquired while it is held, so the exit path cannot join a lock
/// cycle whatever else the caller holds.
#[derive(Debug, Default)]
pub struct InhibitRequests {
    queue: Mutex<Queue>,
}

impl InhibitRequests {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty queue with room for `capacity` requests before it grows.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                next: 0,
                items: VecDeque::with_capacity(capacity),
            }),
        }
    }

    /// Queues `event` raised by `vcpu`. Safe to call from any context,
    /// with guest memory locked or not.
    pub fn request(&self, vcpu: u32, event: InhibitEvent) -> RequestTicket {
        // The queue holds plain data, so a panic elsewhere cannot leave it
        // inconsistent: recover from poisoning instead of propagating it.
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        queue.next += 1;
        let ticket = RequestTicket(queue.next);
        queue.items.push_back(Queued {
            ticket,
            vcpu,
            event,
        });
        ticket
    }

    /// Number of queued requests.
    pub fn len(&self) -> usize {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .items
            .len()
    }

    /// Whether no request is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Moves every queued request into `out` (cleared first), releasing the
    /// queue lock before the caller applies them.
    pub(crate) fn drain_into(&self, out: &mut Vec<Queued>) {
        out.clear();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        out.extend(queue.items.drain(..));
    }
}

thread_local! {
    static GATE_TAKEN: Cell<bool> = const { Cell::new(false) };
}

/// The one gate of a thread that touches guest memory: it hands out either
/// read-side guards (guest memory in use) or a [`SafePoint`], never both
/// at once.
#[derive(Debug)]
pub struct VcpuGate {
    // !Send and !Sync: the gate stands for its thread.
    _thread: PhantomData<*const ()>,
}

impl VcpuGate {
    /// The gate of the calling thread; fails if the thread already has one.
    pub fn for_this_thread() -> Result<Self, Error> {
        GATE_TAKEN.with(|taken| {
            if taken.replace(true) {
                Err(Error::GateExists)
            } else {
                Ok(Self {
                    _thread: PhantomData,
                })
            }
        })
    }

    /// Enters a read-side section: `acquire` takes the VMM's guest-memory
    /// read lock (or anything the inhibit update path may wait for), and
    /// the returned guard keeps the gate borrowed until it is dropped.
    pub fn read_side<G>(&mut self, acquire: impl FnOnce() -> G) -> ReadSide<'_, G> {
        ReadSide {
            guard: acquire(),
            _gate: PhantomData,
        }
    }

    /// A safe point: this thread holds no read-side guard.
    pub fn safe_point(&mut self) -> SafePoint<'_> {
        SafePoint { _gate: PhantomData }
    }
}

impl Drop for VcpuGate {
    fn drop(&mut self) {
        GATE_TAKEN.with(|taken| taken.set(false));
    }
}

/// A read-side section of a [`VcpuGate`], holding the caller's guard.
#[derive(Debug)]
pub struct ReadSide<'g, G> {
    guard: G,
    _gate: PhantomData<&'g mut VcpuGate>,
}

impl<G> ReadSide<'_, G> {
    /// Ends the section, giving back the guard's value.
    pub fn into_inner(self) -> G {
        self.guard
    }
}

impl<G> Deref for ReadSide<'_, G> {
    type Target = G;

    fn deref(&self) -> &G {
        &self.guard
    }
}

impl<G> DerefMut for ReadSide<'_, G> {
    fn deref_mut(&mut self) -> &mut G {
        &mut self.guard
    }
}

/// Proof that the calling thread holds no guest-memory read-side guard.
#[derive(Debug)]
pub struct SafePoint<'g> {
    _gate: PhantomData<&'g mut VcpuGate>,
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn one_gate_per_thread() {
        let gate = VcpuGate::for_this_thread().unwrap();
        assert_eq!(VcpuGate::for_this_thread().err(), Some(Error::GateExists));
        std::thread::spawn(|| assert!(VcpuGate::for_this_thread().is_ok()))
            .join()
            .unwrap();
        drop(gate);
        assert!(VcpuGate::for_this_thread().is_ok());
    }

    #[test]
    fn tickets_follow_queue_order() {
        let q = InhibitRequests::with_capacity(4);
        let a = q.request(0, InhibitEvent::NestedGuest(true));
        let b = q.request(1, InhibitEvent::NestedGuest(false));
        assert!(a < b);
        assert_eq!(a.sequence(), 1);
        assert_eq!(q.len(), 2);
        let mut out = Vec::new();
        q.drain_into(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].ticket, a);
        assert!(q.is_empty());
    }
}
