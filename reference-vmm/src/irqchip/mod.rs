//! Where the local APICs live, and everything that differs with it: the
//! userspace irqchip ([`user`]: lapic per vCPU, posted IPIs through ipiv,
//! host-time APIC timers ([`timer`]), INIT/SIPI ([`mp`])) and KVM's
//! in-kernel LAPIC with a split irqchip ([`kernel`]).

pub mod kernel;
pub mod mp;
pub mod timer;
pub mod user;
