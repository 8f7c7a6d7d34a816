//! Flushing a vCPU's guest TLB from userspace.

use kvm_ioctls::VcpuFd;

use super::msr::{self, MSR_EFER};

/// IA32_EFER.NXE (bit 11).
const EFER_NXE: u64 = 1 << 11;

/// Flushes the vCPU's guest TLB: a host-initiated `KVM_SET_MSRS` of
/// IA32_EFER with NXE toggled, then restored. NXE is one of the bits whose
/// change makes KVM reset the vCPU's MMU context (x86.c `set_efer`:
/// `KVM_MMU_EFER_ROLE_BITS` -> `kvm_mmu_reset_context`); the next entry
/// loads a new root, which syncs shadow page tables and flushes the
/// current context (mmu.c `kvm_mmu_load`). An unchanged EFER resets
/// nothing, hence the toggle.
///
/// EFER rather than CR4 through `KVM_SET_SREGS`: that ioctl also rewrites
/// CR8, which with KVM's in-kernel APIC sets the TPR to CR8 << 4 and so
/// clears TPR bits 3:0 (`kvm_lapic_set_tpr`).
///
/// Must run on the vCPU's own thread while it is outside `KVM_RUN`, after
/// any pending exit was completed ([`crate::kvm::exit_data::complete_pending`]).
pub fn flush_guest_tlb(fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let refused = || kvm_ioctls::Error::new(libc::EINVAL);
    let value = msr::get(fd, MSR_EFER)?.ok_or_else(refused)?;
    for v in [value ^ EFER_NXE, value] {
        if !msr::set(fd, MSR_EFER, v)? {
            return Err(refused());
        }
    }
    Ok(())
}
