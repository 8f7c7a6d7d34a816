//! The Hyper-V CPUID leaves 0x40000000..=0x4000000A as typed values
//! (TLFS "Feature and Interface Discovery"; Linux `hvgdk_mini.h`,
//! `hyperv-tlfs.h`; openvmm `hvdef`).

use bitflags::bitflags;
use core::fmt;

/// 0x40000000: highest leaf and vendor signature.
pub const LEAF_VENDOR_AND_MAX: u32 = 0x4000_0000;
/// 0x40000001: interface signature.
pub const LEAF_INTERFACE: u32 = 0x4000_0001;
/// 0x40000002: hypervisor build and version.
pub const LEAF_VERSION: u32 = 0x4000_0002;
/// 0x40000003: partition privileges (EAX:EBX), power management (ECX),
/// miscellaneous features (EDX).
pub const LEAF_FEATURES: u32 = 0x4000_0003;
/// 0x40000004: implementation recommendations (hints).
pub const LEAF_ENLIGHTENMENT_INFO: u32 = 0x4000_0004;
/// 0x40000005: implementation limits.
pub const LEAF_IMPLEMENTATION_LIMITS: u32 = 0x4000_0005;
/// 0x40000006: hardware features in use by the hypervisor.
pub const LEAF_HARDWARE_FEATURES: u32 = 0x4000_0006;
/// 0x40000007: CPU management features (root partition only).
pub const LEAF_CPU_MANAGEMENT: u32 = 0x4000_0007;
/// 0x4000000A: nested virtualization features.
pub const LEAF_NESTED_FEATURES: u32 = 0x4000_000A;
/// The highest leaf this crate publishes.
pub const LEAF_MAX: u32 = LEAF_NESTED_FEATURES;
/// Number of leaves published (0x40000000..=0x4000000A).
pub const LEAF_COUNT: usize = (LEAF_MAX - LEAF_VENDOR_AND_MAX + 1) as usize;

/// Linux takes the Hyper-V path only when the highest leaf is at least this
/// (`HYPERV_CPUID_MIN` in `ms_hyperv_platform`).
pub const LINUX_MIN_MAX_LEAF: u32 = 0x4000_0005;

/// Vendor signature in EBX:ECX:EDX. Linux's `ms_hyperv_platform` compares
/// exactly these 12 bytes; "Linux KVM Hv" is not accepted.
pub const VENDOR_MICROSOFT_HV: [u8; 12] = *b"Microsoft Hv";
/// Interface signature in 0x40000001 EAX: "Hv#1" (little-endian).
pub const INTERFACE_HV1: u32 = u32::from_le_bytes(*b"Hv#1");

/// Build number KVM reports in 0x40000002 EAX (`kvm_get_hv_cpuid`).
pub const KVM_BUILD_NUMBER: u32 = 0x3839;
/// Major version KVM reports (0x40000002 EBX bits 31:16).
pub const KVM_MAJOR_VERSION: u16 = 10;
/// Minor version KVM reports (0x40000002 EBX bits 15:0).
pub const KVM_MINOR_VERSION: u16 = 0;

/// "Never notify": 0x40000004 EBX value meaning the guest should spin
/// forever rather than issue HvCallNotifyLongSpinWait.
pub const SPINLOCK_RETRIES_NEVER: u32 = 0xFFFF_FFFF;

