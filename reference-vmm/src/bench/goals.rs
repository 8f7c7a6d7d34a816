//! The bench's goals: [`crate::goal`]'s checks against the cells.

use hv_enlightenments::accel::IrqchipMode;

use crate::goal::{self, Goal};

use super::dispatch::DecodeDispatch;
use super::kick::Notifications;
use super::plan::Op;
use super::sample::Sample;
use super::stats::{Cell, ClassCell, Stat, find};

/// The MSR exits whose VMM CPU time is judged: what is written, the
/// operation and side whose run writes it, and that run's scenario.
const MSR_EXITS: [(&str, Op, bool, &str, &str); 3] = [
    ("x2APIC ICR", Op::PingPong, false, "pingpong-x2apic", "icr"),
    ("x2APIC EOI", Op::Timer, false, "timer-x2apic-eoi", "msr"),
    (
        "HV_X64_MSR_EOI",
        Op::SyntheticEoi,
        true,
        "timer-synthetic-eoi",
        "msr",
    ),
];

/// Of the user-irqchip cells of `op` with the enlightenments `on`, the
/// one that profiled the most exits of class `class`, with that class.
fn most_profiled<'c>(
    cells: &'c [Cell],
    op: Op,
    on: bool,
    class: &str,
) -> Option<(&'c Cell, &'c ClassCell)> {
    cells
        .iter()
        .filter(|c| c.op == op.name() && c.irqchip == IrqchipMode::User && c.enlightened == on)
        .filter_map(|c| Some((c, c.profiled(class)?)))
        .max_by_key(|(_, k)| k.sampled)
}

/// The `ex64` call's VMM CPU over its floor, repetition by repetition:
/// each repetition's median CPU of the call's profiled exits (`ex64`, on
/// `vcpus` vCPUs) over that repetition's trap cost (the null hypercall's
/// CPU on `null_vcpus` vCPUs less its own decode and dispatch) plus its
/// probe of the call in an exit without the trap. `None` unless every
/// part ran in at least one repetition (user irqchip).
fn ex64_per_rep(samples: &[Sample], vcpus: u32, null_vcpus: u32) -> Option<goal::Ratios> {
    let user = |s: &&Sample| s.irqchip == IrqchipMode::User;
    let hypercall_cpu = |s: &Sample| {
        s.by_class
            .iter()
            .find(|c| c.split.class == "hypercall" && c.split.sampled > 0)
            .map(|c| c.split.cpu_ns_median)
    };
    let ratios: Vec<f64> = samples
        .iter()
        .filter(user)
        .filter(|s| s.op == Op::Ex64.name() && s.enlightened && s.vcpus == vcpus)
        .filter_map(|e| {
            let of = |op: Op, on: bool, n: u32| {
                samples.iter().filter(user).find(|s| {
                    s.op == op.name() && s.enlightened == on && s.vcpus == n && s.rep == e.rep
                })
            };
            let null = of(Op::NullHypercall, true, null_vcpus)?;
            let probe = of(Op::Ex64, false, vcpus).filter(|p| p.probe_ns > 0.0)?;
            let floor = hypercall_cpu(null)? - null.hypercall_call_ns + probe.probe_ns;
            Some(hypercall_cpu(e)? / floor).filter(|r| floor > 0.0 && r.is_finite())
        })
        .collect();
    (!ratios.is_empty()).then(|| {
        let s = Stat::of(&ratios);
        goal::Ratios {
            median: s.median,
            min: s.min,
            max: s.max,
        }
    })
}

