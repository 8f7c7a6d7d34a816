//! Creating a VM: what both kinds of VM (built-in guest, external kernel)
//! share. The KVM VM with its userspace MSR exits and filter, guest RAM at
//! GPA 0, the Hyper-V CPUID plan, the vCPUs with their CPUID tables, and
//! the shared [`Machine`] state with its APICs, VP state and
//! posted-interrupt entries.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};

use kvm_bindings::{
    KVM_CAP_BINARY_STATS_FD, KVM_CAP_X86_USER_SPACE_MSR, KVM_MSR_EXIT_REASON_FILTER,
    KVM_MSR_EXIT_REASON_INVAL, KVM_MSR_EXIT_REASON_UNKNOWN, kvm_enable_cap,
    kvm_userspace_memory_region,
};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VcpuFd, VmFd};
use vm_device::device_manager::IoManager;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{kvm_err, mem_err};
use crate::apicv::Apicv;
use crate::clock::HostClock;
use crate::error::Error;
use crate::hyperv::HyperV;
use crate::irqchip::fanout::FanOutQueue;
use crate::irqchip::{self, ApStart, EoiHook, Irqchip, IrqchipConfig, Needs};
use crate::kvm::cpuid::{self, cpuid_plan};
use crate::kvm::kick;
use crate::kvm::msr::MSR_TSC;
use crate::kvm::stats::StatsReader;
use crate::kvm::vcpu::{KvmVcpu, SyncRegs};
use crate::machine::{FlushMethod, Machine, Marks};
use crate::timers::Timers;
use crate::vcpu::Vcpu;
use hv_enlightenments::accel::{HostApicAccel, IrqchipMode};
use hv_enlightenments::cpuid::CpuidPlan;
use ipiv::inhibit::{InhibitConfig, InhibitEvent};
use lapic::{LocalApic, Topology};

/// What both kinds of VM (built-in guest, external kernel) share: the KVM
/// VM with its userspace MSR exits and filter, guest RAM at GPA 0, the
/// Hyper-V CPUID plan and the CPUID table every vCPU gets.
pub(crate) struct Common {
    pub(crate) kvm: Kvm,
    pub(crate) fd: Arc<VmFd>,
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) plan: CpuidPlan,
    /// What the host does for APIC accesses (the probe the plan used).
    host_accel: HostApicAccel,
    pub(crate) irqchip: IrqchipMode,
    base_cpuid: Vec<kvm_bindings::kvm_cpuid_entry2>,
    /// vCPU 0, created early to read the guest TSC frequency.
    first_vcpu: Option<VcpuFd>,
    /// The guest TSC frequency (KVM_GET_TSC_KHZ), if KVM reported one.
    tsc_khz: Option<u32>,
    /// What KVM can keep in each vCPU's `kvm_run`.
    pub(crate) sync_regs: SyncRegs,
    /// vCPU 0's TSC right after its creation (IA32_TSC), if readable.
    guest_tsc: Option<u64>,
    vcpus: u32,
    hyperv: bool,
    /// Whether KVM's per-vCPU statistics can be read (kernel irqchip).
    stats_cap: bool,
    stats: Vec<StatsReader>,
}

/// The parts of a [`Machine`] that differ between the kinds of VM.
pub(crate) struct MachineOptions {
    pub(crate) flush: FlushMethod,
    pub(crate) io: IoManager,
    pub(crate) external: bool,
    pub(crate) ap_start: ApStart,
    pub(crate) eoi_hook: Option<EoiHook>,
}

