//! What the bench runs: the operations, the scenarios that stand for them
//! with the enlightenments off and on, their vCPU counts, and the
//! configuration of one bench.

use std::time::Duration;

use hv_enlightenments::accel::IrqchipMode;
use serde::Serialize;

use crate::guest::scenarios::{EoiMode, FlushMode, IpiMode};
use crate::scenario::Scenario;

/// A benchmarked operation; each has an "off" and an "on" scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// Unicast IPI round trip between vCPU 0 and 1.
    PingPong,
    /// Broadcast IPI from vCPU 0 to every other vCPU.
    Broadcast,
    /// TLB shootdown of N vCPUs, one reader running and N-2 halted.
    Shootdown,
    /// Periodic APIC timer interrupt with its EOI.
    Timer,
    /// Periodic APIC timer interrupt completed by a write of the
    /// synthetic EOI MSR (HV_X64_MSR_EOI): its MSR exit's service.
    SyntheticEoi,
    /// SynIC round trip: a message from vCPU 0 to vCPU 1, an event back.
    SynicRoundTrip,
    /// Periodic synthetic timer tick (message mode, lazy EOI).
    Stimer,
    /// A hypercall that does nothing.
    NullHypercall,
    /// FlushVirtualAddressSpaceEx with a 64-bank sparse VP set; "off" is
    /// the same call probed in the same exits, without the trap.
    Ex64,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 9] = [
        Op::PingPong,
        Op::Broadcast,
        Op::Shootdown,
        Op::Timer,
        Op::SyntheticEoi,
        Op::SynicRoundTrip,
        Op::Stimer,
        Op::NullHypercall,
        Op::Ex64,
    ];

    /// The operation's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Op::PingPong => "pingpong",
            Op::Broadcast => "broadcast",
            Op::Shootdown => "shootdown",
            Op::Timer => "timer",
            Op::SyntheticEoi => "synthetic-eoi",
            Op::SynicRoundTrip => "synic",
            Op::Stimer => "stimer",
            Op::NullHypercall => "null-hypercall",
            Op::Ex64 => "ex64",
        }
    }

    /// What the operation is.
    pub fn title(self) -> &'static str {
        match self {
            Op::PingPong => "unicast IPI round trip",
            Op::Broadcast => "broadcast IPI",
            Op::Shootdown => "TLB shootdown (1 reader running, N-2 halted)",
            Op::Timer => "timer interrupt + EOI",
            Op::SyntheticEoi => "timer interrupt + HV_X64_MSR_EOI (on only)",
            Op::SynicRoundTrip => "SynIC round trip (off: x2APIC IPI round trip)",
            Op::Stimer => "synthetic timer tick (off: APIC timer + x2APIC EOI)",
            Op::NullHypercall => "null hypercall (off: bare port I/O exit)",
            Op::Ex64 => {
                "64-bank Ex hypercall (flush, sparse set; off: its decode and dispatch without the trap)"
            }
        }
    }

    /// Looks an operation up by name.
    pub fn by_name(name: &str) -> Option<Op> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The vCPU counts it runs at by default.
    pub fn default_vcpus(self) -> &'static [u32] {
        match self {
            Op::PingPong | Op::SynicRoundTrip => &[2],
            Op::Broadcast | Op::Shootdown => &SCALING,
            Op::Timer | Op::SyntheticEoi | Op::Stimer | Op::NullHypercall => &[1],
            Op::Ex64 => &[1024],
        }
    }

    /// Whether it makes sense at `vcpus` vCPUs.
    pub fn supports(self, vcpus: u32) -> bool {
        match self {
            Op::PingPong | Op::SynicRoundTrip => vcpus >= 2,
            _ => vcpus >= 1,
        }
    }

    /// The scenarios with the enlightenments off (none when "off" has no
    /// meaning) and on.
    pub fn scenarios(self, vcpus: u32) -> (Option<Scenario>, Scenario) {
        match self {
            Op::PingPong => (
                Some(Scenario::PingPong(IpiMode::Native)),
                Scenario::PingPong(IpiMode::PvFast),
            ),
            Op::Broadcast => (
                Some(Scenario::Broadcast(IpiMode::Native)),
                Scenario::Broadcast(if vcpus <= 64 {
                    IpiMode::PvFast
                } else {
                    IpiMode::PvEx
                }),
            ),
            Op::Shootdown => (
                Some(Scenario::Shootdown(FlushMode::Native)),
                Scenario::Shootdown(FlushMode::Pv),
            ),
            Op::Timer => (
                Some(Scenario::Timer(EoiMode::X2apic)),
                Scenario::Timer(EoiMode::Lazy),
            ),
            // The x2APIC EOI is `timer`'s off side.
            Op::SyntheticEoi => (None, Scenario::Timer(EoiMode::Synthetic)),
            Op::SynicRoundTrip => (
                Some(Scenario::PingPong(IpiMode::Native)),
                Scenario::SynicPingPong,
            ),
            Op::Stimer => (
                Some(Scenario::Timer(EoiMode::X2apic)),
                Scenario::StimerMessage(false),
            ),
            // "Off" has no meaning for a hypercall: the cheapest exit
            // there is stands in for it.
            Op::NullHypercall => (Some(Scenario::PioExitLoop), Scenario::NullHypercall),
            // "Off": the call without its trap, in the same exits.
            Op::Ex64 => (Some(Scenario::HypercallEx64Probe), Scenario::HypercallEx64),
        }
    }

    /// Operations per run: the scenario's default, with both sides of the
    /// null hypercall at the hypercall's count; `quick` divides by ten.
    pub fn ops(self, s: Scenario, vcpus: u32, quick: bool) -> u64 {
        let base = match self {
            Op::NullHypercall | Op::Ex64 => Scenario::NullHypercall.ops(vcpus),
            _ => s.ops(vcpus),
        };
        if quick { (base / 10).max(2) } else { base }
    }

    /// Halted vCPUs during the operation (the shootdown's k).
    pub fn halted(self, vcpus: u32) -> u32 {
        match self {
            Op::Shootdown => vcpus.saturating_sub(2),
            _ => 0,
        }
    }
}

