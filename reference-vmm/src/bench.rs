//! The `bench` command: each operation with the enlightenments off and
//! on, under the user and the kernel irqchip, at several vCPU counts, all
//! in one run, interleaved and repeated; the medians, minima and maxima of
//! the per-operation figures, the goals of [`crate::goal`], a markdown
//! report, a JSON file with every repetition and a scaling plot.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use hv_enlightenments::accel::IrqchipMode;
use serde::Serialize;

use crate::clock::cycles_to_ns;
use crate::error::Error;
use crate::goal::{self, Goal};
use crate::guest::scenarios::{EoiMode, FlushMode, IpiMode};
use crate::metrics::rdtsc_overhead_cycles;
use crate::scenario::{self, RunOptions, Scenario};
use crate::vm::FlushMethod;

mod plot;

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
    /// A hypercall that does nothing.
    NullHypercall,
    /// FlushVirtualAddressSpaceEx with a 64-bank sparse VP set.
    Ex64,
}

impl Op {
    /// Every operation, in report order.
    pub const ALL: [Op; 6] = [
        Op::PingPong,
        Op::Broadcast,
        Op::Shootdown,
        Op::Timer,
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
            Op::NullHypercall => "null hypercall (off: bare port I/O exit)",
            Op::Ex64 => "64-bank Ex hypercall (flush, sparse set)",
        }
    }

    /// Looks an operation up by name.
    pub fn by_name(name: &str) -> Option<Op> {
        Self::ALL.into_iter().find(|o| o.name() == name)
    }

    /// The vCPU counts it runs at by default.
    pub fn default_vcpus(self) -> &'static [u32] {
        match self {
            Op::PingPong => &[2],
            Op::Broadcast | Op::Shootdown => &SCALING,
            Op::Timer | Op::NullHypercall => &[1],
            Op::Ex64 => &[1024],
        }
    }

    /// Whether it makes sense at `vcpus` vCPUs.
    pub fn supports(self, vcpus: u32) -> bool {
        match self {
            Op::PingPong => vcpus >= 2,
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
            // "Off" has no meaning for a hypercall: the cheapest exit
            // there is stands in for it.
            Op::NullHypercall => (Some(Scenario::PioExitLoop), Scenario::NullHypercall),
            Op::Ex64 => (None, Scenario::HypercallEx64),
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

pub use crate::scenario::irqchip_name;

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
            irqchips: vec![IrqchipMode::User, IrqchipMode::Kernel],
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

/// Handler time of one exit class in one run.
#[derive(Debug, Clone, Serialize)]
pub struct ClassService {
    /// Exit class.
    pub class: &'static str,
    /// Exits of the class in the measured phase.
    pub exits: u64,
    /// Mean handler nanoseconds per exit of the class.
    pub ns_per_exit: f64,
}

/// One repetition of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Operation.
    pub op: &'static str,
    /// Scenario run.
    pub scenario: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Enlightenments on.
    pub enlightened: bool,
    /// Irqchip mode.
    pub irqchip: &'static str,
    /// Repetition number.
    pub rep: u32,
    /// Operations measured.
    pub ops: u64,
    /// Exits per operation, all vCPUs.
    pub exits_per_op: f64,
    /// Exits of vCPU 0 per operation.
    pub sender_exits_per_op: f64,
    /// Kicks per operation.
    pub kicks_per_op: f64,
    /// Wakeups of halted vCPUs per operation.
    pub wakeups_per_op: f64,
    /// EOI exits per operation.
    pub eoi_exits_per_op: f64,
    /// Hypercalls per operation.
    pub hypercalls_per_op: f64,
    /// VMM service nanoseconds per exit (handler + entry preparation).
    pub service_ns_per_exit: f64,
    /// Handler nanoseconds per hypercall.
    pub hypercall_service_ns: f64,
    /// Guest-observed nanoseconds per operation.
    pub guest_ns_per_op: f64,
    /// Host nanoseconds per operation (between the mark exits).
    pub host_ns_per_op: f64,
    /// Wall time of the whole run (VM creation to teardown), ms.
    pub wall_ms: f64,
    /// Handler time by exit class.
    pub by_class: Vec<ClassService>,
    /// Figures this irqchip mode cannot observe (field names).
    pub unobserved: Vec<&'static str>,
    /// VM exits per operation as KVM counts them, in-kernel ones included
    /// (kernel irqchip with binary statistics).
    pub kvm_exits_per_op: Option<f64>,
    /// The same for vCPU 0.
    pub kvm_sender_exits_per_op: Option<f64>,
}

/// Median, minimum and maximum over the repetitions.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Stat {
    /// Median (the mean of the two middle values for an even count).
    pub median: f64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
}

