//! Host-time timer deadlines, at most one per vCPU per queue: a thread
//! sleeps until the earliest armed deadline and fires it. The userspace
//! irqchip's APIC timers use one queue (the APIC raises its vector and the
//! vCPU is kicked or woken), the Hyper-V synthetic timers another.
//! Deadlines are in the APIC clock's nanoseconds.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// Armed deadlines: one per vCPU at most, so re-arming a timer millions
/// of times keeps the memory flat.
#[derive(Debug, Default)]
struct Queue {
    /// `(deadline, vcpu)`, earliest first.
    order: BTreeSet<(u64, usize)>,
    /// Each vCPU's armed deadline (its entry in `order`).
    armed: HashMap<usize, u64>,
}

impl Queue {
    fn arm(&mut self, vcpu: usize, deadline: u64) {
        if let Some(old) = self.armed.insert(vcpu, deadline) {
            self.order.remove(&(old, vcpu));
        }
        self.order.insert((deadline, vcpu));
    }

    fn disarm(&mut self, vcpu: usize) {
        if let Some(old) = self.armed.remove(&vcpu) {
            self.order.remove(&(old, vcpu));
        }
    }

    fn first(&self) -> Option<(u64, usize)> {
        self.order.first().copied()
    }

    fn len(&self) -> usize {
        self.order.len()
    }
}

/// The vCPUs' armed deadlines, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    queue: Mutex<Queue>,
    cond: Condvar,
}

/// How long the timer thread sleeps with nothing armed before it re-checks
/// for a stop request.
const IDLE: Duration = Duration::from_millis(50);

impl Timers {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Arms vCPU `vcpu`'s timer for `deadline_ns`, replacing the deadline
    /// it had (firing re-checks the timer's own deadline all the same).
    pub fn arm(&self, vcpu: usize, deadline_ns: u64) {
        self.lock().arm(vcpu, deadline_ns);
        self.cond.notify_one();
    }

    /// Arms vCPU `vcpu`'s timer for `deadline_ns` unless an earlier one is
    /// armed.
    pub fn arm_earlier(&self, vcpu: usize, deadline_ns: u64) {
        let mut q = self.lock();
        if q.armed.get(&vcpu).is_some_and(|&d| d <= deadline_ns) {
            return;
        }
        q.arm(vcpu, deadline_ns);
        drop(q);
        self.cond.notify_one();
    }

    /// Forgets vCPU `vcpu`'s deadline (its timer was stopped).
    pub fn disarm(&self, vcpu: usize) {
        self.lock().disarm(vcpu);
    }

    /// Deadlines armed now (at most one per vCPU).
    pub fn armed(&self) -> usize {
        self.lock().len()
    }

    /// Wakes the thread (after a stop request).
    pub fn wake(&self) {
        self.cond.notify_all();
    }

    /// The timer thread body: `now()` is the APIC clock, `fire(vcpu)` fires
    /// one timer and returns its next deadline; runs until `stop()`.
    pub fn run(
        &self,
        stop: impl Fn() -> bool,
        now: impl Fn() -> u64,
        fire: impl Fn(usize) -> Option<u64>,
    ) {
        let mut q = self.lock();
        while !stop() {
            let t = now();
            match q.first() {
                Some((d, vcpu)) if d <= t => {
                    q.disarm(vcpu);
                    drop(q);
                    let next = fire(vcpu);
                    q = self.lock();
                    // A deadline armed meanwhile by the vCPU is newer.
                    if let (Some(n), false) = (next, q.armed.contains_key(&vcpu)) {
                        q.arm(vcpu, n);
                    }
                }
                Some((d, _)) => {
                    let wait = Duration::from_nanos(d - t).min(IDLE);
                    q = self
                        .cond
                        .wait_timeout(q, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re_arming_keeps_one_entry_per_vcpu() {
        let t = Timers::default();
        for i in 0..100_000u64 {
            t.arm(3, 1_000_000 + i);
            t.arm(7, 5_000_000 - i);
        }
        assert_eq!(t.armed(), 2);
        let q = t.lock();
        assert_eq!(q.first(), Some((1_000_000 + 99_999, 3)));
        drop(q);
        t.disarm(3);
        t.disarm(3);
        assert_eq!(t.armed(), 1);
        assert_eq!(t.lock().first(), Some((5_000_000 - 99_999, 7)));
    }
}
