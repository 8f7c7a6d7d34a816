//! Running a named scenario on a fresh VM and turning its measured phase
//! into per-operation figures.

use std::time::Duration;

use serde::Serialize;

use crate::clock::cycles_to_ns;
use crate::error::Error;
use crate::guest::asm;
use crate::guest::scenarios::{self, EoiMode, FlushMode, IpiMode};
use crate::irqchip::Observes;
use crate::kvm::stats::KvmVmCounters;
use crate::metrics::VmMetrics;
use crate::profile::{self, ProfileSplit};
use crate::vm::{FlushMethod, Program, RunReport, Vm, VmConfig};
use hv_enlightenments::accel::IrqchipMode;

/// A scenario with its variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// IPI ping-pong between vCPU 0 and 1.
    PingPong(IpiMode),
    /// Broadcast IPI from vCPU 0 to all others.
    Broadcast(IpiMode),
    /// TLB shootdown with one running reader, the others halted.
    Shootdown(FlushMode),
    /// Periodic timer interrupts on vCPU 0.
    Timer(EoiMode),
    /// Periodic Hyper-V synthetic timer 0 expiries on vCPU 0, direct mode.
    Stimer(EoiMode),
    /// Periodic synthetic timer 0 expiries on vCPU 0 in message mode on
    /// SINT 2: lazy EOI, or AutoEOI (`true`).
    StimerMessage(bool),
    /// SynIC round trip: a message from vCPU 0 to vCPU 1, an event back.
    SynicPingPong,
    /// A CPL3 `dec; jnz` loop.
    Cpl3Loop,
    /// Null system calls (CPL3 -> CPL0 -> CPL3).
    SyscallLoop,
    /// Bare MMIO exits from CPL3.
    MmioExitLoop,
    /// Bare port I/O exits from CPL3.
    PioExitLoop,
    /// Null hypercalls (fast SendSyntheticClusterIpi, empty mask).
    NullHypercall,
    /// FlushVirtualAddressSpaceEx with a 64-bank sparse VP set.
    HypercallEx64,
    /// `HypercallEx64`'s call decoded and carried out right after exits
    /// the guest takes as it takes its hypercalls, without the trap.
    HypercallEx64Probe,
}

impl Scenario {
    /// Every named scenario, enlightened ones after their native twin.
    pub const ALL: [Scenario; 26] = [
        Scenario::PingPong(IpiMode::Native),
        Scenario::PingPong(IpiMode::PvFast),
        Scenario::PingPong(IpiMode::Xapic),
        Scenario::PingPong(IpiMode::SyntheticIcr),
        Scenario::SynicPingPong,
        Scenario::Broadcast(IpiMode::Native),
        Scenario::Broadcast(IpiMode::Xapic),
        Scenario::Broadcast(IpiMode::SyntheticIcr),
        Scenario::Broadcast(IpiMode::PvFast),
        Scenario::Broadcast(IpiMode::PvEx),
        Scenario::Shootdown(FlushMode::Native),
        Scenario::Shootdown(FlushMode::Pv),
        Scenario::Timer(EoiMode::X2apic),
        Scenario::Timer(EoiMode::Synthetic),
        Scenario::Timer(EoiMode::Lazy),
        Scenario::Stimer(EoiMode::X2apic),
        Scenario::Stimer(EoiMode::Lazy),
        Scenario::StimerMessage(false),
        Scenario::StimerMessage(true),
        Scenario::Cpl3Loop,
        Scenario::SyscallLoop,
        Scenario::MmioExitLoop,
        Scenario::PioExitLoop,
        Scenario::NullHypercall,
        Scenario::HypercallEx64,
        Scenario::HypercallEx64Probe,
    ];

