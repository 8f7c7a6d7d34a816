//! The VMM's error type.

use std::time::Duration;

/// Errors that end a VM run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening `/dev/kvm` or a KVM ioctl failed.
    #[error("KVM {op}: {err}")]
    Kvm {
        /// The operation.
        op: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// A vCPU ioctl failed.
    #[error("vCPU {vcpu}: KVM {op}: {err}")]
    VcpuKvm {
        /// vCPU index.
        vcpu: u32,
        /// The operation.
        op: &'static str,
        /// The error.
        err: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    #[error("guest memory: {0}")]
    Memory(String),
    /// Guest code could not be assembled.
    #[error(transparent)]
    Asm(#[from] crate::guest::asm::Error),
    /// The CPUID table could not be built.
    #[error(transparent)]
    Cpuid(#[from] crate::kvm::cpuid::Error),
    /// A SynIC connection could not be registered.
    #[error("SynIC connection: {0}")]
    Connection(#[from] hv_enlightenments::synic::ConnectionError),
    /// Kicks could not be set up or sent.
    #[error(transparent)]
    Kick(#[from] crate::kvm::kick::Error),
    /// More vCPUs than KVM allows.
    #[error("{requested} vCPUs requested, KVM allows {max}")]
    TooManyVcpus {
        /// Requested.
        requested: u32,
        /// KVM_CAP_MAX_VCPUS.
        max: u32,
    },
    /// A vCPU thread could not be started.
    #[error("starting vCPU thread {vcpu}: {err}")]
    Thread {
        /// vCPU index.
        vcpu: u32,
        /// The error.
        err: std::io::Error,
    },
    /// The guest stopped with an exit the VMM cannot continue from.
    #[error("vCPU {vcpu}: {reason} at RIP {rip:#x}")]
    Guest {
        /// vCPU index.
        vcpu: u32,
        /// Exit reason and details.
        reason: String,
        /// Guest RIP (0 when it could not be read).
        rip: u64,
    },
    /// The guest reported a crash through the Hyper-V crash MSRs
    /// (CRASH_CTL.CRASH_NOTIFY; Linux `hyperv_report_panic`: P0 the panic
    /// code, P1 its guest OS id, P2 RIP, P3 RAX, P4 RSP).
    #[error(
        "guest crashed (reported by vCPU {vcpu} through the Hyper-V crash MSRs): P0 {:#x}, P1 {:#x}, P2 {:#x}, P3 {:#x}, P4 {:#x}",
        params[0], params[1], params[2], params[3], params[4]
    )]
    GuestCrashed {
        /// Reporting vCPU.
        vcpu: u32,
        /// HV_X64_MSR_CRASH_P0..P4.
        params: [u64; 5],
    },
    /// The guest reset the machine where that ends the run with an error
    /// (`OnReset::Fail`), or kept resetting (`OnReset::Restart` gave up).
    #[error("the guest reset the machine (after {restarts} restarts)")]
    GuestReset {
        /// Restarts before this reset.
        restarts: u32,
    },
    /// The guest reported a failed check.
    #[error(
        "scenario failed on vCPU {vcpu}: code {code}, detail {detail:#x}, last value {last_value:x?}"
    )]
    ScenarioFailed {
        /// Reporting vCPU.
        vcpu: u32,
        /// Failure code.
        code: u64,
        /// Detail value.
        detail: u64,
        /// The vCPU's last VALUE report `(tag, value)`, if any.
        last_value: Option<(u64, u64)>,
    },
    /// A kernel, initrd or module file could not be read.
    #[error("reading the {what} {}: {err}", path.display())]
    File {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: std::path::PathBuf,
        /// The error.
        err: std::io::Error,
    },
    /// The kernel could not be loaded (not a bootable image, does not fit).
    #[error("loading the kernel: {0}")]
    Load(#[from] crate::loader::Error),
    /// A vCPU's own devices (APIC page, trap ports) could not be put on
    /// its bus ([`crate::runner::io`]).
    #[error("vCPU {vcpu}: registering its devices: {err}")]
    VcpuBus {
        /// vCPU index.
        vcpu: u32,
        /// The bus error.
        err: vm_device::bus::Error,
    },
    /// The platform devices could not be set up.
    #[error(transparent)]
    Platform(#[from] crate::platform::Error),
    /// An API used out of order (e.g. `boot` on a VM for the built-in
    /// guest).
    #[error("{0}")]
    Usage(&'static str),
    /// A bounded wait expired.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// How long.
        waited: Duration,
        /// What was waited for, and the state seen.
        what: String,
    },
}

impl From<crate::kvm::vcpu::Error> for Error {
    fn from(e: crate::kvm::vcpu::Error) -> Self {
        Self::VcpuKvm {
            vcpu: e.vcpu,
            op: e.op,
            err: e.err,
        }
    }
}
