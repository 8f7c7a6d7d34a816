//! The kernel-irqchip side of one vCPU's exits: Hyper-V and APIC MSRs
//! bridged to KVM's LAPIC (synthetic EOI/ICR/TPR replayed as x2APIC MSR
//! writes or MSIs), KVM's PV-EOI for the VP assist page, the LINT1 pin,
//! and the in-kernel state for timeout reports.

// The bridge shares the module's registers, constants and imports.
use super::*;
use crate::kvm::msr;

impl Runner<'_> {
    fn kernel(&self) -> Option<&KernelIrqchip> {
        self.m.kernel.as_ref()
    }

    fn get_msr(&self, index: u32) -> Result<Option<u64>, Error> {
        msr::get(&self.fd, index).map_err(kvm_err(self.me.index, "KVM_GET_MSRS"))
    }

    /// A host-initiated KVM_SET_MSRS of one MSR. `false`: KVM refused it.
    pub(crate) fn set_msr(&self, index: u32, data: u64) -> Result<bool, Error> {
        msr::set(&self.fd, index, data).map_err(kvm_err(self.me.index, "KVM_SET_MSRS"))
    }

    /// The in-kernel APIC's mode, from its IA32_APIC_BASE.
    fn apic_mode(&self) -> Result<ApicMode, Error> {
        let base = self.get_msr(MSR_APIC_BASE)?.unwrap_or(0);
        // KVM refuses EXTD without EN: not reachable.
        Ok(ApicMode::from_apic_base(base).unwrap_or(ApicMode::Disabled))
    }

    /// WRMSR of a userspace-exiting MSR in the kernel-irqchip mode.
    /// `Ok(false)`: #GP.
    pub(crate) fn kernel_wrmsr(&mut self, index: u32, value: u64) -> Result<bool, Error> {
        let (m, me) = (self.m, self.me);
        count_msr(me, index);
        let outcome = {
            let mut s = me.lock();
            match (hvmsr::scope(index), s.vp.as_mut()) {
                (Some(MsrScope::Partition), Some(_)) => {
                    m.partition().write(index, value, &guest_ram(m))
                }
                (Some(MsrScope::Vp), Some(vp)) => vp.write(index, value, &guest_ram(m)),
                _ => MsrOutcome::InjectGp,
            }
        };
        Ok(match outcome {
            MsrOutcome::Done | MsrOutcome::Value(_) => true,
            MsrOutcome::InjectGp => false,
            MsrOutcome::Apic(ApicAccess::Write(reg, v)) => self.replay_apic_write(index, reg, v)?,
            MsrOutcome::Apic(ApicAccess::Read(_)) => false,
            MsrOutcome::Action(a) => {
                if let MsrAction::VpAssistPage { gpa } = a {
                    self.set_pv_eoi(gpa)?;
                }
                apply_msr_action(m, me, a);
                true
            }
        })
    }

    /// RDMSR of a userspace-exiting MSR in the kernel-irqchip mode.
    /// `Ok(None)`: #GP. Synthetic ICR/TPR read the in-kernel APIC.
    pub(crate) fn kernel_rdmsr(&mut self, index: u32) -> Result<Option<u64>, Error> {
        let (m, me) = (self.m, self.me);
        count_msr(me, index);
        let outcome = {
            let s = me.lock();
            match (hvmsr::scope(index), &s.vp) {
                (Some(MsrScope::Partition), Some(_)) => {
                    m.partition().read(index, &|| m.reference_time())
                }
                (Some(MsrScope::Vp), Some(vp)) => vp.read(index),
                _ => MsrOutcome::InjectGp,
            }
        };
        match outcome {
            MsrOutcome::Value(v) => Ok(Some(v)),
            MsrOutcome::Done | MsrOutcome::Action(_) => Ok(Some(0)),
            MsrOutcome::InjectGp => Ok(None),
            MsrOutcome::Apic(ApicAccess::Read(reg))
            | MsrOutcome::Apic(ApicAccess::Write(reg, _)) => {
                // The userspace APIC's rule, so that both irqchips agree.
                let mode = self.apic_mode()?;
                if lapic::synthetic_read_faults(index, mode) {
                    return Ok(None);
                }
                if mode == ApicMode::X2Apic {
                    return self.get_msr(reg.x2apic_msr());
                }
                let l = self
                    .fd
                    .get_lapic()
                    .map_err(kvm_err(me.index, "KVM_GET_LAPIC"))?;
                Ok(match reg {
                    // EOI is write-only.
                    ApicRegister::Eoi => None,
                    ApicRegister::Tpr => Some(u64::from(reg32(&l, LAPIC_TPR))),
                    ApicRegister::Icr => Some(
                        u64::from(reg32(&l, LAPIC_ICR_LOW))
                            | u64::from(reg32(&l, LAPIC_ICR_HIGH)) << 32,
                    ),
                })
            }
        }
    }

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
    pub(crate) fn replay_apic_write(
        &self,
        index: u32,
        reg: ApicRegister,
        value: u64,
    ) -> Result<bool, Error> {
        let me = self.me;
        let mode = self.apic_mode()?;
        if lapic::synthetic_write_faults(index, value, mode) {
            return Ok(false);
        }
        if reg == ApicRegister::Eoi {
            bump(&me.metrics.eoi_msr);
        }
        if mode == ApicMode::X2Apic {
            return self.set_msr(reg.x2apic_msr(), value);
        }
        match reg {
            ApicRegister::Tpr | ApicRegister::Eoi => Ok(false),
            ApicRegister::Icr => {
                let ipi = Ipi::from_xapic_u64(value);
                self.send_ipi_as_msi(&ipi);
                Ok(true)
            }
        }
    }

    fn send_ipi_as_msi(&self, ipi: &Ipi) {
        let (m, me) = (self.m, self.me);
        let Some(k) = self.kernel() else { return };
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
            signal_msi(k, address, data);
            return;
        }
        let mut targets = VcpuSet::new();
        let all = m.vcpus.len();
        match ipi.shorthand {
            Shorthand::SelfOnly => targets.insert(me.index as usize),
            Shorthand::AllIncludingSelf => (0..all).for_each(|i| targets.insert(i)),
            _ => (0..all)
                .filter(|&i| i != me.index as usize)
                .for_each(|i| targets.insert(i)),
        }
        for t in targets.iter() {
            bump(&me.metrics.ipis_posted);
            // APIC ID = vCPU index in this VMM.
            signal_msi(k, msi_address(t as u32), data);
        }
    }

    /// The NMI pin (LINT1) was raised: deliver what KVM's LVT LINT1 says
    /// (KVM has no ioctl that raises LINT1; `KVM_NMI` alone would ignore
    /// the LVT). APIC hardware-disabled: LINT1 is the NMI pin itself.
    /// Masked: dropped. NMI mode: `KVM_NMI`. Fixed: its vector, as an edge
    /// MSI to this vCPU. ExtINT, SMI and INIT: not modelled (no PIC, no
    /// SMM), dropped.
    pub(crate) fn kernel_lint1(&mut self) -> Result<(), Error> {
        let idx = self.me.index;
        let nmi = |r: &Self| {
            bump(&r.me.metrics.nmis);
            r.fd.nmi().map_err(kvm_err(idx, "KVM_NMI"))
        };
        if self.apic_mode()? == ApicMode::Disabled {
            return nmi(self);
        }
        let l = self.fd.get_lapic().map_err(kvm_err(idx, "KVM_GET_LAPIC"))?;
        let lvt = reg32(&l, LAPIC_LVT_LINT1);
        if lvt & LVT_MASKED != 0 {
            return Ok(());
        }
        match DeliveryMode::from_reg(lvt) {
            DeliveryMode::Nmi => nmi(self),
            DeliveryMode::Fixed => {
                if let Some(k) = self.kernel() {
                    // APIC ID = vCPU index in this VMM.
                    signal_msi(k, msi_address(idx), lvt & LVT_VECTOR);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// A one-line description of the in-kernel state of this vCPU (MP
    /// state, RIP, RFLAGS.IF, the LAPIC's IRR, ISR and PPR, the PV-EOI
    /// word), for timeout reports: the userspace APIC is unused in this
    /// mode. Only the vCPU's own thread can take it, outside `KVM_RUN`.
    pub(crate) fn kernel_snapshot(&self) -> String {
        let mp = self
            .fd
            .get_mp_state()
            .map_or_else(|e| format!("? ({e})"), |s| mp_state_name(s.mp_state));
        let regs = self.fd.get_regs().map_or_else(
            |e| format!("regs ? ({e})"),
            |r| format!("RIP {:#x} IF {}", r.rip, u8::from(r.rflags & (1 << 9) != 0)),
        );
        let apic = self.fd.get_lapic().map_or_else(
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
        let pv_eoi = match self.get_msr(MSR_KVM_PV_EOI_EN) {
            Ok(Some(v)) if v & PV_EOI_ENABLE != 0 => {
                let gpa = v & !0x3F;
                match self.m.mem.read_obj::<u32>(GuestAddress(gpa)) {
                    Ok(w) => format!("PV-EOI word {w:#x}"),
                    Err(_) => format!("PV-EOI at {gpa:#x} (not RAM)"),
                }
            }
            _ => "PV-EOI off".to_string(),
        };
        format!("kernel LAPIC: {mp}, {regs}, {apic}, {pv_eoi}")
    }

    /// Hands the VP assist page to KVM's PV-EOI engine (or takes it back).
    fn set_pv_eoi(&self, gpa: Option<u64>) -> Result<(), Error> {
        let value = gpa.map_or(0, |g| g | PV_EOI_ENABLE);
        if !self.set_msr(MSR_KVM_PV_EOI_EN, value)? {
            log::warn!(
                "vCPU {}: KVM refused MSR_KVM_PV_EOI_EN = {value:#x}: no lazy EOI",
                self.me.index
            );
        }
        Ok(())
    }
}
