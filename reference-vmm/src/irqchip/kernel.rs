//! The kernel-irqchip mode: KVM's in-kernel local APIC (split irqchip)
//! serves the architectural APIC, its timer and HLT; the VMM keeps the
//! Hyper-V side and bridges it to KVM:
//!
//! - VM setup: `KVM_CAP_SPLIT_IRQCHIP` (24 routes reserved for a userspace
//!   IOAPIC) and `KVM_CAP_X2APIC_API` with 32-bit IDs, so that an MSI can
//!   name any x2APIC ID;
//! - PV IPI and [`crate::irqchip::user::deliver_msi`]: `KVM_SIGNAL_MSI`;
//! - synthetic EOI/ICR/TPR: replayed as host-initiated x2APIC MSR writes
//!   when the in-kernel APIC is in x2APIC mode (KVM `kvm_hv_vapic_msr_write`
//!   does the same); in xAPIC mode the ICR becomes MSIs and the EOI and
//!   TPR raise #GP (see `Runner::replay_apic_write` for why);
//! - lazy EOI: the VP assist page is handed to KVM's PV-EOI engine
//!   (`MSR_KVM_PV_EOI_EN`), which uses the same bit 0 at offset 0.

use std::sync::Arc;

use hv_enlightenments::msr::{
    self as hvmsr, ApicAccess, ApicRegister, MsrAction, MsrOutcome, MsrScope,
};
use kvm_bindings::{
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_MP_STATE_RUNNABLE,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS, Msrs, kvm_enable_cap,
    kvm_lapic_state, kvm_mp_state, kvm_msi, kvm_msr_entry,
};
use kvm_ioctls::{VcpuFd, VmFd};
use lapic::{ApicMode, DeliveryMode, Ipi, Shorthand, VcpuSet};
use vm_memory::{Bytes, GuestAddress};

use crate::error::Error;
use crate::hyperv::msr::{apply_msr_action, count_msr, guest_ram};
use crate::kvm::stats::{KvmVmCounters, StatsReader};
use crate::metrics::bump;
use crate::platform::msi::{
    MSI_ADDR_DEST_MODE_LOGICAL, MSI_ADDR_DEST_SHIFT, MSI_ADDR_EXT_DEST_SHIFT, MSI_ADDRESS_BASE,
    MSI_DATA_LEVEL_ASSERT, MSI_DATA_TRIGGER_LEVEL,
};
use crate::vcpu::{Runner, kvm_err};
use crate::vm::MSR_APIC_BASE;

/// IOAPIC pins whose GSI routes the split irqchip reserves (KVM api.rst,
/// KVM_CAP_SPLIT_IRQCHIP: "the number of pins of the userspace IOAPIC").
pub const SPLIT_IRQCHIP_ROUTES: u64 = 24;
/// KVM's PV-EOI MSR (Documentation/virt/kvm/x86/msr.rst): GPA | enable.
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// MSR_KVM_PV_EOI_EN enable bit.
const PV_EOI_ENABLE: u64 = 1;
/// xAPIC register offsets inside `kvm_lapic_state.regs` (SDM Table 11-1).
const LAPIC_TPR: usize = 0x80;
const LAPIC_PPR: usize = 0xA0;
const LAPIC_IRR: usize = 0x200;
const LAPIC_ISR: usize = 0x100;
const LAPIC_ICR_LOW: usize = 0x300;
const LAPIC_ICR_HIGH: usize = 0x310;
const LAPIC_LVT_LINT1: usize = 0x360;
/// LVT mask bit and vector field (SDM 10.5.1).
const LVT_MASKED: u32 = 1 << 16;
const LVT_VECTOR: u32 = 0xFF;

/// What the kernel-irqchip mode keeps per VM.
pub struct KernelIrqchip {
    /// The VM fd, for KVM_SIGNAL_MSI.
    pub vm: Arc<VmFd>,
    /// Statistics fd of each vCPU (empty without KVM_CAP_BINARY_STATS_FD).
    pub stats: Vec<StatsReader>,
}

impl KernelIrqchip {
    /// KVM's counters of every vCPU now (`None` without statistics).
    pub fn counters(&self) -> Option<KvmVmCounters> {
        if self.stats.is_empty() {
            return None;
        }
        Some(KvmVmCounters::from_vcpus(
            self.stats.iter().map(StatsReader::read).collect(),
        ))
    }
}

/// Turns on the split irqchip and the 32-bit x2APIC ID API. Must run
/// before any vCPU is created.
pub fn setup_vm(fd: &VmFd) -> Result<(), Error> {
    let split = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        args: [SPLIT_IRQCHIP_ROUTES, 0, 0, 0],
        ..Default::default()
    };
    fd.enable_cap(&split).map_err(|err| Error::Kvm {
        op: "KVM_ENABLE_CAP(SPLIT_IRQCHIP)",
        err,
    })?;
    let x2apic = kvm_enable_cap {
        cap: KVM_CAP_X2APIC_API,
        args: [
            u64::from(KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK),
            0,
            0,
            0,
        ],
        ..Default::default()
    };
    fd.enable_cap(&x2apic).map_err(|err| Error::Kvm {
        op: "KVM_ENABLE_CAP(X2APIC_API)",
        err,
    })
}

