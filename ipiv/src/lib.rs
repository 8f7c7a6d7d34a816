#![doc = include_str!("../README.md")]
//!
//! ## Entry points
//!
//! * [`descriptor`]: the VT-x posted-interrupt descriptor (PIR, ON, SN,
//!   NV, NDST), posted to from any thread and taken by its vCPU, lock-free.
//! * [`pid_table`]: the PID-pointer table, APIC ID -> descriptor, as VT-x
//!   IPI virtualization indexes it ([`PidTable`], [`PostedVcpu`]).
//! * [`ipi`]: the IPI fast path ([`PidTable::post_ipi`],
//!   [`PidTable::post_ipi_iter`]): post one vector to many targets and
//!   learn, per target, whether to kick it, wake it or do nothing.
//! * [`run_state`]: the per-vCPU run state the fast path reads, the
//!   [`Notify`] it maps to, and the protocol that keeps a halting vCPU from
//!   sleeping on a pending vector ([`VcpuRunState`]).
//! * [`inhibit`]: KVM's APICv/AVIC inhibit reasons as a per-VM set fed by
//!   per-vCPU events, applied at safe points, with explanations
//!   ([`InhibitManager`]).
//! * [`probe`]: what the host offers (sysfs module parameters, CPUID), as
//!   the [`HostApicAccel`](hv_enlightenments::accel::HostApicAccel) the
//!   CPUID hint policy takes ([`HostProbe`]).

#![warn(missing_docs)]

pub mod descriptor;
pub mod inhibit;
pub mod ipi;
pub mod pid_table;
pub mod probe;
pub mod run_state;
mod sync;

pub use descriptor::{PendingVectors, PostOutcome, PostedInterruptDescriptor};
pub use inhibit::{
    InhibitConfig, InhibitEvent, InhibitManager, InhibitReason, InhibitReport, InhibitRequests,
    InhibitSet, SafePoint, VcpuGate,
};
pub use ipi::{Delivery, MIN_IPI_VECTOR};
pub use pid_table::{MAX_APIC_IDS, PidTable, PostedVcpu};
pub use probe::HostProbe;
pub use run_state::{HaltCheck, Notify, RunState, VcpuRunState};
