//! Host-time local APIC timers: one thread per VM sleeps until the earliest
//! armed deadline and fires it (raising the vector and kicking or waking
//! the vCPU).

use std::collections::BTreeSet;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Armed deadlines, earliest first.
#[derive(Debug, Default)]
pub struct Timers {
    queue: Mutex<BTreeSet<(Instant, usize)>>,
    cond: Condvar,
}

/// How long the timer thread sleeps with nothing armed before it re-checks
/// for a stop request.
const IDLE: Duration = Duration::from_millis(50);

impl Timers {
    /// Arms vCPU `vcpu`'s timer for `deadline` (stale entries are
    /// harmless: firing re-checks the APIC's own deadline).
    pub fn arm(&self, vcpu: usize, deadline: Instant) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        q.insert((deadline, vcpu));
        self.cond.notify_one();
    }

    /// Wakes the thread (after a stop request).
    pub fn wake(&self) {
        self.cond.notify_all();
    }

    /// The timer thread body: `fire(vcpu, now)` fires one timer and
    /// returns its next deadline; runs until `stop()` is true.
    pub fn run(&self, stop: impl Fn() -> bool, fire: impl Fn(usize, Instant) -> Option<Instant>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while !stop() {
            let now = Instant::now();
            match q.first().copied() {
                Some((d, vcpu)) if d <= now => {
                    q.remove(&(d, vcpu));
                    drop(q);
                    let next = fire(vcpu, now);
                    q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(n) = next {
                        q.insert((n, vcpu));
                    }
                }
                Some((d, _)) => {
                    q = self
                        .cond
                        .wait_timeout(q, (d - now).min(IDLE))
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