    /// The scenario's name.
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::PingPong(IpiMode::Native) => "pingpong-x2apic",
            Scenario::PingPong(IpiMode::Xapic) => "pingpong-xapic",
            Scenario::PingPong(IpiMode::SyntheticIcr) => "pingpong-synthetic-icr",
            Scenario::PingPong(_) => "pingpong-pv",
            Scenario::Broadcast(IpiMode::Native) => "broadcast-x2apic",
            Scenario::Broadcast(IpiMode::PvFast) => "broadcast-pv-fast",
            Scenario::Broadcast(IpiMode::PvEx) => "broadcast-pv-ex",
            Scenario::Broadcast(IpiMode::Xapic) => "broadcast-xapic",
            Scenario::Broadcast(IpiMode::SyntheticIcr) => "broadcast-synthetic-icr",
            Scenario::Shootdown(FlushMode::Native) => "shootdown-ipi",
            Scenario::Shootdown(FlushMode::Pv) => "shootdown-pv",
            Scenario::Shootdown(FlushMode::None) => "shootdown-none",
            Scenario::Timer(EoiMode::X2apic) => "timer-x2apic-eoi",
            Scenario::Timer(EoiMode::Synthetic) => "timer-synthetic-eoi",
            Scenario::Timer(EoiMode::Lazy) => "timer-lazy-eoi",
            Scenario::Stimer(EoiMode::X2apic) => "stimer-direct-x2apic-eoi",
            Scenario::Stimer(EoiMode::Synthetic) => "stimer-direct-synthetic-eoi",
            Scenario::Stimer(EoiMode::Lazy) => "stimer-direct-lazy-eoi",
            Scenario::StimerMessage(false) => "stimer-message-lazy-eoi",
            Scenario::StimerMessage(true) => "stimer-message-auto-eoi",
            Scenario::SynicPingPong => "synic-pingpong",
            Scenario::Cpl3Loop => "cpl3-loop",
            Scenario::SyscallLoop => "syscall-loop",
            Scenario::MmioExitLoop => "mmio-exit-loop",
            Scenario::PioExitLoop => "pio-exit-loop",
            Scenario::NullHypercall => "null-hypercall",
            Scenario::HypercallEx64 => "hypercall-ex64",
            Scenario::HypercallEx64Probe => "hypercall-ex64-probe",
        }
    }

    /// Looks a scenario up by name.
    pub fn by_name(name: &str) -> Option<Scenario> {
        Self::ALL
            .iter()
            .copied()
            .chain([Scenario::Shootdown(FlushMode::None)])
            .find(|s| s.name() == name)
    }

    /// Whether the scenario needs the Hyper-V enlightenments.
    pub fn hyperv(&self) -> bool {
        match self {
            Scenario::PingPong(m) | Scenario::Broadcast(m) => m.enlightened(),
            Scenario::Shootdown(m) => *m == FlushMode::Pv,
            Scenario::Timer(m) => *m != EoiMode::X2apic,
            Scenario::Stimer(_)
            | Scenario::StimerMessage(_)
            | Scenario::SynicPingPong
            | Scenario::NullHypercall
            | Scenario::HypercallEx64 => true,
            _ => false,
        }
    }

    /// Whether the scenario can run on `vcpus` vCPUs.
    pub fn supports(&self, vcpus: u32) -> bool {
        match self {
            Scenario::Broadcast(IpiMode::PvFast) => vcpus <= 64,
            // xAPIC IDs are 8 bits wide (0xFF is the broadcast ID).
            Scenario::PingPong(IpiMode::Xapic | IpiMode::SyntheticIcr)
            | Scenario::Broadcast(IpiMode::Xapic | IpiMode::SyntheticIcr) => vcpus <= 255,
            // vCPU 1 answers vCPU 0.
            Scenario::SynicPingPong => vcpus >= 2,
            _ => true,
        }
    }

    /// The per-operation figures ([`Figures`] field names) that `mode`
    /// cannot observe. Kernel irqchip: KVM wakes halted vCPUs itself
    /// (no wakeups reach the VMM), and architectural EOIs (x2APIC MSR,
    /// xAPIC MMIO) never leave the kernel, so EOI exits are observed only
    /// where every EOI is a synthetic EOI MSR write or lazy.
    pub fn unobserved(&self, mode: IrqchipMode) -> Vec<&'static str> {
        let sees = Observes::of(mode);
        let mut v = Vec::new();
        if !sees.wakeups {
            v.push("wakeups_per_op");
        }
        let synthetic_eoi = match self {
            Scenario::PingPong(m) | Scenario::Broadcast(m) => m.enlightened(),
            Scenario::SynicPingPong => true,
            Scenario::Timer(m) | Scenario::Stimer(m) => *m != EoiMode::X2apic,
            // Lazy EOI, or none at all.
            Scenario::StimerMessage(_) => true,
            _ => false,
        };
        if !sees.eoi_writes && !synthetic_eoi {
            v.push("eoi_exits_per_op");
        }
        v
    }

    /// Operations run for `vcpus` vCPUs (fewer when many vCPUs share a
    /// small host).
    pub fn ops(&self, vcpus: u32) -> u64 {
        let big = vcpus > 8;
        match self {
            Scenario::PingPong(_) => 200,
            Scenario::Broadcast(_) => {
                if big {
                    10
                } else {
                    100
                }
            }
            Scenario::Shootdown(_) => {
                if big {
                    5
                } else {
                    20
                }
            }
            Scenario::Timer(_) | Scenario::Stimer(_) | Scenario::StimerMessage(_) => 200,
            Scenario::SynicPingPong => 200,
            Scenario::Cpl3Loop => 100_000_000,
            Scenario::SyscallLoop => 1000,
            Scenario::MmioExitLoop | Scenario::PioExitLoop => 10_000,
            Scenario::NullHypercall | Scenario::HypercallEx64 | Scenario::HypercallEx64Probe => {
                1000
            }
        }
    }

    /// The guest program.
    pub fn program(&self, vcpus: u32) -> Result<Program, asm::Error> {
        self.program_ops(vcpus, self.ops(vcpus))
    }

    /// The guest program running `ops` operations.
    pub fn program_ops(&self, vcpus: u32, ops: u64) -> Result<Program, asm::Error> {
        let n = u64::from(vcpus);
        let ops = ops.max(1);
        match *self {
            Scenario::PingPong(m) => scenarios::ipi_pingpong(n, ops, m),
            Scenario::Broadcast(m) => scenarios::broadcast_ipi(n, ops, m),
            Scenario::Shootdown(m) => scenarios::tlb_shootdown(n, ops, 1, m),
            Scenario::Timer(m) => scenarios::timer_eoi(ops, 1_000_000, m),
            // 1 ms in reference time, as the APIC timer's period.
            Scenario::Stimer(m) => scenarios::stimer_eoi(ops, 10_000, m),
            Scenario::StimerMessage(auto_eoi) => scenarios::stimer_message(ops, 10_000, auto_eoi),
            Scenario::SynicPingPong => scenarios::synic_pingpong(ops),
            Scenario::Cpl3Loop => scenarios::cpl3_loop(ops),
            Scenario::SyscallLoop => scenarios::syscall_loop(ops),
            Scenario::MmioExitLoop => scenarios::mmio_exit_loop(ops),
            Scenario::PioExitLoop => scenarios::pio_exit_loop(ops),
            Scenario::NullHypercall => scenarios::null_hypercall(ops),
            Scenario::HypercallEx64 => scenarios::ex64_flush(n, ops),
            Scenario::HypercallEx64Probe => scenarios::ex64_probe(n, ops),
        }
    }
}