impl Common {
    /// Opens KVM and creates the VM with `mem_size` bytes of RAM at 0.
    pub(crate) fn open(
        vcpus: u32,
        hyperv: bool,
        mem_size: u64,
        irqchip: IrqchipMode,
    ) -> Result<Self, Error> {
        kick::install_handler()?;
        let kvm = Kvm::new().map_err(kvm_err("open /dev/kvm"))?;
        let max = kvm.get_max_vcpus() as u32;
        if vcpus == 0 || vcpus > max {
            return Err(Error::TooManyVcpus {
                requested: vcpus,
                max,
            });
        }
        let fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        fd.set_tss_address(0xFFFB_D000)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        let needs = Needs::of(irqchip);
        irqchip::prepare_vm(irqchip, &fd)?;
        enable_user_msrs(&fd, needs.filtered_msrs)?;

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), mem_size as usize)])
            .map_err(mem_err)?;
        for (slot, region) in mem.iter().enumerate() {
            let host = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(mem_err)?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mmap owned by `mem`, which the
            // Machine keeps for as long as the VM fd (and so the slot)
            // exists.
            unsafe { fd.set_user_memory_region(r) }
                .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))?;
        }
        // The frequency MSRs need the guest TSC frequency before any vCPU
        // gets its CPUID: read it from vCPU 0, created here (its CPUID is
        // set in `create_vcpu`).
        let first = fd.create_vcpu(0).map_err(|err| Error::VcpuKvm {
            vcpu: 0,
            op: "KVM_CREATE_VCPU",
            err,
        })?;
        let tsc_khz = match first.get_tsc_khz() {
            Ok(k) if k != 0 => Some(k),
            r => {
                log::warn!("KVM_GET_TSC_KHZ: {r:?}: no frequency MSRs");
                None
            }
        };
        let guest_tsc = match crate::kvm::msr::get(&first, MSR_TSC) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("IA32_TSC of vCPU 0: {e}: reference time from host time");
                None
            }
        };
        let freq = cpuid::frequencies(needs.apic_timer_hz, tsc_khz);
        // The reference TSC page needs the guest TSC's value, frequency
        // and stability.
        let tsc_stable = guest_tsc.is_some() && freq.is_some() && cpuid::tsc_stable(&fd);
        // One probe serves the hint policy and the APICv inhibit model.
        let host_accel = ipiv::HostProbe::run().accel;
        let plan = cpuid_plan(vcpus, irqchip, host_accel, freq, tsc_stable)?;
        let mut base_cpuid = cpuid::base_table(&kvm)?;
        if needs.tsc_deadline && kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
            cpuid::offer_tsc_deadline(&mut base_cpuid);
        }
        // The vCPU events only where the VMM injects: KVM copies them out
        // at every exit it is asked to.
        let offered = fd.check_extension_int(kvm_ioctls::Cap::SyncRegs).max(0) as u32;
        let sync_regs = SyncRegs(if needs.injects {
            offered
        } else {
            offered & !kvm_bindings::KVM_SYNC_X86_EVENTS
        });
        let stats_cap =
            needs.kvm_stats && kvm.check_extension_raw(KVM_CAP_BINARY_STATS_FD.into()) > 0;
        if hyperv {
            plan.cpuid.apply_to_kvm_entries(&mut base_cpuid);
        }
        Ok(Self {
            kvm,
            fd: Arc::new(fd),
            mem,
            plan,
            host_accel,
            irqchip,
            base_cpuid,
            first_vcpu: Some(first),
            tsc_khz,
            sync_regs,
            guest_tsc,
            vcpus,
            hyperv,
            stats_cap,
            stats: Vec::new(),
        })
    }

    /// Creates vCPU `i` (vCPU 0 exists already) with its CPUID table.
    pub(crate) fn create_vcpu(&mut self, i: u32) -> Result<VcpuFd, Error> {
        let early = if i == 0 { self.first_vcpu.take() } else { None };
        let vfd = match early {
            Some(v) => v,
            None => self
                .fd
                .create_vcpu(u64::from(i))
                .map_err(|err| Error::VcpuKvm {
                    vcpu: i,
                    op: "KVM_CREATE_VCPU",
                    err,
                })?,
        };
        vfd.set_cpuid2(&cpuid::for_vcpu(&self.base_cpuid, i)?)
            .map_err(|err| Error::VcpuKvm {
                vcpu: i,
                op: "KVM_SET_CPUID2",
                err,
            })?;
        if self.stats_cap {
            match StatsReader::open(&vfd) {
                Ok(r) => self.stats.push(r),
                Err(e) => log::warn!("vCPU {i}: no KVM statistics: {e}"),
            }
        }
        Ok(vfd)
    }

    /// The shared machine state: APICs, VP state, posted-interrupt entries.
    pub(crate) fn machine(&mut self, o: MachineOptions) -> Result<Arc<Machine>, Error> {
        let n = self.vcpus;
        let table =
            ipiv::PidTable::new(n - 1).map_err(|e| Error::Memory(format!("PID table: {e}")))?;
        let tsc_khz = self.tsc_khz.map_or(1_000_000, u64::from);
        let clock = Arc::new(HostClock::new(tsc_khz, self.guest_tsc));
        let hv = HyperV::new(self.hyperv, self.plan, Arc::clone(&clock));
        let mut topology = Topology::new();
        let mut vcpus = Vec::with_capacity(n as usize);
        for i in 0..n {
            // Directed EOI (SVR bit 12 suppresses the EOI broadcast; the
            // userspace IOAPIC has the EOI register): KVM offers it when
            // the guest has x2APIC and no in-kernel IOAPIC
            // (`kvm_apic_set_version`), so both irqchips report the same
            // version register (0x01050014).
            let config = lapic::Config {
                eoi_broadcast_suppression: true,
                ..lapic::Config::new(i)
            };
            let apic = LocalApic::new(config, clock.clone())
                .map_err(|e| Error::Memory(format!("vCPU {i} local APIC: {e}")))?;
            topology
                .add(i as usize, apic.identity())
                .map_err(|e| Error::Memory(format!("vCPU {i} APIC topology: {e}")))?;
            let vp = hv
                .new_vp(i)
                .map_err(|e| Error::Memory(format!("vCPU {i} VP state: {e}")))?;
            let posted = table
                .register(i)
                .map_err(|e| Error::Memory(format!("vCPU {i} PID entry: {e}")))?;
            vcpus.push(Vcpu::new(i, apic, vp, posted));
        }
        let mut stats = std::mem::take(&mut self.stats);
        // Statistics for every vCPU or for none (sums must be comparable).
        if stats.len() != n as usize {
            stats.clear();
        }
        let apicv = Apicv::new(InhibitConfig {
            host: self.host_accel,
            irqchip: self.irqchip,
            ..InhibitConfig::default()
        });
        for i in 0..n {
            // APIC ID = vCPU index in this VMM.
            apicv.request(i, InhibitEvent::ApicId(i));
        }
        let irqchip = Irqchip::new(
            self.irqchip,
            IrqchipConfig {
                vm: Arc::clone(&self.fd),
                stats,
                topology,
                ap_start: o.ap_start,
                eoi_hook: o.eoi_hook,
                lazy_eoi: hv.lazy_eoi(),
            },
        );
        let m = Arc::new(Machine {
            mem: self.mem.clone(),
            vcpus,
            irqchip,
            hv,
            apicv,
            clock,
            flush: o.flush,
            stimers: Timers::default(),
            fan_out: FanOutQueue::default(),
            io: o.io,
            external: o.external,
            guest_exit: Mutex::new(None),
            stop: AtomicBool::new(false),
            end: Mutex::new(None),
            end_cond: Condvar::new(),
            marks: Mutex::new(Marks::default()),
        });
        Ok(m)
    }

    /// Puts each new vCPU into the start state the irqchip gives it.
    pub(crate) fn start_vcpus(m: &Machine, fds: &[KvmVcpu]) -> Result<(), Error> {
        for (v, k) in m.vcpus.iter().zip(fds) {
            m.irqchip.start_vcpu(v, k)?;
        }
        Ok(())
    }
}

