//! The APIC timer: one-shot, periodic and TSC-deadline (SDM 10.5.4), timed
//! by a [`Clock`]. The model only computes deadlines; the VMM arms a host
//! timer for [`crate::LocalApic::next_deadline`] and calls
//! [`crate::LocalApic::poll_timer`] when it fires.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::regs::{LVT_TIMER_MODE_MASK, LVT_TIMER_MODE_SHIFT, TDCR_MASK};

/// Time source for the timer.
pub trait Clock: Send + Sync {
    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
    /// The [`Clock::now_ns`] time at which the guest TSC reaches `tsc`
    /// (for IA32_TSC_DEADLINE).
    fn tsc_to_ns(&self, tsc: u64) -> u64;
}

/// Nanoseconds per millisecond, for kHz conversions.
const NS_PER_MS: u128 = 1_000_000;

/// A clock that moves only when told to: for tests and for VMMs that drive
/// time themselves. The guest TSC is `now_ns * tsc_khz / 1e6`.
#[derive(Debug)]
pub struct ManualClock {
    now: AtomicU64,
    tsc_khz: u64,
}

impl ManualClock {
    /// A clock at time 0 with a guest TSC of `tsc_khz` kHz (0 means 1 GHz).
    ///
    /// ```
    /// use vm_lapic::{Clock, ManualClock};
    ///
    /// let clock = ManualClock::new(2_000_000); // 2 GHz
    /// clock.advance(1_000);
    /// assert_eq!(clock.now_ns(), 1_000);
    /// assert_eq!(clock.tsc_at(1_000), 2_000);
    /// ```
    pub fn new(tsc_khz: u64) -> Self {
        Self {
            now: AtomicU64::new(0),
            tsc_khz: if tsc_khz == 0 { 1_000_000 } else { tsc_khz },
        }
    }

    /// Sets the time.
    pub fn set(&self, ns: u64) {
        self.now.store(ns, Ordering::Relaxed);
    }

    /// Moves the time forward by `ns` (saturating).
    pub fn advance(&self, ns: u64) {
        let t = self.now.load(Ordering::Relaxed).saturating_add(ns);
        self.now.store(t, Ordering::Relaxed);
    }

    /// Guest TSC at `ns`.
    pub fn tsc_at(&self, ns: u64) -> u64 {
        let t = u128::from(ns) * u128::from(self.tsc_khz) / NS_PER_MS;
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    fn tsc_to_ns(&self, tsc: u64) -> u64 {
        let t = u128::from(tsc) * NS_PER_MS / u128::from(self.tsc_khz);
        u64::try_from(t).unwrap_or(u64::MAX)
    }
}

/// Timer mode from LVT timer bits 18:17.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimerMode {
    /// Counts down once from the initial count.
    OneShot,
    /// Reloads the initial count at each expiry.
    Periodic,
    /// Fires when the guest TSC reaches IA32_TSC_DEADLINE.
    TscDeadline,
    /// Encoding 0b11, reserved: the timer never runs (as in KVM).
    Reserved,
}

impl TimerMode {
    /// Decodes an LVT timer value.
    pub fn from_lvt(lvt: u32) -> Self {
        match (lvt & LVT_TIMER_MODE_MASK) >> LVT_TIMER_MODE_SHIFT {
            0 => Self::OneShot,
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            _ => Self::Reserved,
        }
    }
}

/// Divisor selected by the divide configuration register: bits 3,1:0
/// (SDM 10.5.4, KVM `update_divide_count`): 0b000 -> 2 ... 0b110 -> 128,
/// 0b111 -> 1.
pub fn divisor(tdcr: u32) -> u64 {
    let code = (tdcr & 0x3) | ((tdcr & 0x8) >> 1);
    1u64 << ((code + 1) & 0x7)
}

/// The timer's counting state.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Timer {
    /// TMICT.
    pub initial: u32,
    /// TDCR (masked).
    pub tdcr: u32,
    /// Nanoseconds per full count-down (0 = not running).
    pub period_ns: u64,
    /// Absolute expiry (clock ns), if armed.
    pub deadline_ns: Option<u64>,
    /// IA32_TSC_DEADLINE as written (0 = disarmed).
    pub tsc_deadline: u64,
}

impl Timer {
    /// Sets the divide configuration register, keeping bits 0, 1, 3.
    pub fn set_tdcr(&mut self, v: u32) {
        self.tdcr = v & TDCR_MASK;
    }
}
