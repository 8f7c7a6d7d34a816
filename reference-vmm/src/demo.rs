//! The `demo` command: every scenario with the enlightenments off and on,
//! one side-by-side table, and the acceptance figures.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use hv_enlightenments::accel::IrqchipMode;

use crate::error::Error;
use crate::goal::{self, Goal};
use crate::guest::scenarios::{EoiMode, FlushMode, IpiMode};
use crate::scenario::{self, Figures, RunOptions, Scenario};
use crate::vm::FlushMethod;

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
    ];
    plan.retain(|(_, off, on)| off.supports(vcpus) && on.supports(vcpus));
    plan
}

/// Runs the demo, printing progress on stderr.
pub fn run(vcpus: u32, timeout: Duration) -> Result<Demo, Error> {
    let opts = RunOptions {
        vcpus,
        timeout,
        flush: FlushMethod::Sregs,
        irqchip: IrqchipMode::User,
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
    Ok(Demo { vcpus, rows })
}

impl Demo {
    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} vCPUs, per operation; off = no Hyper-V (x2APIC or xAPIC ICR and EOI, IPI shootdown), on = enlightened",
            self.vcpus
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
        let pair = |a: f64, b: f64| format!("{a:.2}/{b:.2}");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "{:<40} {:>15} {:>15} {:>15} {:>15} {:>15} {:>19}",
                r.operation,
                pair(r.off.exits_per_op, r.on.exits_per_op),
                pair(r.off.sender_exits_per_op, r.on.sender_exits_per_op),
                pair(r.off.kicks_per_op, r.on.kicks_per_op),
                pair(r.off.wakeups_per_op, r.on.wakeups_per_op),
                pair(r.off.eoi_exits_per_op, r.on.eoi_exits_per_op),
                format!(
                    "{:.1}/{:.1}",
                    r.off.ns_per_op / 1000.0,
                    r.on.ns_per_op / 1000.0
                ),
            );
        }
        s
    }

    /// The acceptance figures as `(claim, measured, pass)` (see
    /// [`crate::goal`]).
    pub fn checks(&self) -> Vec<(String, String, bool)> {
        self.goals()
            .into_iter()
            .map(|g| (g.claim, g.measured, g.pass))
            .collect()
    }

    /// The acceptance goals this run measured.
    pub fn goals(&self) -> Vec<Goal> {
        let mut out = Vec::new();
        let find = |name: &str| self.rows.iter().find(|r| r.on.scenario == name);
        if let Some(r) = find("broadcast-pv-fast").or_else(|| find("broadcast-pv-ex")) {
            out.push(goal::broadcast_send(
                self.vcpus,
                r.on.sender_exits_per_op,
                r.off.sender_exits_per_op,
            ));
        }
        if let Some(r) = find("timer-lazy-eoi") {
            out.push(goal::lazy_eoi(
                r.on.eoi_exits_per_op,
                r.off.eoi_exits_per_op,
            ));
        }
        if let Some(r) = find("shootdown-pv") {
            out.push(goal::shootdown_wakeups(
                self.vcpus.saturating_sub(2),
                r.on.wakeups_per_op,
                r.off.wakeups_per_op,
            ));
        }
        out
    }
}
