//! Conversion of the leaves to KVM's `kvm_cpuid_entry2`.

use alloc::vec::Vec;

use kvm_bindings::kvm_cpuid_entry2;

use super::leaves::{CpuidEntry, HvCpuid};

/// First leaf of the hypervisor range (Intel SDM: 0x40000000-0x4FFFFFFF is
/// reserved for hypervisors).
const HYPERVISOR_RANGE_START: u32 = 0x4000_0000;
/// Last leaf of the hypervisor range.
const HYPERVISOR_RANGE_END: u32 = 0x4FFF_FFFF;

impl From<CpuidEntry> for kvm_cpuid_entry2 {
    fn from(e: CpuidEntry) -> Self {
        kvm_cpuid_entry2 {
            function: e.function,
            index: 0,
            flags: 0,
            eax: e.eax,
            ebx: e.ebx,
            ecx: e.ecx,
            edx: e.edx,
            ..Default::default()
        }
    }
}

impl HvCpuid {
    /// The leaves as KVM entries.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::CpuidBuilder;
    ///
    /// let plan = CpuidBuilder::new(2).build()?;
    /// let entries = plan.cpuid.to_kvm_entries();
    /// assert_eq!(entries[1].eax, u32::from_le_bytes(*b"Hv#1"));
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn to_kvm_entries(&self) -> Vec<kvm_cpuid_entry2> {
        self.entries().into_iter().map(Into::into).collect()
    }

    /// Replaces every leaf of the hypervisor range in `entries` (KVM's own
    /// "KVMKVMKVM" leaves at 0x40000000 or 0x40000100 included: a guest
    /// that sees them may pick KVM instead of Hyper-V) with these leaves.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::CpuidBuilder;
    /// use kvm_bindings::kvm_cpuid_entry2;
    ///
    /// // KVM_GET_SUPPORTED_CPUID's list holds KVM's own signature leaf.
    /// let kvm_signature = kvm_cpuid_entry2 { function: 0x4000_0000, ..Default::default() };
    /// let basic = kvm_cpuid_entry2 { function: 0x1, ..Default::default() };
    /// let mut entries = vec![basic, kvm_signature];
    /// CpuidBuilder::new(2).build()?.cpuid.apply_to_kvm_entries(&mut entries);
    /// assert_eq!(entries.len(), 1 + 11); // leaf 1 kept, 0x40000000..=0x4000000A
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn apply_to_kvm_entries(&self, entries: &mut Vec<kvm_cpuid_entry2>) {
        entries.retain(|e| !(HYPERVISOR_RANGE_START..=HYPERVISOR_RANGE_END).contains(&e.function));
        entries.extend(self.entries().into_iter().map(kvm_cpuid_entry2::from));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpuid::CpuidBuilder;

    #[test]
    fn kvm_entries_carry_the_same_registers() {
        let plan = CpuidBuilder::new(8).build().unwrap();
        let kvm = plan.cpuid.to_kvm_entries();
        for (k, e) in kvm.iter().zip(plan.cpuid.entries()) {
            assert_eq!(
                (k.function, k.index, k.flags, k.eax, k.ebx, k.ecx, k.edx),
                (e.function, 0, 0, e.eax, e.ebx, e.ecx, e.edx)
            );
        }
    }

    #[test]
    fn apply_replaces_kvm_leaves_and_keeps_the_rest() {
        let plan = CpuidBuilder::new(8).build().unwrap();
        let mut entries = alloc::vec![
            kvm_cpuid_entry2 {
                function: 1,
                eax: 0x1234,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x4000_0100,
                ..Default::default()
            },
        ];
        plan.cpuid.apply_to_kvm_entries(&mut entries);
        assert_eq!(entries[0].function, 1);
        assert_eq!(
            entries.iter().filter(|e| e.function == 0x4000_0000).count(),
            1
        );
        assert!(!entries.iter().any(|e| e.function == 0x4000_0100));
        assert_eq!(entries.len(), 1 + plan.cpuid.entries().len());
    }
}
