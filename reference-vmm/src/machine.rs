//! The state every vCPU thread of a VM shares ([`Machine`]): guest memory,
//! the vCPUs, the irqchip, the Hyper-V partition state, the buses, the end
//! of the run and the measured phase's marks. The run loop
//! ([`crate::runner`]) works on it; [`crate::vm`] builds it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vm_device::device_manager::IoManager;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::apicv::Apicv;
use crate::clock::HostClock;
use crate::error::Error;
use crate::guest::abi::{self, percpu as pc};
use crate::guest::layout;
use crate::hyperv::HyperV;
use crate::irqchip::fanout::{FanOut, FanOutQueue, INLINE_TARGETS};
use crate::irqchip::{AEOI_POLL_NS, Irqchip};
use crate::kvm::stats::KvmVmCounters;
use crate::metrics::VmMetrics;
use crate::profile::ProfileSnapshot;
use crate::timers::Timers;
use crate::vcpu::Vcpu;
use hv_enlightenments::cpuid::CpuidPlan;
use hv_enlightenments::msr::Partition;
use lapic::Clock;

/// How the VMM flushes a vCPU's guest TLB before its next entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMethod {
    /// Reset the vCPU's MMU context: IA32_EFER.NXE toggled and restored
    /// (see [`crate::kvm::flush::flush_guest_tlb`]).
    MmuReset,
    /// Only make the vCPU leave guest mode, without flushing: exists to
    /// show, in tests, what happens without a flush.
    KickOnly,
}

/// How an external guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// It wrote `status` to the isa-debug-exit port (the process exit
    /// code is `status >> 1`, as with QEMU's isa-debug-exit).
    DebugExit(u32),
    /// It powered off (ACPI S5).
    PowerOff,
    /// It reset the machine (port 0xCF9, keyboard controller or triple
    /// fault is reported as an error instead).
    Reset,
    /// The console showed the text the run waited for.
    ConsoleMatched(String),
}

/// The measured phase of a run, between the guest's MARK_START and
/// MARK_END reports.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Operations the guest said it would run.
    pub ops: u64,
    /// Host time between the marks.
    pub elapsed: Duration,
    /// Counters accumulated between the marks.
    pub metrics: VmMetrics,
    /// Guest time between the marks (the guest's own TSC reads,
    /// converted with the TSC frequency).
    pub guest_elapsed: Duration,
    /// TSC frequency in kHz (KVM_GET_TSC_KHZ), for the service-time
    /// counters.
    pub tsc_khz: u64,
    /// KVM's own counters between the marks (kernel irqchip with
    /// KVM_CAP_BINARY_STATS_FD only).
    pub kvm: Option<KvmVmCounters>,
    /// Interrupts the guest's EOI routine completed lazily between the
    /// marks, as the guest counted them (all vCPUs).
    pub guest_lazy_eois: u64,
    /// The profiled exits between the marks, all vCPUs.
    pub profile: ProfileSnapshot,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// Detail value of the DONE report.
    pub detail: u64,
    /// The measured phase, if the guest marked one.
    pub measured: Option<Measured>,
    /// Counters of the whole run.
    pub metrics: VmMetrics,
    /// Wall time of the run.
    pub wall: Duration,
    /// `(vcpu, tag, value)` VALUE reports.
    pub values: Vec<(u32, u64, u64)>,
    /// Changes of the APICv/AVIC inhibit model's effective reasons during
    /// the run, and the first of them, each as "vCPU n: before -> after".
    pub apicv_changes: (u64, Vec<String>),
}

#[derive(Debug, Default)]
pub(crate) struct Marks {
    pub(crate) start: Option<(Instant, VmMetrics, u64)>,
    pub(crate) end: Option<(Instant, VmMetrics, u32)>,
    /// The operations counted at MARK_END ([`abi::MARK_END_COUNTED`]),
    /// which replace MARK_START's.
    pub(crate) counted_ops: Option<u64>,
    /// Guest TSC at MARK_START and MARK_END.
    pub(crate) guest_tsc: (u64, u64),
    pub(crate) values: Vec<(u32, u64, u64)>,
    /// KVM counters and guest lazy-EOI count at MARK_START / MARK_END.
    pub(crate) kstart: Option<(Option<KvmVmCounters>, u64)>,
    pub(crate) kend: Option<(Option<KvmVmCounters>, u64)>,
    /// The exit profile of all vCPUs at MARK_START / MARK_END.
    pub(crate) pstart: Option<ProfileSnapshot>,
    pub(crate) pend: Option<ProfileSnapshot>,
}