/// Per-operation figures of one scenario run.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Scenario name.
    pub scenario: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Hyper-V enlightenments on.
    pub hyperv: bool,
    /// Operations measured.
    pub ops: u64,
    /// VM exits per operation (all vCPUs).
    pub exits_per_op: f64,
    /// VM exits of the driving vCPU (vCPU 0) per operation: the cost of
    /// sending.
    pub sender_exits_per_op: f64,
    /// Kicks per operation.
    pub kicks_per_op: f64,
    /// Wakeups of halted vCPUs per operation.
    pub wakeups_per_op: f64,
    /// Host nanoseconds per operation.
    pub ns_per_op: f64,
    /// Interrupts completed with an EOI write per operation.
    pub eoi_exits_per_op: f64,
    /// Interrupts completed lazily per operation.
    pub eoi_lazy_per_op: f64,
    /// Hypercalls per operation.
    pub hypercalls_per_op: f64,
    /// VMM service time per exit in nanoseconds: host TSC from the return
    /// of `KVM_RUN` to the end of the handler, plus entry preparation,
    /// over all exits.
    pub service_ns_per_exit: f64,
    /// Handler time per hypercall in nanoseconds (decode and execute).
    pub hypercall_service_ns: f64,
    /// Of that, nanoseconds per hypercall spent decoding the call and
    /// carrying it out (the rest is the trap's fixed cost).
    pub hypercall_call_ns: f64,
    /// Nanoseconds per probe of `hypercall-ex64`'s call in an exit without
    /// the trap ([`crate::guest::abi::PROBE_PORT`]; 0 when none ran).
    pub probe_ns: f64,
    /// Guest-observed nanoseconds per operation (the guest's TSC at its
    /// marks).
    pub guest_ns_per_op: f64,
    /// Nanoseconds per operation that posted interrupts spent in VMM
    /// turns on their way from the sender's exit to the target's entry
    /// ([`crate::ipi_path`]).
    pub ipi_path_vmm_ns_per_op: f64,
    /// Nanoseconds per operation between the post (or the start of the
    /// kick or wake-up) and the target noticing: the host's notification
    /// latency.
    pub ipi_path_notify_ns_per_op: f64,
    /// Counters of the measured phase.
    pub metrics: VmMetrics,
    /// VMM CPU time and waiting per exit class of the measured phase
    /// (profiled exits, [`crate::profile`]).
    pub profile: ProfileSplit,
    /// Where the local APICs were (serialized as "user" or "kernel").
    #[serde(serialize_with = "serialize_irqchip")]
    pub irqchip: IrqchipMode,
    /// Names of the per-operation figures this irqchip mode cannot
    /// observe (their value is meaningless: print "n/a").
    pub unobserved: Vec<&'static str>,
    /// KVM's own counters of the measured phase (kernel irqchip, when KVM
    /// has binary statistics).
    pub kvm: Option<KvmVmCounters>,
    /// Changes of the APICv/AVIC inhibit model's effective reasons during
    /// the run (e.g. the Hyper-V reason while a SINT uses AutoEOI).
    pub apicv_inhibit_changes: u64,
    /// The first of them, "vCPU n: before -> after".
    pub apicv_inhibit_history: Vec<String>,
}

