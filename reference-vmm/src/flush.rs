//! Flushing a vCPU's guest TLB from userspace.

use kvm_ioctls::VcpuFd;

/// Flushes the vCPU's guest TLB: KVM_SET_SREGS with CR4.PGE toggled and
/// then restored. A changed CR4 makes KVM reset the vCPU's MMU context
/// (x86.c `__set_sregs_common`: `mmu_reset_needed` ->
/// `kvm_mmu_reset_context`); the next entry loads a new root, which syncs
/// shadow page tables and flushes the current context (mmu.c
/// `kvm_mmu_load`). An unchanged CR3/CR4 resets nothing, hence the toggle.
/// Must run on the vCPU's own thread while it is outside KVM_RUN.
pub fn flush_guest_tlb(fd: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let sregs = fd.get_sregs()?;
    let mut toggled = sregs;
    toggled.cr4 ^= crate::boot::CR4_PGE;
    fd.set_sregs(&toggled)?;
    fd.set_sregs(&sregs)
}
