#![doc = include_str!("../README.md")]
//!
//! ## Entry points
//!
//! - [`LocalApic`]: one per vCPU. Register access through the xAPIC MMIO
//!   page ([`LocalApic::read_mmio`], [`LocalApic::write_mmio`]) and MSRs
//!   ([`LocalApic::read_msr`], [`LocalApic::write_msr`]: IA32_APIC_BASE,
//!   IA32_TSC_DEADLINE, x2APIC 0x800-0x8FF, Hyper-V 0x40000070-72, whose
//!   #GP rule [`synthetic_write_faults`] a VMM can apply to another APIC).
//!   Writes return an [`Outcome`]: done, #GP, or an [`Effect`] for the VMM
//!   (IPI to route, EOI for the IOAPIC, new timer deadline, topology
//!   change).
//! - Interrupt flow: [`LocalApic::deliver`] (or
//!   [`LocalApic::deliver_fixed_vectors`] for a batch) ->
//!   [`LocalApic::pending`] -> [`LocalApic::acknowledge`] -> EOI. No
//!   allocation on this path.
//! - [`Topology`]: one per VM. Resolves IPI and MSI destinations to vCPU
//!   indices (up to 4096 APIC IDs); physical unicast is a table lookup.
//! - Lazy EOI: [`LocalApic::arm_lazy_eoi`] before entry,
//!   [`LocalApic::complete_lazy_eoi`] after exit, with the flag at
//!   [`VP_ASSIST_APIC_ASSIST_OFFSET`] of the page
//!   [`HV_X64_MSR_VP_ASSIST_PAGE`] names.
//! - Snapshot: [`LocalApic::save_state`] / [`LocalApic::restore_state`] in
//!   the layout of KVM's `kvm_lapic_state`.

#![warn(missing_docs)]

mod apic;
pub mod icr;
pub mod interrupt;
pub mod mode;
pub mod outcome;
pub mod regs;
pub mod state;
pub mod synthetic;
pub mod timer;
pub mod topology;
pub mod vector;

pub use apic::{
    Config, ConfigError, DEFAULT_BUS_CYCLE_NS, DEFAULT_MIN_PERIODIC_NS, LocalApic,
    MAX_BUS_CYCLE_NS, handles_msr,
};
pub use icr::{Destination, DestinationMode, Ipi, Shorthand};
pub use interrupt::{Delivery, DeliveryMode, Interrupt, TriggerMode};
pub use mode::ApicMode;
pub use outcome::{Effect, Eoi, MsrRead, Outcome, TimerPoll};
pub use regs::Lvt;
pub use state::{IdFormat, LAPIC_STATE_SIZE};
pub use synthetic::{
    APIC_ASSIST_NO_EOI_REQUIRED, HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR,
    HV_X64_MSR_VP_ASSIST_PAGE, VP_ASSIST_APIC_ASSIST_OFFSET, synthetic_read_faults,
    synthetic_write_faults,
};
pub use timer::{Clock, ManualClock, TimerMode};
pub use topology::{ApicIdentity, MAX_APIC_ID, MAX_VCPUS, Topology, VcpuSet};
pub use vector::VectorBitmap;
