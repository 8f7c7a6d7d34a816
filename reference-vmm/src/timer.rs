//! Host-time local APIC timers: one thread per VM sleeps until the earliest
//! armed deadline and fires it (the APIC raises its vector and the vCPU is
//! kicked or woken). Deadlines are in the APIC clock's nanoseconds.

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Armed deadlines, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    queue: Mutex<BTreeSet<(u64, usize)>>,
    cond: Condvar,
}

/// How long the timer thread sleeps with nothing armed before it re-checks
/// for a stop request.
const IDLE: Duration = Duration::from_millis(50);

impl Timers {
    /// Arms vCPU `vcpu`'s timer for `deadline_ns` (stale entries are
    /// harmless: firing re-checks the APIC's own deadline).
    pub fn arm(&self, vcpu: usize, deadline_ns: u64) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.insert((deadline_ns, vcpu));
        self.cond.notify_one();
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
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while !stop() {
            let t = now();
            match q.first().copied() {
                Some((d, vcpu)) if d <= t => {
                    q.remove(&(d, vcpu));
                    drop(q);
                    let next = fire(vcpu);
                    q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(n) = next {
                        q.insert((n, vcpu));
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