/// With an in-kernel LAPIC every vCPU but the BSP starts waiting for
/// INIT/SIPI; the built-in guests start all vCPUs at their entry point.
pub fn make_runnable(fd: &VcpuFd, vcpu: u32) -> Result<(), Error> {
    fd.set_mp_state(kvm_mp_state {
        mp_state: KVM_MP_STATE_RUNNABLE,
    })
    .map_err(kvm_err(vcpu, "KVM_SET_MP_STATE"))
}

/// The MSI address that names x2APIC ID `apic_id` (physical mode) in the
/// `KVM_CAP_X2APIC_API` format: ID bits 7:0 in address bits 19:12, ID bits
/// 31:8 in `address_hi` bits 31:8 (KVM api.rst, KVM_SIGNAL_MSI).
pub const fn msi_address(apic_id: u32) -> u64 {
    ((apic_id & 0xFFFF_FF00) as u64) << 32
        | MSI_ADDRESS_BASE
        | (((apic_id & 0xFF) as u64) << MSI_ADDR_DEST_SHIFT)
}

/// The destination ID an MSI address names: bits 19:12, the extended ID
/// in bits 11:5 (bits 14:8 of the ID), or the X2APIC_API high word (bits
/// 31:8 of the ID).
pub const fn msi_destination(address: u64) -> u32 {
    let low = ((address >> MSI_ADDR_DEST_SHIFT) & 0xFF) as u32;
    let ext = ((address >> MSI_ADDR_EXT_DEST_SHIFT) & 0x7F) as u32;
    let hi = ((address >> 32) as u32) & 0xFFFF_FF00;
    low | (ext << 8) | hi
}

/// Whether an MSI address selects logical destination mode.
pub const fn msi_logical(address: u64) -> bool {
    address & MSI_ADDR_DEST_MODE_LOGICAL != 0
}

/// The `kvm_msi` for an MSI message, the destination re-encoded in the
/// X2APIC_API format (an extended-ID message becomes the same 32-bit ID).
pub fn kvm_msi_for(address: u64, data: u32) -> kvm_msi {
    let id = msi_destination(address);
    let logical = if msi_logical(address) {
        MSI_ADDR_DEST_MODE_LOGICAL
    } else {
        0
    };
    let a = msi_address(id) | logical | (address & 0xF & !MSI_ADDR_DEST_MODE_LOGICAL);
    kvm_msi {
        address_lo: a as u32,
        address_hi: (a >> 32) as u32,
        data,
        ..Default::default()
    }
}

/// The MSI data word of an edge-triggered interrupt: the delivery mode
/// sits in bits 10:8 as in the ICR (`DeliveryMode::to_reg`).
pub fn msi_data(vector: u8, mode: DeliveryMode) -> u32 {
    u32::from(vector) | mode.to_reg()
}

/// Whether an MSI data word is an INIT level de-assert: a no-op on the
/// P4 and later (SDM 10.6.1), which KVM's `kvm_set_msi_irq` would deliver
/// as an INIT because it asserts every MSI.
pub fn is_init_deassert(data: u32) -> bool {
    DeliveryMode::from_reg(data) == DeliveryMode::Init
        && data & MSI_DATA_TRIGGER_LEVEL != 0
        && data & MSI_DATA_LEVEL_ASSERT == 0
}

/// Sends an MSI through `KVM_SIGNAL_MSI` (an INIT de-assert is dropped,
/// as the userspace APIC drops it). Returns whether KVM delivered it to
/// at least one APIC.
pub fn signal_msi(k: &KernelIrqchip, address: u64, data: u32) -> bool {
    if is_init_deassert(data) {
        return false;
    }
    match k.vm.signal_msi(kvm_msi_for(address, data)) {
        Ok(n) => n > 0,
        Err(e) => {
            log::warn!("KVM_SIGNAL_MSI {address:#x}/{data:#x}: {e}");
            false
        }
    }
}

fn reg32(l: &kvm_lapic_state, off: usize) -> u32 {
    let mut b = [0u8; 4];
    for (i, d) in b.iter_mut().enumerate() {
        *d = l.regs.get(off + i).map_or(0, |&c| c as u8);
    }
    u32::from_le_bytes(b)
}

#[cfg(test)]
fn set_reg32(l: &mut kvm_lapic_state, off: usize, v: u32) {
    for (i, s) in v.to_le_bytes().iter().enumerate() {
        if let Some(d) = l.regs.get_mut(off + i) {
            *d = *s as _;
        }
    }
}

