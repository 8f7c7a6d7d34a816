//! An x2APIC-aware virtual local APIC with the Hyper-V synthetic
//! EOI/ICR/TPR MSRs and lazy EOI, for VMMs that emulate the APIC in
//! userspace. No KVM: a state machine driven by the VMM.
//!
//! - [`LocalApic`]: one per vCPU. Register access through the xAPIC MMIO
//!   page ([`LocalApic::read_mmio`], [`LocalApic::write_mmio`]) and MSRs
//!   ([`LocalApic::read_msr`], [`LocalApic::write_msr`]: IA32_APIC_BASE,
//!   IA32_TSC_DEADLINE, x2APIC 0x800-0x8FF, Hyper-V 0x40000070-72, whose
//!   #GP rule [`synthetic_write_faults`] a VMM can apply to another APIC).
//!   Writes return an [`Outcome`]: done, #GP, or an [`Effect`] for the VMM
//!   (IPI to route, EOI for the IOAPIC, new timer deadline, topology
//!   change).
//! - Interrupt flow: [`LocalApic::deliver`] -> [`LocalApic::pending`] ->
//!   [`LocalApic::acknowledge`] -> EOI. No allocation on this path.
//! - [`Topology`]: one per VM. Resolves IPI and MSI destinations to vCPU
//!   indices (up to 4096 APIC IDs); physical unicast is a table lookup.
//! - Lazy EOI: [`LocalApic::arm_lazy_eoi`] before entry,
//!   [`LocalApic::complete_lazy_eoi`] after exit.
//! - Snapshot: [`LocalApic::save_state`] / [`LocalApic::restore_state`] in
//!   the layout of KVM's `kvm_lapic_state`.
//!
//! ```
//! use std::sync::Arc;
//! use lapic::{Config, Effect, Interrupt, LocalApic, ManualClock, Outcome, Topology, VcpuSet};
//! use hv_enlightenments::msr::HV_X64_MSR_EOI;
//!
//! let clock = Arc::new(ManualClock::new(1_000_000));
//! let mut apics: Vec<LocalApic> = (0..2)
//!     .map(|id| LocalApic::new(Config::new(id), clock.clone()).unwrap())
//!     .collect();
//! let mut topo = Topology::new();
//! for (i, a) in apics.iter().enumerate() {
//!     topo.add(i, a.identity()).unwrap();
//! }
//! // The guest on vCPU 0 software-enables its APIC (SVR bit 8)...
//! let out = apics[0].write_mmio(0xF0, &0x1FFu32.to_le_bytes());
//! if let Outcome::Effect(Effect::Topology(id)) = out {
//!     topo.update(0, id).unwrap();
//! }
//! // ...vCPU 1 does the same, then sends vector 0x40 to APIC ID 0.
//! let _ = apics[1].write_mmio(0xF0, &0x1FFu32.to_le_bytes());
//! let _ = apics[1].write_mmio(0x310, &0u32.to_le_bytes());
//! let Outcome::Effect(Effect::SendIpi(ipi)) = apics[1].write_mmio(0x300, &0x4040u32.to_le_bytes())
//! else { panic!("no IPI") };
//! let mut targets = VcpuSet::new();
//! topo.resolve_ipi(1, &ipi, &mut targets);
//! for t in targets.iter() {
//!     let _ = apics[t].deliver(&ipi.interrupt());
//! }
//! // vCPU 0 takes it and completes it through the Hyper-V EOI MSR.
//! assert_eq!(apics[0].pending(), Some(0x40));
//! assert!(apics[0].acknowledge(0x40));
//! assert_eq!(apics[0].ppr(), 0x40);
//! let out = apics[0].write_msr(HV_X64_MSR_EOI, 0);
//! assert!(matches!(out, Outcome::Effect(Effect::Eoi(e)) if e.vector == 0x40 && !e.notify_ioapic));
//! assert_eq!(apics[0].pending(), None);
//! # let _ = Interrupt::fixed(0x41);
//! ```

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
pub use synthetic::{synthetic_read_faults, synthetic_write_faults};
pub use timer::{Clock, ManualClock, TimerMode};
pub use topology::{ApicIdentity, MAX_APIC_ID, MAX_VCPUS, Topology, VcpuSet};
pub use vector::VectorBitmap;

/// Runs the README's example as a doc test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
