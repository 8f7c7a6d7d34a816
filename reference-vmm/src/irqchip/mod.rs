//! The irqchip seam: where the local APICs live, and everything that
//! differs with it, behind one type, [`Irqchip`], with two backends:
//!
//! - [`user`]: the VMM's own local APIC per vCPU (lapic), fixed IPIs
//!   posted through ipiv, host-time APIC timers, interrupt injection,
//!   CR8, lazy EOI, HLT and (for an external guest) INIT/SIPI;
//! - [`kernel`]: KVM's in-kernel LAPIC with a split irqchip (the IOAPIC
//!   stays in userspace), the Hyper-V side bridged to it.
//!
//! The run loop, the Hyper-V services and the devices call the methods
//! below and never ask which backend they talk to; the `match` on the two
//! variants is written here, once per operation. The mode is chosen as a
//! typed [`IrqchipMode`] (from the command line on) and turned into a
//! backend by [`Irqchip::new`]; what a backend needs of the VM before it
//! exists is in [`Needs`].

pub mod fanout;
pub mod kernel;
pub mod user;

use std::sync::Arc;

use hv_enlightenments::accel::IrqchipMode;
use hv_enlightenments::msr::ApicRegister;
use ipiv::{Notify, PendingVectors};
use kvm_ioctls::VmFd;
use lapic::Topology;
use vm_memory::GuestMemoryMmap;

use crate::error::Error;
use crate::ipi_path::Stamp;
use crate::kvm::msr::{MSR_APIC_BASE, MSR_TSC_DEADLINE};
use crate::kvm::stats::{KvmVmCounters, StatsReader};
use crate::kvm::vcpu::KvmVcpu;
use crate::platform::ioapic::RouteListener;
use crate::vcpu::{State, Vcpu};
use kernel::KernelIrqchip;
pub use user::HaltPoll;
use user::{PollWindow, UserIrqchip};

/// How often a vCPU with an AutoEOI vector outstanding in KVM's LAPIC is
/// made to leave guest mode, so that the kernel backend can complete it
/// (see [`Irqchip::deliver_sint`]).
pub const AEOI_POLL_NS: u64 = 100_000;

/// Receives the vector of every EOI the local APICs broadcast (SDM Vol. 3
/// 10.8.5: level-triggered vectors, unless SVR suppresses it): the IOAPIC.
pub type EoiHook = Box<dyn Fn(u8) + Send + Sync>;

/// How the application processors start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApStart {
    /// Every vCPU starts at its entry point (the built-in guests).
    AtEntry,
    /// vCPU 0 starts; the others wait for INIT/SIPI (an external kernel).
    WaitForSipi,
}

/// What a backend is built from.
pub struct IrqchipConfig {
    /// The VM (`KVM_SIGNAL_MSI`, GSI routes).
    pub vm: Arc<VmFd>,
    /// KVM's statistics of every vCPU, or none.
    pub stats: Vec<StatsReader>,
    /// The vCPUs' APIC identities (destination resolution).
    pub topology: Topology,
    /// How the application processors start.
    pub ap_start: ApStart,
    /// Where level-triggered EOIs go.
    pub eoi_hook: Option<EoiHook>,
    /// Whether lazy EOI is offered (APIC_ACCESS_RECOMMENDED published).
    pub lazy_eoi: bool,
}

/// What a backend needs of the VM before it exists, and what it gives the
/// guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// MSRs KVM must send to userspace (its MSR filter denies them).
    pub filtered_msrs: &'static [u32],
    /// The APIC timer's frequency with divide-by-1 (the frequency MSR).
    pub apic_timer_hz: u64,
    /// The TSC-deadline timer may be offered in CPUID (if KVM has it).
    pub tsc_deadline: bool,
    /// KVM's per-vCPU statistics are worth reading (KVM's LAPIC counts
    /// what the VMM cannot see).
    pub kvm_stats: bool,
    /// The VMM injects interrupts itself, so KVM should keep the vCPU
    /// events in `kvm_run` at every exit for it
    /// ([`crate::kvm::vcpu::KvmVcpu::queue_interrupt`]).
    pub injects: bool,
}

