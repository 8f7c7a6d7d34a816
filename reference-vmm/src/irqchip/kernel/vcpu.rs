//! The kernel-irqchip side of one vCPU: synthetic EOI/ICR/TPR bridged to
//! KVM's LAPIC (replayed as x2APIC MSR writes or MSIs), KVM's PV-EOI for
//! the VP assist page, the LINT1 pin, and the in-kernel state for timeout
//! reports.

use hv_enlightenments::msr::{ApicRegister, X2APIC_MSR_EOI};
use lapic::{ApicMode, DeliveryMode, Ipi, Shorthand, VcpuSet};
use vm_memory::{Bytes, GuestAddress};

use super::{
    KernelIrqchip, LAPIC_ICR_HIGH, LAPIC_ICR_LOW, LAPIC_IRR, LAPIC_ISR, LAPIC_LVT_LINT1, LAPIC_PPR,
    LAPIC_TPR, MSR_KVM_PV_EOI_EN, mp_state_name, msi_address, msi_data, reg32, vectors,
};
use crate::error::Error;
use crate::irqchip::VcpuCtx;
use crate::kvm::msr::MSR_APIC_BASE;
use crate::kvm::vcpu::KvmVcpu;
use crate::metrics::bump;
use crate::platform::msi::{
    MSI_ADDR_DEST_MODE_LOGICAL, MSI_DATA_LEVEL_ASSERT, MSI_DATA_TRIGGER_LEVEL,
};
use crate::vcpu::{State, Vcpu};

/// MSR_KVM_PV_EOI_EN enable bit.
const PV_EOI_ENABLE: u64 = 1;
/// MSR_KVM_PV_EOI_EN address bits (the word is 4-byte aligned; KVM keeps
/// bits 5:1 reserved).
const PV_EOI_GPA_MASK: u64 = !0x3F;
/// LVT mask bit and vector field (SDM 10.5.1).
const LVT_MASKED: u32 = 1 << 16;
const LVT_VECTOR: u32 = 0xFF;
/// RFLAGS.IF.
const RFLAGS_IF: u64 = 1 << 9;

/// The in-kernel APIC's mode, from its IA32_APIC_BASE.
fn apic_mode(kvm: &KvmVcpu) -> Result<ApicMode, Error> {
    let base = kvm.get_msr(MSR_APIC_BASE)?.unwrap_or(0);
    // KVM refuses EXTD without EN: not reachable.
    Ok(ApicMode::from_apic_base(base).unwrap_or(ApicMode::Disabled))
}

/// Raises `v`'s LINT1: its thread reads KVM's LVT LINT1 before its next
/// entry ([`prepare_entry`]), as only it can.
pub(in crate::irqchip) fn raise_lint1(v: &Vcpu) {
    let mut s = v.lock();
    s.lint1_pending = true;
    v.latch_event_locked(&mut s);
}

impl KernelIrqchip {
    /// Before an entry: a raised LINT1 is delivered as KVM's LVT LINT1
    /// says. KVM's LAPIC injects, halts and completes EOIs itself.
    pub(in crate::irqchip) fn prepare_entry(
        &self,
        cx: &mut VcpuCtx,
        s: &mut State,
    ) -> Result<(), Error> {
        if std::mem::take(&mut s.lint1_pending) {
            self.lint1(cx)?;
        }
        Ok(())
    }

