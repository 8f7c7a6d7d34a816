//! Host time for the userspace APICs, and the partition reference time.

use std::time::Instant;

use hv_enlightenments::reftime::{TscConversion, TscFrequency};
use lapic::Clock;

use crate::metrics::tsc;

/// Host monotonic time for the APICs, from VM creation, and the Hyper-V
/// partition reference time (TIME_REF_COUNT) from the guest's TSC.
#[derive(Debug)]
pub struct HostClock {
    start: Instant,
    tsc_khz: u64,
    /// Guest TSC minus host TSC (KVM's TSC offset), and the guest TSC to
    /// reference time conversion; `None` when the guest TSC frequency or
    /// its value is unknown.
    reference: Option<(u64, TscConversion)>,
}

impl HostClock {
    /// A clock starting now; `tsc_khz` is the guest TSC frequency
    /// (KVM_GET_TSC_KHZ), `guest_tsc` the guest's TSC read just before
    /// (IA32_TSC of a vCPU), if known.
    pub fn new(tsc_khz: u64, guest_tsc: Option<u64>) -> Self {
        let host = tsc();
        let reference = guest_tsc
            .zip(TscFrequency::from_khz(tsc_khz))
            .and_then(|(g, f)| {
                // Offset 0: the count starts at guest TSC 0, which KVM gives
                // the first vCPU at its creation (hv-enlightenments
                // `time_ref_count`).
                TscConversion::new(f, 0)
                    .ok()
                    .map(|c| (g.wrapping_sub(host), c))
            });
        Self {
            start: Instant::now(),
            tsc_khz,
            reference,
        }
    }

    /// The guest TSC to reference time conversion (`None`: the guest TSC
    /// or its frequency is unknown), for a reference TSC page.
    pub fn tsc_conversion(&self) -> Option<TscConversion> {
        self.reference.map(|(_, c)| c)
    }

    /// The partition reference time in 100 ns units (TIME_REF_COUNT): the
    /// guest's TSC now, converted as a reference TSC page would (so that
    /// the MSR and a page never disagree, KVM `get_time_ref_counter`);
    /// host time since creation when the guest TSC is unknown. The host
    /// and guest TSCs tick at the same rate (no TSC scaling is set up).
    pub fn reference_time(&self) -> u64 {
        match self.reference {
            Some((delta, conv)) => conv.reference_time(tsc().wrapping_add(delta)),
            None => self.now_ns() / 100,
        }
    }

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