impl Needs {
    /// The needs of the `mode` backend.
    pub fn of(mode: IrqchipMode) -> Self {
        match mode {
            IrqchipMode::User => Self {
                // The userspace APIC serves both; KVM would answer them
                // itself without the filter.
                filtered_msrs: &[MSR_TSC_DEADLINE, MSR_APIC_BASE],
                apic_timer_hz: user::apic_timer_hz(),
                tsc_deadline: false,
                kvm_stats: false,
                injects: true,
            },
            IrqchipMode::Kernel => Self {
                filtered_msrs: &[],
                apic_timer_hz: kernel::KVM_APIC_TIMER_HZ,
                tsc_deadline: true,
                kvm_stats: true,
                injects: false,
            },
        }
    }
}

/// What the VMM sees of the guest's interrupt traffic with a backend: what
/// a measured figure can be judged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observes {
    /// Architectural ICR writes (x2APIC MSR, xAPIC MMIO) exit to the VMM.
    pub icr_writes: bool,
    /// Architectural EOIs exit to the VMM (only synthetic EOI MSR writes
    /// do otherwise).
    pub eoi_writes: bool,
    /// Halted vCPUs are woken by the VMM (otherwise KVM wakes them in the
    /// kernel and no wakeup reaches the VMM).
    pub wakeups: bool,
    /// The VMM completes lazy EOIs itself and counts them (otherwise
    /// KVM's PV-EOI engine does, and only the guest's own count shows
    /// them).
    pub lazy_eois: bool,
}

impl Observes {
    /// What the VMM sees with the `mode` backend.
    pub fn of(mode: IrqchipMode) -> Self {
        let user = mode == IrqchipMode::User;
        Self {
            icr_writes: user,
            eoi_writes: user,
            wakeups: user,
            lazy_eois: user,
        }
    }
}

/// The APIC timer frequency the `mode` backend's APICs count at with
/// divide-by-1 (what the frequency MSR publishes).
pub fn apic_timer_hz(mode: IrqchipMode) -> u64 {
    Needs::of(mode).apic_timer_hz
}

/// Sets up the VM for the `mode` backend; must run before any vCPU is
/// created.
pub fn prepare_vm(mode: IrqchipMode, fd: &VmFd) -> Result<(), Error> {
    match mode {
        IrqchipMode::User => Ok(()),
        IrqchipMode::Kernel => kernel::setup_vm(fd),
    }
}

/// The backend's per-vCPU state that only the vCPU's own thread touches.
#[derive(Debug, Default)]
pub struct VcpuLocal {
    /// User irqchip: a lazy EOI was kept armed at the last exit
    /// ([`user::LazyEoiExit::Held`]).
    lazy_held: bool,
    /// User irqchip: the vCPU's halt-polling window.
    poll_window: PollWindow,
    /// User irqchip: the last entry preparation injected an interrupt.
    injected: bool,
    /// User irqchip: the last physical unicast IPI's target.
    unicast: user::UnicastCache,
}

impl VcpuLocal {
    /// Whether the last entry preparation injected an interrupt (and
    /// forgets it).
    pub fn take_injected(&mut self) -> bool {
        std::mem::take(&mut self.injected)
    }
}

/// What a backend works on for one vCPU, lent by its run loop.
pub struct VcpuCtx<'a> {
    /// The vCPU.
    pub me: &'a Vcpu,
    /// Every vCPU of the VM.
    pub vcpus: &'a [Vcpu],
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// The vCPU's KVM fd.
    pub kvm: &'a mut KvmVcpu,
    /// The backend's state of this vCPU.
    pub local: &'a mut VcpuLocal,
}

/// Where the local APICs live: one of the two backends.
pub enum Irqchip {
    /// The VMM's local APICs.
    User(UserIrqchip),
    /// KVM's in-kernel LAPICs (split irqchip).
    Kernel(KernelIrqchip),
}

impl Irqchip {
    /// The `mode` backend.
    pub fn new(mode: IrqchipMode, c: IrqchipConfig) -> Self {
        match mode {
            IrqchipMode::User => Self::User(UserIrqchip::new(c)),
            IrqchipMode::Kernel => Self::Kernel(KernelIrqchip::new(c)),
        }
    }

    /// Which backend this is (for reports and the CPUID policy).
    pub fn mode(&self) -> IrqchipMode {
        match self {
            Self::User(_) => IrqchipMode::User,
            Self::Kernel(_) => IrqchipMode::Kernel,
        }
    }

