//! Hyper-V CPUID leaves (0x40000000..=0x4000000A) and the hint policy
//! that chooses them.
//!
//! [`CpuidBuilder`] takes what the VMM wants and what the host does and
//! returns a [`CpuidPlan`]: the typed leaves ([`HvCpuid`]) and one
//! [`Decision`] per [`Item`], each with its reason.

mod decision;
#[cfg(feature = "kvm")]
mod kvm;
mod leaves;
mod policy;

pub use decision::{Decision, Decisions, Item};
pub use leaves::*;
pub use policy::{
    CpuidBuilder, CpuidPlan, Enlightenments, Error, FIRST_VP_INDEX_NEEDING_EX, Frequencies,
    MAX_VCPUS, MAX_VP_INDEX, Served, X2APIC_VCPU_THRESHOLD,
};
