//! Host time for the userspace APICs and the partition reference counter.

use std::time::Instant;

use lapic::Clock;

/// Host monotonic time for the APICs, from VM creation.
#[derive(Debug)]
pub struct HostClock {
    start: Instant,
    tsc_khz: u64,
}

impl HostClock {
    /// A clock starting now; `tsc_khz` is the guest TSC frequency
    /// (KVM_GET_TSC_KHZ).
    pub fn new(tsc_khz: u64) -> Self {
        Self {
            start: Instant::now(),
            tsc_khz,
        }
    }
}

impl HostClock {
    /// The TSC frequency in kHz (KVM_GET_TSC_KHZ).
    pub fn tsc_khz(&self) -> u64 {
        self.tsc_khz
    }

    /// `cycles` of the TSC in nanoseconds.
    pub fn cycles_to_ns(&self, cycles: f64) -> f64 {
        cycles_to_ns(cycles, self.tsc_khz)
    }
}

/// `cycles` of a TSC running at `tsc_khz` kHz, in nanoseconds (0 kHz is
/// taken as 1 kHz rather than dividing by zero).
pub fn cycles_to_ns(cycles: f64, tsc_khz: u64) -> f64 {
    cycles * 1_000_000.0 / tsc_khz.max(1) as f64
}

impl Clock for HostClock {
    fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// The guest TSC starts near 0 when the vCPUs are created (KVM
    /// synchronizes new vCPUs' TSCs to 0), which is close to `start`.
    fn tsc_to_ns(&self, tsc: u64) -> u64 {
        ((u128::from(tsc) * 1_000_000) / u128::from(self.tsc_khz.max(1))) as u64
    }
}
