//! Statistics over the repetitions: median, minimum and maximum of each
//! figure, and the cells that group the samples of one combination.

use hv_enlightenments::accel::IrqchipMode;
use serde::Serialize;

use super::plan::Op;
use super::sample::Sample;
use crate::profile::{CLASSES, class_name};
use crate::scenario::serialize_irqchip;

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
    /// Irqchip mode (serialized as "user" or "kernel").
    #[serde(serialize_with = "serialize_irqchip")]
    pub irqchip: IrqchipMode,
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
    /// Of those, decode and dispatch nanoseconds per hypercall.
    pub hypercall_call_ns: Stat,
    /// Nanoseconds per probe of the `ex64` call in an exit without the trap.
    pub probe_ns: Stat,
    /// Guest-observed nanoseconds per operation.
    pub guest_ns_per_op: Stat,
    /// VMM nanoseconds per operation on the posted interrupts' paths.
    pub ipi_path_vmm_ns_per_op: Stat,
    /// Host notification latency per operation on those paths.
    pub ipi_path_notify_ns_per_op: Stat,
    /// Host nanoseconds per operation.
    pub host_ns_per_op: Stat,
    /// Figures this irqchip mode cannot observe (field names).
    pub unobserved: Vec<&'static str>,
    /// KVM's count of VM exits per operation (kernel irqchip).
    pub kvm_exits_per_op: Option<Stat>,
    /// KVM's count of vCPU 0's VM exits per operation.
    pub kvm_sender_exits_per_op: Option<Stat>,
    /// The VMM's anonymous memory per vCPU, KiB (guest RAM left out), when
    /// every repetition could sample it.
    pub vmm_kib_per_vcpu: Option<Stat>,
    /// RssFile + RssShmem per vCPU, KiB (the `kvm_run` pages).
    pub shared_kib_per_vcpu: Option<Stat>,
    /// Service, VMM CPU time and waiting by exit class.
    pub by_class: Vec<ClassCell>,
}

/// One exit class of a cell: the statistics of [`super::ClassService`]'s
/// figures over the repetitions (the profiled ones over those that
/// profiled an exit of the class).
#[derive(Debug, Clone, Serialize)]
pub struct ClassCell {
    /// Exit class.
    pub class: &'static str,
    /// Exits of the class per operation.
    pub exits_per_op: Stat,
    /// Handler nanoseconds per exit (host TSC).
    pub service_ns: Stat,
    /// Exits profiled, all repetitions.
    pub sampled: u64,
    /// Mean VMM CPU nanoseconds per profiled exit.
    pub cpu_ns_mean: Stat,
    /// Median VMM CPU nanoseconds per profiled exit.
    pub cpu_ns_median: Stat,
    /// Median of the VMM's own CPU nanoseconds per profiled exit (less
    /// its notifications and vCPU ioctls).
    pub own_ns_median: Stat,
    /// Mean wall nanoseconds per profiled exit.
    pub wall_ns_mean: Stat,
    /// Mean waiting (wall - CPU) nanoseconds per profiled exit.
    pub wait_ns_mean: Stat,
    /// Mean CPU time of one read of the profile's clock in place (taken
    /// out).
    pub clock_read_ns_mean: Stat,
    /// Mean CPU time per profiled exit spent notifying other threads
    /// (part of the CPU time).
    pub notify_ns_mean: Stat,
    /// Mean CPU time per profiled exit in vCPU ioctls other than
    /// `KVM_RUN` (part of the CPU time).
    pub ioctl_ns_mean: Stat,
}