bitflags! {
    /// HV_PARTITION_PRIVILEGE_MASK: 0x40000003 EAX (bits 31:0) and EBX
    /// (bits 63:32). Gates which synthetic MSRs and hypercalls the guest
    /// may use; KVM (`hv_check_msr_access`) refuses MSRs whose bit is clear.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Privileges: u64 {
        /// EAX 0: HV_X64_MSR_VP_RUNTIME.
        const VP_RUNTIME = 1 << 0;
        /// EAX 1: HV_X64_MSR_TIME_REF_COUNT.
        const TIME_REF_COUNT = 1 << 1;
        /// EAX 2: SynIC MSRs (SCONTROL..EOM, SINT0..15).
        const SYNIC = 1 << 2;
        /// EAX 3: synthetic timer MSRs (STIMER0..3).
        const SYNTHETIC_TIMERS = 1 << 3;
        /// EAX 4: APIC access MSRs (EOI, ICR, TPR) and VP_ASSIST_PAGE.
        const APIC_ACCESS = 1 << 4;
        /// EAX 5: HYPERCALL and GUEST_OS_ID. Linux needs it.
        const HYPERCALL = 1 << 5;
        /// EAX 6: VP_INDEX. Linux needs it.
        const VP_INDEX = 1 << 6;
        /// EAX 7: RESET.
        const RESET = 1 << 7;
        /// EAX 8: statistics pages MSRs.
        const STATS = 1 << 8;
        /// EAX 9: REFERENCE_TSC.
        const REFERENCE_TSC = 1 << 9;
        /// EAX 10: GUEST_IDLE.
        const GUEST_IDLE = 1 << 10;
        /// EAX 11: TSC_FREQUENCY and APIC_FREQUENCY.
        const FREQUENCY_MSRS = 1 << 11;
        /// EAX 12: synthetic debug MSRs (openvmm `access_debug_msrs`).
        const DEBUG_MSRS = 1 << 12;
        /// EAX 13: reenlightenment and TSC emulation controls.
        const REENLIGHTENMENT = 1 << 13;
        /// EAX 14: root scheduler MSR (openvmm `access_root_scheduler_msr`).
        const ROOT_SCHEDULER = 1 << 14;
        /// EAX 15: TSC_INVARIANT_CONTROL.
        const TSC_INVARIANT = 1 << 15;
        /// EBX 0: CreatePartitions.
        const CREATE_PARTITIONS = 1 << 32;
        /// EBX 1: AccessPartitionId. Never set: Linux `BUG()`s when
        /// HvCallGetPartitionId then fails.
        const ACCESS_PARTITION_ID = 1 << 33;
        /// EBX 2: AccessMemoryPool.
        const ACCESS_MEMORY_POOL = 1 << 34;
        /// EBX 3: AdjustMessageBuffers.
        const ADJUST_MESSAGE_BUFFERS = 1 << 35;
        /// EBX 4: PostMessages.
        const POST_MESSAGES = 1 << 36;
        /// EBX 5: SignalEvents.
        const SIGNAL_EVENTS = 1 << 37;
        /// EBX 6: CreatePort.
        const CREATE_PORT = 1 << 38;
        /// EBX 7: ConnectPort.
        const CONNECT_PORT = 1 << 39;
        /// EBX 8: AccessStats.
        const ACCESS_STATS = 1 << 40;
        /// EBX 11: Debugging.
        const DEBUGGING = 1 << 43;
        /// EBX 12: CpuManagement.
        const CPU_MANAGEMENT = 1 << 44;
        /// EBX 20: extended hypercalls (HvExtCall*).
        const EXTENDED_HYPERCALLS = 1 << 52;
        /// EBX 22: Isolation.
        const ISOLATION = 1 << 54;
    }
}

impl Privileges {
    /// 0x40000003 EAX.
    pub const fn eax(self) -> u32 {
        self.bits() as u32
    }

    /// 0x40000003 EBX.
    pub const fn ebx(self) -> u32 {
        (self.bits() >> 32) as u32
    }

    /// Rebuilds the mask from 0x40000003 EAX and EBX.
    pub const fn from_registers(eax: u32, ebx: u32) -> Self {
        Self::from_bits_retain(((ebx as u64) << 32) | eax as u64)
    }
}

