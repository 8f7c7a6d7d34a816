//! Per-vCPU counters (plain relaxed atomics) and their snapshots, printed
//! as a table or serialized as JSON.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! counters {
    ($(#[$m:meta])* $name:ident, $snap:ident { $($(#[$fm:meta])* $f:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[$fm])* pub $f: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
        pub struct $snap {
            $($(#[$fm])* pub $f: u64,)*
        }

        impl $name {
            /// Reads every counter.
            pub fn snapshot(&self) -> $snap {
                $snap { $($f: self.$f.load(Ordering::Relaxed),)* }
            }
        }

        impl $snap {
            /// Field-wise sum.
            pub fn add(&mut self, o: &Self) {
                $(self.$f += o.$f;)*
            }
            /// Field-wise difference `self - earlier` (saturating).
            pub fn since(&self, earlier: &Self) -> Self {
                Self { $($f: self.$f.saturating_sub(earlier.$f),)* }
            }
            /// `(name, value)` pairs in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($f), self.$f),)*]
            }
        }
    };
}

counters!(
    /// Counters of one vCPU.
    VcpuMetrics, MetricsSnapshot {
        /// All `KVM_RUN` returns, including interrupted ones.
        exits,
        /// Port I/O exits.
        exit_io,
        /// MMIO exits.
        exit_mmio,
        /// HLT exits.
        exit_hlt,
        /// Interrupt-window exits.
        exit_irq_window,
        /// `KVM_RUN` interrupted by a kick (EINTR).
        exit_intr,
        /// Userspace MSR read exits.
        exit_rdmsr,
        /// Userspace MSR write exits.
        exit_wrmsr,
        /// Any other exit.
        exit_other,
        /// MSR exits for Hyper-V synthetic MSRs.
        msr_synthetic,
        /// MSR exits for x2APIC MSRs.
        msr_x2apic,
        /// Other MSR exits (answered with #GP).
        msr_other,
        /// MSR exits that wrote the x2APIC ICR or HV_X64_MSR_ICR.
        msr_icr_writes,
        /// Hypercalls (trap-stub exits).
        hypercalls,
        /// Hypercalls that returned HV_STATUS_SUCCESS.
        hypercalls_ok,
        /// Hypercalls that returned an error status.
        hypercalls_failed,
        /// Hypercalls refused with #UD (CPL != 0 or hypercalls off).
        hypercalls_ud,
        /// Hypercalls answered HV_STATUS_INVALID_HYPERCALL_CODE.
        hc_status_invalid_code,
        /// Hypercalls answered HV_STATUS_INVALID_HYPERCALL_INPUT.
        hc_status_invalid_input,
        /// Hypercalls answered HV_STATUS_INVALID_ALIGNMENT.
        hc_status_invalid_alignment,
        /// Hypercalls answered with another error status.
        hc_status_other,
        /// Fast hypercalls whose input continued in XMM registers.
        hc_xmm_input,
        /// HvCallSendSyntheticClusterIpi(Ex) calls.
        hc_send_ipi,
        /// HvCallFlushVirtualAddress{Space,List}(Ex) calls.
        hc_flush,
        /// Interrupts this vCPU posted to others (or itself).
        ipis_posted,
        /// Kicks out of `KVM_RUN` this vCPU received (signal +
        /// `immediate_exit`). With the kernel irqchip a halted vCPU halts
        /// inside `KVM_RUN`, so a flush request kicks it too: counted here,
        /// not as a wakeup.
        kicks,
        /// Of those kicks, the ones that sent a signal: a kick that finds
        /// the vCPU's `immediate_exit` already set sends none (one signal
        /// per entry).
        kick_signals,
        /// Times this halted vCPU was woken by the VMM (userspace irqchip
        /// only: with the kernel irqchip KVM wakes halted vCPUs itself and
        /// the figure is reported as "n/a").
        wakeups,
        /// Halts (userspace irqchip) that ended while polling: an
        /// interrupt arrived within the vCPU's halt-polling window, with no
        /// wake-up and no sleep (KVM's `halt_successful_poll`).
        halt_polls_ok,
        /// Halts that polled for the whole window, then slept
        /// (`halt_attempted_poll` - `halt_successful_poll`).
        halt_polls_failed,
        /// Nanoseconds spent polling in HLT, successful or not: the CPU
        /// halt polling costs (`halt_poll_{success,fail}_ns`).
        halt_poll_ns,
        /// Interrupts injected (userspace irqchip).
        injections,
        /// Of those, queued through the vCPU events KVM synchronizes in
        /// `kvm_run` (`KVM_SYNC_X86_EVENTS`) rather than `KVM_INTERRUPT`.
        injections_synced,
        /// NMIs handed to KVM with KVM_NMI.
        nmis,
        /// EOIs by an MSR or MMIO write that reached the VMM (kernel
        /// irqchip: synthetic EOI MSR writes only).
        eoi_msr,
        /// EOIs completed lazily through the VP assist page (userspace
        /// irqchip; with the kernel irqchip KVM's PV EOI completes them and
        /// the guest's own count is reported instead).
        eoi_lazy,
        /// Timer interrupts raised.
        timer_fires,
        /// Synthetic timer expiries delivered (message or direct mode).
        stimer_expiries,
        /// HvPostMessage / HvSignalEvent calls.
        hc_synic,
        /// AutoEOI vectors the VMM completed in KVM's LAPIC (kernel
        /// irqchip: it cannot skip their ISR bit).
        eoi_auto,
        /// Remote flushes this vCPU requested (one per target).
        flush_requested,
        /// Requested flushes whose target was not in guest mode (done at
        /// its next entry, no kick). Userspace irqchip: halted targets
        /// included; kernel irqchip: only targets outside `KVM_RUN`.
        flush_deferred,
        /// Guest TLB flushes performed on this vCPU before an entry.
        flushes_done,
        /// Host TSC cycles handling MSR exits other than ICR writes (from
        /// the return of `KVM_RUN` to the end of the handler).
        svc_cycles_msr,
        /// Host TSC cycles handling ICR writes (x2APIC ICR or
        /// HV_X64_MSR_ICR): the exits that send an IPI.
        svc_cycles_icr,
        /// Host TSC cycles handling hypercall exits.
        svc_cycles_hypercall,
        /// Of those, the cycles spent decoding the calls and carrying them
        /// out (from `hypercall::decode` to the end of the dispatch or the
        /// SynIC call); the rest is the trap's fixed cost.
        hc_call_cycles,
        /// Probes of the bench's call in an exit without the trap
        /// ([`crate::guest::abi::PROBE_PORT`]).
        probes,
        /// Host TSC cycles of those probes' decode and dispatch.
        probe_cycles,
        /// Host TSC cycles handling other port I/O exits.
        svc_cycles_pio,
        /// Host TSC cycles handling MMIO exits (scenario reports left out).
        svc_cycles_mmio,
        /// Host TSC cycles handling HLT exits, up to the sleep.
        svc_cycles_hlt,
        /// Host TSC cycles handling any other exit (kicks, interrupt
        /// windows).
        svc_cycles_other,
        /// Host TSC cycles preparing entries (flush, posted vectors,
        /// injection, lazy EOI).
        svc_cycles_entry,
        /// Posted interrupts whose path from the sender's exit to this
        /// vCPU's entry was timed ([`crate::ipi_path`]).
        ipi_paths,
        /// TSC cycles of those paths spent in VMM turns: the sender's up
        /// to the post or notification, this vCPU's from noticing to the
        /// entry that injects.
        ipi_path_vmm_cycles,
        /// TSC cycles of those paths between the post or notification and
        /// this vCPU noticing (a kick's or wake-up's latency; none when
        /// its halt poll saw the post).
        ipi_path_notify_cycles,
    }
);

/// The host's time stamp counter (two of these bracket each exit
/// handler; see [`rdtsc_overhead_cycles`]).
#[inline]
pub fn tsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// The cost of one back-to-back pair of [`tsc`] reads, in cycles (the
/// smallest of `samples` pairs): what the per-exit service time
/// measurement adds to each exit.
pub fn rdtsc_overhead_cycles(samples: u32) -> u64 {
    let mut best = u64::MAX;
    for _ in 0..samples.max(1) {
        let a = tsc();
        let b = tsc();
        best = best.min(b.wrapping_sub(a));
    }
    best
}

/// Exit classes of the service-time accounting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// Userspace MSR exit, other than an ICR write.
    Msr,
    /// A write of the x2APIC ICR or HV_X64_MSR_ICR (an IPI's send).
    Icr,
    /// Hypercall (port write of the hypercall page).
    Hypercall,
    /// Other port I/O.
    Pio,
    /// MMIO.
    Mmio,
    /// HLT.
    Hlt,
    /// Anything else.
    Other,
}

