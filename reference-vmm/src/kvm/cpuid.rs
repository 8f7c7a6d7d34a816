//! The CPUID table each vCPU gets: KVM's supported CPUID (its hypervisor
//! leaves replaced by the Hyper-V ones while Hyper-V is on) with per-vCPU
//! APIC IDs.

use hv_enlightenments::accel::{HostApicAccel, IrqchipMode};
use hv_enlightenments::cpuid::{CpuidBuilder, CpuidPlan, Enlightenments, Frequencies, Served};
use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, kvm_cpuid_entry2};
use kvm_ioctls::Kvm;

/// CPUID.1:ECX bit 21: x2APIC.
const CPUID1_ECX_X2APIC: u32 = 1 << 21;
/// CPUID.1:ECX bit 24: TSC deadline timer (not offered: the userspace APIC
/// has no TSC-deadline mode).
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:ECX bit 31: running under a hypervisor.
const CPUID1_ECX_HYPERVISOR: u32 = 1 << 31;

/// Errors building the CPUID table.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    Supported(kvm_ioctls::Error),
    /// Too many entries.
    #[error("CPUID table too large: {0:?}")]
    Table(vmm_sys_util::fam::Error),
    /// hv-enlightenments' policy refused the configuration.
    #[error("Hyper-V CPUID policy: {0}")]
    Policy(hv_enlightenments::cpuid::Error),
}

/// KVM's supported CPUID with x2APIC and the hypervisor bit set and
/// TSC-deadline cleared (the built-in guests use the APIC timer; the
/// VMM's APIC serves IA32_TSC_DEADLINE only approximately, see
/// [`crate::clock::HostClock`]). Hypervisor leaves are KVM's until
/// hv-enlightenments' `apply_to_kvm_entries` replaces them.
pub fn base_table(kvm: &Kvm) -> Result<Vec<kvm_cpuid_entry2>, Error> {
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::Supported)?;
    let mut out: Vec<kvm_cpuid_entry2> = supported.as_slice().to_vec();
    for e in &mut out {
        if e.function == 1 {
            e.ecx |= CPUID1_ECX_X2APIC | CPUID1_ECX_HYPERVISOR;
            e.ecx &= !CPUID1_ECX_TSC_DEADLINE;
        }
    }
    Ok(out)
}

/// The table for one vCPU: APIC ID in leaf 1 EBX bits 31:24 (low 8 bits) and
/// the x2APIC ID in leaves 0xB and 0x1F EDX.
pub fn for_vcpu(base: &[kvm_cpuid_entry2], apic_id: u32) -> Result<CpuId, Error> {
    let mut v = base.to_vec();
    for e in &mut v {
        match e.function {
            1 => e.ebx = (e.ebx & 0x00FF_FFFF) | ((apic_id & 0xFF) << 24),
            0xB | 0x1F => e.edx = apic_id,
            _ => {}
        }
    }
    CpuId::from_entries(&v).map_err(Error::Table)
}

/// The enlightenments this VMM serves (the frequency MSRs only when
/// frequencies are configured, the reference TSC page only on a stable
/// TSC).
pub fn served_enlightenments() -> Enlightenments {
    Enlightenments::APIC_ACCESS
        | Enlightenments::FREQUENCY_MSRS
        | Enlightenments::PV_TLB_FLUSH
        | Enlightenments::PV_IPI
        | Enlightenments::XMM_HYPERCALL_INPUT
        | Enlightenments::RELAXED_TIMING
        | Enlightenments::TIME_REF_COUNT
        | Enlightenments::REFERENCE_TSC
        | Enlightenments::SYNIC
}

/// What the VMM serves beyond the enlightenments: synthetic timers (with
/// direct mode), the crash and reset MSRs, VP_RUNTIME, and the SynIC's
/// messaging hypercalls through its connection table.
pub fn served_extras() -> Served {
    Served::SYNTHETIC_TIMERS
        | Served::STIMER_DIRECT_MODE
        | Served::CRASH_MSRS
        | Served::RESET
        | Served::VP_RUNTIME
        | Served::POST_MESSAGES
        | Served::SIGNAL_EVENTS
}

/// Whether KVM keeps the guest TSC stable for `vm`: its master clock is
/// in use (`KVM_GET_CLOCK` reports KVM_CLOCK_TSC_STABLE), the condition
/// KVM itself puts on a Hyper-V reference TSC page
/// (`kvm_hv_setup_tsc_page` needs `use_master_clock`).
pub fn tsc_stable(vm: &kvm_ioctls::VmFd) -> bool {
    /// `kvm_clock_data.flags`: the TSC is stable (api.rst, KVM_GET_CLOCK).
    const KVM_CLOCK_TSC_STABLE: u32 = 2;
    vm.get_clock()
        .is_ok_and(|c| c.flags & KVM_CLOCK_TSC_STABLE != 0)
}

