//! Routing of userspace MSR exits: Hyper-V synthetic MSRs to
//! hv-enlightenments' `Partition` (behind the VMM's lock) or the vCPU's
//! `Vp`, APIC MSRs (x2APIC, IA32_APIC_BASE, TSC deadline, the Hyper-V
//! EOI/ICR/TPR aliases) to the vCPU's lapic, everything else to #GP.

use hv_enlightenments::HV_PAGE_SIZE;
use hv_enlightenments::msr::{self as hvmsr, MsrAction, MsrOutcome, MsrScope};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::irqchip::user::apply_apic_outcome;
use crate::metrics::bump;
use crate::vcpu::Vcpu;
use crate::vm::Machine;

/// Which counter an MSR exit goes to.
pub(crate) fn count_msr(me: &Vcpu, index: u32) {
    if hvmsr::scope(index).is_some()
        || (hvmsr::HV_X64_MSR_RANGE_START..hvmsr::HV_X64_MSR_RANGE_END).contains(&index)
    {
        bump(&me.metrics.msr_synthetic);
    } else if lapic::handles_msr(index) {
        bump(&me.metrics.msr_x2apic);
    } else {
        bump(&me.metrics.msr_other);
    }
}

/// The check a synthetic MSR write that enables a page is committed
/// under: the whole page must be guest RAM (hv-enlightenments refuses the
/// write with #GP otherwise, as KVM does).
pub(crate) fn guest_ram(m: &Machine) -> impl Fn(u64) -> bool + '_ {
    move |gpa| GuestMemoryBackend::check_range(&m.mem, GuestAddress(gpa), HV_PAGE_SIZE)
}

/// RDMSR from the guest. `None`: #GP.
pub fn msr_read(m: &Machine, me: &Vcpu, index: u32) -> Option<u64> {
    count_msr(me, index);
    let s = me.lock();
    let outcome = match (hvmsr::scope(index), &s.vp) {
        (Some(MsrScope::Partition), Some(_)) => m.partition().read(index, &|| m.reference_time()),
        (Some(MsrScope::Vp), Some(vp)) => vp.read(index),
        // Hyper-V off: the synthetic MSRs (the EOI/ICR/TPR aliases that
        // lapic would serve included) do not exist.
        (Some(_), None) => return None,
        _ if lapic::handles_msr(index) => {
            return match s.apic.read_msr(index) {
                lapic::MsrRead::Value(v) => Some(v),
                lapic::MsrRead::Gp => None,
            };
        }
        _ => {
            log::debug!("vCPU {}: rdmsr {index:#x} -> #GP", me.index);
            return None;
        }
    };
    match outcome {
        MsrOutcome::Value(v) => Some(v),
        MsrOutcome::Apic(_) => match s.apic.read_msr(index) {
            lapic::MsrRead::Value(v) => Some(v),
            lapic::MsrRead::Gp => None,
        },
        MsrOutcome::Done | MsrOutcome::Action(_) => Some(0),
        MsrOutcome::InjectGp => None,
    }
}

/// WRMSR from the guest. `false`: #GP.
pub fn msr_write(m: &Machine, me: &Vcpu, index: u32, value: u64) -> bool {
    count_msr(me, index);
    let outcome = {
        let mut s = me.lock();
        match hvmsr::scope(index) {
            Some(MsrScope::Partition) => match s.vp {
                Some(_) => m.partition().write(index, value, &guest_ram(m)),
                None => MsrOutcome::InjectGp,
            },
            Some(MsrScope::Vp) => match s.vp.as_mut() {
                Some(vp) => vp.write(index, value, &guest_ram(m)),
                None => MsrOutcome::InjectGp,
            },
            _ if lapic::handles_msr(index) => {
                let o = s.apic.write_msr(index, value);
                drop(s);
                return apply_apic_outcome(m, me, o);
            }
            _ => {
                log::debug!("vCPU {}: wrmsr {index:#x} <- {value:#x} -> #GP", me.index);
                MsrOutcome::InjectGp
            }
        }
    };
    match outcome {
        MsrOutcome::Done | MsrOutcome::Value(_) => true,
        MsrOutcome::InjectGp => false,
        MsrOutcome::Apic(_) => {
            // EOI/ICR/TPR aliases: lapic serves them under their own index.
            let o = me.lock().apic.write_msr(index, value);
            apply_apic_outcome(m, me, o)
        }
        MsrOutcome::Action(a) => {
            apply_msr_action(m, me, a);
            true
        }
    }
}

pub(crate) fn apply_msr_action(m: &Machine, me: &Vcpu, a: MsrAction) {
    let zero_page = |gpa: u64| {
        if m.mem.write_slice(&[0u8; 4096], GuestAddress(gpa)).is_err() {
            log::warn!("vCPU {}: page {gpa:#x} is not guest RAM", me.index);
        }
    };
    match a {
        MsrAction::WriteHypercallPage { gpa } => m.write_hypercall_page(gpa),
        MsrAction::VpAssistPage { gpa: Some(gpa) } => {
            // Zero `apic_assist` (offset 0), as KVM does on enable.
            let _ = m.mem.write_obj(0u32, GuestAddress(gpa));
        }
        MsrAction::SynicMessagePage { gpa: Some(gpa) }
        | MsrAction::SynicEventFlagsPage { gpa: Some(gpa) } => zero_page(gpa),
        MsrAction::AutoEoiChanged { old, new } => {
            log::debug!("vCPU {}: AutoEOI use {old} -> {new}", me.index)
        }
        other => log::debug!("vCPU {}: MSR action {other:?}", me.index),
    }
}
