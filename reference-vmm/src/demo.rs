//! The `demo` command: every scenario with the enlightenments off and on,
//! one side-by-side table, and the acceptance figures.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;
use crate::goal::{self, Goal};
use crate::guest::scenarios::{EoiMode, FlushMode, IpiMode};
use crate::irqchip::Observes;
use crate::scenario::{self, Figures, RunOptions, Scenario};
use crate::vm::FlushMethod;
use hv_enlightenments::accel::IrqchipMode;

/// The outcome of one acceptance check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// The figure meets the claim.
    Pass,
    /// It does not.
    Fail,
    /// The claim is about something this irqchip mode cannot observe.
    NotApplicable,
    /// The run cannot test the claim (too few vCPUs); the measured text
    /// says why.
    Skipped,
}

impl From<bool> for Verdict {
    fn from(pass: bool) -> Self {
        if pass { Verdict::Pass } else { Verdict::Fail }
    }
}

impl Verdict {
    /// "PASS", "FAIL" or "n/a".
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotApplicable => "n/a",
            Verdict::Skipped => "SKIPPED",
        }
    }
}

/// What the columns of [`Demo::table`] count, all per operation and all
/// counted by this VMM (KVM's own counts are in [`Demo::kvm_table`]).
const LEGEND: &str = "columns, per operation, counted by this VMM: exits = VM exits that reached the VMM (all vCPUs); \
sender = those of vCPU 0, the sender; kicks = vCPUs signalled out of KVM_RUN; wakeups = halted vCPUs the VMM woke; \
EOI-exits = EOI writes that reached the VMM; us/op = host wall time; n/a = not observable with this irqchip\n";

/// Fewest vCPUs for a broadcast to have a target.
const MIN_VCPUS_BROADCAST: u32 = 2;
/// Fewest vCPUs for the shootdown to have a halted target (vCPU 0 flushes,
/// vCPU 1 runs, the rest halt).
const MIN_VCPUS_SHOOTDOWN: u32 = 3;

/// A goal of [`crate::goal`] as a `(claim, measured, verdict)` triple.
fn verdict(g: Goal) -> (String, String, Verdict) {
    let v = Verdict::from(g.pass);
    (g.claim, g.measured, v)
}

/// One row of the table: an operation measured off and on.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// What is measured.
    pub operation: &'static str,
    /// Enlightenments off.
    pub off: Figures,
    /// Enlightenments on.
    pub on: Figures,
}

/// The demo's result.
#[derive(Debug, Clone, Serialize)]
pub struct Demo {
    /// vCPUs.
    pub vcpus: u32,
    /// Where the local APICs were (serialized as "user" or "kernel").
    #[serde(serialize_with = "scenario::serialize_irqchip")]
    pub irqchip: IrqchipMode,
    /// Table rows.
    pub rows: Vec<Row>,
}

