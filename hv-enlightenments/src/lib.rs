//! Hyper-V TLFS definitions and logic for VMMs that implement the Hyper-V
//! enlightenments themselves (in userspace, on a host whose KVM has no
//! Hyper-V support, or on any other hypervisor core).
//!
//! The crate is `#![no_std]` with default features off. It never touches
//! KVM, files or threads: it takes MSR indices, register values and a guest
//! memory reader, and returns values, statuses and effects for the VMM to
//! apply.

#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod accel;
pub mod hypercall;
pub mod msr;