bitflags! {
    /// 0x40000003 EDX: miscellaneous features available to the partition.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct FeaturesEdx: u32 {
        /// 0: MWAIT available (deprecated).
        const MWAIT = 1 << 0;
        /// 1: guest debugging support.
        const GUEST_DEBUGGING = 1 << 1;
        /// 2: performance monitor support.
        const PERF_MONITOR = 1 << 2;
        /// 3: physical CPU dynamic partitioning events.
        const CPU_DYNAMIC_PARTITIONING = 1 << 3;
        /// 4: hypercall input through XMM registers (fast XMM calls).
        const XMM_HYPERCALL_INPUT = 1 << 4;
        /// 5: virtual guest idle state.
        const GUEST_IDLE_STATE = 1 << 5;
        /// 6: hypervisor sleep state.
        const SLEEP_STATE = 1 << 6;
        /// 7: NUMA distance query.
        const NUMA_DISTANCE_QUERY = 1 << 7;
        /// 8: TSC/APIC frequency MSRs available.
        const FREQUENCY_MSRS = 1 << 8;
        /// 9: synthetic machine check.
        const SYNTHETIC_MACHINE_CHECK = 1 << 9;
        /// 10: guest crash MSRs.
        const GUEST_CRASH_MSRS = 1 << 10;
        /// 11: synthetic debug MSRs.
        const DEBUG_MSRS = 1 << 11;
        /// 12: NPIEP.
        const NPIEP = 1 << 12;
        /// 13: disable hypervisor.
        const DISABLE_HYPERVISOR = 1 << 13;
        /// 14: extended GVA ranges for FlushVirtualAddressList.
        const EXT_GVA_RANGES_FLUSH = 1 << 14;
        /// 15: hypercall output through XMM registers.
        const XMM_HYPERCALL_OUTPUT = 1 << 15;
        /// 17: SINT polling mode.
        const SINT_POLLING = 1 << 17;
        /// 18: HYPERCALL MSR lock bit.
        const HYPERCALL_MSR_LOCK = 1 << 18;
        /// 19: synthetic timer direct mode.
        const STIMER_DIRECT_MODE = 1 << 19;
    }
}

bitflags! {
    /// 0x40000004 EAX: implementation recommendations.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct Hints: u32 {
        /// 0: hypercall for address space switches.
        const AS_SWITCH = 1 << 0;
        /// 1: hypercall for local TLB flushes.
        const LOCAL_TLB_FLUSH = 1 << 1;
        /// 2: hypercall for remote TLB flushes (Linux `flush_tlb_multi`).
        const REMOTE_TLB_FLUSH = 1 << 2;
        /// 3: synthetic MSRs for EOI/ICR/TPR (Linux `hv_apic_eoi_write`,
        /// lazy EOI through the VP assist page).
        const APIC_ACCESS = 1 << 3;
        /// 4: RESET MSR for system reset.
        const SYSTEM_RESET = 1 << 4;
        /// 5: relaxed timing (no watchdogs on interrupt delivery).
        const RELAXED_TIMING = 1 << 5;
        /// 6: DMA remapping (deprecated).
        const DMA_REMAPPING = 1 << 6;
        /// 7: interrupt remapping (deprecated).
        const INTERRUPT_REMAPPING = 1 << 7;
        /// 8: use x2APIC MSRs (openvmm `use_x2_apic_msrs`).
        const X2APIC_MSRS = 1 << 8;
        /// 9: do not use AutoEOI.
        const DEPRECATING_AEOI = 1 << 9;
        /// 10: SendSyntheticClusterIpi hypercalls for IPIs.
        const CLUSTER_IPI = 1 << 10;
        /// 11: Ex forms (sparse VP sets) of flush/IPI hypercalls.
        const EX_PROCESSOR_MASKS = 1 << 11;
        /// 12: running nested (Linux `HV_X64_HYPERV_NESTED`).
        const NESTED = 1 << 12;
        /// 13: INT for MBEC system calls.
        const INT_FOR_MBEC_SYSCALLS = 1 << 13;
        /// 14: enlightened VMCS.
        const ENLIGHTENED_VMCS = 1 << 14;
        /// 15: synced timeline.
        const SYNCED_TIMELINE = 1 << 15;
        /// 17: direct local flush entire.
        const DIRECT_LOCAL_FLUSH_ENTIRE = 1 << 17;
        /// 18: no non-architectural core sharing.
        const NO_NONARCH_CORESHARING = 1 << 18;
        /// 21: MMIO accesses through hypercalls.
        const MMIO_HYPERCALLS = 1 << 21;
    }
}