impl VcpuMetrics {
    /// Adds `cycles` of service time to `class`.
    #[inline]
    pub fn add_service(&self, class: ExitClass, cycles: u64) {
        let c = match class {
            ExitClass::Msr => &self.svc_cycles_msr,
            ExitClass::Icr => &self.svc_cycles_icr,
            ExitClass::Hypercall => &self.svc_cycles_hypercall,
            ExitClass::Pio => &self.svc_cycles_pio,
            ExitClass::Mmio => &self.svc_cycles_mmio,
            ExitClass::Hlt => &self.svc_cycles_hlt,
            ExitClass::Other => &self.svc_cycles_other,
        };
        c.fetch_add(cycles, Ordering::Relaxed);
    }
}

impl MetricsSnapshot {
    /// Handler cycles summed over every exit class (entry preparation
    /// left out).
    pub fn handler_cycles(&self) -> u64 {
        self.svc_cycles_msr
            + self.svc_cycles_icr
            + self.svc_cycles_hypercall
            + self.svc_cycles_pio
            + self.svc_cycles_mmio
            + self.svc_cycles_hlt
            + self.svc_cycles_other
    }

    /// `(class, exits, handler cycles)` per exit class.
    pub fn service_by_class(&self) -> [(&'static str, u64, u64); 7] {
        [
            (
                "msr",
                (self.exit_rdmsr + self.exit_wrmsr).saturating_sub(self.msr_icr_writes),
                self.svc_cycles_msr,
            ),
            ("icr", self.msr_icr_writes, self.svc_cycles_icr),
            ("hypercall", self.hypercalls, self.svc_cycles_hypercall),
            (
                "pio",
                self.exit_io.saturating_sub(self.hypercalls),
                self.svc_cycles_pio,
            ),
            ("mmio", self.exit_mmio, self.svc_cycles_mmio),
            ("hlt", self.exit_hlt, self.svc_cycles_hlt),
            (
                "other",
                self.exit_intr + self.exit_irq_window + self.exit_other,
                self.svc_cycles_other,
            ),
        ]
    }
}

/// Counters of every vCPU of a VM.
#[derive(Debug, Clone, Serialize)]
pub struct VmMetrics {
    /// Sum over all vCPUs.
    pub total: MetricsSnapshot,
    /// Per vCPU.
    pub vcpus: Vec<MetricsSnapshot>,
}

impl VmMetrics {
    /// Builds the totals from per-vCPU snapshots.
    pub fn from_vcpus(vcpus: Vec<MetricsSnapshot>) -> Self {
        let mut total = MetricsSnapshot::default();
        for v in &vcpus {
            total.add(v);
        }
        Self { total, vcpus }
    }