impl Figures {
    /// VM exits per operation as KVM counts them (in-kernel ones
    /// included): all vCPUs, or vCPU 0 with `sender`. `None` without KVM's
    /// binary statistics (userspace irqchip).
    pub fn kvm_exits_per_op(&self, sender: bool) -> Option<f64> {
        let k = self.kvm.as_ref()?;
        let exits = if sender {
            k.vcpus.first()?.get("exits")
        } else {
            k.total.get("exits")
        }?;
        Some(exits as f64 / self.ops.max(1) as f64)
    }

    /// `value` formatted with `decimals`, or "n/a" when `field` (a
    /// field name such as "wakeups_per_op") is not observed in this mode.
    pub fn show(&self, field: &str, value: f64, decimals: usize) -> String {
        if self.unobserved.contains(&field) {
            "n/a".into()
        } else {
            format!("{value:.decimals$}")
        }
    }
}

/// The CLI name of an irqchip mode.
pub fn irqchip_name(mode: IrqchipMode) -> &'static str {
    match mode {
        IrqchipMode::User => "user",
        IrqchipMode::Kernel => "kernel",
    }
}

/// Serializes an irqchip mode as its CLI name ([`irqchip_name`]), for
/// `#[serde(serialize_with = "...")]` on fields of type [`IrqchipMode`].
pub fn serialize_irqchip<S: serde::Serializer>(
    mode: &IrqchipMode,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(irqchip_name(*mode))
}

/// Options of one run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// vCPUs.
    pub vcpus: u32,
    /// Bound on the run.
    pub timeout: Duration,
    /// How the VMM flushes a vCPU's TLB.
    pub flush: FlushMethod,
    /// Userspace or in-kernel local APICs.
    pub irqchip: IrqchipMode,
    /// User irqchip: the largest halt-polling window (0: off; `None`:
    /// KVM's default, 200 us). See [`crate::irqchip::HaltPoll`].
    pub halt_poll: Option<Duration>,
}

/// Runs `s` on a fresh VM.
pub fn run(s: Scenario, o: RunOptions) -> Result<(RunReport, Figures), Error> {
    run_ops(s, o, s.ops(o.vcpus))
}

