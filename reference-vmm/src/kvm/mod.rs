//! Thin wrappers over KVM that know nothing of the VMM's other state:
//! kicking a vCPU out of `KVM_RUN`, the exit data in `kvm_run`, the guest
//! TLB flush, naming a faulting instruction, KVM's binary statistics and
//! the CPUID table the vCPUs get.

pub mod cpuid;
pub mod exit_data;
pub mod fault;
pub mod flush;
pub mod kick;
pub mod msr;
pub mod stats;
pub mod vcpu;

use kvm_bindings::kvm_sregs;

/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;

/// Whether the vCPU runs 64-bit code: EFER.LMA and CS.L (SDM 2.2.1; KVM
/// `is_64_bit_mode`).
pub fn in_64bit_mode(sregs: &kvm_sregs) -> bool {
    sregs.efer & EFER_LMA != 0 && sregs.cs.l != 0
}
