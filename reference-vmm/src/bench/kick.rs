//! The host's cost of notifying another vCPU thread, in the sender's CPU
//! time: a kick (the signal that takes a vCPU thread out of guest mode)
//! sent to a thread running on another CPU, as a vCPU in guest mode is,
//! and a wake-up (the condition variable a halted vCPU sleeps on) of a
//! sleeping thread. On a host that itself runs virtualized, the
//! cross-CPU interrupt either sends is an exit of the host, and it is most
//! of what an exit that must notify its target (an ICR write) costs: the
//! ICR goal is judged against these.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::stats::Stat;
use crate::kvm::kick::{install_handler, signal_thread, this_thread};
use crate::profile::{clock_read_ns, thread_cpu_ns};

/// Notifications timed (an odd count has a median).
const KICKS: usize = 201;
/// Time between two notifications, for the previous one's delivery (and
/// for a woken thread to sleep again).
const GAP: Duration = Duration::from_micros(200);

/// What notifying another vCPU thread costs its sender, ns of CPU
/// (medians).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Notifications {
    /// A kick of a thread running on another CPU.
    pub kick_ns: f64,
    /// A wake-up of a thread asleep on a condition variable.
    pub wake_ns: f64,
}

/// Both costs, or `None` if either cannot be measured.
pub fn notifications() -> Option<Notifications> {
    Some(Notifications {
        kick_ns: measure()?,
        wake_ns: measure_wake()?,
    })
}

/// Median CPU nanoseconds of `notify` on this thread over [`KICKS`]
/// calls [`GAP`] apart, the clock read's own cost taken out; `settle(i)`
/// runs after call `i`, untimed. `None` if a call failed.
fn median_cpu(mut notify: impl FnMut() -> bool, mut settle: impl FnMut(u64)) -> Option<f64> {
    let read = clock_read_ns();
    let mut samples = Vec::with_capacity(KICKS);
    let mut failed = false;
    for i in 0..KICKS as u64 {
        spin_for(GAP);
        let c0 = thread_cpu_ns();
        failed |= !notify();
        let c1 = thread_cpu_ns();
        samples.push(c1.saturating_sub(c0).saturating_sub(read) as f64);
        settle(i);
    }
    (!failed).then(|| Stat::of(&samples).median)
}

/// Spins until `gap` has passed.
fn spin_for(gap: Duration) {
    let t = Instant::now();
    while t.elapsed() < gap {
        std::hint::spin_loop();
    }
}

/// Median CPU nanoseconds the sender spends waking a thread asleep on a
/// condition variable (a halted vCPU's wake-up: the flag set under the
/// lock, then `notify_all`), the clock read's own cost taken out.
pub fn measure_wake() -> Option<f64> {
    let pair = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let woken = Arc::new(AtomicU64::new(0));
    let sleeper = {
        let (pair, woken) = (Arc::clone(&pair), Arc::clone(&woken));
        std::thread::Builder::new()
            .name("wake-target".into())
            .spawn(move || {
                let (lock, cond) = &*pair;
                let mut g = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    while !g.0 && !g.1 {
                        g = cond.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                    if g.1 {
                        return;
                    }
                    g.0 = false;
                    woken.fetch_add(1, Ordering::Release);
                }
            })
            .ok()?
    };
    let (lock, cond) = &*pair;
    let median = median_cpu(
        || {
            lock.lock().unwrap_or_else(|e| e.into_inner()).0 = true;
            cond.notify_all();
            true
        },
        // The next wake finds it asleep again.
        |i| {
            while woken.load(Ordering::Acquire) <= i {
                std::hint::spin_loop();
            }
        },
    );
    lock.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
    cond.notify_all();
    sleeper.join().ok()?;
    median
}

/// Median CPU nanoseconds the sender spends on one kick of a running
/// thread (the clock read's own cost taken out); `None` if the handler
/// or the spinning thread cannot be set up.
pub fn measure() -> Option<f64> {
    install_handler().ok()?;
    let stop = Arc::new(AtomicBool::new(false));
    let id = Arc::new(AtomicU64::new(0));
    let spinner = {
        let (stop, id) = (Arc::clone(&stop), Arc::clone(&id));
        std::thread::Builder::new()
            .name("kick-target".into())
            .spawn(move || {
                id.store(this_thread() as u64, Ordering::Release);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .ok()?
    };
    while id.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let tid = id.load(Ordering::Acquire) as libc::pid_t;
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let median = median_cpu(
        // SAFETY: the spinning thread runs until `stop` is set below and
        // joined, so its thread id is valid; its signal handler is the
        // VMM's empty kick handler.
        || unsafe { signal_thread(pid, tid) }.is_ok(),
        |_| {},
    );
    stop.store(true, Ordering::Relaxed);
    spinner.join().ok()?;
    median
}

#[cfg(test)]
mod tests {
    #[test]
    fn kicks_and_wakes_cost_some_cpu() {
        let n = super::notifications().expect("measured");
        for ns in [n.kick_ns, n.wake_ns] {
            assert!(ns.is_finite() && ns >= 0.0, "{n:?}");
        }
    }
}
