//! Host-time timer deadlines, at most one per vCPU per queue: a thread
//! sleeps until the earliest armed deadline and fires it. The userspace
//! irqchip's APIC timers use one queue (the APIC raises its vector and the
//! vCPU is kicked or woken), the Hyper-V synthetic timers another.
//! Deadlines are in the APIC clock's nanoseconds.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The time the thread sleeps until, while it sleeps (`None` while it
    /// works: it looks at the queue again before it sleeps).
    sleeping_until: Option<u64>,
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
    /// Times an arming woke the thread.
    wakes: AtomicU64,
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
        let mut q = self.lock();
        q.arm(vcpu, deadline_ns);
        self.wake_if_earlier(q, deadline_ns);
    }

    /// Arms vCPU `vcpu`'s timer for `deadline_ns` unless an earlier one is
    /// armed.
    pub fn arm_earlier(&self, vcpu: usize, deadline_ns: u64) {
        let mut q = self.lock();
        if q.armed.get(&vcpu).is_some_and(|&d| d <= deadline_ns) {
            return;
        }
        q.arm(vcpu, deadline_ns);
        self.wake_if_earlier(q, deadline_ns);
    }

    /// After an arming: wakes the thread only if it sleeps past
    /// `deadline_ns`. Waking it is a futex wake, a cross-CPU interrupt
    /// when it sleeps on another CPU (12-22 us of the caller's CPU on the
    /// host these notes come from); a deadline at or after the one it
    /// sleeps toward, which a VM with many vCPUs re-arming their ticks
    /// mostly has, is found when it wakes for that one.
    fn wake_if_earlier(&self, q: MutexGuard<'_, Queue>, deadline_ns: u64) {
        let wake = q.sleeping_until.is_some_and(|until| deadline_ns < until);
        drop(q);
        if wake {
            self.wakes.fetch_add(1, Ordering::Relaxed);
            self.cond.notify_one();
        }
    }

    /// Times an arming woke the thread.
    pub fn wakes(&self) -> u64 {
        self.wakes.load(Ordering::Relaxed)
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
                first => {
                    let wait = first.map_or(IDLE, |(d, _)| Duration::from_nanos(d - t).min(IDLE));
                    q.sleeping_until = Some(t.saturating_add(wait.as_nanos() as u64));
                    q = self
                        .cond
                        .wait_timeout(q, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    q.sleeping_until = None;
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

    #[test]
    fn arming_wakes_the_thread_only_for_an_earlier_deadline() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicBool;

        const MS: u64 = 1_000_000;
        let t = Arc::new(Timers::default());
        let stop = Arc::new(AtomicBool::new(false));
        // The clock stands still at 0: the thread sleeps toward vCPU 0's
        // deadline, 40 ms, and never fires it.
        t.arm(0, 40 * MS);
        let thread = {
            let (t, stop) = (t.clone(), stop.clone());
            std::thread::spawn(move || t.run(|| stop.load(Ordering::Relaxed), || 0, |_| None))
        };
        // Until the thread sleeps toward `until` (it may still be waking).
        let asleep_until = |t: &Timers, until: u64| {
            let start = std::time::Instant::now();
            while t.lock().sleeping_until != Some(until) {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "never asleep until {until}"
                );
                std::thread::yield_now();
            }
        };
        asleep_until(&t, 40 * MS);
        t.arm(1, 45 * MS);
        t.arm(2, 40 * MS);
        t.arm_earlier(0, 41 * MS);
        assert_eq!(t.wakes(), 0, "deadlines at or after the thread's");
        t.arm(3, 10 * MS);
        assert_eq!(t.wakes(), 1);
        asleep_until(&t, 10 * MS);
        t.arm_earlier(3, 5 * MS);
        assert_eq!(t.wakes(), 2);
        asleep_until(&t, 5 * MS);
        stop.store(true, Ordering::Relaxed);
        t.wake();
        thread.join().unwrap();
    }
}
