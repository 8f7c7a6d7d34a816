//! The CPUID table each vCPU gets: KVM's supported CPUID with the
//! hypervisor leaves replaced by the Hyper-V ones while Hyper-V is on, and
//! per-vCPU APIC IDs.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Kvm;

/// First hypervisor CPUID leaf.
pub const HV_LEAF_BASE: u32 = 0x4000_0000;
/// One past the last leaf of the hypervisor range.
pub const HV_LEAF_END: u32 = 0x5000_0000;
/// CPUID.1:ECX bit 21: x2APIC.
const CPUID1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.1:ECX bit 24: TSC deadline timer (not offered: the userspace APIC
/// has no TSC-deadline mode).
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Errors building the CPUID table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Supported(kvm_ioctls::Error),
    /// Too many entries.
    #[error("CPUID table too large: {0:?}")]
    Table(vmm_sys_util::fam::Error),
}

/// One CPUID leaf as published to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    /// Leaf (EAX input).
    pub function: u32,
    /// Sub-leaf (ECX input).
    pub index: u32,
    /// Output registers.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// KVM's supported CPUID with every hypervisor leaf (0x40000000..) removed
/// and `hv_leaves` added instead; x2APIC and the hypervisor bit set;
/// TSC-deadline cleared (the userspace APIC does not implement it).
pub fn base_table(kvm: &Kvm, hv_leaves: &[Leaf]) -> Result<Vec<kvm_cpuid_entry2>, Error> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::Supported)?;
    let mut out: Vec<kvm_cpuid_entry2> = supported
        .as_slice()
        .iter()
        .filter(|e| !(HV_LEAF_BASE..HV_LEAF_END).contains(&e.function))
        .copied()
        .collect();
    for e in &mut out {
        if e.function == 1 {
            e.ecx |= CPUID1_ECX_X2APIC | CPUID1_ECX_HYPERVISOR;
            e.ecx &= !CPUID1_ECX_TSC_DEADLINE;
        }
    }
    out.extend(hv_leaves.iter().map(|l| kvm_cpuid_entry2 {
        function: l.function,
        index: l.index,
        flags: 0,
        eax: l.eax,
        ebx: l.ebx,
        ecx: l.ecx,
        edx: l.edx,
        ..Default::default()
    }));
    Ok(out)
}

/// The table for one vCPU: APIC ID in leaf 1 EBX[31:24] (low 8 bits) and
/// the x2APIC ID in leaves 0xB and 0x1F EDX.
pub fn for_vcpu(base: &[kvm_cpuid_entry2], apic_id: u32) -> Result<CpuId, Error> {
    let mut v = base.to_vec();
    for e in &mut v {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00FF_FFFF) | ((apic_id & 0xFF) << 24),
            0xB | 0x1F => e.edx = apic_id,
            _ => {}
        }
    }
    CpuId::from_entries(&v).map_err(Error::Table)
}
