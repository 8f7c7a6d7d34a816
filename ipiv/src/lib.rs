//! APIC-acceleration models for a KVM-based VMM, without KVM ioctls:
//!
//! * [`descriptor`]: the VT-x posted-interrupt descriptor (PIR, ON, SN,
//!   NV, NDST), posted to from any thread and taken by its vCPU, lock-free.
//! * [`pid_table`]: the PID-pointer table, APIC ID -> descriptor, as VT-x
//!   IPI virtualization indexes it.
//! * [`ipi`]: the IPI fast path: post one vector to many targets and learn,
//!   per target, whether to kick it, wake it or do nothing.
//! * [`run_state`]: the per-vCPU run state the fast path reads, the
//!   [`Notify`] it maps to, and the protocol that keeps a halting vCPU from
//!   sleeping on a pending vector.
//! * [`inhibit`]: KVM's APICv/AVIC inhibit reasons as a per-VM set fed by
//!   per-vCPU events, applied at safe points, with explanations.
//! * [`probe`]: what the host offers (sysfs module parameters, CPUID), as
//!   the [`HostApicAccel`](hv_enlightenments::accel::HostApicAccel) the
//!   CPUID hint policy takes.
//!
//! The crate computes; the VMM acts. Kicks, wake-ups and inhibit updates
//! come back as values for the caller to carry out, holding no lock of
//! this crate.
//!
//! ```
//! use ipiv::{HaltCheck, Notify, PidTable};
//!
//! // The VMM builds the table once and shares it with every vCPU thread.
//! let table = PidTable::new(3)?;
//! let vcpu0 = table.register(0)?;
//! let vcpu1 = table.register(1)?;
//!
//! // vCPU 1 handles a guest HLT: publish "halted", then re-check.
//! assert_eq!(vcpu1.run_state().prepare_halt(vcpu1.descriptor()), HaltCheck::Sleep);
//!
//! // vCPU 0 sends IPI 0x40 to APIC IDs 0 and 1 (e.g. a PV IPI hypercall).
//! let mut wake = Vec::new();
//! for d in table.post_ipi_iter([0, 1], 0x40)? {
//!     if d.outcome == Ok(Notify::Wake) {
//!         wake.push(d.apic_id);
//!     }
//! }
//! assert_eq!(wake, vec![1]); // the VMM now unparks vCPU 1's thread
//!
//! // vCPU 1 wakes, leaves the halted state and takes the vector.
//! let pending = vcpu1.run_state().leave_guest(vcpu1.descriptor());
//! assert_eq!(pending.highest(), Some(0x40));
//! // vCPU 0 was outside the guest: it takes its copy before entering.
//! assert!(vcpu0.run_state().enter_guest(vcpu0.descriptor()).contains(0x40));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