bitflags! {
    /// 0x40000006 EAX: hardware features the hypervisor uses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct HardwareFeatures: u32 {
        /// 0: APIC overlay assist.
        const APIC_OVERLAY_ASSIST = 1 << 0;
        /// 1: MSR bitmaps.
        const MSR_BITMAPS = 1 << 1;
        /// 2: architectural performance counters.
        const ARCH_PERF_COUNTERS = 1 << 2;
        /// 3: second level address translation.
        const SLAT = 1 << 3;
        /// 4: DMA remapping.
        const DMA_REMAPPING = 1 << 4;
        /// 5: interrupt remapping.
        const INTERRUPT_REMAPPING = 1 << 5;
        /// 6: memory patrol scrubber.
        const MEMORY_PATROL_SCRUBBER = 1 << 6;
        /// 7: DMA protection.
        const DMA_PROTECTION = 1 << 7;
        /// 8: HPET requested.
        const HPET_REQUESTED = 1 << 8;
        /// 9: synthetic timers volatile.
        const SYNTHETIC_TIMERS_VOLATILE = 1 << 9;
    }
}

bitflags! {
    /// 0x4000000A EAX: nested virtualization features (bits 7:0 hold the
    /// enlightened VMCS version; see [`NestedFeatures::evmcs_version`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct NestedFeatures: u32 {
        /// 17: direct virtual flush.
        const DIRECT_FLUSH = 1 << 17;
        /// 18: HvFlushGuestPhysicalAddress* available.
        const GUEST_MAPPING_FLUSH = 1 << 18;
        /// 19: enlightened MSR bitmap.
        const MSR_BITMAP = 1 << 19;
        /// 22: enlightened TLB (AMD).
        const ENLIGHTENED_TLB = 1 << 22;
        /// 7:0: enlightened VMCS version field.
        const _ = 0xFF;
    }
}

impl NestedFeatures {
    /// Mask of the enlightened VMCS version in EAX.
    pub const EVMCS_VERSION_MASK: u32 = 0xFF;

    /// The enlightened VMCS version (EAX bits 7:0).
    pub const fn evmcs_version(self) -> u8 {
        (self.bits() & Self::EVMCS_VERSION_MASK) as u8
    }
}

/// One CPUID leaf (subleaf 0) as the guest reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct CpuidEntry {
    /// Leaf (EAX input).
    pub function: u32,
    /// EAX output.
    pub eax: u32,
    /// EBX output.
    pub ebx: u32,
    /// ECX output.
    pub ecx: u32,
    /// EDX output.
    pub edx: u32,
}

/// The hypervisor version in 0x40000002.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HvVersion {
    /// EAX: build number.
    pub build: u32,
    /// EBX bits 31:16.
    pub major: u16,
    /// EBX bits 15:0.
    pub minor: u16,
    /// ECX: service pack.
    pub service_pack: u32,
    /// EDX bits 31:24: service branch.
    pub service_branch: u8,
    /// EDX bits 23:0: service number.
    pub service_number: u32,
}

impl HvVersion {
    /// The version KVM reports (`kvm_get_hv_cpuid`): build 0x3839, 10.0.
    pub const KVM: Self = Self {
        build: KVM_BUILD_NUMBER,
        major: KVM_MAJOR_VERSION,
        minor: KVM_MINOR_VERSION,
        service_pack: 0,
        service_branch: 0,
        service_number: 0,
    };

    const SERVICE_NUMBER_MASK: u32 = 0x00FF_FFFF;
    const SERVICE_BRANCH_SHIFT: u32 = 24;
    const MAJOR_SHIFT: u32 = 16;

    fn entry(&self) -> CpuidEntry {
        CpuidEntry {
            function: LEAF_VERSION,
            eax: self.build,
            ebx: ((self.major as u32) << Self::MAJOR_SHIFT) | self.minor as u32,
            ecx: self.service_pack,
            edx: ((self.service_branch as u32) << Self::SERVICE_BRANCH_SHIFT)
                | (self.service_number & Self::SERVICE_NUMBER_MASK),
        }
    }
}

