//! HLT in the userspace irqchip, with KVM's adaptive halt polling.
//!
//! Without an in-kernel APIC, KVM returns every guest HLT to userspace;
//! the thread then waits for an interrupt it can take. Sleeping at once
//! costs a futex wake on the sender's side and a reschedule on the
//! target's for every interrupt to a halted vCPU: on a ping-pong that is
//! most of the round trip. KVM's own halt (`kvm_vcpu_halt`,
//! virt/kvm/kvm_main.c) first polls for up to a per-vCPU window that
//! adapts to how long the vCPU's halts last. This module does the same, in
//! userspace, with KVM's defaults and rules ([`HaltPoll`]):
//!
//! - the window starts at 0; a halt shorter than the maximum grows it (x2,
//!   at least `grow_start`), a halt longer than the maximum or one ended
//!   by a stop shrinks it (/2, to 0 below `grow_start`); a halt that ends
//!   inside the window leaves it alone;
//! - while polling the run state stays "outside the guest", so a sender
//!   posts and does not wake (the poller sees the posted-interrupt
//!   descriptor), and an interrupt latched under the vCPU's lock (timer,
//!   MSI, SINT, NMI, INIT/SIPI) moves the vCPU's event count
//!   (`Vcpu::events`), which the poller watches;
//! - KVM stops polling when another task is runnable on the CPU
//!   (`single_task_running`). Userspace cannot see the run queue, so a
//!   vCPU polls only while the VM's vCPU threads that are not asleep fit on
//!   the host's CPUs: polling then never takes a CPU a runnable vCPU needs.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipiv::HaltCheck;

use super::entry::deliver_posted;
use crate::metrics::{bump, tsc};
use crate::vcpu::{State, Vcpu};

/// The halt-polling policy: KVM's module parameters of the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaltPoll {
    /// The largest window (`halt_poll_ns`; 0 turns polling off).
    pub max: Duration,
    /// Factor a window grows by (`halt_poll_ns_grow`).
    pub grow: u32,
    /// The first window after 0 (`halt_poll_ns_grow_start`).
    pub grow_start: Duration,
    /// Divisor a window shrinks by (`halt_poll_ns_shrink`; 0: to 0).
    pub shrink: u32,
}

impl Default for HaltPoll {
    /// KVM's defaults on x86: 200 us, x2 from 10 us, /2.
    fn default() -> Self {
        Self {
            max: Duration::from_micros(200),
            grow: 2,
            grow_start: Duration::from_micros(10),
            shrink: 2,
        }
    }
}

impl HaltPoll {
    /// The policy with the largest window `max` (0: off).
    pub fn with_max(max: Duration) -> Self {
        Self {
            max,
            ..Self::default()
        }
    }

    /// The window after a halt of `halt` that ended with an interrupt to
    /// take (`valid`) or with a stop, from the window `window`
    /// (`kvm_vcpu_halt`'s update, with `grow_halt_poll_ns` and
    /// `shrink_halt_poll_ns`).
    pub fn next_window(&self, window: Duration, halt: Duration, valid: bool) -> Duration {
        if self.max.is_zero() {
            Duration::ZERO
        } else if !valid || (!window.is_zero() && halt > self.max) {
            self.shrunk(window)
        } else if halt <= window {
            window
        } else if window < self.max && halt < self.max {
            self.grown(window)
        } else {
            window
        }
    }

    fn grown(&self, window: Duration) -> Duration {
        let w = window.saturating_mul(self.grow).max(self.grow_start);
        w.min(self.max)
    }

    fn shrunk(&self, window: Duration) -> Duration {
        let w = window.checked_div(self.shrink).unwrap_or(Duration::ZERO);
        if w < self.grow_start {
            Duration::ZERO
        } else {
            w
        }
    }
}

