//! Host-initiated access to one MSR of a vCPU (`KVM_GET_MSRS` /
//! `KVM_SET_MSRS` with a one-entry list), and the architectural MSR indices
//! the VMM itself touches.

use kvm_bindings::{Msrs, kvm_msr_entry};
use kvm_ioctls::VcpuFd;

/// IA32_TIME_STAMP_COUNTER.
pub const MSR_TSC: u32 = 0x10;
/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// IA32_EFER.
pub const MSR_EFER: u32 = 0xC000_0080;

fn one(index: u32, data: u64) -> Result<Msrs, kvm_ioctls::Error> {
    Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .map_err(|_| kvm_ioctls::Error::new(libc::ENOMEM))
}

/// MSR `index` of the vCPU; `None` when KVM does not return it.
pub fn get(fd: &VcpuFd, index: u32) -> Result<Option<u64>, kvm_ioctls::Error> {
    let mut msrs = one(index, 0)?;
    let n = fd.get_msrs(&mut msrs)?;
    Ok(msrs.as_slice().first().filter(|_| n == 1).map(|e| e.data))
}

/// Writes MSR `index` as the host; `false`: KVM refused the value.
pub fn set(fd: &VcpuFd, index: u32, data: u64) -> Result<bool, kvm_ioctls::Error> {
    Ok(fd.set_msrs(&one(index, data)?)? == 1)
}