    /// The NMI pin (LINT1) was raised: deliver what KVM's LVT LINT1 says
    /// (KVM has no ioctl that raises LINT1; `KVM_NMI` alone would ignore
    /// the LVT). APIC hardware-disabled: LINT1 is the NMI pin itself.
    /// Masked: dropped. NMI mode: `KVM_NMI`. Fixed: its vector, as an edge
    /// MSI to this vCPU. ExtINT, SMI and INIT: not modelled (no PIC, no
    /// SMM), dropped.
    fn lint1(&self, cx: &mut VcpuCtx) -> Result<(), Error> {
        let k = &*cx.kvm;
        let nmi = || {
            bump(&cx.me.metrics.nmis);
            k.fd().nmi().map_err(k.err("KVM_NMI"))
        };
        if apic_mode(k)? == ApicMode::Disabled {
            return Ok(nmi()?);
        }
        let l = k.fd().get_lapic().map_err(k.err("KVM_GET_LAPIC"))?;
        let lvt = reg32(&l, LAPIC_LVT_LINT1);
        if lvt & LVT_MASKED != 0 {
            return Ok(());
        }
        match DeliveryMode::from_reg(lvt) {
            DeliveryMode::Nmi => Ok(nmi()?),
            DeliveryMode::Fixed => {
                // APIC ID = vCPU index in this VMM.
                self.signal_msi(msi_address(k.index()), lvt & LVT_VECTOR);
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// RDMSR of a synthetic EOI/ICR/TPR (MSR `index`). `Ok(None)`: #GP. The
/// userspace APIC's fault rule applies, so that both irqchips agree;
/// ICR/TPR read the in-kernel APIC.
pub(in crate::irqchip) fn synthetic_read(
    cx: &mut VcpuCtx,
    index: u32,
    reg: ApicRegister,
) -> Result<Option<u64>, Error> {
    let k = &*cx.kvm;
    let mode = apic_mode(k)?;
    if lapic::synthetic_read_faults(index, mode) {
        return Ok(None);
    }
    if mode == ApicMode::X2Apic {
        return Ok(k.get_msr(reg.x2apic_msr())?);
    }
    let l = k.fd().get_lapic().map_err(k.err("KVM_GET_LAPIC"))?;
    Ok(match reg {
        // EOI is write-only.
        ApicRegister::Eoi => None,
        ApicRegister::Tpr => Some(u64::from(reg32(&l, LAPIC_TPR))),
        ApicRegister::Icr => {
            Some(u64::from(reg32(&l, LAPIC_ICR_LOW)) | u64::from(reg32(&l, LAPIC_ICR_HIGH)) << 32)
        }
    })
}

impl KernelIrqchip {
    /// Carries out a synthetic EOI/ICR/TPR write (MSR `index`) on the
    /// in-kernel APIC. `Ok(false)`: #GP. Reserved bits and a disabled APIC
    /// fault by the userspace APIC's rule (`lapic::synthetic_write_faults`):
    /// KVM's x2APIC MSRs are looser (TPR bits 31:8, a non-zero EOI).
    ///
    /// x2APIC mode: a host-initiated write of the x2APIC MSR; KVM applies
    /// it as the guest's own (KVM `kvm_hv_vapic_msr_write` does the same;
    /// a refused write is a #GP).
    ///
    /// xAPIC mode: KVM has no host-initiated access to an xAPIC-mode
    /// APIC's registers but `KVM_GET_LAPIC`/`KVM_SET_LAPIC`, and that
    /// read-modify-write of the whole register page loses IRR bits set
    /// between the two calls (by another vCPU's IPI or an MSI), restarts
    /// the APIC timer and bypasses the EOI's IOAPIC notification. So the
    /// EOI and TPR are not served there: #GP, and the hint policy does not
    /// recommend the synthetic MSRs with the kernel irqchip (a guest that
    /// follows the hint, as Linux does, never writes them). The ICR needs
    /// no read-modify-write: its destination becomes one MSI that KVM
    /// resolves (physical, logical or broadcast), a shorthand one MSI per
    /// target APIC ID; the in-kernel ICR register keeps the last
    /// architectural value (a synthetic ICR read returns it).
    pub(in crate::irqchip) fn synthetic_write(
        &self,
        cx: &mut VcpuCtx,
        index: u32,
        reg: ApicRegister,
        value: u64,
    ) -> Result<bool, Error> {
        let mode = apic_mode(cx.kvm)?;
        if lapic::synthetic_write_faults(index, value, mode) {
            return Ok(false);
        }
        if reg == ApicRegister::Eoi {
            bump(&cx.me.metrics.eoi_msr);
        }
        if mode == ApicMode::X2Apic {
            return Ok(cx.kvm.set_msr(reg.x2apic_msr(), value)?);
        }
        match reg {
            ApicRegister::Tpr | ApicRegister::Eoi => Ok(false),
            ApicRegister::Icr => {
                self.send_ipi_as_msi(cx.me, cx.vcpus.len(), &Ipi::from_xapic_u64(value));
                Ok(true)
            }
        }
    }

    fn send_ipi_as_msi(&self, me: &Vcpu, vcpus: usize, ipi: &Ipi) {
        let data = msi_data(ipi.vector, ipi.delivery_mode)
            | if ipi.trigger_mode == lapic::TriggerMode::Level {
                MSI_DATA_TRIGGER_LEVEL
            } else {
                0
            }
            | if ipi.level_assert {
                MSI_DATA_LEVEL_ASSERT
            } else {
                0
            };
        if ipi.shorthand == Shorthand::None {
            let mut address = msi_address(ipi.destination);
            if ipi.destination_mode == lapic::DestinationMode::Logical {
                address |= MSI_ADDR_DEST_MODE_LOGICAL;
            }
            bump(&me.metrics.ipis_posted);
            self.signal_msi(address, data);
            return;
        }
        let mut targets = VcpuSet::new();
        match ipi.shorthand {
            Shorthand::SelfOnly => targets.insert(me.index as usize),
            Shorthand::AllIncludingSelf => (0..vcpus).for_each(|i| targets.insert(i)),
            _ => (0..vcpus)
                .filter(|&i| i != me.index as usize)
                .for_each(|i| targets.insert(i)),
        }
        for t in targets.iter() {
            bump(&me.metrics.ipis_posted);
            // APIC ID = vCPU index in this VMM.
            self.signal_msi(msi_address(t as u32), data);
        }
    }
}

impl KernelIrqchip {
    /// A SynIC vector for `v` as an MSI to itself; an AutoEOI one is noted
    /// as outstanding (KVM's LAPIC will set its ISR bit). Returns whether
    /// the vCPU must be polled out of guest mode for it.
    pub(in crate::irqchip) fn deliver_sint(&self, v: &Vcpu, vector: u8, auto_eoi: bool) -> bool {
        if auto_eoi {
            v.lock().aeoi_outstanding.set(vector);
        }
        self.send_ipi(v.index, vector);
        auto_eoi
    }
}

/// After an exit, with AutoEOI vectors outstanding: one KVM's LAPIC has
/// in service, as its highest vector, gets the EOI the guest will not
/// write (a host x2APIC EOI, as for the synthetic EOI MSR; xAPIC mode has
/// no lossless host EOI, so it waits for x2APIC or the guest's own EOI).
/// One still requested stays outstanding; one neither requested nor in
/// service was completed by the guest.
pub(in crate::irqchip) fn complete_auto_eoi(cx: &mut VcpuCtx, s: &mut State) {
    if s.aeoi_outstanding.is_empty() {
        return;
    }
    let Ok(l) = cx.kvm.fd().get_lapic() else {
        return;
    };
    let (isr, irr) = (vectors(&l, LAPIC_ISR), vectors(&l, LAPIC_IRR));
    let x2apic = matches!(apic_mode(cx.kvm), Ok(ApicMode::X2Apic));
    let highest = isr.iter().max().copied();
    let outstanding: Vec<u8> = s.aeoi_outstanding.iter().collect();
    for v in outstanding {
        if isr.contains(&v) {
            if x2apic && highest == Some(v) && matches!(cx.kvm.set_msr(X2APIC_MSR_EOI, 0), Ok(true))
            {
                bump(&cx.me.metrics.eoi_auto);
                s.aeoi_outstanding.clear(v);
            }
        } else if !irr.contains(&v) {
            s.aeoi_outstanding.clear(v);
        }
    }
}

/// A one-line description of the in-kernel state of this vCPU (MP state,
/// RIP, RFLAGS.IF, the LAPIC's IRR, ISR and PPR, the PV-EOI word), for
/// timeout reports: the userspace APIC is unused in this mode. Only the
/// vCPU's own thread can take it, outside `KVM_RUN`.
pub(in crate::irqchip) fn describe(cx: &mut VcpuCtx) -> String {
    let fd = cx.kvm.fd();
    let mp = fd
        .get_mp_state()
        .map_or_else(|e| format!("? ({e})"), |s| mp_state_name(s.mp_state));
    let regs = fd.get_regs().map_or_else(
        |e| format!("regs ? ({e})"),
        |r| {
            format!(
                "RIP {:#x} IF {}",
                r.rip,
                u8::from(r.rflags & RFLAGS_IF != 0)
            )
        },
    );
    let apic = fd.get_lapic().map_or_else(
        |e| format!("LAPIC ? ({e})"),
        |l| {
            format!(
                "IRR {:x?} ISR {:x?} PPR {:#x}",
                vectors(&l, LAPIC_IRR),
                vectors(&l, LAPIC_ISR),
                reg32(&l, LAPIC_PPR)
            )
        },
    );
    let pv_eoi = match cx.kvm.get_msr(MSR_KVM_PV_EOI_EN) {
        Ok(Some(v)) if v & PV_EOI_ENABLE != 0 => {
            let gpa = v & PV_EOI_GPA_MASK;
            match cx.mem.read_obj::<u32>(GuestAddress(gpa)) {
                Ok(w) => format!("PV-EOI word {w:#x}"),
                Err(_) => format!("PV-EOI at {gpa:#x} (not RAM)"),
            }
        }
        _ => "PV-EOI off".to_string(),
    };
    format!("kernel LAPIC: {mp}, {regs}, {apic}, {pv_eoi}")
}

/// Hands the VP assist page to KVM's PV-EOI engine (or takes it back).
pub(in crate::irqchip) fn set_pv_eoi(kvm: &mut KvmVcpu, gpa: Option<u64>) -> Result<(), Error> {
    let value = gpa.map_or(0, |g| g | PV_EOI_ENABLE);
    if !kvm.set_msr(MSR_KVM_PV_EOI_EN, value)? {
        log::warn!(
            "vCPU {}: KVM refused MSR_KVM_PV_EOI_EN = {value:#x}: no lazy EOI",
            kvm.index()
        );
    }
    Ok(())
}