    /// Puts a new vCPU into its start state (see [`ApStart`]).
    pub fn start_vcpu(&self, v: &Vcpu, kvm: &KvmVcpu) -> Result<(), Error> {
        match self {
            Self::User(u) => {
                u.start_vcpu(v);
                Ok(())
            }
            Self::Kernel(k) => k.start_vcpu(kvm),
        }
    }

    /// Delivers an MSI-format message (`address`: bits 19:12 destination
    /// ID, 11:5 extended ID, 2 logical mode, 63:40 the X2APIC_API high ID
    /// bits; `data`: 7:0 vector, 10:8 delivery mode, 14 level, 15 trigger).
    pub fn deliver_msi(&self, vcpus: &[Vcpu], address: u64, data: u32) {
        match self {
            Self::User(u) => u.deliver_msi(vcpus, address, data),
            Self::Kernel(k) => {
                k.signal_msi(address, data);
            }
        }
    }

    /// A PV IPI of `vector` to `target` (fixed, edge).
    pub fn send_ipi(&self, target: &Vcpu, vector: u8) {
        match self {
            Self::User(_) => target.post(vector),
            Self::Kernel(k) => k.send_ipi(target.index, vector),
        }
    }

    /// A PV IPI of `vector` to `target` from a call that may name many:
    /// the user irqchip posts the vector now and leaves a halted target's
    /// wake-up in `f`; the kernel irqchip leaves its MSI in `f`. Carry `f`
    /// out with [`Irqchip::complete_fan_out`], on this thread or the
    /// fan-out thread ([`fanout`]).
    pub fn send_ipi_deferred(&self, target: &Vcpu, vector: u8, f: &mut fanout::FanOut) {
        match self {
            Self::User(_) => {
                let stamp = *f.stamp.get_or_insert_with(Stamp::now);
                match target.post_unnotified(vector, stamp) {
                    Notify::Wake => {
                        f.targets_left.insert(target.index as usize);
                        f.targets += 1;
                    }
                    n => target.notify(n),
                }
            }
            Self::Kernel(_) => {
                f.targets_left.insert(target.index as usize);
                f.vector = vector;
                f.targets += 1;
            }
        }
    }

    /// Wakes or signals what [`Irqchip::send_ipi_deferred`] left in `f`.
    pub fn complete_fan_out(&self, vcpus: &[Vcpu], f: &fanout::FanOut) {
        match self {
            Self::User(_) => {
                for t in f.targets_left.iter() {
                    if let Some(v) = vcpus.get(t) {
                        v.notify(Notify::Wake);
                    }
                }
            }
            Self::Kernel(k) => {
                for t in f.targets_left.iter() {
                    k.send_ipi(t as u32, f.vector);
                }
            }
        }
    }

    /// A SynIC interrupt on vCPU `v` (a message or event on one of its
    /// SINTs, or a direct-mode synthetic timer): fixed, edge, to itself
    /// (KVM `synic_set_irq`). With `auto_eoi` the user backend's APIC
    /// acknowledges it without setting ISR (TLFS SINTx.AutoEOI). KVM's
    /// LAPIC cannot (no in-kernel Hyper-V), which is why DEPRECATING_AEOI
    /// is published with the kernel irqchip; for a guest that uses AutoEOI
    /// anyway the kernel backend completes the vector itself at the
    /// vCPU's next exits. Returns `true` when such exits are needed: the
    /// caller then polls the vCPU out of guest mode
    /// ([`AEOI_POLL_NS`]) until they have happened.
    pub fn deliver_sint(&self, v: &Vcpu, vector: u8, auto_eoi: bool) -> bool {
        match self {
            Self::User(_) => {
                user::deliver_sint(v, vector, auto_eoi);
                false
            }
            Self::Kernel(k) => k.deliver_sint(v, vector, auto_eoi),
        }
    }

    /// Raises vCPU `v`'s NMI pin, LINT1 (QEMU's `nmi` monitor command, a
    /// watchdog): delivered as its LVT LINT1 says (masked: dropped; NMI
    /// mode: an NMI; fixed: its vector), or as an NMI while the APIC is
    /// hardware-disabled, when LINT1 is the processor's NMI pin (SDM
    /// 10.4.3).
    pub fn raise_lint1(&self, v: &Vcpu) {
        match self {
            Self::User(_) => user::raise_lint1(v),
            Self::Kernel(_) => kernel::raise_lint1(v),
        }
    }

