//! Where a vCPU thread is, as far as a sender of an IPI cares: in the
//! guest (kick it out), halted (wake it) or outside the guest (it will see
//! the vector before it enters again).
//!
//! The VMM's vCPU thread updates the state around `KVM_RUN` and HLT; the
//! IPI fast path reads it after posting. The protocol, which
//! [`VcpuRunState::enter_guest`] and [`VcpuRunState::prepare_halt`] carry
//! out for the vCPU side:
//!
//! 1. Entering: publish [`RunState::InGuest`], then take the pending
//!    vectors, then `KVM_RUN`. A vector posted after the take finds
//!    `InGuest` and the sender kicks; the kick must interrupt a `KVM_RUN`
//!    that has not started yet (`immediate_exit`, or a signal left blocked
//!    outside `KVM_RUN` with `KVM_SET_SIGNAL_MASK`).
//! 2. After `KVM_RUN` returns: publish [`RunState::OutsideGuest`], then take.
//! 3. Halting: publish [`RunState::Halted`], clear SN, then re-check ON and
//!    the PIR. Only if nothing is pending may the thread sleep, and only on
//!    a primitive that keeps a wake-up sent before the sleep (a park token,
//!    an eventfd, a futex on a word the waker changes); a condition
//!    variable without a predicate loses it. After waking: publish
//!    `OutsideGuest` and take.
//!
//! Why it cannot sleep with a vector pending: the sender sets the PIR bit,
//! then ON (a read-modify-write of the control word), then reads the run
//! state; the halting thread publishes `Halted`, then clears SN (also a
//! read-modify-write of the control word), then checks ON. Of the two
//! control-word updates, the second reads the first's result: either the
//! halting thread sees ON, or the sender's update synchronises with the
//! halting thread's and the sender reads `Halted` and wakes it.

use crate::descriptor::PostedInterruptDescriptor;
use crate::sync::atomic::{AtomicU8, Ordering::SeqCst};

/// Run state of one vCPU thread.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    /// In userspace, between two `KVM_RUN`s: it takes pending vectors
    /// before it enters again, so a sender need not notify it.
    OutsideGuest = 0,
    /// In `KVM_RUN` or about to enter it: a sender must kick it out.
    InGuest = 1,
    /// Halted (guest HLT handled in userspace), asleep or about to sleep:
    /// a sender must wake it.
    Halted = 2,
}

impl RunState {
    fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::InGuest,
            2 => Self::Halted,
            _ => Self::OutsideGuest,
        }
    }
}

impl RunState {
    /// How a sender notifies a vCPU in this state after a post that needs
    /// a notification (ON went from 0 to 1 with SN clear).
    #[inline]
    pub const fn notify(self) -> Notify {
        match self {
            Self::InGuest => Notify::Kick,
            Self::Halted => Notify::Wake,
            Self::OutsideGuest => Notify::None,
        }
    }
}

/// How the caller must notify one target after posting.
#[must_use = "a Kick or Wake that is not delivered can leave a vCPU asleep on a vector"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Notify {
    /// Nothing to do: the vector merged with a pending one, a notification
    /// is already outstanding, or the target is outside the guest and takes
    /// pending vectors before it enters again.
    None,
    /// The target is in the guest: kick it out of `KVM_RUN`.
    Kick,
    /// The target is halted: wake its thread.
    Wake,
}

/// What [`VcpuRunState::prepare_halt`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HaltCheck {
    /// Nothing pending: the thread may sleep until it is woken. The state
    /// is [`RunState::Halted`].
    Sleep,
    /// A vector is pending: do not sleep. The state is back to
    /// [`RunState::OutsideGuest`].
    Pending,
}

/// The atomic run state of one vCPU, written by its own thread and read by
/// senders.
#[derive(Debug)]
pub struct VcpuRunState {
    state: AtomicU8,
}

impl Default for VcpuRunState {
    fn default() -> Self {
        Self::new()
    }
}

impl VcpuRunState {
    /// A vCPU that is not in the guest.
    pub fn new() -> Self {
        Self {
            state: AtomicU8::new(RunState::OutsideGuest as u8),
        }
    }

    /// The current state.
    #[inline]
    pub fn get(&self) -> RunState {
        RunState::from_raw(self.state.load(SeqCst))
    }

    /// Publishes `state`. Prefer [`enter_guest`](Self::enter_guest),
    /// [`leave_guest`](Self::leave_guest) and
    /// [`prepare_halt`](Self::prepare_halt), which also do the re-checks
    /// the protocol needs.
    #[inline]
    pub fn set(&self, state: RunState) {
        self.state.store(state as u8, SeqCst);
    }