impl Stat {
    /// The statistics of `values` (NaNs ignored; all zero when empty).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        if v.is_empty() {
            return Self {
                median: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `median [min..max]` with `prec` decimals.
    pub fn show(&self, prec: usize) -> String {
        if self.min == self.max {
            format!("{:.prec$}", self.median)
        } else {
            format!(
                "{:.prec$} [{:.prec$}..{:.prec$}]",
                self.median, self.min, self.max
            )
        }
    }

    /// [`Stat::show`] after scaling every value by `k`.
    pub fn show_scaled(&self, k: f64, prec: usize) -> String {
        Stat {
            median: self.median * k,
            min: self.min * k,
            max: self.max * k,
        }
        .show(prec)
    }
}

/// Every repetition of one (operation, vCPUs, irqchip, enlightenments)
/// combination, summarized.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// Operation.
    pub op: &'static str,
    /// Scenario run.
    pub scenario: &'static str,
    /// vCPUs.
    pub vcpus: u32,
    /// Halted vCPUs during the operation.
    pub halted: u32,
    /// Irqchip mode.
    pub irqchip: &'static str,
    /// Enlightenments on.
    pub enlightened: bool,
    /// Repetitions.
    pub reps: usize,
    /// Exits per operation.
    pub exits_per_op: Stat,
    /// Exits of vCPU 0 per operation.
    pub sender_exits_per_op: Stat,
    /// Kicks per operation.
    pub kicks_per_op: Stat,
    /// Wakeups per operation.
    pub wakeups_per_op: Stat,
    /// EOI exits per operation.
    pub eoi_exits_per_op: Stat,
    /// VMM service nanoseconds per exit.
    pub service_ns_per_exit: Stat,
    /// Handler nanoseconds per hypercall.
    pub hypercall_service_ns: Stat,
    /// Guest-observed nanoseconds per operation.
    pub guest_ns_per_op: Stat,
    /// Host nanoseconds per operation.
    pub host_ns_per_op: Stat,
    /// Figures this irqchip mode cannot observe (field names).
    pub unobserved: Vec<&'static str>,
    /// KVM's count of VM exits per operation (kernel irqchip).
    pub kvm_exits_per_op: Option<Stat>,
    /// KVM's count of vCPU 0's VM exits per operation.
    pub kvm_sender_exits_per_op: Option<Stat>,
}

/// The statistics of an optional figure, when every sample has it.
fn opt_stat(s: &[&Sample], f: fn(&Sample) -> Option<f64>) -> Option<Stat> {
    let v: Option<Vec<f64>> = s.iter().map(|x| f(x)).collect();
    v.filter(|v| !v.is_empty()).map(|v| Stat::of(&v))
}

impl Cell {
    /// `stat` shown with `prec` decimals, or "n/a" when `field` is not
    /// observed in this cell's irqchip mode.
    fn show(&self, field: &str, stat: &Stat, prec: usize) -> String {
        if self.unobserved.contains(&field) {
            "n/a".into()
        } else {
            stat.show(prec)
        }
    }

    /// Exits per operation for plots: KVM's count when there is one (kernel
    /// irqchip), the VMM's otherwise.
    pub fn plot_exits(&self) -> f64 {
        self.kvm_exits_per_op
            .map_or(self.exits_per_op.median, |k| k.median)
    }

    /// The sender's exits per operation for plots, likewise.
    pub fn plot_sender_exits(&self) -> f64 {
        self.kvm_sender_exits_per_op
            .map_or(self.sender_exits_per_op.median, |k| k.median)
    }