    /// Tells the IOAPIC that a level-triggered `vector` was completed.
    pub fn broadcast_eoi(&self, vector: u8) {
        let hook = match self {
            Self::User(u) => &u.eoi_hook,
            Self::Kernel(k) => &k.eoi_hook,
        };
        if let Some(h) = hook {
            h(vector);
        }
    }

    /// KVM's counters of every vCPU now (KVM's LAPIC with statistics only).
    pub fn counters(&self) -> Option<KvmVmCounters> {
        match self {
            Self::User(_) => None,
            Self::Kernel(k) => k.counters(),
        }
    }

    /// The IOAPIC's route listener, if the backend must know its routes
    /// (KVM's LAPIC learns which vectors are level-triggered from them).
    pub fn route_listener(&self) -> Option<RouteListener> {
        match self {
            Self::User(_) => None,
            Self::Kernel(k) => Some(k.route_listener()),
        }
    }

    /// The APIC timer thread's body, until `stop()`: `now()` is the APIC
    /// clock. Returns at once where KVM runs the timers.
    pub fn run_timers(&self, vcpus: &[Vcpu], stop: impl Fn() -> bool, now: impl Fn() -> u64) {
        if let Self::User(u) = self {
            u.timers
                .run(stop, now, |i| vcpus.get(i).and_then(Vcpu::timer_fire));
        }
    }

    /// Wakes the timer thread (after a stop request).
    pub fn wake_timers(&self) {
        if let Self::User(u) = self {
            u.timers.wake();
        }
    }

    /// Before each entry, with the machine not stopping: act on latched
    /// INIT/SIPI events, blocking while the vCPU waits for a SIPI.
    /// `Ok(false)`: the machine is stopping.
    pub fn accept_events(&self, cx: &mut VcpuCtx, stop: &dyn Fn() -> bool) -> Result<bool, Error> {
        match self {
            Self::User(u) => u.accept_mp_events(cx, stop),
            Self::Kernel(_) => Ok(true),
        }
    }

    /// Entry preparation under the vCPU's lock, after the run state became
    /// "in guest" (`posted`: what was posted meanwhile): NMIs, interrupt
    /// injection, CR8, lazy EOI. `exception`: an exception is delivered at
    /// this entry, so no interrupt may be injected with it.
    pub fn prepare_entry(
        &self,
        cx: &mut VcpuCtx,
        s: &mut State,
        posted: PendingVectors,
        exception: bool,
    ) -> Result<(), Error> {
        match self {
            Self::User(u) => u.prepare_entry(cx, s, posted, exception),
            Self::Kernel(k) => k.prepare_entry(cx, s),
        }
    }

    /// The sync after each exit, under the vCPU's lock, once the run state
    /// says "outside guest" (`posted`: what was posted meanwhile): lazy
    /// EOI, CR8. Returns the vector of a level-triggered EOI for the
    /// IOAPIC (the caller sends it with no vCPU lock held).
    pub fn sync_after_exit(
        &self,
        cx: &mut VcpuCtx,
        s: &mut State,
        posted: PendingVectors,
    ) -> Option<u8> {
        match self {
            Self::User(u) => u.sync_after_exit(cx, s, posted),
            Self::Kernel(_) => {
                kernel::complete_auto_eoi(cx, s);
                None
            }
        }
    }

    /// Sets the user irqchip's largest halt-polling window (0: off), as
    /// `KVM_CAP_HALT_POLL` sets a VM's; KVM's LAPIC polls with KVM's own
    /// `halt_poll_ns`, which this leaves alone.
    pub fn set_halt_poll(&self, max: std::time::Duration) {
        if let Self::User(u) = self {
            u.set_halt_poll(max);
        }
    }