    /// Step 1 of the protocol: publishes `InGuest`, then takes the vectors
    /// to inject before `KVM_RUN`.
    ///
    /// ```
    /// use ipiv::{PostedInterruptDescriptor, RunState, VcpuRunState};
    ///
    /// let (state, pid) = (VcpuRunState::new(), PostedInterruptDescriptor::new());
    /// pid.post(0x40);
    /// let inject = state.enter_guest(&pid); // then KVM_RUN
    /// assert_eq!((state.get(), inject.highest()), (RunState::InGuest, Some(0x40)));
    /// ```
    #[inline]
    pub fn enter_guest(
        &self,
        descriptor: &PostedInterruptDescriptor,
    ) -> crate::descriptor::PendingVectors {
        self.set(RunState::InGuest);
        descriptor.take()
    }

    /// Step 2: publishes `OutsideGuest` after `KVM_RUN` returned, then
    /// takes what was posted meanwhile.
    ///
    /// ```
    /// use ipiv::{PostedInterruptDescriptor, RunState, VcpuRunState};
    ///
    /// let (state, pid) = (VcpuRunState::new(), PostedInterruptDescriptor::new());
    /// let _ = state.enter_guest(&pid);
    /// pid.post(0x41); // while in KVM_RUN
    /// assert!(state.leave_guest(&pid).contains(0x41));
    /// assert_eq!(state.get(), RunState::OutsideGuest);
    /// ```
    #[inline]
    pub fn leave_guest(
        &self,
        descriptor: &PostedInterruptDescriptor,
    ) -> crate::descriptor::PendingVectors {
        self.set(RunState::OutsideGuest);
        descriptor.take()
    }

    /// Step 3: publishes `Halted`, clears SN, then re-checks ON and the
    /// PIR. On [`HaltCheck::Pending`] the state is `OutsideGuest` again
    /// and the thread must not sleep.
    ///
    /// ```
    /// use ipiv::{HaltCheck, PostedInterruptDescriptor, RunState, VcpuRunState};
    ///
    /// let (state, pid) = (VcpuRunState::new(), PostedInterruptDescriptor::new());
    /// assert_eq!(state.prepare_halt(&pid), HaltCheck::Sleep);
    /// assert_eq!(state.get(), RunState::Halted);
    /// pid.post(0x40); // a sender raced the halt
    /// assert_eq!(state.prepare_halt(&pid), HaltCheck::Pending); // do not sleep
    /// ```
    pub fn prepare_halt(&self, descriptor: &PostedInterruptDescriptor) -> HaltCheck {
        self.set(RunState::Halted);
        let pending = descriptor.clear_suppress() || descriptor.has_pending();
        if pending {
            self.set(RunState::OutsideGuest);
            HaltCheck::Pending
        } else {
            HaltCheck::Sleep
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn halt_with_pending_vector_does_not_sleep() {
        let d = PostedInterruptDescriptor::new();
        let r = VcpuRunState::new();
        assert_eq!(r.prepare_halt(&d), HaltCheck::Sleep);
        assert_eq!(r.get(), RunState::Halted);
        r.set(RunState::OutsideGuest);
        assert!(d.post(0x40));
        assert_eq!(r.prepare_halt(&d), HaltCheck::Pending);
        assert_eq!(r.get(), RunState::OutsideGuest);
    }

    #[test]
    fn halt_clears_suppression_and_sees_suppressed_vectors() {
        let d = PostedInterruptDescriptor::new();
        let r = VcpuRunState::new();
        d.set_suppress();
        assert!(!d.post(0x50));
        assert_eq!(r.prepare_halt(&d), HaltCheck::Pending);
        assert!(!d.suppressed());
        assert!(d.take().contains(0x50));
    }

    #[test]
    fn notify_follows_state() {
        assert_eq!(RunState::InGuest.notify(), Notify::Kick);
        assert_eq!(RunState::Halted.notify(), Notify::Wake);
        assert_eq!(RunState::OutsideGuest.notify(), Notify::None);
    }

    #[test]
    fn enter_and_leave_take_vectors() {
        let d = PostedInterruptDescriptor::new();
        let r = VcpuRunState::new();
        assert!(d.post(0x22));
        assert!(r.enter_guest(&d).contains(0x22));
        assert_eq!(r.get(), RunState::InGuest);
        assert!(d.post(0x23));
        assert!(r.leave_guest(&d).contains(0x23));
        assert_eq!(r.get(), RunState::OutsideGuest);
    }
}