    fn from_samples(op: Op, s: &[&Sample]) -> Option<Self> {
        let first = s.first()?;
        let stat = |f: fn(&Sample) -> f64| Stat::of(&s.iter().map(|x| f(x)).collect::<Vec<_>>());
        Some(Self {
            op: first.op,
            scenario: first.scenario,
            vcpus: first.vcpus,
            halted: op.halted(first.vcpus),
            irqchip: first.irqchip,
            enlightened: first.enlightened,
            reps: s.len(),
            exits_per_op: stat(|x| x.exits_per_op),
            sender_exits_per_op: stat(|x| x.sender_exits_per_op),
            kicks_per_op: stat(|x| x.kicks_per_op),
            wakeups_per_op: stat(|x| x.wakeups_per_op),
            eoi_exits_per_op: stat(|x| x.eoi_exits_per_op),
            service_ns_per_exit: stat(|x| x.service_ns_per_exit),
            hypercall_service_ns: stat(|x| x.hypercall_service_ns),
            guest_ns_per_op: stat(|x| x.guest_ns_per_op),
            host_ns_per_op: stat(|x| x.host_ns_per_op),
            unobserved: first.unobserved.clone(),
            kvm_exits_per_op: opt_stat(s, |x| x.kvm_exits_per_op),
            kvm_sender_exits_per_op: opt_stat(s, |x| x.kvm_sender_exits_per_op),
        })
    }
}

/// Facts about the host the figures depend on.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    /// Host CPUs available.
    pub cpus: usize,
    /// TSC frequency in kHz (KVM_GET_TSC_KHZ).
    pub tsc_khz: u64,
    /// Cycles of one back-to-back pair of TSC reads: the cost the
    /// service-time measurement adds to each exit.
    pub rdtsc_pair_cycles: u64,
    /// The same in nanoseconds.
    pub rdtsc_pair_ns: f64,
}

/// The bench's result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command that produced it.
    pub command: String,
    /// Repetitions.
    pub reps: u32,
    /// Host facts.
    pub host: Host,
    /// Wall time of the whole bench, seconds.
    pub total_secs: f64,
    /// Summaries.
    pub cells: Vec<Cell>,
    /// The goals.
    pub goals: Vec<Goal>,
    /// Runs that failed, with the reason.
    pub problems: Vec<String>,
    /// Every repetition.
    pub samples: Vec<Sample>,
}

fn sample(
    op: Op,
    s: Scenario,
    o: RunOptions,
    ops: u64,
    rep: u32,
    tsc_khz: &mut u64,
) -> Result<Sample, Error> {
    let start = Instant::now();
    let (report, f) = scenario::run_ops(s, o, ops)?;
    let wall = start.elapsed();
    let t = &f.metrics.total;
    let khz = report.measured.as_ref().map_or(0, |m| m.tsc_khz);
    if khz != 0 {
        *tsc_khz = khz;
    }
    let by_class = t
        .service_by_class()
        .into_iter()
        .filter(|(_, n, _)| *n > 0)
        .map(|(class, exits, cycles)| ClassService {
            class,
            exits,
            ns_per_exit: cycles_to_ns(cycles as f64, khz) / exits as f64,
        })
        .collect();
    Ok(Sample {
        op: op.name(),
        scenario: f.scenario,
        vcpus: f.vcpus,
        enlightened: f.hyperv || s == Scenario::NullHypercall,
        irqchip: irqchip_name(o.irqchip),
        rep,
        ops: f.ops,
        exits_per_op: f.exits_per_op,
        sender_exits_per_op: f.sender_exits_per_op,
        kicks_per_op: f.kicks_per_op,
        wakeups_per_op: f.wakeups_per_op,
        eoi_exits_per_op: f.eoi_exits_per_op,
        hypercalls_per_op: f.hypercalls_per_op,
        service_ns_per_exit: f.service_ns_per_exit,
        hypercall_service_ns: f.hypercall_service_ns,
        guest_ns_per_op: f.guest_ns_per_op,
        host_ns_per_op: f.ns_per_op,
        wall_ms: wall.as_secs_f64() * 1000.0,
        by_class,
        unobserved: f.unobserved.clone(),
        kvm_exits_per_op: f.kvm_exits_per_op(false),
        kvm_sender_exits_per_op: f.kvm_exits_per_op(true),
    })
}

