//! The Hyper-V services the vCPU loop calls: synthetic MSR exits
//! ([`msr`]) and the hypercall trap ([`hypercall`]), on hv-enlightenments'
//! state machines.

pub mod hypercall;
pub mod msr;
