//! What a vCPU (or the VM) reports to the inhibit manager: the events the
//! exit paths queue ([`InhibitRequests`](super::InhibitRequests)) and the
//! manager applies ([`InhibitManager`](super::InhibitManager)).

/// Something a vCPU (or the VM) did that may change an inhibit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InhibitEvent {
    /// The vCPU exists with this APIC ID (its `vcpu_id` in KVM terms).
    ApicId(u32),
    /// The guest wrote SynIC SINT `sint` (0..=15) with `value`.
    SintWrite {
        /// SINT index.
        sint: u8,
        /// New MSR value.
        value: u64,
    },
    /// The vCPU switched x2APIC mode on or off.
    X2apic(bool),
    /// The vCPU started or stopped running a nested guest (L2).
    NestedGuest(bool),
    /// The vCPU started or stopped waiting for an interrupt window for an
    /// ExtINT (legacy PIC) interrupt.
    ExtIntWindow(bool),
    /// Guest debugging with `KVM_GUESTDBG_BLOCKIRQ` on or off.
    GuestDebugBlockIrq(bool),
    /// The guest changed its xAPIC ID. Sticky.
    ApicIdModified,
    /// The guest relocated its APIC base. Sticky.
    ApicBaseModified,
    /// VM-wide: physical APIC IDs alias (or stopped aliasing).
    PhysicalIdAliased(bool),
    /// VM-wide: logical APIC IDs alias (or stopped aliasing).
    LogicalIdAliased(bool),
}