/// Runs the bench, printing progress on stderr. Failed runs are listed
/// in [`Report::problems`].
pub fn run(cfg: &Config) -> Report {
    let start = Instant::now();
    let points = cfg.points();
    let reps = cfg.reps.max(1);
    let mut samples: Vec<Sample> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut tsc_khz = 0u64;
    for rep in 0..reps {
        for &(op, vcpus) in &points {
            for &irqchip in &cfg.irqchips {
                let (off, on) = op.scenarios(vcpus);
                let mut order: Vec<Scenario> = off.into_iter().chain([on]).collect();
                // Alternate which side goes first.
                if rep % 2 == 1 {
                    order.reverse();
                }
                for s in order {
                    if !s.supports(vcpus) {
                        continue;
                    }
                    let o = RunOptions {
                        vcpus,
                        timeout: cfg.timeout,
                        flush: FlushMethod::MmuReset,
                        irqchip,
                    };
                    let ops = cfg
                        .ops_override
                        .unwrap_or_else(|| op.ops(s, vcpus, cfg.quick));
                    eprintln!(
                        "bench: rep {}/{reps} {} {vcpus} vCPUs {} irqchip ({} ops) ...",
                        rep + 1,
                        s.name(),
                        irqchip_name(irqchip),
                        ops
                    );
                    match sample(op, s, o, ops, rep, &mut tsc_khz) {
                        Ok(x) => samples.push(x),
                        Err(e) => problems.push(format!(
                            "rep {} {} on {vcpus} vCPUs, {} irqchip: {e}",
                            rep + 1,
                            s.name(),
                            irqchip_name(irqchip)
                        )),
                    }
                }
            }
        }
    }
    let cells = summarize(&cfg.ops, &samples);
    let goals = goals(&cells);
    let pair = rdtsc_overhead_cycles(10_000);
    Report {
        command: cfg.command.clone(),
        reps,
        host: Host {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tsc_khz,
            rdtsc_pair_cycles: pair,
            rdtsc_pair_ns: cycles_to_ns(pair as f64, tsc_khz),
        },
        total_secs: start.elapsed().as_secs_f64(),
        cells,
        goals,
        problems,
        samples,
    }
}

/// Groups the samples into cells, in report order (operation, vCPUs,
/// irqchip, off before on).
pub fn summarize(ops: &[Op], samples: &[Sample]) -> Vec<Cell> {
    let mut keys: Vec<(usize, u32, &'static str, bool)> = Vec::new();
    for s in samples {
        let Some(oi) = ops.iter().position(|o| o.name() == s.op) else {
            continue;
        };
        let k = (oi, s.vcpus, s.irqchip, s.enlightened);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by_key(|a| (a.0, a.1, a.2 != "user", a.3));
    keys.into_iter()
        .filter_map(|(oi, n, chip, on)| {
            let op = *ops.get(oi)?;
            let group: Vec<&Sample> = samples
                .iter()
                .filter(|s| {
                    s.op == op.name() && s.vcpus == n && s.irqchip == chip && s.enlightened == on
                })
                .collect();
            Cell::from_samples(op, &group)
        })
        .collect()
}

fn find<'a>(
    cells: &'a [Cell],
    op: Op,
    vcpus: Option<u32>,
    irqchip: &str,
    on: bool,
) -> Option<&'a Cell> {
    cells.iter().find(|c| {
        c.op == op.name()
            && vcpus.is_none_or(|n| c.vcpus == n)
            && c.irqchip == irqchip
            && c.enlightened == on
    })
}