/// 0x40000005: implementation limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Limits {
    /// EAX: maximum number of virtual processors.
    pub max_vps: u32,
    /// EBX: maximum number of logical processors.
    pub max_lps: u32,
    /// ECX: maximum number of physical interrupt vectors for remapping.
    pub max_interrupt_vectors: u32,
}

/// The Hyper-V CPUID leaves 0x40000000..=0x4000000A, field by field.
///
/// Built by [`CpuidBuilder`](super::CpuidBuilder); every field is public so
/// a VMM may adjust it, and [`HvCpuid::entries`] renders the leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HvCpuid {
    /// 0x40000000 EAX: highest leaf.
    pub max_leaf: u32,
    /// 0x40000000 EBX:ECX:EDX: vendor signature.
    pub vendor: [u8; 12],
    /// 0x40000001 EAX: interface signature.
    pub interface: u32,
    /// 0x40000002.
    pub version: HvVersion,
    /// 0x40000003 EAX:EBX.
    pub privileges: Privileges,
    /// 0x40000003 ECX: power management features.
    pub power_management: u32,
    /// 0x40000003 EDX.
    pub features: FeaturesEdx,
    /// 0x40000004 EAX.
    pub hints: Hints,
    /// 0x40000004 EBX: spinlock retries before NotifyLongSpinWait.
    pub spinlock_retries: u32,
    /// 0x40000004 ECX bits 6:0: implemented physical address bits (0 = not
    /// reported).
    pub physical_address_bits: u32,
    /// 0x40000005.
    pub limits: Limits,
    /// 0x40000006 EAX.
    pub hardware: HardwareFeatures,
    /// 0x4000000A EAX.
    pub nested: NestedFeatures,
}

impl HvCpuid {
    /// The leaves in ascending order, 0x40000000 to 0x4000000A; leaves with
    /// nothing to say are all zero.
    ///
    /// ```
    /// use hv_enlightenments::cpuid::CpuidBuilder;
    ///
    /// let plan = CpuidBuilder::new(4).build()?;
    /// let leaves = plan.cpuid.entries();
    /// assert_eq!((leaves[0].function, leaves[10].function), (0x4000_0000, 0x4000_000A));
    /// assert_eq!(plan.cpuid.entry(0x4000_0005).map(|e| e.eax), Some(4)); // max VPs
    /// # Ok::<(), hv_enlightenments::cpuid::Error>(())
    /// ```
    pub fn entries(&self) -> [CpuidEntry; LEAF_COUNT] {
        let mut out = [CpuidEntry::default(); LEAF_COUNT];
        for (slot, function) in out.iter_mut().zip(LEAF_VENDOR_AND_MAX..) {
            *slot = self.entry(function).unwrap_or(CpuidEntry {
                function,
                ..CpuidEntry::default()
            });
        }
        out
    }

    /// The leaf `function`, or `None` outside 0x40000000..=`max_leaf`.
    pub fn entry(&self, function: u32) -> Option<CpuidEntry> {
        if !(LEAF_VENDOR_AND_MAX..=self.max_leaf.min(LEAF_MAX)).contains(&function) {
            return None;
        }
        let zero = CpuidEntry {
            function,
            ..CpuidEntry::default()
        };
        let [b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3] = self.vendor;
        Some(match function {
            LEAF_VENDOR_AND_MAX => CpuidEntry {
                function,
                eax: self.max_leaf,
                ebx: u32::from_le_bytes([b0, b1, b2, b3]),
                ecx: u32::from_le_bytes([c0, c1, c2, c3]),
                edx: u32::from_le_bytes([d0, d1, d2, d3]),
            },
            LEAF_INTERFACE => CpuidEntry {
                eax: self.interface,
                ..zero
            },
            LEAF_VERSION => self.version.entry(),
            LEAF_FEATURES => CpuidEntry {
                function,
                eax: self.privileges.eax(),
                ebx: self.privileges.ebx(),
                ecx: self.power_management,
                edx: self.features.bits(),
            },
            LEAF_ENLIGHTENMENT_INFO => CpuidEntry {
                function,
                eax: self.hints.bits(),
                ebx: self.spinlock_retries,
                ecx: self.physical_address_bits,
                edx: 0,
            },
            LEAF_IMPLEMENTATION_LIMITS => CpuidEntry {
                function,
                eax: self.limits.max_vps,
                ebx: self.limits.max_lps,
                ecx: self.limits.max_interrupt_vectors,
                edx: 0,
            },
            LEAF_HARDWARE_FEATURES => CpuidEntry {
                eax: self.hardware.bits(),
                ..zero
            },
            LEAF_NESTED_FEATURES => CpuidEntry {
                eax: self.nested.bits(),
                ..zero
            },
            _ => zero,
        })
    }