/// What the frequency MSRs serve for a guest TSC of `tsc_khz` (KVM_GET_TSC_KHZ)
/// kHz and an APIC timer of `apic_hz` (the irqchip's,
/// [`crate::irqchip::apic_timer_hz`]): `None` (the MSRs stay unpublished)
/// when the TSC frequency is unknown or 0.
pub fn frequencies(apic_hz: u64, tsc_khz: Option<u32>) -> Option<Frequencies> {
    let tsc_khz = tsc_khz.filter(|&k| k != 0)?;
    Some(Frequencies {
        tsc_hz: u64::from(tsc_khz) * 1000,
        apic_hz,
    })
}

/// The guest TSC frequency KVM gives a new vCPU on this host and whether
/// KVM keeps the TSC stable ([`tsc_stable`]), from a throwaway VM; `None`
/// when it cannot be read.
pub fn host_tsc() -> Option<(u32, bool)> {
    let kvm = Kvm::new().ok()?;
    let vm = kvm.create_vm().ok()?;
    let vcpu = vm.create_vcpu(0).ok()?;
    let khz = vcpu.get_tsc_khz().ok().filter(|&k| k != 0)?;
    Some((khz, tsc_stable(&vm)))
}

/// The guest TSC frequency KVM gives a new vCPU on this host
/// (KVM_GET_TSC_KHZ on a throwaway VM), or `None` when it cannot be read.
pub fn host_tsc_khz() -> Option<u32> {
    host_tsc().map(|(khz, _)| khz)
}

/// The Hyper-V CPUID plan for `vcpus` vCPUs on a host whose APIC
/// acceleration is `host` (`ipiv::HostProbe::run().accel`); with
/// `frequencies`, the frequency MSRs are published and serve them; with
/// `tsc_stable`, the reference TSC page.
pub fn cpuid_plan(
    vcpus: u32,
    irqchip: IrqchipMode,
    host: HostApicAccel,
    frequencies: Option<Frequencies>,
    tsc_stable: bool,
) -> Result<CpuidPlan, Error> {
    let mut b = CpuidBuilder::new(vcpus)
        .enlightenments(served_enlightenments())
        .serves(served_extras())
        .tsc_stable(tsc_stable)
        .irqchip(irqchip)
        .host(host)
        .force_x2apic(true);
    if let Some(f) = frequencies {
        b = b.frequencies(f);
    }
    b.build().map_err(Error::Policy)
}

/// Offers the TSC-deadline timer (CPUID.1:ECX bit 24): for the
/// kernel-irqchip mode, whose in-kernel LAPIC implements it.
pub fn offer_tsc_deadline(table: &mut [kvm_cpuid_entry2]) {
    for e in table.iter_mut().filter(|e| e.function == 1) {
        e.ecx |= CPUID1_ECX_TSC_DEADLINE;
    }
}

/// What `reference-vmm cpuid` prints: the Hyper-V leaves a VM of `vcpus`
/// vCPUs with the `irqchip` backend (whose APIC timer counts at `apic_hz`,
/// [`crate::irqchip::apic_timer_hz`]) would get on this host, the
/// frequency MSRs (index and value in hex), and every decision with its
/// reason.
pub fn report(vcpus: u32, irqchip: IrqchipMode, apic_hz: u64) -> Result<String, Error> {
    use hv_enlightenments::msr::{HV_X64_MSR_APIC_FREQUENCY, HV_X64_MSR_TSC_FREQUENCY};
    use std::fmt::Write;

    // What a VM would get: the guest TSC frequency KVM gives a vCPU.
    let host = host_tsc();
    let freq = frequencies(apic_hz, host.map(|(khz, _)| khz));
    let stable = host.is_some_and(|(_, stable)| stable);
    let plan = cpuid_plan(vcpus, irqchip, ipiv::HostProbe::run().accel, freq, stable)?;
    let mut out = String::new();
    for l in plan.cpuid.entries() {
        let _ = writeln!(
            out,
            "{:#010x}: eax={:#010x} ebx={:#010x} ecx={:#010x} edx={:#010x}",
            l.function, l.eax, l.ebx, l.ecx, l.edx
        );
    }
    out.push('\n');
    match freq {
        Some(f) => {
            out.push_str("frequency MSRs:\n");
            for (name, index, hz) in [
                (
                    "HV_X64_MSR_TSC_FREQUENCY",
                    HV_X64_MSR_TSC_FREQUENCY,
                    f.tsc_hz,
                ),
                (
                    "HV_X64_MSR_APIC_FREQUENCY",
                    HV_X64_MSR_APIC_FREQUENCY,
                    f.apic_hz,
                ),
            ] {
                let _ = writeln!(out, "  {name} ({index:#010x}) = {hz:#x} ({hz} Hz)");
            }
        }
        None => out.push_str("frequency MSRs: none (KVM_GET_TSC_KHZ unreadable)\n"),
    }
    let _ = write!(out, "\n{}\n", plan.decisions);
    Ok(out)
}