/// The operations of the demo: (name, off, on).
pub fn plan(vcpus: u32) -> Vec<(&'static str, Scenario, Scenario)> {
    let bcast_fast = if vcpus <= 64 {
        IpiMode::PvFast
    } else {
        IpiMode::PvEx
    };
    let mut plan = vec![
        (
            "IPI ping-pong (round trip)",
            Scenario::PingPong(IpiMode::Native),
            Scenario::PingPong(IpiMode::PvFast),
        ),
        (
            "SynIC round trip (message, event back)",
            Scenario::PingPong(IpiMode::Native),
            Scenario::SynicPingPong,
        ),
        (
            "xAPIC ping-pong, synthetic ICR",
            Scenario::PingPong(IpiMode::Xapic),
            Scenario::PingPong(IpiMode::SyntheticIcr),
        ),
        (
            "broadcast IPI, PV fast form",
            Scenario::Broadcast(IpiMode::Native),
            Scenario::Broadcast(bcast_fast),
        ),
        (
            "broadcast IPI, PV Ex form",
            Scenario::Broadcast(IpiMode::Native),
            Scenario::Broadcast(IpiMode::PvEx),
        ),
        (
            "TLB shootdown (1 running, rest halted)",
            Scenario::Shootdown(FlushMode::Native),
            Scenario::Shootdown(FlushMode::Pv),
        ),
        (
            "timer interrupt, synthetic EOI",
            Scenario::Timer(EoiMode::X2apic),
            Scenario::Timer(EoiMode::Synthetic),
        ),
        (
            "timer interrupt, lazy EOI",
            Scenario::Timer(EoiMode::X2apic),
            Scenario::Timer(EoiMode::Lazy),
        ),
        (
            "synthetic timer (direct), lazy EOI",
            Scenario::Timer(EoiMode::X2apic),
            Scenario::Stimer(EoiMode::Lazy),
        ),
        (
            "synthetic timer (message), lazy EOI",
            Scenario::Timer(EoiMode::X2apic),
            Scenario::StimerMessage(false),
        ),
        (
            "synthetic timer (message), AutoEOI",
            Scenario::Timer(EoiMode::X2apic),
            Scenario::StimerMessage(true),
        ),
    ];
    plan.retain(|(_, off, on)| off.supports(vcpus) && on.supports(vcpus));
    plan
}

/// Runs the demo with the userspace irqchip, printing progress on stderr.
pub fn run(vcpus: u32, timeout: Duration) -> Result<Demo, Error> {
    run_with(vcpus, timeout, IrqchipMode::User)
}

/// Runs the demo with the given irqchip mode, printing progress on
/// stderr. Scenarios the mode cannot run are left out.
pub fn run_with(vcpus: u32, timeout: Duration, irqchip: IrqchipMode) -> Result<Demo, Error> {
    let opts = RunOptions {
        vcpus,
        timeout,
        flush: FlushMethod::MmuReset,
        irqchip,
        halt_poll: None,
    };
    let mut cache: Vec<(Scenario, Figures)> = Vec::new();
    let mut get = |s: Scenario| -> Result<Figures, Error> {
        if let Some((_, f)) = cache.iter().find(|(c, _)| *c == s) {
            return Ok(f.clone());
        }
        eprintln!("demo: running {} on {vcpus} vCPUs ...", s.name());
        let (_, f) = scenario::run(s, opts)?;
        cache.push((s, f.clone()));
        Ok(f)
    };
    let mut rows = Vec::new();
    for (operation, off, on) in plan(vcpus) {
        rows.push(Row {
            operation,
            off: get(off)?,
            on: get(on)?,
        });
    }
    Ok(Demo {
        vcpus,
        irqchip,
        rows,
    })
}

