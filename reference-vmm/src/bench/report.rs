//! The bench's result and its outputs: the markdown report, the JSON file
//! and the scaling plot.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::goal::Goal;
use crate::scenario::irqchip_name;

use super::dispatch::DecodeDispatch;
use super::kick::Notifications;
use super::plan::{IRQCHIPS, Op};
use super::plot;
use super::sample::Sample;
use super::stats::{Cell, find};

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
    /// CPU time of a warm read of a thread's CPU clock, ns (median of
    /// back-to-back reads): the exit profile's probe when nothing is cold.
    pub clock_read_ns: u64,
    /// CPU time the sender spends on one kick of a thread running on
    /// another CPU and on one wake-up of a sleeping thread (medians): the
    /// floor of an exit that must notify its target.
    pub notify: Option<Notifications>,
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
    /// The `ex64` call's decode and dispatch timed without KVM (the
    /// `ex64` goal's allowance over its floor).
    pub ex64_dispatch: Option<DecodeDispatch>,
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
            "Host: {} CPUs, TSC {} kHz, a thread CPU clock read {} ns. Total run time {:.0} s. {} repetitions \
             of every run, interleaved; figures are median [min..max] over them.\n",
            self.host.cpus, self.host.tsc_khz, self.host.clock_read_ns, self.total_secs, self.reps
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
                irqchip_name(c.irqchip),
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
        self.class_table(&mut s);
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
            for chip in IRQCHIPS {
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
                        "| {} | {} | {n} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        op.name(),
                        irqchip_name(chip),
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
            "- VMM CPU time vs waiting: about one exit in {} per vCPU thread (the gap drawn at random, so \
             that a repeating pattern of exits is not always sampled at the same place) has its whole \
             turn profiled, from the return of `KVM_RUN` to the next `KVM_RUN` (entry preparation \
             included): the thread's CPU clock (`CLOCK_THREAD_CPUTIME_ID`) and the TSC at both ends. \
             \"waiting\" is wall - CPU: time the thread did not run (preempted, e.g. by the vCPU it \
             just woke on a host with few CPUs, or blocked); for HLT it includes the sleep (and the CPU \
             figure any halt polling). The clock read is a system call: back to back it costs {} ns of \
             CPU (calibrated once per process), but the first read after `KVM_RUN` returns costs \
             0.7-1.7 us here (cold kernel paths) and the next ones 300-450 ns. So the probe reads once \
             to warm up, the CPU span runs from its second read to the first of two at the end, and \
             one read as that last pair costs in place (\"clock read ns\") is taken out of it; the wall \
             span lies between the reads. Neither counts time the thread lost while reading the clock.",
            crate::profile::SAMPLE_PERIOD,
            self.host.clock_read_ns
        );
        if let Some(n) = self.host.notify {
            let _ = writeln!(
                s,
                "- A kick (the signal that takes a vCPU thread out of `KVM_RUN`) sent to a thread \
                 running on another CPU costs the sender {:.0} ns of CPU on this host, a wake-up of \
                 a thread asleep on a condition variable {:.0} ns (medians of 201, in this \
                 process). An ICR exit whose target is in guest mode pays the first, one whose \
                 target sleeps the second; where an ICR exit exceeds 2 us, the ICR goal allows its \
                 own CPU (the median of each turn's CPU less its kicks and wake-ups) plus the \
                 kicks and wake-ups it sent 1.1 x (null exit + those kicks and wake-ups).",
                n.kick_ns, n.wake_ns
            );
        }
        if let Some(d) = &self.ex64_dispatch {
            let _ = writeln!(
                s,
                "- The 64-bank Ex hypercall's decode and dispatch, timed in this process without KVM on \
                 {} vCPUs (as `--bench ex_hypercall` does): {:.0} ns median, shown beside the same \
                 call timed right after an exit. The `ex64` goal allows 1.1 x (the trap's fixed \
                 cost + the call's decode and dispatch in an exit without the trap) where the null \
                 hypercall alone exceeds 1 us.",
                d.vcpus, d.ns
            );
        }
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
             VMM decodes 64 banks and records 16 deferred flushes. Its off column is \
             `hypercall-ex64-probe`: the guest writes the probe port where it would make the \
             hypercall (a system call, then a CPL0 `out`), and the VMM decodes and carries out \
             the same call right after each such exit, without the hypercall trap. Without \
             KVM, `cargo bench -p reference-vmm --bench ex_hypercall` times the same decode and \
             dispatch."
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

    /// The per-class table: service, VMM CPU time and waiting of each
    /// exit class, for every operation but the scaling ones (medians over
    /// the repetitions).
    fn class_table(&self, s: &mut String) {
        let _ = writeln!(s, "\n## VMM CPU time vs waiting per exit class (medians)\n");
        let _ = writeln!(
            s,
            "Per exit of the class: handler time (TSC, every exit), and over the profiled exits \
             (about 1 in {}) the VMM's CPU time and wall time of the whole turn, waiting = wall - CPU \
             (HLT: includes the sleep), the parts of the CPU spent notifying other vCPUs (kicks, \
             wake-ups, MSIs: the host's cost of a cross-CPU interrupt) and in vCPU ioctls other than \
             `KVM_RUN` (`KVM_INTERRUPT`, `KVM_NMI`), the median of each turn's own CPU (less \
             those two), and the CPU time of one read of the profile's clock (taken out). Medians \
             are exact to 64 ns below 4 us and within a power of two above. See the notes.\n",
            crate::profile::SAMPLE_PERIOD
        );
        let _ = writeln!(
            s,
            "| operation | vCPUs | irqchip | enl. | scenario | class | exits/op | profiled | handler ns | CPU ns mean | CPU ns median | wall ns | waiting ns | notify ns | ioctl ns | own ns median | clock read ns |"
        );
        let _ = writeln!(
            s,
            "|---|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let scaling = [Op::Broadcast.name(), Op::Shootdown.name()];
        for c in self.cells.iter().filter(|c| !scaling.contains(&c.op)) {
            let title = Op::by_name(c.op).map_or(c.op, Op::title);
            for k in &c.by_class {
                let prof = |st: &super::stats::Stat| {
                    if k.sampled > 0 {
                        format!("{:.0}", st.median)
                    } else {
                        "-".into()
                    }
                };
                let _ = writeln!(
                    s,
                    "| {title} | {} | {} | {} | {} | {} | {:.2} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.vcpus,
                    irqchip_name(c.irqchip),
                    on_off(c.enlightened),
                    c.scenario,
                    k.class,
                    k.exits_per_op.median,
                    k.sampled,
                    k.service_ns.median,
                    prof(&k.cpu_ns_mean),
                    prof(&k.cpu_ns_median),
                    prof(&k.wall_ns_mean),
                    prof(&k.wait_ns_mean),
                    prof(&k.notify_ns_mean),
                    prof(&k.ioctl_ns_mean),
                    prof(&k.own_ns_median),
                    prof(&k.clock_read_ns_mean),
                );
            }
        }
    }

    /// Writes `bench.md`, `bench.json` and `scaling.svg` into `dir` (the
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
        plot::scaling(&self.cells, &dir.join("scaling.svg"))
    }
}