    /// Difference against an earlier reading of the same VM.
    pub fn since(&self, earlier: &Self) -> Self {
        let vcpus = self
            .vcpus
            .iter()
            .zip(earlier.vcpus.iter())
            .map(|(a, b)| a.since(b))
            .collect();
        Self::from_vcpus(vcpus)
    }

    /// A table with one row per non-zero counter and one column per vCPU
    /// (up to `max_cols` vCPUs) plus the total.
    pub fn table(&self, max_cols: usize) -> String {
        use std::fmt::Write;
        let shown = self.vcpus.len().min(max_cols);
        let mut s = String::new();
        let _ = write!(s, "{:<18}{:>10}", "counter", "total");
        for i in 0..shown {
            let _ = write!(s, "{:>8}", format!("vcpu{i}"));
        }
        s.push('\n');
        let per: Vec<Vec<(&str, u64)>> = self.vcpus.iter().map(|v| v.fields()).collect();
        for (row, (name, total)) in self.total.fields().into_iter().enumerate() {
            if total == 0 {
                continue;
            }
            let _ = write!(s, "{name:<18}{total:>10}");
            for p in per.iter().take(shown) {
                let _ = write!(s, "{:>8}", p[row].1);
            }
            s.push('\n');
        }
        s
    }
}

impl VcpuMetrics {
    /// Counts a hypercall's status.
    pub fn count_status(&self, status: u16) {
        match status {
            0 => bump(&self.hypercalls_ok),
            2 => bump(&self.hc_status_invalid_code),
            3 => bump(&self.hc_status_invalid_input),
            4 => bump(&self.hc_status_invalid_alignment),
            _ => bump(&self.hc_status_other),
        }
        if status != 0 {
            bump(&self.hypercalls_failed);
        }
    }
}

/// Adds one to a counter.
#[inline]
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_difference_and_table() {
        let a = VcpuMetrics::default();
        let b = VcpuMetrics::default();
        bump(&a.exits);
        let before = VmMetrics::from_vcpus(vec![a.snapshot(), b.snapshot()]);
        bump(&a.exits);
        bump(&b.kicks);
        a.count_status(3);
        a.count_status(0);
        let after = VmMetrics::from_vcpus(vec![a.snapshot(), b.snapshot()]);
        let d = after.since(&before);
        assert_eq!(d.total.exits, 1);
        assert_eq!(d.total.kicks, 1);
        assert_eq!(d.total.hypercalls_ok, 1);
        assert_eq!(d.total.hypercalls_failed, 1);
        assert_eq!(d.total.hc_status_invalid_input, 1);
        let t = d.table(8);
        assert!(t.contains("kicks"));
        assert!(!t.contains("wakeups"), "zero rows are left out:\n{t}");
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("\"kicks\":1"));
    }
}
