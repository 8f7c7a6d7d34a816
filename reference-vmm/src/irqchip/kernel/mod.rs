//! The kernel-irqchip mode: KVM's in-kernel local APIC (split irqchip)
//! serves the architectural APIC, its timer and HLT; the VMM keeps the
//! Hyper-V side and bridges it to KVM:
//!
//! - VM setup: `KVM_CAP_SPLIT_IRQCHIP` (24 routes reserved for a userspace
//!   IOAPIC) and `KVM_CAP_X2APIC_API` with 32-bit IDs, so that an MSI can
//!   name any x2APIC ID;
//! - PV IPI and MSIs from the devices: `KVM_SIGNAL_MSI`;
//! - synthetic EOI/ICR/TPR: replayed as host-initiated x2APIC MSR writes
//!   when the in-kernel APIC is in x2APIC mode (KVM `kvm_hv_vapic_msr_write`
//!   does the same); in xAPIC mode the ICR becomes MSIs and the EOI and
//!   TPR raise #GP (see `KernelIrqchip::synthetic_write` for why);
//! - lazy EOI: the VP assist page is handed to KVM's PV-EOI engine
//!   (`MSR_KVM_PV_EOI_EN`), which uses the same bit 0 at offset 0.

mod msi;
mod vcpu;

pub use msi::{kvm_msi_for, msi_address, msi_data};
pub(super) use vcpu::{complete_auto_eoi, describe, raise_lint1, set_pv_eoi, synthetic_read};

use std::sync::{Arc, Mutex};

use kvm_bindings::{
    KVM_CAP_SPLIT_IRQCHIP, KVM_CAP_X2APIC_API, KVM_IRQ_ROUTING_MSI, KVM_MP_STATE_RUNNABLE,
    KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK, KVM_X2APIC_API_USE_32BIT_IDS, KvmIrqRouting,
    kvm_enable_cap, kvm_irq_routing_entry, kvm_lapic_state, kvm_mp_state,
};
use kvm_ioctls::VmFd;

use super::{ApStart, EoiHook, IrqchipConfig};
use crate::error::Error;
use crate::kvm::stats::{KvmVmCounters, StatsReader};
use crate::kvm::vcpu::KvmVcpu;
use crate::platform::ioapic::{NUM_PINS, RouteListener};
use crate::platform::msi::is_init_deassert;

/// IOAPIC pins whose GSI routes the split irqchip reserves (KVM api.rst,
/// KVM_CAP_SPLIT_IRQCHIP: "the number of pins of the userspace IOAPIC").
pub const SPLIT_IRQCHIP_ROUTES: u64 = 24;
/// KVM's PV-EOI MSR (Documentation/virt/kvm/x86/msr.rst): GPA | enable.
pub const MSR_KVM_PV_EOI_EN: u32 = 0x4b56_4d04;
/// KVM's in-kernel APIC timer frequency: one count per APIC bus cycle of
/// `APIC_BUS_CYCLE_NS_DEFAULT` = 1 ns (arch/x86/kvm/lapic.h), i.e. 1 GHz
/// with divide-by-1. The VMM does not change it with
/// KVM_CAP_X86_APIC_BUS_CYCLES_NS.
pub const KVM_APIC_TIMER_HZ: u64 = 1_000_000_000;
/// xAPIC register offsets inside `kvm_lapic_state.regs` (SDM Table 11-1).
const LAPIC_TPR: usize = 0x80;
const LAPIC_PPR: usize = 0xA0;
const LAPIC_IRR: usize = 0x200;
const LAPIC_ISR: usize = 0x100;
const LAPIC_ICR_LOW: usize = 0x300;
const LAPIC_ICR_HIGH: usize = 0x310;
const LAPIC_LVT_LINT1: usize = 0x360;

/// What the kernel-irqchip mode keeps per VM.
pub struct KernelIrqchip {
    /// The VM fd, for KVM_SIGNAL_MSI and GSI routes.
    vm: Arc<VmFd>,
    /// Statistics fd of each vCPU (empty without KVM_CAP_BINARY_STATS_FD).
    stats: Vec<StatsReader>,
    /// Every vCPU starts at its entry rather than in KVM's wait-for-SIPI.
    all_runnable: bool,
    /// Where level-triggered EOIs (`KVM_EXIT_IOAPIC_EOI`) go.
    pub(super) eoi_hook: Option<EoiHook>,
}

