//! APIC-acceleration models: a posted-interrupt IPI fast path, the
//! APICv/AVIC inhibit manager and the host probe. No KVM ioctls.

#![warn(missing_docs)]
