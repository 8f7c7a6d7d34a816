//! Synthetic MSR exits: Hyper-V MSRs go to hv-enlightenments' `Partition`
//! (behind [`HyperV`]'s lock) or the vCPU's `Vp`, and the actions their
//! writes ask for are carried out on guest memory. What the APIC serves
//! (the EOI/ICR/TPR aliases) and what is no Hyper-V MSR at all go back to
//! the caller, for the irqchip.

use hv_enlightenments::HV_PAGE_SIZE;
use hv_enlightenments::msr::{
    self as hvmsr, ApicAccess, ApicRegister, MsrAction, MsrOutcome, MsrScope, Vp,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::HyperV;
use crate::guest::abi;
use crate::metrics::{VcpuMetrics, bump};

/// What became of an MSR exit at the Hyper-V layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsrExit {
    /// No Hyper-V MSR: the irqchip's (an APIC MSR) or #GP.
    Other,
    /// Served: a RDMSR's value (0 for a write), or `None` for #GP.
    Served(Option<u64>),
    /// A Hyper-V EOI/ICR/TPR alias: the irqchip serves it.
    Apic(ApicRegister),
    /// A write that moved (or turned off) the VP assist page, whose lazy
    /// EOI bit the irqchip may need to know of.
    VpAssistPage(Option<u64>),
    /// A write that changed a synthetic timer: run the vCPU's timers
    /// ([`HyperV::run_stimers`]) before the next entry.
    Stimers,
    /// An EOM: retry queued messages ([`HyperV::end_of_message`]) and run
    /// the timers whose expiry message waited.
    EndOfMessage,
    /// The guest reported a crash (CRASH_CTL.CRASH_NOTIFY) with these
    /// CRASH_P0-P4.
    Crashed([u64; hvmsr::HV_CRASH_PARAMS]),
    /// The guest asked for a system reset (HV_X64_MSR_RESET).
    Reset,
}

/// Counts an MSR exit by kind.
pub fn count(metrics: &VcpuMetrics, index: u32) {
    if hvmsr::scope(index).is_some()
        || (hvmsr::HV_X64_MSR_RANGE_START..hvmsr::HV_X64_MSR_RANGE_END).contains(&index)
    {
        bump(&metrics.msr_synthetic);
    } else if lapic::handles_msr(index) {
        bump(&metrics.msr_x2apic);
    } else {
        bump(&metrics.msr_other);
    }
}

/// The check a synthetic MSR write that enables a page is committed
/// under: the whole page must be guest RAM (hv-enlightenments refuses the
/// write with #GP otherwise, as KVM does).
fn guest_ram(mem: &GuestMemoryMmap) -> impl Fn(u64) -> bool + '_ {
    move |gpa| GuestMemoryBackend::check_range(mem, GuestAddress(gpa), HV_PAGE_SIZE)
}

impl HyperV {
    /// The answer to a write of `index` where it needs no per-VP state
    /// (`None`: ask [`HyperV::wrmsr`] with the vCPU's `Vp`): no Hyper-V
    /// MSR at all (an APIC MSR, or #GP), or the synthetic EOI, ICR or TPR,
    /// the APIC's once the published privileges allow it. These are the
    /// hot MSR exits (an ICR write per IPI, an EOI per interrupt), and they
    /// skip the vCPU's lock and its `Vp` (after a halt, each cold line an
    /// exit touches costs it hundreds of nanoseconds). Same answer as
    /// [`HyperV::wrmsr`].
    pub fn write_without_vp(&self, index: u32) -> Option<MsrExit> {
        if hvmsr::scope(index).is_none() {
            return Some(MsrExit::Other);
        }
        let reg = ApicRegister::aliased_by(index)?;
        Some(if self.apic_aliases {
            MsrExit::Apic(reg)
        } else {
            MsrExit::Served(None)
        })
    }

    /// RDMSR of `index` by the vCPU whose VP state is `vp` (`None`: Hyper-V
    /// off, where no synthetic MSR exists).
    pub fn rdmsr(&self, vp: Option<&Vp>, index: u32) -> MsrExit {
        let outcome = match (hvmsr::scope(index), vp) {
            (None, _) => return MsrExit::Other,
            // Hyper-V off: the synthetic MSRs (the EOI/ICR/TPR aliases
            // that lapic would serve included) do not exist.
            (Some(_), None) => return MsrExit::Served(None),
            (Some(MsrScope::Partition), Some(_)) => {
                self.partition().read(index, &|| self.reference_time())
            }
            // VP_RUNTIME: this thread's CPU time (the read runs on the
            // vCPU's own thread), as KVM gives the vCPU task's run time.
            (Some(MsrScope::Vp), Some(vp)) => vp.read_with_runtime(index, &thread_runtime),
        };
        match outcome {
            MsrOutcome::Value(v) => MsrExit::Served(Some(v)),
            MsrOutcome::Apic(ApicAccess::Read(reg) | ApicAccess::Write(reg, _)) => {
                MsrExit::Apic(reg)
            }
            MsrOutcome::Done | MsrOutcome::Action(_) => MsrExit::Served(Some(0)),
            MsrOutcome::InjectGp => MsrExit::Served(None),
        }
    }

