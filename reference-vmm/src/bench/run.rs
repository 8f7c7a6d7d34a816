//! Running the bench: every (operation, vCPUs, irqchip) point, off and on,
//! repeated and interleaved, one sample per run.

use std::time::Instant;

use crate::clock::cycles_to_ns;
use crate::error::Error;
use crate::metrics::rdtsc_overhead_cycles;
use crate::profile;
use crate::scenario::{self, RunOptions, Scenario, irqchip_name};
use crate::vm::FlushMethod;

use super::dispatch::DecodeDispatch;
use super::goals::goals;
use super::memory::Sampler;
use super::plan::{Config, Op};
use super::report::{Host, Report};
use super::sample::{ClassService, Sample};
use super::stats::summarize;

fn sample(
    op: Op,
    s: Scenario,
    o: RunOptions,
    ops: u64,
    rep: u32,
    tsc_khz: &mut u64,
) -> Result<Sample, Error> {
    let sampler = Sampler::start(o.vcpus);
    let start = Instant::now();
    let run = scenario::run_ops(s, o, ops);
    let wall = start.elapsed();
    let memory = sampler.and_then(Sampler::finish);
    let (report, f) = run?;
    let t = &f.metrics.total;
    let khz = report.measured.as_ref().map_or(0, |m| m.tsc_khz);
    if khz != 0 {
        *tsc_khz = khz;
    }
    let by_class = t
        .service_by_class()
        .into_iter()
        .filter_map(|(class, exits, cycles)| {
            let p = f.profile.class(class);
            if exits == 0 && p.is_none() {
                return None;
            }
            let p = p.cloned().unwrap_or_default();
            Some(ClassService {
                exits,
                ns_per_exit: cycles_to_ns(cycles as f64, khz) / exits.max(1) as f64,
                split: p,
            })
        })
        .collect();
    Ok(Sample {
        op: op.name(),
        scenario: f.scenario,
        vcpus: f.vcpus,
        enlightened: f.hyperv || s == Scenario::NullHypercall,
        irqchip: o.irqchip,
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
        hypercall_call_ns: f.hypercall_call_ns,
        probe_ns: f.probe_ns,
        guest_ns_per_op: f.guest_ns_per_op,
        ipi_path_vmm_ns_per_op: f.ipi_path_vmm_ns_per_op,
        ipi_path_notify_ns_per_op: f.ipi_path_notify_ns_per_op,
        host_ns_per_op: f.ns_per_op,
        wall_ms: wall.as_secs_f64() * 1000.0,
        by_class,
        unobserved: f.unobserved.clone(),
        kvm_exits_per_op: f.kvm_exits_per_op(false),
        kvm_sender_exits_per_op: f.kvm_exits_per_op(true),
        memory,
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
    let progress = Progress::new(cfg, &points, reps);
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
                        halt_poll: None,
                    };
                    let ops = cfg
                        .ops_override
                        .unwrap_or_else(|| op.ops(s, vcpus, cfg.quick));
                    progress.next(format_args!(
                        "rep {}/{reps} {} {vcpus} vCPUs {} irqchip ({} ops)",
                        rep + 1,
                        s.name(),
                        irqchip_name(irqchip),
                        ops
                    ));
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
    // The ex64 goal's decode and dispatch, on the most vCPUs it ran on.
    let ex64_dispatch = points
        .iter()
        .filter(|(op, _)| *op == Op::Ex64)
        .map(|&(_, n)| n)
        .max()
        .and_then(DecodeDispatch::measure);
    let notify = super::kick::notifications();
    let goals = goals(&cells, &samples, ex64_dispatch.as_ref(), notify);
    let pair = rdtsc_overhead_cycles(10_000);
    Report {
        command: cfg.command.clone(),
        reps,
        host: Host {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            tsc_khz,
            rdtsc_pair_cycles: pair,
            rdtsc_pair_ns: cycles_to_ns(pair as f64, tsc_khz),
            clock_read_ns: profile::clock_read_ns(),
            notify,
        },
        ex64_dispatch,
        total_secs: start.elapsed().as_secs_f64(),
        cells,
        goals,
        problems,
        samples,
    }
}

/// Progress of a bench on stderr: on a terminal one line per run with its
/// place and an estimate of the time left (from the runs so far); off a
/// terminal (CI, a pipe) only the total at the start, so logs stay short.
struct Progress {
    total: usize,
    done: std::cell::Cell<usize>,
    start: Instant,
    terminal: bool,
}

impl Progress {
    fn new(cfg: &Config, points: &[(Op, u32)], reps: u32) -> Self {
        let per_rep: usize = points
            .iter()
            .map(|&(op, vcpus)| {
                let (off, on) = op.scenarios(vcpus);
                off.into_iter()
                    .chain([on])
                    .filter(|s| s.supports(vcpus))
                    .count()
                    * cfg.irqchips.len()
            })
            .sum();
        let total = per_rep * reps as usize;
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        if !terminal {
            eprintln!("bench: {total} runs");
        }
        Self {
            total,
            done: std::cell::Cell::new(0),
            start: Instant::now(),
            terminal,
        }
    }

    /// Announces the next run.
    fn next(&self, what: std::fmt::Arguments<'_>) {
        let done = self.done.get();
        self.done.set(done + 1);
        if !self.terminal {
            return;
        }
        let eta = match done {
            0 => "ETA -".to_string(),
            _ => {
                let per_run = self.start.elapsed().as_secs_f64() / done as f64;
                let left = per_run * (self.total - done) as f64;
                format!("ETA {}m{:02}s", (left / 60.0) as u64, left as u64 % 60)
            }
        };
        eprintln!("bench: [{}/{}, {eta}] {what} ...", done + 1, self.total);
    }
}