impl Demo {
    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} vCPUs, {} irqchip, per operation; off = no Hyper-V (x2APIC or xAPIC ICR and EOI, IPI shootdown), on = enlightened",
            self.vcpus,
            scenario::irqchip_name(self.irqchip)
        );
        let _ = writeln!(
            s,
            "{:<40} {:>15} {:>15} {:>15} {:>15} {:>15} {:>19}",
            "operation",
            "exits off/on",
            "sender off/on",
            "kicks off/on",
            "wakeups off/on",
            "EOI-exits off/on",
            "us/op off/on"
        );
        for r in &self.rows {
            let pair = |field: &str, a: f64, b: f64| {
                format!("{}/{}", r.off.show(field, a, 2), r.on.show(field, b, 2))
            };
            let _ = writeln!(
                s,
                "{:<40} {:>15} {:>15} {:>15} {:>15} {:>15} {:>19}",
                r.operation,
                pair("exits_per_op", r.off.exits_per_op, r.on.exits_per_op),
                pair(
                    "sender_exits_per_op",
                    r.off.sender_exits_per_op,
                    r.on.sender_exits_per_op
                ),
                pair("kicks_per_op", r.off.kicks_per_op, r.on.kicks_per_op),
                pair("wakeups_per_op", r.off.wakeups_per_op, r.on.wakeups_per_op),
                pair(
                    "eoi_exits_per_op",
                    r.off.eoi_exits_per_op,
                    r.on.eoi_exits_per_op
                ),
                format!(
                    "{:.1}/{:.1}",
                    r.off.ns_per_op / 1000.0,
                    r.on.ns_per_op / 1000.0
                ),
            );
        }
        s.push_str(LEGEND);
        s
    }

    /// The acceptance figures as `(claim, measured, pass)`; the ones that
    /// do not apply to this irqchip mode are left out (see
    /// [`Demo::verdicts`]).
    pub fn checks(&self) -> Vec<(String, String, bool)> {
        self.verdicts()
            .into_iter()
            .filter_map(|(c, m, v)| match v {
                Verdict::NotApplicable => None,
                v => Some((c, m, v == Verdict::Pass)),
            })
            .collect()
    }

    /// The acceptance figures with a verdict each. In the kernel-irqchip
    /// mode native ICR writes and wakeups of halted vCPUs never reach the
    /// VMM, so the claims about them are not applicable; lazy EOI is
    /// judged on what the guest counted.
    pub fn verdicts(&self) -> Vec<(String, String, Verdict)> {
        let sees = Observes::of(self.irqchip);
        let mut out = Vec::new();
        let find = |name: &str| self.rows.iter().find(|r| r.on.scenario == name);
        if let Some(r) = find("broadcast-pv-fast").or_else(|| find("broadcast-pv-ex")) {
            let want_native = f64::from(self.vcpus.saturating_sub(1).max(1));
            if !sees.icr_writes {
                out.push((
                    "broadcast IPI: 1 exit to send by PV IPI".into(),
                    format!("{:.2}", r.on.sender_exits_per_op),
                    Verdict::from(r.on.sender_exits_per_op <= 1.0),
                ));
                out.push((
                    format!(">= {want_native} exits to send by native ICR writes"),
                    "n/a (KVM's LAPIC serves ICR writes in the kernel)".into(),
                    Verdict::NotApplicable,
                ));
                // What KVM itself counted: the sender's VM exits, including
                // the ICR writes it handled in the kernel.
                match (r.on.kvm_exits_per_op(true), r.off.kvm_exits_per_op(true)) {
                    (Some(on), Some(off)) => out.push((
                        "broadcast IPI: fewer KVM exits on the sender by PV IPI than by ICR writes"
                            .into(),
                        format!("{on:.2} vs {off:.2}"),
                        Verdict::from(on < off),
                    )),
                    _ => out.push((
                        "broadcast IPI: fewer KVM exits on the sender by PV IPI".into(),
                        "n/a (no KVM binary statistics)".into(),
                        Verdict::NotApplicable,
                    )),
                }
            } else if self.vcpus < MIN_VCPUS_BROADCAST {
                out.push((
                    "broadcast IPI: 1 exit to send by PV IPI".into(),
                    format!("a broadcast needs at least {MIN_VCPUS_BROADCAST} vCPUs"),
                    Verdict::Skipped,
                ));
            } else {
                out.push(verdict(goal::broadcast_send(
                    self.vcpus,
                    r.on.sender_exits_per_op,
                    r.off.sender_exits_per_op,
                )));
            }
        }
        if let Some(r) = find("timer-lazy-eoi") {
            let pct = 100.0 * r.on.eoi_exits_per_op;
            let off = match r
                .off
                .show("eoi_exits_per_op", 100.0 * r.off.eoi_exits_per_op, 0)
            {
                v if v == "n/a" => v,
                v => format!("{v}%"),
            };
            let lazy = if !sees.lazy_eois {
                format!(
                    ", {:.0}% completed lazily by KVM's PV EOI",
                    100.0 * r.on.eoi_lazy_per_op
                )
            } else {
                String::new()
            };
            if !sees.lazy_eois {
                out.push((
                    "lazy EOI: <= 1% of timer interrupts with an EOI exit".into(),
                    format!("{pct:.2}% (x2APIC EOI: {off}){lazy}"),
                    Verdict::from(pct <= 1.0),
                ));
            } else {
                out.push(verdict(goal::lazy_eoi(
                    r.on.eoi_exits_per_op,
                    r.off.eoi_exits_per_op,
                )));
            }
        }
        if let Some(r) = find("shootdown-pv") {
            if !sees.wakeups {
                out.push((
                    "PV TLB flush wakes none of the halted vCPUs".into(),
                    format!(
                        "n/a (halted vCPUs block in KVM_RUN: kicked, {:.2} kicks/op)",
                        r.on.kicks_per_op
                    ),
                    Verdict::NotApplicable,
                ));
            } else if self.vcpus < MIN_VCPUS_SHOOTDOWN {
                out.push((
                    "PV TLB shootdown wakes none of the halted vCPUs".into(),
                    format!(
                        "no vCPU halts below {MIN_VCPUS_SHOOTDOWN} vCPUs (one runs, one flushes)"
                    ),
                    Verdict::Skipped,
                ));
            } else {
                out.push(verdict(goal::shootdown_wakeups(
                    self.vcpus.saturating_sub(2),
                    r.on.wakeups_per_op,
                    r.off.wakeups_per_op,
                )));
            }
        }
        if let Some(r) = find("stimer-message-auto-eoi") {
            // The guest sets SINT 2 with AutoEOI, then masks it.
            let h = &r.on.apicv_inhibit_history;
            let adds = |c: &String| c.split(" -> ").nth(1).is_some_and(|a| a.contains("Hyperv"));
            let followed =
                h.len() >= 2 && h.first().is_some_and(adds) && h.last().is_some_and(|c| !adds(c));
            out.push((
                "the APICv/AVIC inhibit (model) follows AutoEOI use".into(),
                format!(
                    "{} changes: {}",
                    r.on.apicv_inhibit_changes,
                    if h.is_empty() {
                        "none".to_string()
                    } else {
                        h.join("; ")
                    }
                ),
                Verdict::from(followed),
            ));
        }
        out
    }

    /// KVM's own counters per operation (kernel irqchip with binary
    /// statistics): all VM exits, the sender's, halts and injections.
    pub fn kvm_table(&self) -> Option<String> {
        if !self.rows.iter().any(|r| r.on.kvm.is_some()) {
            return None;
        }
        let mut s = String::new();
        let names = [
            "exits",
            "halt_exits",
            "halt_wakeup",
            "irq_injections",
            "req_event",
        ];
        let _ = write!(
            s,
            "{:<40} {:>19}",
            "operation (KVM counters/op off/on)", "vcpu0 exits"
        );
        for n in names {
            let _ = write!(s, " {n:>19}");
        }
        s.push('\n');
        let per = |f: &Figures, vcpu0: bool, name: &str| -> String {
            let ops = f.ops.max(1) as f64;
            let v = f.kvm.as_ref().and_then(|k| {
                if vcpu0 {
                    k.vcpus.first().and_then(|c| c.get(name))
                } else {
                    k.total.get(name)
                }
            });
            v.map_or("n/a".into(), |v| format!("{:.1}", v as f64 / ops))
        };
        for r in &self.rows {
            let _ = write!(
                s,
                "{:<40} {:>19}",
                r.operation,
                format!(
                    "{}/{}",
                    per(&r.off, true, "exits"),
                    per(&r.on, true, "exits")
                )
            );
            for n in names {
                let _ = write!(
                    s,
                    " {:>19}",
                    format!("{}/{}", per(&r.off, false, n), per(&r.on, false, n))
                );
            }
            s.push('\n');
        }
        Some(s)
    }
}
