//! The crate-level cost of the `ex64` call: its decode (hv-enlightenments)
//! and dispatch ([`crate::hyperv::hypercall::dispatch`]: flush requests to
//! targets outside guest mode) timed in this process without KVM, on as
//! many vCPUs as the VM had, as `cargo bench --bench ex_hypercall` times
//! it. Added to the null hypercall's service (the fixed cost of any
//! hypercall exit on the host), it is what the `ex64` goal is held to
//! where that fixed cost alone exceeds the goal.

use std::sync::Arc;
use std::time::Instant;

use hv_enlightenments::hypercall::{HypercallRegs, decode};
use lapic::LocalApic;
use serde::Serialize;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::stats::Stat;
use crate::clock::HostClock;
use crate::guest::scenarios::ex64_input;
use crate::hyperv::hypercall::dispatch;
use crate::metrics::VcpuMetrics;
use crate::vcpu::Vcpu;

/// Calls timed (an odd count has a median), after as many untimed.
const CALLS: usize = 1001;
/// Guest address of the call's input.
const INPUT_GPA: u64 = 0x1000;
/// Guest memory of the measurement.
const MEMORY: usize = 1 << 20;
/// TSC frequency of the vCPUs' APIC clock (their timers are not used).
const APIC_CLOCK_KHZ: u64 = 1_000_000;

/// The decode and dispatch of one `ex64` call, timed in-process.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct DecodeDispatch {
    /// vCPUs it was timed on (as many as the VM's).
    pub vcpus: u32,
    /// Median nanoseconds per call.
    pub ns: f64,
}

impl DecodeDispatch {
    /// Times the call on `vcpus` vCPUs; `None` if they or the guest
    /// memory cannot be built, or the call fails.
    pub fn measure(vcpus: u32) -> Option<Self> {
        let clock = Arc::new(HostClock::new(APIC_CLOCK_KHZ, None));
        let table = ipiv::PidTable::new(vcpus.checked_sub(1)?).ok()?;
        let all: Vec<Vcpu> = (0..vcpus)
            .map(|i| {
                let apic = LocalApic::new(lapic::Config::new(i), clock.clone()).ok()?;
                Some(Vcpu::new(i, apic, None, table.register(i).ok()?))
            })
            .collect::<Option<_>>()?;
        let (control, words) = ex64_input();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEMORY)]).ok()?;
        for (i, w) in words.iter().enumerate() {
            mem.write_obj(*w, GuestAddress(INPUT_GPA + 8 * i as u64))
                .ok()?;
        }
        let regs = HypercallRegs {
            rcx: control,
            rdx: INPUT_GPA,
            r8: 0,
            ..Default::default()
        };
        let metrics = VcpuMetrics::default();
        let mut times = Vec::with_capacity(CALLS);
        for i in 0..2 * CALLS {
            let start = Instant::now();
            let call = decode(&regs, &mem).ok()?;
            dispatch(&all, &metrics, &call, |t, v| t.post(v)).ok()?;
            let ns = start.elapsed().as_nanos() as f64;
            if i >= CALLS {
                times.push(ns);
            }
        }
        Some(Self {
            vcpus,
            ns: Stat::of(&times).median,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_the_call_on_the_vms_vcpus() {
        let d = DecodeDispatch::measure(4).unwrap();
        assert_eq!(d.vcpus, 4);
        assert!(d.ns > 0.0 && d.ns < 1e6, "{d:?}");
        assert!(DecodeDispatch::measure(0).is_none());
    }
}
