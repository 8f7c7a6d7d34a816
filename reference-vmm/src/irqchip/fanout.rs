//! PV IPI fan-out off the sender's path. A PV IPI to many vCPUs posts every
//! vector on the sender's thread (a locked update per target), but waking
//! a halted target's thread (user irqchip) or signalling KVM's LAPIC
//! (kernel irqchip, one `KVM_SIGNAL_MSI` each) are system calls, and on a
//! small host every woken thread competes with the sender for a CPU: done
//! inline they kept the sender in its hypercall for tens of microseconds
//! per target. The sender collects them into a [`FanOut`] and hands it to
//! the VM's fan-out thread with one wake-up ([`FanOutQueue::push`]); the
//! thread carries them out ([`Irqchip::complete_fan_out`]). Every target
//! still gets its IPI exactly once: the vector is posted (user) or its MSI
//! sent (kernel) exactly once, only the notification moves.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use lapic::VcpuSet;

use super::Irqchip;
use crate::ipi_path::Stamp;
use crate::vcpu::Vcpu;

/// How long the fan-out thread sleeps with nothing queued before it
/// re-checks for a stop request.
const IDLE: Duration = Duration::from_millis(50);

/// Fan-outs this small are carried out on the sender's thread: a handoff
/// would cost a unicast IPI more than its one system call.
pub const INLINE_TARGETS: u32 = 4;

/// What one PV IPI left to do: targets to wake (user irqchip) or to send
/// the vector to (kernel irqchip); which one is the irqchip's to know.
#[derive(Debug, Default)]
pub struct FanOut {
    pub(super) targets_left: VcpuSet,
    pub(super) vector: u8,
    /// Targets in `targets_left`.
    pub(super) targets: u32,
    /// The stamp of the call's first post, shared by its other targets.
    pub(super) stamp: Option<Stamp>,
}

impl FanOut {
    /// Nothing left to do.
    pub fn is_empty(&self) -> bool {
        self.targets == 0
    }

    /// Targets left to notify.
    pub fn targets(&self) -> u32 {
        self.targets
    }
}

/// The fan-outs waiting for the VM's fan-out thread, in order.
#[derive(Debug, Default)]
pub struct FanOutQueue {
    queue: Mutex<VecDeque<FanOut>>,
    cond: Condvar,
}

impl FanOutQueue {
    fn lock(&self) -> MutexGuard<'_, VecDeque<FanOut>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `f` (unless it is empty) and wakes the thread.
    pub fn push(&self, f: FanOut) {
        if f.is_empty() {
            return;
        }
        self.lock().push_back(f);
        self.cond.notify_one();
    }

    /// Wakes the thread (after a stop request).
    pub fn wake(&self) {
        self.cond.notify_all();
    }

    /// The fan-out thread's body, until `stop()`. The thread runs at the
    /// lowest priority (nice 19): handing it work must not preempt the
    /// sender on a small host before the sender is back in its guest.
    pub fn run(&self, irqchip: &Irqchip, vcpus: &[Vcpu], stop: impl Fn() -> bool) {
        lower_priority();
        let mut q = self.lock();
        while !stop() {
            match q.pop_front() {
                Some(f) => {
                    drop(q);
                    irqchip.complete_fan_out(vcpus, &f);
                    q = self.lock();
                }
                None => {
                    q = self
                        .cond
                        .wait_timeout(q, IDLE)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }
}

/// Lowest scheduling priority for the calling thread (Linux: nice is per
/// thread). A failure leaves the priority as it was.
fn lower_priority() {
    /// The nicest nice value.
    const NICE_LOWEST: libc::c_int = 19;
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority reads only its integer arguments; for
    // PRIO_PROCESS a thread id names that one thread on Linux.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE_LOWEST) };
    if r != 0 {
        log::debug!(
            "fan-out thread priority unchanged: {}",
            std::io::Error::last_os_error()
        );
    }
}
