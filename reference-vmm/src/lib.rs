//! Reference VMM on KVM with the Hyper-V enlightenments served in
//! userspace, for hosts whose KVM has no in-kernel Hyper-V: VM and vCPU
//! threads (kvm-ioctls), guest memory (vm-memory), a userspace local APIC
//! per vCPU (`lapic`), IPIs posted through `ipiv`, synthetic MSRs, CPUID and
//! hypercalls through `hv-enlightenments`, built-in guests assembled at run
//! time, and per-vCPU metrics.
//!
//! ```no_run
//! use std::time::Duration;
//! use reference_vmm::guest::scenarios::IpiMode;
//! use reference_vmm::scenario::{self, RunOptions, Scenario};
//! use reference_vmm::vm::FlushMethod;
//! use hv_enlightenments::accel::IrqchipMode;
//!
//! // Broadcast IPIs by PV hypercall on an 8-vCPU VM.
//! let opts = RunOptions {
//!     vcpus: 8,
//!     timeout: Duration::from_secs(60),
//!     flush: FlushMethod::MmuReset,
//!     irqchip: IrqchipMode::User,
//!     halt_poll: None,
//! };
//! let (_report, figures) = scenario::run(Scenario::Broadcast(IpiMode::PvFast), opts)?;
//! assert_eq!(figures.sender_exits_per_op, 1.0);
//! println!("{}", figures.metrics.table(8));
//! # Ok::<(), reference_vmm::Error>(())
//! ```

pub mod apicv;
pub mod bench;
pub mod clock;
pub mod demo;
pub mod error;
pub mod goal;
pub mod guest;
pub mod hyperv;
pub mod ipi_path;
pub mod irqchip;
pub mod kvm;
pub mod loader;
pub mod machine;
pub mod metrics;
pub mod platform;
pub mod probe;
pub mod profile;
pub mod runner;
pub mod scenario;
pub mod timers;
pub mod vcpu;
pub mod vm;

pub use error::Error;