    /// A HLT exit (`if_flag`: RFLAGS.IF at the HLT): blocks until the vCPU
    /// has something to do or `stop()`. KVM's LAPIC halts in the kernel.
    pub fn halt(&self, cx: &mut VcpuCtx, if_flag: bool, stop: &dyn Fn() -> bool) {
        if let Self::User(u) = self {
            user::halt(
                &u.halt_poll,
                cx.vcpus.len(),
                &mut cx.local.poll_window,
                cx.me,
                if_flag,
                stop,
            );
        }
    }

    /// RDMSR of an architectural APIC MSR that exited (`None`: #GP).
    pub fn rdmsr(&self, cx: &mut VcpuCtx, index: u32) -> Result<Option<u64>, Error> {
        match self {
            Self::User(_) => Ok(user::rdmsr(cx.me, index)),
            Self::Kernel(_) => Ok(None),
        }
    }

    /// WRMSR of an architectural APIC MSR that exited (`false`: #GP).
    pub fn wrmsr(&self, cx: &mut VcpuCtx, index: u32, value: u64) -> Result<bool, Error> {
        match self {
            Self::User(u) => u.wrmsr(cx, index, value),
            Self::Kernel(_) => Ok(false),
        }
    }

    /// RDMSR of a Hyper-V EOI/ICR/TPR alias (MSR `index`; `None`: #GP).
    pub fn synthetic_read(
        &self,
        cx: &mut VcpuCtx,
        index: u32,
        reg: ApicRegister,
    ) -> Result<Option<u64>, Error> {
        match self {
            Self::User(_) => Ok(user::rdmsr(cx.me, index)),
            Self::Kernel(_) => kernel::synthetic_read(cx, index, reg),
        }
    }

    /// WRMSR of a Hyper-V EOI/ICR/TPR alias (MSR `index`; `false`: #GP).
    pub fn synthetic_write(
        &self,
        cx: &mut VcpuCtx,
        index: u32,
        reg: ApicRegister,
        value: u64,
    ) -> Result<bool, Error> {
        match self {
            Self::User(u) => u.wrmsr(cx, index, value),
            Self::Kernel(k) => k.synthetic_write(cx, index, reg, value),
        }
    }

    /// The guest moved (or turned off, `None`) its VP assist page, whose
    /// bit 0 at offset 0 is the lazy-EOI flag.
    pub fn vp_assist_page(&self, cx: &mut VcpuCtx, gpa: Option<u64>) -> Result<(), Error> {
        match self {
            Self::User(_) => Ok(()),
            Self::Kernel(_) => kernel::set_pv_eoi(cx.kvm, gpa),
        }
    }

    /// Where vCPU `me`'s xAPIC page is to be decoded by the VMM (`None`:
    /// nowhere: the APIC is not in xAPIC mode, or KVM decodes it).
    pub fn apic_page_base(&self, me: &Vcpu) -> Option<u64> {
        match self {
            Self::User(_) => user::apic_page_base(me),
            Self::Kernel(_) => None,
        }
    }

    /// An MMIO read of `me`'s xAPIC page at `offset`.
    pub fn apic_mmio_read(&self, me: &Vcpu, offset: u64, data: &mut [u8]) {
        me.lock().apic.read_mmio(offset, data);
    }

    /// An MMIO write of `me`'s xAPIC page at `offset` (a refused write is
    /// dropped: MMIO has no #GP).
    pub fn apic_mmio_write(&self, vcpus: &[Vcpu], me: &Vcpu, offset: u64, data: &[u8]) {
        if let Self::User(u) = self {
            let o = me.lock().apic.write_mmio(offset, data);
            let _ = u.apply_apic_outcome(vcpus, me, None, o);
        }
    }

    /// A one-line description of vCPU `v` for a timeout report, taken
    /// while the vCPUs still run (`None`: only its own thread can read it,
    /// see [`Irqchip::exit_snapshot`]).
    pub fn describe_live(&self, v: &Vcpu) -> Option<String> {
        match self {
            Self::User(_) => Some(v.describe()),
            Self::Kernel(_) => None,
        }
    }

    /// A one-line description of the vCPU for timeout reports, taken by
    /// its own thread on the way out of its run loop where the state is
    /// KVM's (readable only there, outside `KVM_RUN`).
    pub fn exit_snapshot(&self, cx: &mut VcpuCtx) -> Option<String> {
        match self {
            Self::User(_) => None,
            Self::Kernel(_) => Some(kernel::describe(cx)),
        }
    }
}