/// The vectors set in the 256-bit register (ISR, TMR or IRR) at `base`.
pub fn vectors(l: &kvm_lapic_state, base: usize) -> Vec<u8> {
    (0..8usize)
        .flat_map(|i| {
            let word = reg32(l, base + 0x10 * i);
            (0..32u32)
                .filter(move |b| word & (1 << b) != 0)
                .map(move |b| (i as u32 * 32 + b) as u8)
        })
        .collect()
}

impl Runner<'_> {
    fn kernel(&self) -> Option<&KernelIrqchip> {
        self.m.kernel.as_ref()
    }

    fn get_msr(&self, index: u32) -> Result<Option<u64>, Error> {
        let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            ..Default::default()
        }])
        .map_err(|e| Error::Memory(format!("MSR list: {e:?}")))?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(kvm_err(self.me.index, "KVM_GET_MSRS"))?;
        Ok((n == 1).then(|| msrs.as_slice()[0].data))
    }

    /// A host-initiated KVM_SET_MSRS of one MSR. `false`: KVM refused it.
    pub(crate) fn set_msr(&self, index: u32, data: u64) -> Result<bool, Error> {
        let msrs = Msrs::from_entries(&[kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }])
        .map_err(|e| Error::Memory(format!("MSR list: {e:?}")))?;
        let n = self
            .fd
            .set_msrs(&msrs)
            .map_err(kvm_err(self.me.index, "KVM_SET_MSRS"))?;
        Ok(n == 1)
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

/// KVM's name of an MP state (api.rst, KVM_GET_MP_STATE).
fn mp_state_name(s: u32) -> String {
    match s {
        kvm_bindings::KVM_MP_STATE_RUNNABLE => "RUNNABLE".into(),
        kvm_bindings::KVM_MP_STATE_UNINITIALIZED => "UNINITIALIZED".into(),
        kvm_bindings::KVM_MP_STATE_INIT_RECEIVED => "INIT_RECEIVED".into(),
        kvm_bindings::KVM_MP_STATE_HALTED => "HALTED".into(),
        kvm_bindings::KVM_MP_STATE_SIPI_RECEIVED => "SIPI_RECEIVED".into(),
        other => format!("mp_state {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msi_encoding_of_x2apic_ids() {
        assert_eq!(msi_address(0), 0xFEE0_0000);
        assert_eq!(msi_address(5), 0xFEE0_5000);
        assert_eq!(msi_address(0xFF), 0xFEEF_F000);
        // ID 300 = 0x12C: low byte 0x2C in bits 19:12, 0x100 in address_hi.
        let a = msi_address(300);
        assert_eq!(a as u32, 0xFEE2_C000);
        assert_eq!((a >> 32) as u32, 0x100);
        let k = kvm_msi_for(a, 0x40);
        assert_eq!(
            (k.address_lo, k.address_hi, k.data),
            (0xFEE2_C000, 0x100, 0x40)
        );
        assert_eq!(k.address_hi & 0xFF, 0, "KVM rejects low address_hi bits");
        for id in [0u32, 1, 254, 255, 256, 300, 4095, 0x00AB_CDEF] {
            assert_eq!(msi_destination(msi_address(id)), id);
        }
    }

    #[test]
    fn extended_destination_ids_are_re_encoded() {
        // Linux's extended ID: bits 14:8 of the ID in address bits 11:5.
        let id = 0x1_23u32;
        let ext = MSI_ADDRESS_BASE | (0x23 << 12) | (0x1 << 5);
        assert_eq!(msi_destination(ext), id);
        let k = kvm_msi_for(ext | MSI_ADDR_DEST_MODE_LOGICAL, 0x31);
        assert_eq!(
            k.address_lo,
            0xFEE2_3000 | MSI_ADDR_DEST_MODE_LOGICAL as u32
        );
        assert_eq!(k.address_hi, 0x100);
    }

    #[test]
    fn msi_data_modes() {
        assert_eq!(msi_data(0xF0, DeliveryMode::Fixed), 0xF0);
        assert_eq!(msi_data(0x20, DeliveryMode::Nmi), 0x420);
        assert_eq!(msi_data(0x20, DeliveryMode::LowestPriority), 0x120);
    }

    #[test]
    fn vector_lists() {
        let mut l = kvm_lapic_state::default();
        assert!(vectors(&l, LAPIC_IRR).is_empty());
        set_reg32(&mut l, LAPIC_IRR + 0x10 * 7, (1 << 16) | (1 << 17)); // 0xF0, 0xF1
        set_reg32(&mut l, LAPIC_IRR, 1 << 2); // 0x02
        assert_eq!(vectors(&l, LAPIC_IRR), vec![0x02, 0xF0, 0xF1]);
        assert!(vectors(&l, LAPIC_ISR).is_empty());
    }
}
