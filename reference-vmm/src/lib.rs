//! Reference VMM on KVM with the Hyper-V enlightenments served in
//! userspace: VM and vCPU threads, built-in guests, metrics.

pub mod boot;
pub mod cpuid;
pub mod demo;
pub mod devices;
pub mod error;
pub mod guest;
pub mod kick;
pub mod layout;
pub mod metrics;
pub mod probe;
pub mod scenario;
pub mod timer;
pub mod vcpu;
pub mod vm;

pub use error::Error;