    /// WRMSR of `index` by vCPU `vcpu`, whose VP state is `vp`; the
    /// actions a write asks for are carried out on `mem`.
    pub fn wrmsr(
        &self,
        vp: Option<&mut Vp>,
        index: u32,
        value: u64,
        mem: &GuestMemoryMmap,
        vcpu: u32,
    ) -> MsrExit {
        let outcome = match (hvmsr::scope(index), vp) {
            (None, _) => return MsrExit::Other,
            (Some(_), None) => return MsrExit::Served(None),
            (Some(MsrScope::Partition), Some(_)) => {
                self.partition().write(index, value, &guest_ram(mem))
            }
            (Some(MsrScope::Vp), Some(vp)) => vp.write(index, value, &guest_ram(mem)),
        };
        match outcome {
            MsrOutcome::Done | MsrOutcome::Value(_) => MsrExit::Served(Some(0)),
            MsrOutcome::InjectGp => MsrExit::Served(None),
            MsrOutcome::Apic(ApicAccess::Read(reg) | ApicAccess::Write(reg, _)) => {
                MsrExit::Apic(reg)
            }
            MsrOutcome::Action(a) => self.apply_action(mem, vcpu, a),
        }
    }

    /// Carries out what a committed write asked for on guest memory, and
    /// says what is left for the caller.
    fn apply_action(&self, mem: &GuestMemoryMmap, vcpu: u32, a: MsrAction) -> MsrExit {
        match a {
            MsrAction::ReferenceTscPage { gpa: Some(gpa) } => {
                // Valid from now on: the guest reads time with no exit.
                let page = self.reference_tsc_page().to_bytes();
                if mem.write_slice(&page, GuestAddress(gpa)).is_err() {
                    log::warn!("vCPU {vcpu}: reference TSC page {gpa:#x} is not guest RAM");
                }
                MsrExit::Served(Some(0))
            }
            MsrAction::SyntheticTimersChanged => MsrExit::Stimers,
            MsrAction::EndOfMessage => MsrExit::EndOfMessage,
            MsrAction::GuestCrashed { params } => MsrExit::Crashed(params),
            MsrAction::ResetRequested => MsrExit::Reset,
            other => apply_memory_action(mem, vcpu, other),
        }
    }
}

/// The calling vCPU thread's CPU time in 100 ns units (HV_X64_MSR_VP_RUNTIME).
fn thread_runtime() -> u64 {
    crate::profile::thread_cpu_ns() / 100
}

/// Carries out what a committed write asked for on guest memory.
fn apply_memory_action(mem: &GuestMemoryMmap, vcpu: u32, a: MsrAction) -> MsrExit {
    let zero_page = |gpa: u64| {
        if mem
            .write_slice(&[0u8; HV_PAGE_SIZE], GuestAddress(gpa))
            .is_err()
        {
            log::warn!("vCPU {vcpu}: page {gpa:#x} is not guest RAM");
        }
    };
    match a {
        MsrAction::WriteHypercallPage { gpa } => {
            // The write was refused with #GP if the page is not guest RAM.
            let page = abi::HYPERCALL_TRAP.stub().page();
            if mem.write_slice(&page, GuestAddress(gpa)).is_err() {
                log::warn!("hypercall page {gpa:#x} is not guest RAM");
            }
        }
        MsrAction::VpAssistPage { gpa } => {
            if let Some(gpa) = gpa {
                // Zero `apic_assist` (offset 0), as KVM does on enable.
                let _ = mem.write_obj(0u32, GuestAddress(gpa));
            }
            return MsrExit::VpAssistPage(gpa);
        }
        MsrAction::SynicMessagePage { gpa: Some(gpa) }
        | MsrAction::SynicEventFlagsPage { gpa: Some(gpa) } => zero_page(gpa),
        MsrAction::AutoEoiChanged { old, new } => {
            log::debug!("vCPU {vcpu}: AutoEOI use {old} -> {new}")
        }
        other => log::debug!("vCPU {vcpu}: MSR action {other:x?}"),
    }
    MsrExit::Served(Some(0))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hv_enlightenments::accel::{HostApicAccel, IrqchipMode};
    use hv_enlightenments::cpuid::Privileges;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::clock::HostClock;

    /// The path without the `Vp` answers every MSR it answers as the full
    /// path does, with the privileges published or withheld and with
    /// Hyper-V on or off.
    #[test]
    fn writes_without_the_vp_take_the_full_paths_answer() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let clock = Arc::new(HostClock::new(1_000_000, None));
        let base =
            crate::kvm::cpuid::cpuid_plan(4, IrqchipMode::User, HostApicAccel::NONE, None, false)
                .unwrap();
        let mut withheld = base;
        withheld.cpuid.privileges.remove(Privileges::APIC_ACCESS);
        let eoi = [
            MsrExit::Apic(ApicRegister::Eoi),
            MsrExit::Served(None),
            MsrExit::Served(None),
        ];
        for ((enabled, plan), eoi) in [(true, base), (true, withheld), (false, base)]
            .into_iter()
            .zip(eoi)
        {
            let hv = HyperV::new(enabled, plan, Arc::clone(&clock));
            assert_eq!(hv.write_without_vp(hvmsr::HV_X64_MSR_EOI), Some(eoi));
            assert_eq!(hv.write_without_vp(0x830), Some(MsrExit::Other));
            assert_eq!(hv.write_without_vp(hvmsr::HV_X64_MSR_SCONTROL), None);
            let mut vp = enabled.then(|| Vp::from_plan(1, &plan).unwrap());
            for index in [
                hvmsr::HV_X64_MSR_EOI,
                hvmsr::HV_X64_MSR_ICR,
                hvmsr::HV_X64_MSR_TPR,
                hvmsr::HV_X64_MSR_VP_INDEX,
                hvmsr::HV_X64_MSR_SCONTROL,
                0x80B,
            ] {
                let full = hv.wrmsr(vp.as_mut(), index, 0, &mem, 1);
                if let Some(fast) = hv.write_without_vp(index) {
                    assert_eq!(fast, full, "{index:#x}, enabled {enabled}");
                }
            }
        }
    }
}
