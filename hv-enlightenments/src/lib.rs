#![doc = include_str!("../README.md")]
//!
//! ## Entry points
//!
//! - [`cpuid::CpuidBuilder`] -> [`cpuid::CpuidPlan`]: the leaves
//!   ([`cpuid::HvCpuid::entries`]) and a reason for every decision.
//! - [`msr::scope`] routes an MSR exit to the [`msr::Partition`] or the
//!   vCPU's [`msr::Vp`]; both answer with an [`msr::MsrOutcome`].
//! - [`hypercall::HypercallTrap`] writes the hypercall page;
//!   [`hypercall::HypercallGprs`] and [`hypercall::HypercallMode`] read a
//!   trapped call; [`hypercall::decode`] decodes it; the guest side is
//!   [`hypercall::encode_send_ipi`] and [`hypercall::encode_flush`].
//! - [`reftime::TscConversion`] and [`reftime::time_ref_count`]: the
//!   partition reference time.
//! - [`accel::HostApicAccel`]: what the host does for APIC accesses.
//! - [`synic`]: message slots, event flags, [`synic::MessageQueue`] and
//!   [`synic::Connections`]; [`synic::decode_synic`] decodes
//!   HvPostMessage/HvSignalEvent, [`hypercall::HypercallAccess`] makes
//!   KVM's privilege checks.
//! - [`msr::stimer`]: synthetic timers, kept in each [`msr::Vp`] and run
//!   by [`synic::process_stimers`].
//!
//! The crate is `#![no_std]` with default features off; `alloc`, `std`,
//! `vm-memory` and `kvm` add conveniences.

#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod accel;
pub mod cpuid;
pub mod hypercall;
pub mod msr;
pub mod reftime;
pub mod synic;

/// Bits of a Hyper-V page offset (`HV_HYP_PAGE_SHIFT`).
pub const HV_PAGE_SHIFT: u32 = 12;

/// Bytes in a Hyper-V page (`HV_HYP_PAGE_SIZE`): the page the synthetic
/// MSRs place (hypercall, VP assist, SynIC, reference TSC) and the most
/// hypercall input the decoder reads. A `usize`, for buffers; guest
/// addresses take `HV_PAGE_SIZE as u64`.
///
/// ```
/// use hv_enlightenments::HV_PAGE_SIZE;
/// use hv_enlightenments::hypercall::HypercallTrap;
///
/// let mut page = [0u8; HV_PAGE_SIZE];
/// HypercallTrap::Vmcall.stub().write_page(&mut page);
/// let next_page_gpa = 0x6000 + HV_PAGE_SIZE as u64;
/// assert_eq!(next_page_gpa, 0x7000);
/// ```
pub const HV_PAGE_SIZE: usize = 1 << HV_PAGE_SHIFT;