/// State shared by every vCPU thread of a VM.
pub struct Machine {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The vCPUs.
    pub vcpus: Vec<Vcpu>,
    /// Where the local APICs live.
    pub irqchip: Irqchip,
    /// The Hyper-V partition state.
    pub hv: HyperV,
    /// What KVM's APICv/AVIC inhibit would be, driven by the guest.
    pub apicv: Apicv,
    /// The APICs' clock.
    pub clock: Arc<HostClock>,
    /// How TLB flushes are done.
    pub flush: FlushMethod,
    /// The synthetic timers' host deadlines (one per vCPU: its earliest).
    pub stimers: Timers,
    /// PV IPI notifications waiting for the fan-out thread.
    pub fan_out: FanOutQueue,
    /// The VM's PIO and MMIO buses (the platform devices of an external
    /// guest). Each vCPU looks at its own devices first
    /// ([`crate::runner::io::VcpuIo`]).
    pub io: IoManager,
    /// An external guest (a kernel loaded from a file) rather than the
    /// built-in one: no report MMIO address, no panic port, unknown ports
    /// and MMIO read all-ones and ignore writes.
    pub external: bool,
    /// How an external guest stopped.
    pub(crate) guest_exit: Mutex<Option<GuestExit>>,
    pub(crate) stop: AtomicBool,
    pub(crate) end: Mutex<Option<Result<u64, Error>>>,
    pub(crate) end_cond: Condvar,
    pub(crate) marks: Mutex<Marks>,
}

impl Machine {
    /// Delivers an MSI-format message to the local APICs (see
    /// [`Irqchip::deliver_msi`]).
    pub fn deliver_msi(&self, address: u64, data: u32) {
        self.irqchip.deliver_msi(&self.vcpus, address, data);
    }

    /// Runs `me`'s synthetic timers now (after a CONFIG/COUNT write or an
    /// EOM, or when their host deadline fired), raises what expired, and
    /// arms the host deadline of the next expiry. Returns that deadline
    /// (APIC clock nanoseconds).
    pub fn service_stimers(&self, me: &Vcpu) -> Option<u64> {
        let (raise, next) = self.hv.run_stimers(me, &self.mem);
        let mut poll = false;
        for (vector, auto_eoi) in raise.iter() {
            poll |= self.irqchip.deliver_sint(me, vector, auto_eoi);
        }
        // An AutoEOI vector waiting for the kernel backend: out of guest
        // mode now, and again until it is done.
        if poll || !me.lock().aeoi_outstanding.is_empty() {
            me.kick_out();
            poll = true;
        }
        // Reference time (100 ns) to the timer thread's clock: the two
        // start together, so the time left is the same in both.
        let now = self.clock.now_ns();
        let deadline = next.map(|at| {
            let left = at.saturating_sub(self.hv.reference_time());
            now.saturating_add(left.saturating_mul(100))
        });
        let deadline = match (deadline, poll) {
            (d, true) => Some(d.map_or(now + AEOI_POLL_NS, |d| d.min(now + AEOI_POLL_NS))),
            (d, false) => d,
        };
        match deadline {
            Some(ns) => self.stimers.arm(me.index as usize, ns),
            None => self.stimers.disarm(me.index as usize),
        }
        deadline
    }

    /// Carries out what a PV IPI left: on this thread when it is small
    /// ([`INLINE_TARGETS`]), else on the fan-out thread, so that the
    /// sender returns to its guest at once.
    pub fn fan_out(&self, f: FanOut) {
        if f.is_empty() {
            return;
        }
        if f.targets() <= INLINE_TARGETS {
            self.irqchip.complete_fan_out(&self.vcpus, &f);
        } else {
            self.fan_out.push(f);
        }
    }

    /// A SynIC interrupt on `v` through the irqchip; where the kernel
    /// backend must complete an AutoEOI vector, `v` is polled out of guest
    /// mode from the hv-stimer thread until it has.
    pub fn raise_sint(&self, v: &Vcpu, vector: u8, auto_eoi: bool) {
        if self.irqchip.deliver_sint(v, vector, auto_eoi) {
            self.stimers
                .arm_earlier(v.index as usize, self.clock.now_ns() + AEOI_POLL_NS);
        }
    }

    /// Raises the NMI pin (LINT1) of every vCPU, as QEMU's `nmi` monitor
    /// command does: each takes it as its LVT LINT1 says (see
    /// [`Irqchip::raise_lint1`]).
    pub fn external_nmi(&self) {
        for v in &self.vcpus {
            self.irqchip.raise_lint1(v);
        }
    }