/// The goals against the summaries (user irqchip unless said otherwise;
/// medians, and for counts that must be zero, maxima).
pub fn goals(cells: &[Cell]) -> Vec<Goal> {
    let mut out = Vec::new();
    // PV broadcast flat in N (N >= 2: on one vCPU the broadcast is a
    // self-IPI).
    let points: Vec<(u32, f64)> = cells
        .iter()
        .filter(|c| {
            c.op == Op::Broadcast.name() && c.irqchip == "user" && c.enlightened && c.vcpus >= 2
        })
        .map(|c| (c.vcpus, c.sender_exits_per_op.max))
        .collect();
    if points.is_empty() {
        out.push(goal::not_measured(
            "PV broadcast IPI flat in N at 1 exit per operation",
            "broadcast not run",
        ));
    } else {
        out.push(goal::broadcast_flat(&points));
    }
    // PV shootdown wakes none of the halted targets, at every N.
    let pv: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.op == Op::Shootdown.name() && c.irqchip == "user" && c.enlightened)
        .collect();
    match pv.iter().max_by_key(|c| c.vcpus) {
        Some(big) => {
            let worst = pv.iter().map(|c| c.wakeups_per_op.max).fold(0.0, f64::max);
            let ipi = find(cells, Op::Shootdown, Some(big.vcpus), "user", false)
                .map_or(f64::NAN, |c| c.wakeups_per_op.median);
            let mut g = goal::shootdown_wakeups(big.halted, worst, ipi);
            g.measured = format!(
                "{} (worst over N = {})",
                g.measured,
                pv.iter()
                    .map(|c| c.vcpus.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if let Some(k) = find(cells, Op::Shootdown, Some(big.vcpus), "kernel", true) {
                g.measured = format!(
                    "{}; kernel irqchip (not judged): the halted vCPUs wait inside KVM_RUN and \
                     are kicked, {:.2} kicks/op",
                    g.measured, k.kicks_per_op.median
                );
            }
            out.push(g);
        }
        None => out.push(goal::not_measured(
            "PV TLB shootdown wakes 0 of the k halted vCPUs",
            "shootdown not run",
        )),
    }
    // Lazy EOI.
    match (
        find(cells, Op::Timer, None, "user", true),
        find(cells, Op::Timer, None, "user", false),
    ) {
        (Some(on), Some(off)) => out.push(goal::lazy_eoi(
            on.eoi_exits_per_op.median,
            off.eoi_exits_per_op.median,
        )),
        _ => out.push(goal::not_measured(
            "lazy EOI avoids >= 99% of EOI exits",
            "timer not run",
        )),
    }
    // 64-bank Ex hypercall service time, at the most vCPUs run (the
    // most existing targets in the set).
    match cells
        .iter()
        .filter(|c| c.op == Op::Ex64.name() && c.irqchip == "user" && c.enlightened)
        .max_by_key(|c| c.vcpus)
    {
        Some(c) => {
            let mut g = goal::ex64_service(c.hypercall_service_ns.median);
            g.measured = format!(
                "{} median, {} (min..max) at {} vCPUs",
                g.measured,
                c.hypercall_service_ns.show(0),
                c.vcpus
            );
            out.push(g);
        }
        None => out.push(goal::not_measured(
            "VMM service time of a 64-bank Ex hypercall < 1 us",
            "ex64 not run",
        )),
    }
    // User vs kernel irqchip unicast IPI round trip: the best round trip
    // each irqchip offers (enlightenments off or on, whichever is faster),
    // with all four shown.
    let best = |chip: &str| -> Option<(f64, &'static str)> {
        [false, true]
            .into_iter()
            .filter_map(|on| {
                find(cells, Op::PingPong, None, chip, on)
                    .map(|c| (c.guest_ns_per_op.median, c.scenario))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    match (best("user"), best("kernel")) {
        (Some((u, us)), Some((k, ks))) => {
            let mut g = goal::user_vs_kernel_ipi(u, k);
            let show = |chip: &str, on: bool| {
                find(cells, Op::PingPong, None, chip, on).map_or("-".to_string(), |c| {
                    format!("{:.1}", c.guest_ns_per_op.median / 1000.0)
                })
            };
            g.measured = format!(
                "best of each: {} ({us}) vs ({ks}); x2APIC ICR {} vs {} us, PV IPI {} vs {} us",
                g.measured,
                show("user", false),
                show("kernel", false),
                show("user", true),
                show("kernel", true),
            );
            out.push(g);
        }
        _ => out.push(goal::not_measured(
            "user-irqchip unicast IPI round trip <= 1.5x the kernel irqchip's",
            "ping-pong not run with both irqchips",
        )),
    }
    out
}

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

impl Report {
    /// The markdown report: goals, every cell, the scaling table, notes.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# reference-vmm bench\n");
        let _ = writeln!(s, "Command: `{}`\n", self.command);
        let _ = writeln!(
            s,
            "Host: {} CPUs, TSC {} kHz. Total run time {:.0} s. {} repetitions of every run, interleaved; \
             figures are median [min..max] over them.\n",
            self.host.cpus, self.host.tsc_khz, self.total_secs, self.reps
        );
        let _ = writeln!(s, "## Goals\n");
        let _ = writeln!(s, "| goal | measured | verdict |");
        let _ = writeln!(s, "|---|---|---|");
        for g in &self.goals {
            let _ = writeln!(s, "| {} | {} | {} |", g.claim, g.measured, g.verdict());
        }
        let _ = writeln!(s, "\n## Per operation\n");
        let _ = writeln!(
            s,
            "| operation | vCPUs | halted | irqchip | enl. | scenario | exits/op | sender exits/op | KVM exits/op (sender) | kicks/op | wakeups/op | EOI exits/op | service ns/exit | hypercall ns | guest us/op |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for c in &self.cells {
            let title = Op::by_name(c.op).map_or(c.op, Op::title);
            let hc = if c.hypercall_service_ns.max > 0.0 {
                c.hypercall_service_ns.show(0)
            } else {
                "-".into()
            };
            let kvm = match (&c.kvm_exits_per_op, &c.kvm_sender_exits_per_op) {
                (Some(t), Some(v)) => format!("{:.2} ({:.2})", t.median, v.median),
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {title} | {} | {} | {} | {} | {} | {} | {} | {kvm} | {} | {} | {} | {} | {hc} | {} |",
                c.vcpus,
                c.halted,
                c.irqchip,
                on_off(c.enlightened),
                c.scenario,
                c.show("exits_per_op", &c.exits_per_op, 2),
                c.show("sender_exits_per_op", &c.sender_exits_per_op, 2),
                c.show("kicks_per_op", &c.kicks_per_op, 2),
                c.show("wakeups_per_op", &c.wakeups_per_op, 2),
                c.show("eoi_exits_per_op", &c.eoi_exits_per_op, 2),
                c.service_ns_per_exit.show(0),
                c.guest_ns_per_op.show_scaled(0.001, 1),
            );
        }
        let _ = writeln!(s, "\n## Scaling (medians)\n");
        let _ = writeln!(
            s,
            "| operation | irqchip | vCPUs | exits/op off | exits/op on | sender exits/op off | sender exits/op on | KVM exits/op off | KVM exits/op on | wakeups/op off | wakeups/op on | guest us/op off | guest us/op on |"
        );
        let _ = writeln!(
            s,
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for op in [Op::Broadcast, Op::Shootdown] {
            for chip in ["user", "kernel"] {
                let mut ns: Vec<u32> = self
                    .cells
                    .iter()
                    .filter(|c| c.op == op.name() && c.irqchip == chip)
                    .map(|c| c.vcpus)
                    .collect();
                ns.dedup();
                for n in ns {
                    let off = find(&self.cells, op, Some(n), chip, false);
                    let on = find(&self.cells, op, Some(n), chip, true);
                    let f = |c: Option<&Cell>, g: fn(&Cell) -> f64, k: f64, p: usize| {
                        c.map_or("-".to_string(), |c| format!("{:.p$}", g(c) * k))
                    };
                    let kvm = |c: Option<&Cell>| {
                        c.and_then(|c| c.kvm_exits_per_op)
                            .map_or("-".to_string(), |k| format!("{:.2}", k.median))
                    };
                    let wake = |c: Option<&Cell>| {
                        c.map_or("-".to_string(), |c| {
                            if c.unobserved.contains(&"wakeups_per_op") {
                                "n/a".into()
                            } else {
                                format!("{:.2}", c.wakeups_per_op.median)
                            }
                        })
                    };
                    let _ = writeln!(
                        s,
                        "| {} | {chip} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        op.name(),
                        f(off, |c| c.exits_per_op.median, 1.0, 2),
                        f(on, |c| c.exits_per_op.median, 1.0, 2),
                        f(off, |c| c.sender_exits_per_op.median, 1.0, 2),
                        f(on, |c| c.sender_exits_per_op.median, 1.0, 2),
                        kvm(off),
                        kvm(on),
                        wake(off),
                        wake(on),
                        f(off, |c| c.guest_ns_per_op.median, 0.001, 1),
                        f(on, |c| c.guest_ns_per_op.median, 0.001, 1),
                    );
                }
            }
        }
        let _ = writeln!(s, "\n## Notes\n");
        let _ = writeln!(
            s,
            "- Counts (exits, kicks, wakeups, EOI exits) do not depend on the host's speed; times do. \
             \"exits\" counts every vCPU's exits to the VMM, \"sender\" vCPU 0's."
        );
        let _ = writeln!(
            s,
            "- Service time: host TSC read when `KVM_RUN` returns and again when the handler is done \
             (HLT: before the vCPU sleeps), plus entry preparation (flush, posted vectors, injection), \
             over all exits. Scenario report exits are left out. One pair of TSC reads costs {} cycles \
             ({:.1} ns), included in every figure.",
            self.host.rdtsc_pair_cycles, self.host.rdtsc_pair_ns
        );
        let _ = writeln!(
            s,
            "- Guest time: the guest's own `rdtsc` (CPL3) at the start and end marks, over the operations. \
             On a host that emulates guest CPL0 code every system call of the built-in guest costs \
             tens of microseconds, which dominates the guest times."
        );
        let _ = writeln!(
            s,
            "- Null hypercall: \"off\" has no meaning for a hypercall; the off column is the cheapest \
             exit there is, a CPL3 port write to an unclaimed port (`pio-exit-loop`). The hypercall \
             itself goes CPL3 -> system call -> hypercall page (CPL0) -> VMM."
        );
        let _ = writeln!(
            s,
            "- 64-bank Ex hypercall: FlushVirtualAddressSpaceEx whose sparse VP set has all 64 banks \
             present, one VP (64 i + 1) in each; at 1024 vCPUs 16 of them exist and are halted, so the \
             VMM decodes 64 banks and records 16 deferred flushes. Without KVM, \
             `cargo bench -p reference-vmm --bench ex_hypercall` times the same decode and dispatch."
        );
        let _ = writeln!(
            s,
            "- Under the kernel irqchip the APIC, HLT and x2APIC ICR/EOI accesses stay in KVM: \
             \"exits\" are the exits that reach this VMM, \"KVM exits\" what KVM's binary statistics \
             count (in-kernel exits included). KVM wakes halted vCPUs itself, so wakeups are \
             \"n/a\"; a halted vCPU sits inside `KVM_RUN`, so a PV flush kicks it where the user \
             irqchip defers the flush without waking it. The plot uses KVM's exit counts for the \
             kernel irqchip."
        );
        if !self.problems.is_empty() {
            let _ = writeln!(s, "\n## Problems\n");
            for p in &self.problems {
                let _ = writeln!(s, "- {p}");
            }
        }
        s
    }

    /// Writes `bench.md`, `bench.json` and `scaling.png` into `dir` (the
    /// JSON also to `json` when given).
    pub fn write(&self, dir: &Path, json: Option<&Path>) -> Result<(), String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let md = dir.join("bench.md");
        std::fs::write(&md, self.markdown()).map_err(|e| format!("{}: {e}", md.display()))?;
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        let js = dir.join("bench.json");
        std::fs::write(&js, &text).map_err(|e| format!("{}: {e}", js.display()))?;
        if let Some(p) = json {
            std::fs::write(p, &text).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        plot::scaling(self, &dir.join("scaling.png"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_median_min_max() {
        let s = Stat::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stat::of(&[4.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 10.0));
        let s = Stat::of(&[f64::NAN, 5.0]);
        assert_eq!((s.median, s.min, s.max), (5.0, 5.0, 5.0));
        assert_eq!(Stat::of(&[]).median, 0.0);
        assert_eq!(Stat::of(&[1.0, 1.0]).show(2), "1.00");
        assert_eq!(Stat::of(&[1.0, 2.0, 4.0]).show(1), "2.0 [1.0..4.0]");
        assert_eq!(
            Stat::of(&[1000.0, 3000.0]).show_scaled(0.001, 1),
            "2.0 [1.0..3.0]"
        );
    }

    fn fake(op: Op, vcpus: u32, chip: &'static str, on: bool, rep: u32, x: f64) -> Sample {
        Sample {
            op: op.name(),
            scenario: if on { "on-scenario" } else { "off-scenario" },
            vcpus,
            enlightened: on,
            irqchip: chip,
            rep,
            ops: 10,
            exits_per_op: x,
            sender_exits_per_op: if on { 1.0 } else { f64::from(vcpus) },
            kicks_per_op: 0.0,
            wakeups_per_op: if on { 0.0 } else { f64::from(vcpus) },
            eoi_exits_per_op: if on { 0.0 } else { 1.0 },
            hypercalls_per_op: 1.0,
            service_ns_per_exit: 500.0,
            hypercall_service_ns: 800.0,
            guest_ns_per_op: 1000.0 * x,
            host_ns_per_op: 1000.0 * x,
            wall_ms: 1.0,
            by_class: vec![],
            unobserved: if chip == "kernel" {
                vec!["wakeups_per_op"]
            } else {
                vec![]
            },
            kvm_exits_per_op: (chip == "kernel").then_some(3.0 * x),
            kvm_sender_exits_per_op: (chip == "kernel").then_some(x),
        }
    }

    fn fake_report() -> Report {
        let mut samples = Vec::new();
        for rep in 0..3 {
            let x = f64::from(rep + 1);
            for n in [2, 64] {
                for on in [false, true] {
                    samples.push(fake(Op::Broadcast, n, "user", on, rep, x));
                    samples.push(fake(Op::Shootdown, n, "user", on, rep, x));
                }
            }
            for on in [false, true] {
                samples.push(fake(Op::Timer, 1, "user", on, rep, x));
                samples.push(fake(Op::PingPong, 2, "user", on, rep, x));
                samples.push(fake(Op::PingPong, 2, "kernel", on, rep, x));
            }
            samples.push(fake(Op::Ex64, 1024, "user", true, rep, x));
        }
        let cells = summarize(&Op::ALL, &samples);
        Report {
            command: "reference-vmm bench --quick".into(),
            reps: 3,
            host: Host {
                cpus: 2,
                tsc_khz: 2_000_000,
                rdtsc_pair_cycles: 40,
                rdtsc_pair_ns: 20.0,
            },
            total_secs: 1.0,
            goals: goals(&cells),
            cells,
            problems: vec!["kernel irqchip skipped: test".into()],
            samples,
        }
    }

    #[test]
    fn cells_are_grouped_and_ordered() {
        let r = fake_report();
        // broadcast 2/64 x off/on, shootdown likewise, timer off/on,
        // ping-pong user/kernel x off/on, ex64.
        assert_eq!(r.cells.len(), 4 + 4 + 2 + 4 + 1);
        assert_eq!(r.cells[0].op, "pingpong");
        assert_eq!(r.cells[0].irqchip, "user");
        assert!(!r.cells[0].enlightened);
        assert_eq!(r.cells[2].irqchip, "kernel");
        let b = find(&r.cells, Op::Broadcast, Some(64), "user", false).unwrap();
        assert_eq!(b.reps, 3);
        assert_eq!(b.exits_per_op, Stat::of(&[1.0, 2.0, 3.0]));
        assert_eq!(b.halted, 0);
        let sd = find(&r.cells, Op::Shootdown, Some(64), "user", true).unwrap();
        assert_eq!(sd.halted, 62);
    }

    #[test]
    fn goals_from_cells() {
        let r = fake_report();
        let by = |claim: &str| r.goals.iter().find(|g| g.claim.contains(claim)).unwrap();
        assert!(by("flat in N").pass);
        assert!(by("wakes 0 of the 62").pass);
        assert!(by("lazy EOI").pass);
        assert!(by("64-bank").pass);
        // Same guest times in both modes: ratio 1.
        assert!(by("1.5x").pass, "{:?}", by("1.5x"));
        assert_eq!(r.goals.len(), 5);
    }

    #[test]
    fn markdown_has_every_section_and_row() {
        let r = fake_report();
        let md = r.markdown();
        for needle in [
            "Command: `reference-vmm bench --quick`",
            "## Goals",
            "| PV broadcast IPI flat in N",
            "## Per operation",
            "| broadcast IPI | 64 | 0 | user | off | off-scenario | 2.00 [1.00..3.00] | 64.00 | - |",
            "| unicast IPI round trip | 2 | 0 | kernel | on | on-scenario | 2.00 [1.00..3.00] | 1.00 | 6.00 (2.00) | 0.00 | n/a |",
            "| TLB shootdown (1 reader running, N-2 halted) | 64 | 62 | user | on |",
            "## Scaling (medians)",
            "| broadcast | user | 64 | 2.00 | 2.00 | 64.00 | 1.00 | - | - | 64.00 | 0.00 | 2.0 | 2.0 |",
            "## Problems",
            "kernel irqchip skipped: test",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }

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