/// The VM-wide side of halt polling: the policy and how many vCPU threads
/// are asleep. The largest window may change while the VM runs, as KVM's
/// `KVM_CAP_HALT_POLL` changes a VM's; the other parameters are KVM's
/// defaults.
#[derive(Debug)]
pub struct HaltPolling {
    /// The largest window in nanoseconds.
    max_ns: AtomicU64,
    /// Host CPUs this process may run on.
    host_cpus: u32,
    /// vCPU threads asleep in [`halt`].
    sleepers: AtomicU32,
}

impl HaltPolling {
    /// KVM's default policy on a host with `host_cpus` CPUs for this
    /// process.
    pub fn new(host_cpus: u32) -> Self {
        Self {
            max_ns: AtomicU64::new(HaltPoll::default().max.as_nanos() as u64),
            host_cpus: host_cpus.max(1),
            sleepers: AtomicU32::new(0),
        }
    }

    /// The policy now.
    pub fn policy(&self) -> HaltPoll {
        HaltPoll::with_max(Duration::from_nanos(self.max_ns.load(Ordering::Relaxed)))
    }

    /// Sets the largest window (0: no polling); each vCPU's window follows
    /// at its next halt.
    pub fn set_max(&self, max: Duration) {
        let ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        self.max_ns.store(ns, Ordering::Relaxed);
    }

    /// Whether a vCPU of a VM of `vcpus` may poll now: the vCPU threads not
    /// asleep fit on the host's CPUs.
    fn may_poll(&self, vcpus: usize) -> bool {
        let awake = (vcpus as u64).saturating_sub(u64::from(self.sleepers.load(Ordering::Relaxed)));
        awake <= u64::from(self.host_cpus)
    }
}

/// One vCPU's halt-polling window (its own thread's).
#[derive(Debug, Default, Clone, Copy)]
pub struct PollWindow(Duration);

impl PollWindow {
    /// The current window.
    pub fn get(self) -> Duration {
        self.0
    }
}

/// HLT in userspace: block until an interrupt can be taken (one is pending
/// and the guest halted with IF=1), an NMI or INIT/SIPI arrives, or
/// `stop()`. `cli; hlt` with a maskable interrupt pending stays halted, as
/// KVM's `kvm_vcpu_has_events` decides. First polls for the vCPU's window
/// (see the module); then publishes the "halted" run state with ipiv's
/// protocol, so posters know to wake this thread, and sleeps.
pub fn halt(
    p: &HaltPolling,
    vcpus: usize,
    window: &mut PollWindow,
    me: &Vcpu,
    if_flag: bool,
    stop: &dyn Fn() -> bool,
) {
    let wakes =
        |s: &State| (if_flag && s.apic.pending().is_some()) || s.nmi_pending > 0 || s.mp.pending();
    // Read before the check: an event latched after it moves the count.
    let seen = me.events();
    if stop() || wakes(&me.lock()) {
        return;
    }
    let policy = p.policy();
    window.0 = window.0.min(policy.max);
    let start = Instant::now();
    let mut done = false;
    if !window.0.is_zero() && p.may_poll(vcpus) {
        done = poll(p, vcpus, me, seen, start + window.0, &wakes, stop);
        let spent = start.elapsed().as_nanos() as u64;
        me.metrics.halt_poll_ns.fetch_add(spent, Ordering::Relaxed);
        bump(if done {
            &me.metrics.halt_polls_ok
        } else {
            &me.metrics.halt_polls_failed
        });
    }
    if !done {
        p.sleepers.fetch_add(1, Ordering::Relaxed);
        sleep(me, &wakes, stop);
        p.sleepers.fetch_sub(1, Ordering::Relaxed);
    }
    window.0 = policy.next_window(window.0, start.elapsed(), !stop());
}