/// Userspace MSR exits for invalid, unknown and filtered MSRs, and a filter
/// that denies the Hyper-V synthetic range and the MSRs the irqchip
/// backend serves in userspace (`apic`), so that they exit to the VMM.
fn enable_user_msrs(fd: &VmFd, apic: &[u32]) -> Result<(), Error> {
    let cap = kvm_enable_cap {
        cap: KVM_CAP_X86_USER_SPACE_MSR,
        args: [
            u64::from(
                KVM_MSR_EXIT_REASON_INVAL
                    | KVM_MSR_EXIT_REASON_UNKNOWN
                    | KVM_MSR_EXIT_REASON_FILTER,
            ),
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    fd.enable_cap(&cap)
        .map_err(kvm_err("KVM_ENABLE_CAP(X86_USER_SPACE_MSR)"))?;
    let count = hv_enlightenments::msr::HV_X64_MSR_RANGE_END
        - hv_enlightenments::msr::HV_X64_MSR_RANGE_START;
    // A clear bit denies the access (KVM api.rst, KVM_X86_SET_MSR_FILTER).
    let deny = vec![0u8; count.div_ceil(8) as usize];
    let deny_one = [0u8; 1];
    let rw = MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE;
    // The x2APIC range needs no filter: without an in-kernel APIC KVM
    // answers those MSRs with a userspace exit (reason INVAL).
    let mut ranges = vec![MsrFilterRange {
        flags: rw,
        base: hv_enlightenments::msr::HV_X64_MSR_RANGE_START,
        msr_count: count,
        bitmap: &deny,
    }];
    ranges.extend(apic.iter().map(|&base| MsrFilterRange {
        flags: rw,
        base,
        msr_count: 1,
        bitmap: &deny_one,
    }));
    fd.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(kvm_err("KVM_X86_SET_MSR_FILTER"))
}