/// The goals against the summaries (user irqchip unless said otherwise;
/// medians, and for counts that must be zero, maxima); `samples` are the
/// repetitions behind them, for the goals judged repetition by
/// repetition. `ex64_dispatch` is the `ex64` call's decode and dispatch
/// timed without KVM, if it was (shown beside the same call timed in the
/// VM).
/// `notify` is the host's cost of a kick and of a wake-up, if measured.
pub fn goals(
    cells: &[Cell],
    samples: &[Sample],
    ex64_dispatch: Option<&DecodeDispatch>,
    notify: Option<Notifications>,
) -> Vec<Goal> {
    let mut out = Vec::new();
    // PV broadcast flat in N (N >= 2: on one vCPU the broadcast is a
    // self-IPI).
    let points: Vec<(u32, f64)> = cells
        .iter()
        .filter(|c| {
            c.op == Op::Broadcast.name()
                && c.irqchip == IrqchipMode::User
                && c.enlightened
                && c.vcpus >= 2
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
    // A PV broadcast at the largest N returns to its sender at once, in
    // both irqchips (the targets' wakes are the fan-out thread's).
    for chip in [IrqchipMode::User, IrqchipMode::Kernel] {
        let big = cells
            .iter()
            .filter(|c| {
                c.op == Op::Broadcast.name() && c.irqchip == chip && c.enlightened && c.vcpus >= 2
            })
            .max_by_key(|c| c.vcpus);
        if let Some(c) = big {
            let mut g = goal::broadcast_return(
                c.vcpus - 1,
                crate::scenario::irqchip_name(chip),
                c.hypercall_service_ns.max,
            );
            g.measured = format!(
                "{} worst, {} (min..max) at {} vCPUs",
                g.measured,
                c.hypercall_service_ns.show_scaled(1e-3, 0),
                c.vcpus
            );
            out.push(g);
        }
    }
    // PV shootdown wakes none of the halted targets, at every N.
    let pv: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.op == Op::Shootdown.name() && c.irqchip == IrqchipMode::User && c.enlightened)
        .collect();
    match pv.iter().max_by_key(|c| c.vcpus) {
        Some(big) => {
            let worst = pv.iter().map(|c| c.wakeups_per_op.max).fold(0.0, f64::max);
            let ipi = find(
                cells,
                Op::Shootdown,
                Some(big.vcpus),
                IrqchipMode::User,
                false,
            )
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
            if let Some(k) = find(
                cells,
                Op::Shootdown,
                Some(big.vcpus),
                IrqchipMode::Kernel,
                true,
            ) {
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
        find(cells, Op::Timer, None, IrqchipMode::User, true),
        find(cells, Op::Timer, None, IrqchipMode::User, false),
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
    // VMM CPU per MSR exit against a null exit (a port write answered
    // with nothing), user irqchip: the kernel irqchip keeps the x2APIC's
    // MSRs in KVM.
    let null =
        most_profiled(cells, Op::NullHypercall, false, "pio").map(|(_, p)| p.cpu_ns_median.median);
    if let Some(n) = notify {
        out.push(goal::notify_floor(n.kick_ns, n.wake_ns));
    }
    for (kind, op, on, scenario, class) in MSR_EXITS {
        let msr = most_profiled(cells, op, on, class);
        out.push(match (msr, null) {
            (Some((c, m)), Some(null)) => {
                // An ICR exit kicks or wakes its target when the target is
                // in guest mode or asleep: its floor is a null exit plus
                // the CPU its own notifications took (timed in the same
                // turns).
                let notifying = (class == "icr").then_some(goal::Notifying {
                    own_ns: m.own_ns_median.median,
                    notify_ns: m.notify_ns_mean.median,
                });
                let mut g =
                    goal::msr_exit_cpu(kind, scenario, m.cpu_ns_median.median, null, notifying);
                g.measured = format!(
                    "{} (at {} vCPUs, {} profiled: CPU median {}, own {} over repetitions; \
                     wall {} ns, waiting {} ns per exit)",
                    g.measured,
                    c.vcpus,
                    m.sampled,
                    m.cpu_ns_median.show(0),
                    m.own_ns_median.show(0),
                    m.wall_ns_mean.show(0),
                    m.wait_ns_mean.show(0),
                );
                g
            }
            (None, _) => goal::not_measured(
                &goal::msr_exit_claim(kind, scenario, class == "icr"),
                &format!("no MSR exit of {scenario} was profiled"),
            ),
            (_, None) => goal::not_measured(
                &goal::msr_exit_claim(kind, scenario, class == "icr"),
                "no exit of pio-exit-loop (the null exit) was profiled",
            ),
        });
    }
    // The floor under any hypercall: a null hypercall's VMM service.
    let null = most_profiled(cells, Op::NullHypercall, true, "hypercall");
    let floor = null.map(|(_, f)| f);
    out.push(match floor {
        Some(f) => goal::hypercall_floor(f.cpu_ns_median.median, f.wall_ns_mean.median),
        None => goal::not_measured(
            goal::HYPERCALL_FLOOR_CLAIM,
            "no null-hypercall exit was profiled",
        ),
    });
    // 64-bank Ex hypercall service, at the most vCPUs run (the most
    // existing targets in the set), against that floor.
    let ex64 = cells
        .iter()
        .filter(|c| c.op == Op::Ex64.name() && c.irqchip == IrqchipMode::User && c.enlightened)
        .max_by_key(|c| c.vcpus);
    // Its decode and dispatch in an exit without the trap, on as many vCPUs
    // (`ex64`'s "off" side), and timed hot without KVM.
    let probe = ex64
        .and_then(|c| find(cells, Op::Ex64, Some(c.vcpus), c.irqchip, false))
        .filter(|p| p.probe_ns.median > 0.0);
    let hot_ns = ex64
        .and_then(|c| ex64_dispatch.filter(|d| d.vcpus == c.vcpus))
        .map(|d| d.ns);
    if let (Some(c), Some(p)) = (ex64, probe) {
        out.push(goal::ex64_call_floor(c.vcpus, p.probe_ns.median, hot_ns));
    }
    match ex64.and_then(|c| Some((c, c.profiled("hypercall")?))) {
        Some((c, h)) => {
            // The trap's fixed cost: the null hypercall's service less its
            // own decode and dispatch (stamped in its handler).
            let trap = null.map_or(0.0, |(n, f)| {
                (f.cpu_ns_median.median - n.hypercall_call_ns.median).max(0.0)
            });
            let per_rep = null.and_then(|(n, _)| ex64_per_rep(samples, c.vcpus, n.vcpus));
            let mut g = goal::ex64_service(
                h.cpu_ns_median.median,
                h.wall_ns_mean.median,
                trap,
                probe.map(|p| p.probe_ns.median),
                per_rep,
            );
            // The same call in the handler, behind the trap, and timed hot
            // in a loop without KVM.
            let null_call = null.map_or(String::new(), |(n, _)| {
                format!(" (the null hypercall's {} ns)", n.hypercall_call_ns.show(0))
            });
            let hot = hot_ns.map_or(String::new(), |ns| {
                format!("; timed hot without KVM {ns:.0} ns")
            });
            let after_exit = probe.map_or(String::new(), |p| {
                format!("; in a probe exit {} ns", p.probe_ns.show(0))
            });
            g.measured = format!(
                "{} at {} vCPUs; CPU median {} over repetitions; handler {} ns (TSC); \
                 the call's decode and dispatch: in the handler {} ns{null_call}{after_exit}{hot}",
                g.measured,
                c.vcpus,
                h.cpu_ns_median.show(0),
                c.hypercall_service_ns.show(0),
                c.hypercall_call_ns.show(0),
            );
            out.push(g);
        }
        None => out.push(goal::not_measured(
            goal::EX64_CLAIM,
            "ex64 not run or none of its hypercalls profiled",
        )),
    }
    // The VMM's memory per vCPU, at the most vCPUs any run had (user
    // irqchip: its per-vCPU state is the VMM's), worst over the runs.
    let sampled: Vec<&Cell> = cells
        .iter()
        .filter(|c| c.irqchip == IrqchipMode::User && c.vmm_kib_per_vcpu.is_some())
        .collect();
    match sampled.iter().map(|c| c.vcpus).max() {
        Some(n) => {
            let at_n: Vec<&&Cell> = sampled.iter().filter(|c| c.vcpus == n).collect();
            let stats: Vec<Stat> = at_n.iter().filter_map(|c| c.vmm_kib_per_vcpu).collect();
            let worst = stats.iter().map(|s| s.max).fold(0.0, f64::max);
            let medians: Vec<f64> = stats.iter().map(|s| s.median).collect();
            let shared = at_n
                .iter()
                .filter_map(|c| c.shared_kib_per_vcpu)
                .map(|s| s.max)
                .fold(0.0, f64::max);
            out.push(goal::vmm_memory(
                n,
                Stat::of(&medians).median,
                worst,
                shared,
            ));
        }
        None => out.push(goal::not_measured(
            "VMM RSS per vCPU <= 256 KiB beyond guest RAM and KVM's own",
            "no run sampled its memory",
        )),
    }
    // User vs kernel irqchip unicast IPI round trip: the best round trip
    // each irqchip offers (enlightenments off or on, whichever is faster),
    // with all four shown.
    let best = |chip: IrqchipMode| -> Option<(f64, &'static str)> {
        [false, true]
            .into_iter()
            .filter_map(|on| {
                find(cells, Op::PingPong, None, chip, on)
                    .map(|c| (c.guest_ns_per_op.median, c.scenario))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    };
    match (best(IrqchipMode::User), best(IrqchipMode::Kernel)) {
        (Some((u, us)), Some((k, ks))) => {
            // The floor: the best user round trip less the VMM's own
            // time on its interrupts' paths, measured in the same runs.
            let floor = [false, true]
                .into_iter()
                .filter_map(|on| find(cells, Op::PingPong, None, IrqchipMode::User, on))
                .find(|c| c.scenario == us)
                .filter(|c| c.ipi_path_vmm_ns_per_op.median > 0.0)
                .map(|c| {
                    let rt = goal::IpiRoundTrip {
                        round_trip_ns: u,
                        vmm_ns: c.ipi_path_vmm_ns_per_op.median,
                        notify_ns: c.ipi_path_notify_ns_per_op.median,
                        kicks: c.kicks_per_op.median,
                        wakeups: c.wakeups_per_op.median,
                    };
                    out.push(goal::ipi_floor(&rt));
                    rt.floor_ns()
                });
            let mut g = goal::user_vs_kernel_ipi(u, k, floor);
            let show = |chip: IrqchipMode, on: bool| {
                find(cells, Op::PingPong, None, chip, on).map_or("-".to_string(), |c| {
                    format!("{:.1}", c.guest_ns_per_op.median / 1000.0)
                })
            };
            g.measured = format!(
                "best of each: {} ({us}) vs ({ks}); x2APIC ICR {} vs {} us, PV IPI {} vs {} us",
                g.measured,
                show(IrqchipMode::User, false),
                show(IrqchipMode::Kernel, false),
                show(IrqchipMode::User, true),
                show(IrqchipMode::Kernel, true),
            );
            out.push(g);
        }
        _ => out.push(goal::not_measured(
            goal::USER_VS_KERNEL_IPI_CLAIM,
            "ping-pong not run with both irqchips",
        )),
    }
    out
}