/// Polls until `deadline` for an interrupt `wakes` accepts (`seen`: the
/// vCPU's event count when it was last checked); `false` when the window
/// ran out, a stop came, or polling stopped being allowed.
fn poll(
    p: &HaltPolling,
    vcpus: usize,
    me: &Vcpu,
    mut seen: u64,
    deadline: Instant,
    wakes: &dyn Fn(&State) -> bool,
    stop: &dyn Fn() -> bool,
) -> bool {
    let desc = me.posted.descriptor();
    let run_state = me.posted.run_state();
    loop {
        let events = me.events();
        if desc.has_pending() || events != seen {
            crate::ipi_path::turn_started(tsc());
            seen = events;
            let mut s = me.lock();
            deliver_posted(&mut s, run_state.leave_guest(desc));
            if wakes(&s) {
                return true;
            }
        }
        if stop() || Instant::now() >= deadline || !p.may_poll(vcpus) {
            return false;
        }
        for _ in 0..16 {
            std::hint::spin_loop();
        }
    }
}

/// Sleeps with the "halted" run state published until `wakes` or
/// `stop()`.
fn sleep(me: &Vcpu, wakes: &dyn Fn(&State) -> bool, stop: &dyn Fn() -> bool) {
    let desc = me.posted.descriptor();
    let run_state = me.posted.run_state();
    let mut s = me.lock();
    loop {
        deliver_posted(&mut s, run_state.leave_guest(desc));
        if stop() || wakes(&s) {
            break;
        }
        s.woken = false;
        if run_state.prepare_halt(desc) == HaltCheck::Pending {
            continue;
        }
        s = me.wait_woken(s, |s| stop() || wakes(s));
        crate::ipi_path::turn_started(tsc());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn window_grows_from_start_to_the_maximum_on_short_halts() {
        let p = HaltPoll::default();
        let mut w = Duration::ZERO;
        let mut seen = vec![];
        for _ in 0..7 {
            w = p.next_window(w, 100 * US, true);
            seen.push(w.as_micros());
        }
        // A halt inside the window leaves it; 100 us halts stop growth at
        // 160 us, as KVM's do.
        assert_eq!(seen, [10, 20, 40, 80, 160, 160, 160]);
        assert_eq!(p.next_window(160 * US, 180 * US, true), 200 * US);
        assert_eq!(p.next_window(200 * US, 199 * US, true), 200 * US);
    }

    #[test]
    fn window_shrinks_on_long_halts_and_stops() {
        let p = HaltPoll::default();
        assert_eq!(p.next_window(200 * US, 5000 * US, true), 100 * US);
        assert_eq!(p.next_window(100 * US, 5000 * US, true), 50 * US);
        assert_eq!(p.next_window(20 * US, 5000 * US, true), 10 * US);
        // Below grow_start: off until a short halt grows it again.
        assert_eq!(p.next_window(10 * US, 5000 * US, true), Duration::ZERO);
        assert_eq!(
            p.next_window(Duration::ZERO, 5000 * US, true),
            Duration::ZERO
        );
        assert_eq!(p.next_window(80 * US, 1 * US, false), 40 * US);
        let no_shrink = HaltPoll {
            shrink: 0,
            ..HaltPoll::default()
        };
        assert_eq!(
            no_shrink.next_window(200 * US, 5000 * US, true),
            Duration::ZERO
        );
    }

    #[test]
    fn off_stays_off() {
        let p = HaltPoll::with_max(Duration::ZERO);
        assert_eq!(p.next_window(Duration::ZERO, US, true), Duration::ZERO);
        assert_eq!(p.next_window(50 * US, US, true), Duration::ZERO);
    }

    #[test]
    fn polling_only_while_awake_threads_fit_the_host() {
        let p = HaltPolling::new(2);
        assert!(p.may_poll(2));
        assert!(!p.may_poll(4));
        p.sleepers.store(2, Ordering::Relaxed);
        assert!(p.may_poll(4));
        assert!(!p.may_poll(1024));
        assert!(HaltPolling::new(0).may_poll(1));
    }

    #[test]
    fn the_largest_window_changes_at_run_time() {
        let p = HaltPolling::new(2);
        assert_eq!(p.policy(), HaltPoll::default());
        p.set_max(Duration::ZERO);
        assert_eq!(p.policy().next_window(50 * US, US, true), Duration::ZERO);
        p.set_max(Duration::from_millis(1));
        assert_eq!(p.policy().max, Duration::from_millis(1));
    }
}
