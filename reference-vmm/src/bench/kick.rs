//! The host's cost of one kick: the signal that takes a vCPU thread out
//! of guest mode, sent to a thread that is running on another CPU (as a
//! vCPU in guest mode is), in the sender's CPU time. On a host that
//! itself runs virtualized the signal's cross-CPU interrupt is an exit of
//! the host, and it is most of what an exit that must kick its target
//! (an ICR write to a vCPU in guest mode) costs: the ICR goal is judged
//! against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::kvm::kick::{install_handler, kick_signal};
use crate::profile::{clock_read_ns, thread_cpu_ns};

/// Kicks timed (an odd count has a median).
const KICKS: usize = 201;
/// Time between two kicks, for the previous one's delivery.
const GAP: Duration = Duration::from_micros(200);

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
                // SAFETY: pthread_self has no preconditions.
                id.store(unsafe { libc::pthread_self() } as u64, Ordering::Release);
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
            .ok()?
    };
    while id.load(Ordering::Acquire) == 0 {
        std::hint::spin_loop();
    }
    let thread = id.load(Ordering::Acquire) as libc::pthread_t;
    let read = clock_read_ns();
    let mut samples = Vec::with_capacity(KICKS);
    let mut failed = false;
    for _ in 0..KICKS {
        let t = Instant::now();
        while t.elapsed() < GAP {
            std::hint::spin_loop();
        }
        let c0 = thread_cpu_ns();
        // SAFETY: the spinning thread runs until `stop` is set below and
        // joined, so its pthread id is valid; its signal handler is the
        // VMM's empty kick handler.
        let r = unsafe { libc::pthread_kill(thread, kick_signal()) };
        let c1 = thread_cpu_ns();
        failed |= r != 0;
        samples.push(c1.saturating_sub(c0).saturating_sub(read) as f64);
    }
    stop.store(true, Ordering::Relaxed);
    spinner.join().ok()?;
    if failed {
        return None;
    }
    samples.sort_by(f64::total_cmp);
    samples.get(KICKS / 2).copied()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kick_costs_some_cpu() {
        let ns = super::measure().expect("kick measured");
        assert!(ns.is_finite() && ns >= 0.0, "{ns}");
    }
}