/// The vCPU counts of the scaling runs.
pub const SCALING: [u32; 6] = [1, 2, 8, 64, 256, 1024];

/// Both irqchip modes, user first: the order of the reports and plots.
pub(super) const IRQCHIPS: [IrqchipMode; 2] = [IrqchipMode::User, IrqchipMode::Kernel];

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Operations.
    pub ops: Vec<Op>,
    /// vCPU counts for every operation (each operation's defaults when
    /// `None`).
    pub vcpus: Option<Vec<u32>>,
    /// Irqchip modes.
    pub irqchips: Vec<IrqchipMode>,
    /// Repetitions of every run (at least 1).
    pub reps: u32,
    /// Operations per run for every scenario (the scenario's own count
    /// when `None`).
    pub ops_override: Option<u64>,
    /// Fewer operations per run.
    pub quick: bool,
    /// Bound on each run.
    pub timeout: Duration,
    /// The command line, recorded in the report.
    pub command: String,
}

impl Config {
    /// The default set: every operation at its default vCPU counts, both
    /// irqchips, 5 repetitions.
    pub fn default_set() -> Self {
        Self {
            ops: Op::ALL.to_vec(),
            vcpus: None,
            irqchips: IRQCHIPS.to_vec(),
            reps: 5,
            ops_override: None,
            quick: false,
            timeout: Duration::from_secs(60),
            command: "reference-vmm bench".into(),
        }
    }

    /// `(operation, vCPUs)` pairs in run order.
    pub fn points(&self) -> Vec<(Op, u32)> {
        let mut out = Vec::new();
        for &op in &self.ops {
            let list: Vec<u32> = match &self.vcpus {
                Some(v) => v.clone(),
                None => op.default_vcpus().to_vec(),
            };
            for n in list {
                if op.supports(n) {
                    out.push((op, n));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_points() {
        let mut c = Config::default_set();
        let p = c.points();
        assert!(p.contains(&(Op::Broadcast, 1024)));
        assert!(p.contains(&(Op::PingPong, 2)));
        c.vcpus = Some(vec![1, 4]);
        c.ops = vec![Op::PingPong, Op::Shootdown];
        assert_eq!(
            c.points(),
            vec![(Op::PingPong, 4), (Op::Shootdown, 1), (Op::Shootdown, 4)]
        );
        assert_eq!(Op::by_name("ex64"), Some(Op::Ex64));
        assert_eq!(
            Op::Broadcast.scenarios(65).1,
            Scenario::Broadcast(IpiMode::PvEx)
        );
    }
}
