//! The APICv/AVIC inhibit manager: KVM's inhibit reasons as a per-VM set
//! fed by per-vCPU events, applied at safe points, and explained.
//!
//! Rules (matching KVM unless noted):
//!
//! | reason | set while |
//! |---|---|
//! | DISABLED | the host has no (or an unknown) APICv/AVIC |
//! | ABSENT | the irqchip is in userspace |
//! | HYPERV | at least one vCPU has an unmasked AutoEOI SINT with a vector >= 16 (`synic_update_vector`), not merely SynIC on |
//! | BLOCKIRQ | at least one vCPU is debugged with `KVM_GUESTDBG_BLOCKIRQ` |
//! | PHYSICAL_ID_ALIASED, LOGICAL_ID_ALIASED | the VMM's APIC map says so |
//! | APIC_ID_MODIFIED, APIC_BASE_MODIFIED | ever, once raised (sticky) |
//! | NESTED | at least one vCPU runs a nested guest |
//! | IRQWIN | at least one vCPU waits for an ExtINT interrupt window |
//! | PIT_REINJ, SEV | configured |
//! | PHYSICAL_ID_TOO_BIG | some APIC ID > 254 (AVIC) or > 511 (x2AVIC) |
//!
//! x2APIC mode inhibits nothing: KVM keeps AVIC on with x2AVIC, and in
//! "hybrid" mode without it (Linux 6.0+); [`InhibitManager::explain`]
//! notes the MSR exits hybrid mode costs. Intel's APICv honours only the
//! first seven reasons ([`InhibitSet::VMX`]).

pub mod deferred;
mod event;
mod explain;
mod manager;
mod reason;

pub use deferred::{Error, InhibitRequests, ReadSide, RequestTicket, SafePoint, VcpuGate};
pub use event::InhibitEvent;
pub use explain::{Explanation, InhibitReport};
pub use manager::{
    AVIC_MAX_PHYSICAL_ID, InhibitConfig, InhibitManager, InhibitUpdate, SINT_AUTO_EOI, SINT_COUNT,
    SINT_FIRST_VALID_VECTOR, SINT_MASKED, SINT_VECTOR_MASK, X2AVIC_MAX_PHYSICAL_ID,
};
pub use reason::{InhibitReason, InhibitSet};
