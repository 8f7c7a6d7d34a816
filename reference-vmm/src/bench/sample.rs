//! The record of one repetition of one run.

use hv_enlightenments::accel::IrqchipMode;
use serde::Serialize;

use super::memory::VmmMemory;
use crate::profile::ClassSplit;
use crate::scenario::serialize_irqchip;

/// Handler time of one exit class in one run, and the VMM CPU time and
/// waiting of its profiled exits ([`crate::profile`]; those figures are 0
/// when `sampled` is). Serialized flat: class, exits, ns_per_exit and the
/// split's figures side by side.
#[derive(Debug, Clone, Serialize)]
pub struct ClassService {
    /// Exits of the class in the measured phase.
    pub exits: u64,
    /// Mean handler nanoseconds per exit of the class (host TSC).
    pub ns_per_exit: f64,
    /// The class and its profiled exits' split.
    #[serde(flatten)]
    pub split: ClassSplit,
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
    /// Irqchip mode (serialized as "user" or "kernel").
    #[serde(serialize_with = "serialize_irqchip")]
    pub irqchip: IrqchipMode,
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
    /// Of those, decode and dispatch nanoseconds per hypercall.
    pub hypercall_call_ns: f64,
    /// Nanoseconds per probe of the `ex64` call in an exit without the
    /// trap (0 when none ran).
    pub probe_ns: f64,
    /// Guest-observed nanoseconds per operation.
    pub guest_ns_per_op: f64,
    /// VMM nanoseconds per operation on the posted interrupts' paths.
    pub ipi_path_vmm_ns_per_op: f64,
    /// Host notification latency per operation on those paths.
    pub ipi_path_notify_ns_per_op: f64,
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
    /// The VMM's resident memory per vCPU during the run (`None` when it
    /// could not be sampled).
    pub memory: Option<VmmMemory>,
}