impl ClassCell {
    /// The class `class` of the samples `s`, if any of them had an exit
    /// of it.
    fn from_samples(class: &'static str, s: &[&Sample]) -> Option<Self> {
        let rows: Vec<(&Sample, &super::ClassService)> = s
            .iter()
            .filter_map(|x| {
                x.by_class
                    .iter()
                    .find(|c| c.split.class == class)
                    .map(|c| (*x, c))
            })
            .collect();
        if rows.is_empty() {
            return None;
        }
        let stat = |f: fn(&super::ClassService) -> f64, profiled: bool| {
            let v: Vec<f64> = rows
                .iter()
                .filter(|(_, c)| !profiled || c.split.sampled > 0)
                .map(|(_, c)| f(c))
                .collect();
            Stat::of(&v)
        };
        let per_op: Vec<f64> = rows
            .iter()
            .map(|(x, c)| c.exits as f64 / x.ops.max(1) as f64)
            .collect();
        Some(Self {
            class,
            exits_per_op: Stat::of(&per_op),
            service_ns: stat(|c| c.ns_per_exit, false),
            sampled: rows.iter().map(|(_, c)| c.split.sampled).sum(),
            cpu_ns_mean: stat(|c| c.split.cpu_ns_mean, true),
            cpu_ns_median: stat(|c| c.split.cpu_ns_median, true),
            own_ns_median: stat(|c| c.split.own_ns_median, true),
            wall_ns_mean: stat(|c| c.split.wall_ns_mean, true),
            wait_ns_mean: stat(|c| c.split.wait_ns_mean, true),
            clock_read_ns_mean: stat(|c| c.split.clock_read_ns_mean, true),
            notify_ns_mean: stat(|c| c.split.notify_ns_mean, true),
            ioctl_ns_mean: stat(|c| c.split.ioctl_ns_mean, true),
        })
    }
}

/// The statistics of an optional figure, when every sample has it.
fn opt_stat(s: &[&Sample], f: fn(&Sample) -> Option<f64>) -> Option<Stat> {
    let v: Option<Vec<f64>> = s.iter().map(|x| f(x)).collect();
    v.filter(|v| !v.is_empty()).map(|v| Stat::of(&v))
}

impl Cell {
    /// `stat` shown with `prec` decimals, or "n/a" when `field` is not
    /// observed in this cell's irqchip mode.
    pub(super) fn show(&self, field: &str, stat: &Stat, prec: usize) -> String {
        if self.unobserved.contains(&field) {
            "n/a".into()
        } else {
            stat.show(prec)
        }
    }

    /// The figures of exit class `class`, if some exit of it was
    /// profiled.
    pub fn profiled(&self, class: &str) -> Option<&ClassCell> {
        self.by_class
            .iter()
            .find(|c| c.class == class && c.sampled > 0)
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
            hypercall_call_ns: stat(|x| x.hypercall_call_ns),
            probe_ns: stat(|x| x.probe_ns),
            guest_ns_per_op: stat(|x| x.guest_ns_per_op),
            ipi_path_vmm_ns_per_op: stat(|x| x.ipi_path_vmm_ns_per_op),
            ipi_path_notify_ns_per_op: stat(|x| x.ipi_path_notify_ns_per_op),
            host_ns_per_op: stat(|x| x.host_ns_per_op),
            unobserved: first.unobserved.clone(),
            kvm_exits_per_op: opt_stat(s, |x| x.kvm_exits_per_op),
            kvm_sender_exits_per_op: opt_stat(s, |x| x.kvm_sender_exits_per_op),
            vmm_kib_per_vcpu: opt_stat(s, |x| x.memory.map(|m| m.anon_kib_per_vcpu)),
            shared_kib_per_vcpu: opt_stat(s, |x| x.memory.map(|m| m.shared_kib_per_vcpu)),
            by_class: CLASSES
                .iter()
                .filter_map(|&c| ClassCell::from_samples(class_name(c), s))
                .collect(),
        })
    }
}

/// Groups the samples into cells, in report order (operation, vCPUs,
/// irqchip, off before on).
pub fn summarize(ops: &[Op], samples: &[Sample]) -> Vec<Cell> {
    let mut keys: Vec<(usize, u32, IrqchipMode, bool)> = Vec::new();
    for s in samples {
        let Some(oi) = ops.iter().position(|o| o.name() == s.op) else {
            continue;
        };
        let k = (oi, s.vcpus, s.irqchip, s.enlightened);
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.sort_by_key(|a| (a.0, a.1, a.2 != IrqchipMode::User, a.3));
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

/// The cell of `op` at `vcpus` (any when `None`) under `irqchip`, with
/// the enlightenments `on` or off.
pub(super) fn find(
    cells: &[Cell],
    op: Op,
    vcpus: Option<u32>,
    irqchip: IrqchipMode,
    on: bool,
) -> Option<&Cell> {
    cells.iter().find(|c| {
        c.op == op.name()
            && vcpus.is_none_or(|n| c.vcpus == n)
            && c.irqchip == irqchip
            && c.enlightened == on
    })
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
}