    /// Whether the run is ending.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The Hyper-V CPUID plan published to the guest, with the values the
    /// frequency MSRs serve (`None`: Hyper-V off).
    pub fn cpuid_plan(&self) -> Option<&CpuidPlan> {
        self.hv.cpuid_plan()
    }

    /// The partition-wide Hyper-V state.
    pub fn partition(&self) -> MutexGuard<'_, Partition> {
        self.hv.partition()
    }

    /// The guest stopped the machine: record how (the first reason wins)
    /// and end the run.
    pub fn guest_stopped(&self, exit: GuestExit) {
        {
            let mut g = self.guest_exit.lock().unwrap_or_else(|e| e.into_inner());
            if g.is_none() {
                *g = Some(exit);
            }
        }
        self.finish(Ok(0));
    }

    /// Counters of every vCPU now.
    pub fn metrics(&self) -> VmMetrics {
        VmMetrics::from_vcpus(self.vcpus.iter().map(|v| v.metrics.snapshot()).collect())
    }

    /// The exit profile summed over every vCPU now.
    pub fn profile(&self) -> ProfileSnapshot {
        ProfileSnapshot::sum(self.vcpus.iter().map(|v| v.profile.snapshot()))
    }

    /// Ends the run with `r` (the first result wins) and wakes everyone.
    pub fn finish(&self, r: Result<u64, Error>) {
        {
            let mut e = self.end.lock().unwrap_or_else(|e| e.into_inner());
            if e.is_none() {
                *e = Some(r);
            }
        }
        self.stop.store(true, Ordering::Release);
        self.end_cond.notify_all();
        self.irqchip.wake_timers();
        self.stimers.wake();
        self.fan_out.wake();
        for v in &self.vcpus {
            v.stop();
        }
    }

    /// KVM's counters (kernel irqchip) and the guest's lazy-EOI count.
    fn extra_counters(&self) -> (Option<KvmVmCounters>, u64) {
        let kvm = self.irqchip.counters();
        let lazy = (0..self.vcpus.len() as u32)
            .filter_map(|i| self.percpu_var(i, pc::LAZY_EOIS))
            .sum();
        (kvm, lazy)
    }

    /// The per-vCPU guest variable at `offset` of `vcpu`, if the guest
    /// named one inside its per-vCPU variables.
    fn percpu_var(&self, vcpu: u32, offset: u64) -> Option<u64> {
        if offset.checked_add(8)? > layout::PERCPU_VARS_SIZE {
            return None;
        }
        let a = layout::percpu(u64::from(vcpu)) + layout::PERCPU_VARS + offset;
        self.mem.read_obj::<u64>(GuestAddress(a)).ok()
    }

    /// Handles a write to the report address.
    pub fn report(&self, vcpu: u32, code: u32, rdi: u64, rsi: u64) {
        match code {
            abi::REPORT_DONE if rdi == 0 => self.finish(Ok(rsi)),
            abi::REPORT_DONE => {
                let last_value = {
                    let k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                    k.values
                        .iter()
                        .rev()
                        .find(|v| v.0 == vcpu)
                        .map(|v| (v.1, v.2))
                };
                self.finish(Err(Error::ScenarioFailed {
                    vcpu,
                    code: rdi,
                    detail: rsi,
                    last_value,
                }))
            }
            abi::REPORT_MARK_START => {
                let m = self.metrics();
                let extra = self.extra_counters();
                let profile = self.profile();
                let mut k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                k.start = Some((Instant::now(), m, rdi));
                k.guest_tsc.0 = rsi;
                k.kstart = Some(extra);
                k.pstart = Some(profile);
            }
            abi::REPORT_MARK_END => {
                let m = self.metrics();
                let extra = self.extra_counters();
                let profile = self.profile();
                let counted = (rdi & abi::MARK_END_COUNTED != 0)
                    .then(|| self.percpu_var(vcpu, rdi & !abi::MARK_END_COUNTED))
                    .flatten();
                let mut k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                k.end = Some((Instant::now(), m, vcpu));
                k.counted_ops = counted;
                k.guest_tsc.1 = rsi;
                k.kend = Some(extra);
                k.pend = Some(profile);
            }
            _ => {
                log::debug!("vCPU {vcpu}: value {rdi:#x} = {rsi:#x}");
                let mut k = self.marks.lock().unwrap_or_else(|e| e.into_inner());
                k.values.push((vcpu, rdi, rsi));
            }
        }
    }
}
