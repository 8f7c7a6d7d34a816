//! Hyper-V TLFS definitions and logic for VMMs that implement the Hyper-V
//! enlightenments themselves (in userspace, on a host whose KVM has no
//! Hyper-V support, or on any other hypervisor core).
//!
//! The crate is `#![no_std]` with default features off. It never touches
//! KVM, files or threads: it takes MSR indices, register values and a guest
//! memory reader, and returns values, statuses and effects for the VMM to
//! apply.
//!
//! - [`cpuid`]: the leaves 0x40000000..=0x4000000A and the hint policy
//!   that picks them, with a reason for every decision.
//! - [`msr`]: synthetic MSR state (partition-wide and per VP) whose reads
//!   and writes return an [`msr::MsrOutcome`].
//! - [`hypercall`]: the hypercall page, the calling conventions, and the
//!   PV TLB flush and PV IPI hypercall codec.
//! - [`reftime`]: the partition reference time (TIME_REF_COUNT and the
//!   reference TSC page) as arithmetic on a TSC value.
//! - [`accel`]: what the host does for architectural APIC accesses.
//!
//! # Example
//!
//! ```
//! use hv_enlightenments::accel::{HostApicAccel, IrqchipMode};
//! use hv_enlightenments::cpuid::{CpuidBuilder, Hints, Item};
//! use hv_enlightenments::msr::{
//!     self, MsrAction, MsrOutcome, MsrScope, Partition, PartitionConfig, Vp,
//! };
//!
//! // 8 vCPUs, local APIC emulated in userspace, no APICv on the host.
//! let plan = CpuidBuilder::new(8)
//!     .irqchip(IrqchipMode::User)
//!     .host(HostApicAccel::NONE)
//!     .tsc_stable(true)
//!     .build()?;
//!
//! // The leaves to publish (0x40000000..=0x4000000A).
//! let leaves = plan.cpuid.entries();
//! assert_eq!(leaves[0].function, 0x4000_0000);
//! assert!(plan.cpuid.hints.contains(Hints::APIC_ACCESS));
//!
//! // Every decision carries its reason.
//! let why = plan.decisions.get(Item::ApicAccessRecommended).unwrap();
//! assert!(why.on);
//! println!("{}", plan.decisions);
//!
//! // MSR state enforcing the privileges just published.
//! let mut partition = Partition::new(PartitionConfig::from(&plan));
//! let mut vp = Vp::new(0, plan.privileges())?;
//!
//! // A guest wrmsr exit: route by scope, apply the outcome. Pages the
//! // guest enables must be guest RAM (here: the first 256 MiB).
//! let ram = |gpa: u64| gpa < 0x1000_0000;
//! let (index, value) = (msr::HV_X64_MSR_VP_ASSIST_PAGE, 0x0010_0001);
//! let outcome = match msr::scope(index) {
//!     Some(MsrScope::Vp) => vp.write(index, value, &ram),
//!     Some(MsrScope::Partition) => partition.write(index, value, &ram),
//!     None => MsrOutcome::InjectGp,
//! };
//! assert_eq!(
//!     outcome,
//!     MsrOutcome::Action(MsrAction::VpAssistPage { gpa: Some(0x0010_0000) })
//! );
//! // Past the end of RAM: #GP, and the MSR keeps its value.
//! assert!(vp.write(index, 0x1000_0001, &ram).is_gp());
//! assert_eq!(vp.vp_assist_page(), Some(0x0010_0000));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