    /// The privilege mask the synthetic MSR handlers enforce (what KVM's
    /// `hv_check_msr_access` reads from its CPUID cache).
    pub const fn privilege_mask(&self) -> Privileges {
        self.privileges
    }
}

impl fmt::Display for HvCpuid {
    /// One line per leaf: `0x4000000N  eax ebx ecx edx  meaning`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in self.entries() {
            write!(
                f,
                "{:#010x}  eax={:08x} ebx={:08x} ecx={:08x} edx={:08x}",
                e.function, e.eax, e.ebx, e.ecx, e.edx
            )?;
            match e.function {
                LEAF_VENDOR_AND_MAX => {
                    f.write_str("  vendor \"")?;
                    for &b in &self.vendor {
                        let c = if b.is_ascii_graphic() || b == b' ' {
                            b as char
                        } else {
                            '.'
                        };
                        write!(f, "{c}")?;
                    }
                    write!(f, "\", max leaf {:#x}", self.max_leaf)?;
                }
                LEAF_INTERFACE => {
                    f.write_str("  interface \"")?;
                    for b in self.interface.to_le_bytes() {
                        let c = if b.is_ascii_graphic() { b as char } else { '.' };
                        write!(f, "{c}")?;
                    }
                    f.write_str("\"")?;
                }
                LEAF_VERSION => write!(
                    f,
                    "  version {}.{} build {}",
                    self.version.major, self.version.minor, self.version.build
                )?,
                LEAF_FEATURES => {
                    f.write_str("  privileges ")?;
                    write_flags(f, self.privileges.iter_names())?;
                    f.write_str("; features ")?;
                    write_flags(f, self.features.iter_names())?;
                }
                LEAF_ENLIGHTENMENT_INFO => {
                    f.write_str("  hints ")?;
                    write_flags(f, self.hints.iter_names())?;
                    write!(f, "; spinlock retries {:#x}", self.spinlock_retries)?;
                }
                LEAF_IMPLEMENTATION_LIMITS => write!(
                    f,
                    "  max VPs {}, max LPs {}",
                    self.limits.max_vps, self.limits.max_lps
                )?,
                _ => {}
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

fn write_flags<T>(
    f: &mut fmt::Formatter<'_>,
    names: impl Iterator<Item = (&'static str, T)>,
) -> fmt::Result {
    let mut any = false;
    for (name, _) in names {
        if any {
            f.write_str("|")?;
        }
        f.write_str(name)?;
        any = true;
    }
    if !any {
        f.write_str("-")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_positions_match_the_tlfs_headers() {
        // hvgdk_mini.h: HV_MSR_HYPERCALL_AVAILABLE BIT(5), VP_INDEX BIT(6),
        // HV_ACCESS_TSC_INVARIANT BIT(15), HV_ACCESS_PARTITION_ID EBX BIT(1).
        assert_eq!(Privileges::HYPERCALL.eax(), 0x20);
        assert_eq!(Privileges::VP_INDEX.eax(), 0x40);
        assert_eq!(Privileges::TSC_INVARIANT.eax(), 0x8000);
        assert_eq!(Privileges::ACCESS_PARTITION_ID.ebx(), 0x2);
        assert_eq!(Privileges::ACCESS_PARTITION_ID.eax(), 0);
        assert_eq!(Privileges::EXTENDED_HYPERCALLS.ebx(), 1 << 20);
        assert_eq!(Hints::APIC_ACCESS.bits(), 0x8);
        assert_eq!(Hints::DEPRECATING_AEOI.bits(), 0x200);
        assert_eq!(Hints::CLUSTER_IPI.bits(), 0x400);
        assert_eq!(Hints::EX_PROCESSOR_MASKS.bits(), 0x800);
        assert_eq!(Hints::NO_NONARCH_CORESHARING.bits(), 1 << 18);
        assert_eq!(FeaturesEdx::XMM_HYPERCALL_INPUT.bits(), 0x10);
        assert_eq!(FeaturesEdx::FREQUENCY_MSRS.bits(), 0x100);
        assert_eq!(FeaturesEdx::XMM_HYPERCALL_OUTPUT.bits(), 0x8000);
        assert_eq!(INTERFACE_HV1, 0x3123_7648);
    }

    #[test]
    fn privilege_mask_round_trips_through_registers() {
        let p = Privileges::HYPERCALL | Privileges::VP_INDEX | Privileges::SIGNAL_EVENTS;
        assert_eq!(Privileges::from_registers(p.eax(), p.ebx()), p);
    }

    fn sample() -> HvCpuid {
        HvCpuid {
            max_leaf: LEAF_MAX,
            vendor: VENDOR_MICROSOFT_HV,
            interface: INTERFACE_HV1,
            version: HvVersion::KVM,
            privileges: Privileges::HYPERCALL | Privileges::VP_INDEX,
            power_management: 0,
            features: FeaturesEdx::empty(),
            hints: Hints::empty(),
            spinlock_retries: SPINLOCK_RETRIES_NEVER,
            physical_address_bits: 0,
            limits: Limits::default(),
            hardware: HardwareFeatures::empty(),
            nested: NestedFeatures::empty(),
        }
    }

    #[test]
    fn vendor_is_spread_over_ebx_ecx_edx() {
        let e = sample().entries()[0];
        let mut v = [0u8; 12];
        v[..4].copy_from_slice(&e.ebx.to_le_bytes());
        v[4..8].copy_from_slice(&e.ecx.to_le_bytes());
        v[8..].copy_from_slice(&e.edx.to_le_bytes());
        assert_eq!(&v, b"Microsoft Hv");
        assert_eq!(e.eax, LEAF_MAX);
    }

    #[test]
    fn entries_cover_every_leaf_in_order() {
        let c = sample();
        let entries = c.entries();
        assert_eq!(entries.len(), LEAF_COUNT);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.function, LEAF_VENDOR_AND_MAX + i as u32);
        }
        assert_eq!(entries[2].ebx, 0x000A_0000);
        assert_eq!(entries[2].eax, 0x3839);
    }

    #[test]
    fn entry_outside_the_published_range_is_none() {
        let mut c = sample();
        assert!(c.entry(LEAF_VENDOR_AND_MAX - 1).is_none());
        assert!(c.entry(LEAF_MAX + 1).is_none());
        c.max_leaf = LEAF_IMPLEMENTATION_LIMITS;
        assert!(c.entry(LEAF_IMPLEMENTATION_LIMITS).is_some());
        assert!(c.entry(LEAF_HARDWARE_FEATURES).is_none());
    }
}

#[cfg(all(test, feature = "alloc"))]
mod display_tests {
    use super::*;
    use crate::cpuid::CpuidBuilder;
    use alloc::string::ToString;

    #[test]
    fn display_lists_every_leaf_and_the_set_hints() {
        let plan = CpuidBuilder::new(100).build().unwrap();
        let text = plan.cpuid.to_string();
        assert_eq!(text.lines().count(), LEAF_COUNT);
        assert!(text.contains("\"Microsoft Hv\""));
        assert!(text.contains("\"Hv#1\""));
        for (name, _) in plan.cpuid.hints.iter_names() {
            assert!(text.contains(name), "{name}");
        }
        assert!(!text.contains("DEPRECATING_AEOI"));
    }
}