/// Runs `s` on a fresh VM for `ops` operations.
pub fn run_ops(s: Scenario, o: RunOptions, ops: u64) -> Result<(RunReport, Figures), Error> {
    let program = s.program_ops(o.vcpus, ops)?;
    let vm = Vm::new(VmConfig {
        vcpus: o.vcpus,
        hyperv: s.hyperv(),
        timeout: o.timeout,
        flush: o.flush,
        irqchip: o.irqchip,
    })?;
    if let Some(max) = o.halt_poll {
        vm.machine().irqchip.set_halt_poll(max);
    }
    if s == Scenario::SynicPingPong {
        for (id, c) in scenarios::synic_connections() {
            vm.machine().hv.add_connection(id, c)?;
        }
    }
    let report = vm.run(&program)?;
    let m = report.measured.clone().ok_or_else(|| Error::Guest {
        vcpu: 0,
        reason: format!("scenario {} reported no measured phase", s.name()),
        rip: 0,
    })?;
    let ops = m.ops.max(1) as f64;
    let t = &m.metrics.total;
    let ns = |cycles: u64| cycles_to_ns(cycles as f64, m.tsc_khz);
    let svc = ns(t.handler_cycles() + t.svc_cycles_entry);
    let f = Figures {
        scenario: s.name(),
        vcpus: o.vcpus,
        hyperv: s.hyperv(),
        ops: m.ops,
        exits_per_op: t.exits as f64 / ops,
        sender_exits_per_op: m.metrics.vcpus.first().map_or(0, |v| v.exits) as f64 / ops,
        kicks_per_op: t.kicks as f64 / ops,
        wakeups_per_op: t.wakeups as f64 / ops,
        ns_per_op: m.elapsed.as_nanos() as f64 / ops,
        eoi_exits_per_op: t.eoi_msr as f64 / ops,
        eoi_lazy_per_op: if Observes::of(o.irqchip).lazy_eois {
            t.eoi_lazy
        } else {
            // KVM's PV-EOI engine completes them: the guest's own count.
            m.guest_lazy_eois
        } as f64
            / ops,
        hypercalls_per_op: t.hypercalls as f64 / ops,
        service_ns_per_exit: svc / t.exits.max(1) as f64,
        hypercall_service_ns: ns(t.svc_cycles_hypercall) / t.hypercalls.max(1) as f64,
        hypercall_call_ns: ns(t.hc_call_cycles) / t.hypercalls.max(1) as f64,
        probe_ns: ns(t.probe_cycles) / t.probes.max(1) as f64,
        guest_ns_per_op: m.guest_elapsed.as_nanos() as f64 / ops,
        ipi_path_vmm_ns_per_op: ns(t.ipi_path_vmm_cycles) / ops,
        ipi_path_notify_ns_per_op: ns(t.ipi_path_notify_cycles) / ops,
        metrics: m.metrics,
        profile: m.profile.split(m.tsc_khz, profile::clock_read_ns()),
        irqchip: o.irqchip,
        unobserved: s.unobserved(o.irqchip),
        kvm: m.kvm,
        apicv_inhibit_changes: report.apicv_changes.0,
        apicv_inhibit_history: report.apicv_changes.1.clone(),
    };
    Ok((report, f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::layout::{KERNEL_CODE_SIZE, USER_CODE_SIZE};

    #[test]
    fn irqchip_serializes_as_its_cli_name() {
        for mode in [IrqchipMode::User, IrqchipMode::Kernel] {
            let v = serialize_irqchip(&mode, serde_json::value::Serializer).unwrap();
            assert_eq!(v, irqchip_name(mode));
        }
    }

    #[test]
    fn kernel_and_programs_assemble_and_fit() {
        let k = crate::guest::kernel::build().unwrap();
        assert!(k.code.len() as u64 <= KERNEL_CODE_SIZE);
        assert_eq!(
            crate::guest::abi::HYPERCALL_TRAP.stub().as_bytes(),
            [0xE6, 0xE0, 0xC3]
        );
        assert_eq!(
            crate::guest::abi::HYPERCALL_TRAP.io_port(),
            Some(crate::guest::abi::HYPERCALL_PORT)
        );
        for n in [1, 2, 8, 64, 288, 1024] {
            for s in Scenario::ALL {
                if s.supports(n) {
                    let p = s.program(n).unwrap();
                    assert!(
                        p.user_code.len() as u64 <= USER_CODE_SIZE,
                        "{} at {n}",
                        s.name()
                    );
                }
            }
        }
        let h = crate::guest::hostile::program().unwrap();
        assert!(
            (h.user_code.len() as u64)
                < crate::guest::hostile::INPUT_BASE - crate::guest::layout::USER_CODE,
            "hostile code overlaps its input pages"
        );
    }
}