impl KernelIrqchip {
    /// The backend for `c`.
    pub fn new(c: IrqchipConfig) -> Self {
        Self {
            vm: c.vm,
            stats: c.stats,
            all_runnable: c.ap_start == ApStart::AtEntry,
            eoi_hook: c.eoi_hook,
        }
    }

    /// KVM's counters of every vCPU now (`None` without statistics).
    pub fn counters(&self) -> Option<KvmVmCounters> {
        if self.stats.is_empty() {
            return None;
        }
        Some(KvmVmCounters::from_vcpus(
            self.stats.iter().map(StatsReader::read).collect(),
        ))
    }

    /// With an in-kernel LAPIC every vCPU but the BSP starts waiting for
    /// INIT/SIPI; the built-in guests start all vCPUs at their entry point.
    pub(super) fn start_vcpu(&self, kvm: &KvmVcpu) -> Result<(), Error> {
        if !self.all_runnable {
            return Ok(());
        }
        kvm.fd()
            .set_mp_state(kvm_mp_state {
                mp_state: KVM_MP_STATE_RUNNABLE,
            })
            .map_err(kvm.err("KVM_SET_MP_STATE"))?;
        Ok(())
    }

    /// A fixed edge IPI of `vector` to the vCPU with APIC ID `apic_id`
    /// (= its index in this VMM), as one `KVM_SIGNAL_MSI`; KVM kicks or
    /// wakes it.
    pub fn send_ipi(&self, apic_id: u32, vector: u8) {
        self.signal_msi(msi_address(apic_id), u32::from(vector));
    }

    /// Mirrors the IOAPIC's routes into KVM's GSI routing (GSI = pin,
    /// within the routes the split irqchip reserves), so that KVM's LAPIC
    /// knows which vectors are level-triggered IOAPIC ones and reports
    /// their EOIs with `KVM_EXIT_IOAPIC_EOI` (KVM `kvm_scan_ioapic_routes`).
    pub(super) fn route_listener(&self) -> RouteListener {
        let fd = Arc::clone(&self.vm);
        let routes: Mutex<[Option<(u64, u32)>; NUM_PINS]> = Mutex::new([None; NUM_PINS]);
        Box::new(move |pin, route| {
            let mut r = routes.lock().unwrap_or_else(|e| e.into_inner());
            let Some(slot) = r.get_mut(pin) else { return };
            *slot = route;
            let entries: Vec<kvm_irq_routing_entry> = r
                .iter()
                .enumerate()
                .filter_map(|(gsi, rt)| {
                    let (address, data) = (*rt)?;
                    let msi = kvm_msi_for(address, data);
                    let mut e = kvm_irq_routing_entry {
                        gsi: gsi as u32,
                        type_: KVM_IRQ_ROUTING_MSI,
                        ..Default::default()
                    };
                    e.u.msi.address_lo = msi.address_lo;
                    e.u.msi.address_hi = msi.address_hi;
                    e.u.msi.data = msi.data;
                    Some(e)
                })
                .collect();
            let set = KvmIrqRouting::from_entries(&entries)
                .map_err(|e| format!("{e:?}"))
                .and_then(|t| fd.set_gsi_routing(&t).map_err(|e| e.to_string()));
            if let Err(e) = set {
                log::warn!("KVM_SET_GSI_ROUTING for IOAPIC pin {pin}: {e}");
            }
        })
    }

    /// Sends an MSI through `KVM_SIGNAL_MSI` (an INIT de-assert is
    /// dropped, as the userspace APIC drops it). Returns whether KVM
    /// delivered it to at least one APIC.
    pub fn signal_msi(&self, address: u64, data: u32) -> bool {
        if is_init_deassert(data) {
            return false;
        }
        match crate::profile::notification(|| self.vm.signal_msi(kvm_msi_for(address, data))) {
            Ok(n) => n > 0,
            Err(e) => {
                log::warn!("KVM_SIGNAL_MSI {address:#x}/{data:#x}: {e}");
                false
            }
        }
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
    fn vector_lists() {
        let mut l = kvm_lapic_state::default();
        assert!(vectors(&l, LAPIC_IRR).is_empty());
        set_reg32(&mut l, LAPIC_IRR + 0x10 * 7, (1 << 16) | (1 << 17)); // 0xF0, 0xF1
        set_reg32(&mut l, LAPIC_IRR, 1 << 2); // 0x02
        assert_eq!(vectors(&l, LAPIC_IRR), vec![0x02, 0xF0, 0xF1]);
        assert!(vectors(&l, LAPIC_ISR).is_empty());
    }
}
