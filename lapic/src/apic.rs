//! One vCPU's local APIC: register file, modes, acceptance, priority,
//! EOI, timer, the Hyper-V synthetic APIC MSRs and lazy EOI.

use std::sync::Arc;

use hv_enlightenments::msr::{HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR};

use crate::icr::{Ipi, Shorthand};
use crate::interrupt::{Delivery, DeliveryMode, Interrupt, TriggerMode};
use crate::mode::ApicMode;
use crate::outcome::{Effect, Eoi, MsrRead, Outcome, TimerPoll};
use crate::regs::*;
use crate::synthetic::{synthetic_read_faults, synthetic_write_faults};
use crate::timer::{Clock, Timer, TimerMode, divisor};
use crate::topology::{ApicIdentity, MAX_APIC_ID, x2apic_ldr};
use crate::vector::{FIRST_LEGAL_VECTOR, REGS_PER_BITMAP, VectorBitmap};

/// Shift between the two 32-bit halves of a 64-bit ICR or MSR value.
const HIGH_HALF_SHIFT: u32 = 32;
/// Span of an ISR/TMR/IRR register block (8 registers, 16 bytes apart).
const BITMAP_SPAN: u32 = REGS_PER_BITMAP as u32 * REG_ALIGN;
/// Lowest and highest supported MAXPHYADDR.
const PHYS_ADDR_BITS: core::ops::RangeInclusive<u8> = 32..=52;
/// KVM's default `min_timer_period_us` (200 us) as the periodic floor.
pub const DEFAULT_MIN_PERIODIC_NS: u64 = 200_000;
/// KVM's APIC bus cycle (`APIC_BUS_CYCLE_NS_DEFAULT`): 1 ns.
pub const DEFAULT_BUS_CYCLE_NS: u64 = 1;
/// Longest APIC bus cycle accepted (1 us, i.e. a 1 MHz bus).
pub const MAX_BUS_CYCLE_NS: u64 = 1_000;

/// Construction-time choices for one local APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The APIC ID (the x2APIC ID; its low 8 bits are the xAPIC ID).
    /// At most [`MAX_APIC_ID`].
    pub apic_id: u32,
    /// This vCPU is the bootstrap processor (IA32_APIC_BASE bit 8).
    pub bsp: bool,
    /// CPUID advertises x2APIC: without it, setting EXTD is a #GP.
    pub x2apic: bool,
    /// Advertise EOI-broadcast suppression (version bit 24, SVR bit 12).
    /// Only for VMMs whose IOAPIC has a directed-EOI register. KVM
    /// advertises it when CPUID has x2APIC and the IOAPIC is not in the
    /// kernel (`kvm_apic_set_version`): a split-irqchip VMM with such an
    /// IOAPIC sets it to report the same version register.
    pub eoi_broadcast_suppression: bool,
    /// Implement the LVT CMCI register (seventh LVT). KVM has it only when
    /// the vCPU's MCG_CAP has MCG_CMCI_P (`kvm_apic_calc_nr_lvt_entries`),
    /// which KVM's default MCG_CAP lacks.
    pub cmci: bool,
    /// Nanoseconds per APIC bus cycle (timer tick before the divider),
    /// 1..=[`MAX_BUS_CYCLE_NS`].
    pub bus_cycle_ns: u64,
    /// Shortest periodic timer period in ns (KVM clamps the same way).
    pub min_periodic_ns: u64,
    /// Guest MAXPHYADDR: IA32_APIC_BASE bits at or above it are reserved.
    pub phys_addr_bits: u8,
}

impl Config {
    /// Defaults for APIC ID `apic_id`, those of a KVM vCPU with an
    /// in-kernel IOAPIC and the default MCG_CAP: x2APIC capable, no CMCI
    /// LVT, no EOI-broadcast suppression (version register 0x50014), KVM's
    /// bus cycle and periodic floor, MAXPHYADDR 46.
    ///
    /// ```
    /// use vm_lapic::Config;
    ///
    /// let cfg = Config { cmci: true, ..Config::new(1) };
    /// assert!(!cfg.bsp); // only APIC ID 0 is the BSP by default
    /// ```
    pub fn new(apic_id: u32) -> Self {
        Self {
            apic_id,
            bsp: apic_id == 0,
            x2apic: true,
            eoi_broadcast_suppression: false,
            cmci: false,
            bus_cycle_ns: DEFAULT_BUS_CYCLE_NS,
            min_periodic_ns: DEFAULT_MIN_PERIODIC_NS,
            phys_addr_bits: 46,
        }
    }
}

/// A [`Config`] the model cannot honour.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// APIC ID above [`MAX_APIC_ID`].
    #[error("APIC ID {0} is above {MAX_APIC_ID}")]
    ApicId(u32),
    /// Bus cycle outside 1..=[`MAX_BUS_CYCLE_NS`].
    #[error("APIC bus cycle {0} ns is outside 1..={MAX_BUS_CYCLE_NS}")]
    BusCycle(u64),
    /// MAXPHYADDR outside 32..=52.
    #[error("MAXPHYADDR {0} is outside 32..=52")]
    PhysAddrBits(u8),
}

/// Whether `msr` is one [`LocalApic::read_msr`] / [`LocalApic::write_msr`]
/// implement: IA32_APIC_BASE, IA32_TSC_DEADLINE, 0x800-0x8FF and the
/// Hyper-V EOI/ICR/TPR.
///
/// ```
/// assert!(vm_lapic::handles_msr(0x80B)); // x2APIC EOI
/// assert!(vm_lapic::handles_msr(vm_lapic::HV_X64_MSR_EOI));
/// assert!(!vm_lapic::handles_msr(vm_lapic::HV_X64_MSR_VP_ASSIST_PAGE)); // hv-enlightenments' Vp
/// ```
pub fn handles_msr(msr: u32) -> bool {
    matches!(
        msr,
        MSR_APIC_BASE | MSR_TSC_DEADLINE | MSR_X2APIC_FIRST
            ..=MSR_X2APIC_LAST | HV_X64_MSR_EOI | HV_X64_MSR_ICR | HV_X64_MSR_TPR
    )
}

/// A virtual local APIC.
///
/// Not internally synchronised: the VMM keeps each behind its own lock.
pub struct LocalApic {
    cfg: Config,
    clock: Arc<dyn Clock>,
    apic_base: u64,
    mode: ApicMode,
    xapic_id: u32,
    tpr: u32,
    ppr: u32,
    ldr: u32,
    dfr: u32,
    svr: u32,
    esr: u32,
    esr_pending: u32,
    icr_low: u32,
    icr_high: u32,
    lvt: [u32; LVT_COUNT],
    irr: VectorBitmap,
    isr: VectorBitmap,
    tmr: VectorBitmap,
    auto_eoi: VectorBitmap,
    /// Pending vectors delivered with [`LocalApic::deliver_auto_eoi`]:
    /// their next acknowledge skips the ISR once.
    auto_eoi_once: VectorBitmap,
    timer: Timer,
    /// Last vector moved to the ISR with no EOI since (KVM
    /// `highest_isr_cache`).
    lazy_known: Option<u8>,
    /// Vector whose EOI the guest may skip, set by `arm_lazy_eoi`.
    lazy_armed: Option<u8>,
}

impl core::fmt::Debug for LocalApic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LocalApic")
            .field("apic_id", &self.cfg.apic_id)
            .field("mode", &self.mode)
            .field("tpr", &self.tpr)
            .field("ppr", &self.ppr)
            .field("irr", &self.irr)
            .field("isr", &self.isr)
            .finish_non_exhaustive()
    }
}

impl LocalApic {
    /// A local APIC in its power-up state (xAPIC mode, software-disabled,
    /// all LVTs masked).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{ApicMode, Config, ConfigError, LocalApic, ManualClock, MAX_APIC_ID};
    ///
    /// let clock = Arc::new(ManualClock::new(2_000_000)); // 2 GHz guest TSC
    /// let apic = LocalApic::new(Config::new(0), clock.clone())?;
    /// assert_eq!((apic.mode(), apic.software_enabled()), (ApicMode::XApic, false));
    /// let too_large = Config::new(MAX_APIC_ID + 1);
    /// assert_eq!(LocalApic::new(too_large, clock).err(), Some(ConfigError::ApicId(MAX_APIC_ID + 1)));
    /// # Ok::<(), ConfigError>(())
    /// ```
    pub fn new(cfg: Config, clock: Arc<dyn Clock>) -> Result<Self, ConfigError> {
        if cfg.apic_id > MAX_APIC_ID {
            return Err(ConfigError::ApicId(cfg.apic_id));
        }
        if !(1..=MAX_BUS_CYCLE_NS).contains(&cfg.bus_cycle_ns) {
            return Err(ConfigError::BusCycle(cfg.bus_cycle_ns));
        }
        if !PHYS_ADDR_BITS.contains(&cfg.phys_addr_bits) {
            return Err(ConfigError::PhysAddrBits(cfg.phys_addr_bits));
        }
        let mut apic = Self {
            cfg,
            clock,
            apic_base: 0,
            mode: ApicMode::XApic,
            xapic_id: 0,
            tpr: 0,
            ppr: 0,
            ldr: 0,
            dfr: DFR_RESET,
            svr: SVR_RESET,
            esr: 0,
            esr_pending: 0,
            icr_low: 0,
            icr_high: 0,
            lvt: [LVT_RESET; LVT_COUNT],
            irr: VectorBitmap::EMPTY,
            isr: VectorBitmap::EMPTY,
            tmr: VectorBitmap::EMPTY,
            auto_eoi: VectorBitmap::EMPTY,
            auto_eoi_once: VectorBitmap::EMPTY,
            timer: Timer::default(),
            lazy_known: None,
            lazy_armed: None,
        };
        apic.reset();
        Ok(apic)
    }

    /// Power-on reset (KVM `kvm_lapic_reset(vcpu, false)`): default base,
    /// xAPIC mode, ID from the config, registers at their reset values.
    pub fn reset(&mut self) {
        self.apic_base = APIC_DEFAULT_BASE | APIC_BASE_ENABLE;
        if self.cfg.bsp {
            self.apic_base |= APIC_BASE_BSP;
        }
        self.mode = ApicMode::XApic;
        self.xapic_id = self.cfg.apic_id & XAPIC_ID_MASK;
        self.reset_registers();
    }

    /// INIT (KVM `kvm_lapic_reset(vcpu, true)`): registers back to reset
    /// values, keeping the mode, base and APIC ID. Returns the identity to
    /// pass to [`crate::Topology::update`]; the timer is stopped.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let identity = apic.init_reset();
    /// assert!(!identity.software_enabled);
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn init_reset(&mut self) -> ApicIdentity {
        self.reset_registers();
        self.identity()
    }

    fn reset_registers(&mut self) {
        self.tpr = 0;
        self.ldr = if self.mode == ApicMode::X2Apic {
            x2apic_ldr(self.cfg.apic_id)
        } else {
            0
        };
        self.dfr = DFR_RESET;
        self.svr = SVR_RESET;
        self.esr = 0;
        self.esr_pending = 0;
        self.icr_low = 0;
        self.icr_high = 0;
        self.lvt = [LVT_RESET; LVT_COUNT];
        self.irr.clear_all();
        self.isr.clear_all();
        self.auto_eoi_once.clear_all();
        self.tmr.clear_all();
        self.timer = Timer::default();
        self.lazy_known = None;
        self.lazy_armed = None;
        self.update_ppr();
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Current mode.
    pub fn mode(&self) -> ApicMode {
        self.mode
    }

    /// IA32_APIC_BASE.
    pub fn apic_base(&self) -> u64 {
        self.apic_base
    }

    /// Guest-physical address of the xAPIC MMIO page.
    pub fn mmio_base(&self) -> u64 {
        self.apic_base & APIC_BASE_ADDR_MASK & self.phys_mask()
    }

    /// What destination resolution needs to know about this APIC.
    pub fn identity(&self) -> ApicIdentity {
        ApicIdentity {
            mode: self.mode,
            initial_id: self.cfg.apic_id,
            apic_id: if self.mode == ApicMode::X2Apic {
                self.cfg.apic_id
            } else {
                self.xapic_id
            },
            ldr: self.ldr,
            dfr: self.dfr,
            software_enabled: self.software_enabled(),
        }
    }

    /// SVR bit 8.
    pub fn software_enabled(&self) -> bool {
        self.svr & SVR_ENABLE != 0
    }

    /// Task priority register.
    pub fn tpr(&self) -> u8 {
        // TPR holds 8 bits.
        (self.tpr & TPR_MASK) as u8
    }

    /// Processor priority register.
    pub fn ppr(&self) -> u8 {
        // PPR holds 8 bits.
        (self.ppr & TPR_MASK) as u8
    }

    /// Interrupt request register.
    pub fn irr(&self) -> &VectorBitmap {
        &self.irr
    }

    /// In-service register.
    pub fn isr(&self) -> &VectorBitmap {
        &self.isr
    }

    /// Trigger mode register.
    pub fn tmr(&self) -> &VectorBitmap {
        &self.tmr
    }

    /// SVR bits 7:0: the vector to inject when an interrupt the VMM
    /// committed to is no longer deliverable at injection time (SDM 10.9);
    /// it is never entered in the ISR.
    pub fn spurious_vector(&self) -> u8 {
        // The mask keeps 8 bits.
        (self.svr & VECTOR_MASK) as u8
    }

    /// The value of one LVT register.
    pub fn lvt(&self, lvt: Lvt) -> u32 {
        self.lvt[lvt as usize]
    }

    /// CR8 as the guest sees it (TPR bits 7:4), for KVM's `kvm_run.cr8`.
    pub fn cr8(&self) -> u64 {
        u64::from(self.tpr >> 4)
    }

    /// Sets the TPR from CR8 (KVM `kvm_lapic_set_tpr`).
    pub fn set_cr8(&mut self, cr8: u64) {
        // Only the low 4 bits of CR8 are defined.
        self.set_tpr(((cr8 & 0xF) as u32) << 4);
    }

    /// Replaces the set of AutoEOI vectors (the VMM's SynIC SINTs with the
    /// AutoEOI flag): acknowledging one skips the ISR.
    pub fn set_auto_eoi_vectors(&mut self, vectors: VectorBitmap) {
        self.auto_eoi = vectors;
    }

    /// The AutoEOI vectors.
    pub fn auto_eoi_vectors(&self) -> &VectorBitmap {
        &self.auto_eoi
    }

    fn phys_mask(&self) -> u64 {
        (1u64 << self.cfg.phys_addr_bits) - 1
    }

    fn svr_writable(&self) -> u32 {
        let mut mask = VECTOR_MASK | SVR_ENABLE | SVR_FOCUS_DISABLE;
        if self.cfg.eoi_broadcast_suppression {
            mask |= SVR_SUPPRESS_EOI_BROADCAST;
        }
        mask
    }

    /// The version register (KVM `kvm_apic_set_version`): version 0x14,
    /// the last LVT index, and bit 24 with EOI-broadcast suppression.
    fn version(&self) -> u32 {
        let nr_lvt: u32 = if self.cfg.cmci {
            LVT_COUNT as u32
        } else {
            LVT_COUNT as u32 - 1
        };
        let mut v = VERSION | ((nr_lvt - 1) << LVR_MAX_LVT_SHIFT);
        if self.cfg.eoi_broadcast_suppression {
            v |= LVR_EOI_BROADCAST_SUPPRESSION;
        }
        v
    }

    // ---- priority -------------------------------------------------------

    /// PPR from TPR and the highest in-service vector (SDM 10.8.3.1, KVM
    /// `__apic_update_ppr`).
    fn update_ppr(&mut self) {
        let isrv = self.isr.highest().map_or(0, u32::from);
        self.ppr = if (self.tpr & PRIORITY_CLASS_MASK) >= (isrv & PRIORITY_CLASS_MASK) {
            self.tpr & TPR_MASK
        } else {
            isrv & PRIORITY_CLASS_MASK
        };
    }

    fn set_tpr(&mut self, tpr: u32) {
        self.tpr = tpr & TPR_MASK;
        self.update_ppr();
    }

    /// The highest vector in the IRR whose priority class is above the
    /// PPR: what the vCPU should take next (KVM
    /// `apic_has_interrupt_for_ppr`). `None` while the APIC is disabled.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.deliver(&vm_lapic::Interrupt::fixed(0x50));
    /// assert_eq!(apic.pending(), Some(0x50));
    /// let _ = apic.write_mmio(0x80, &0x60u32.to_le_bytes()); // TPR 0x60 masks class 5
    /// assert_eq!(apic.pending(), None);
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    #[inline]
    pub fn pending(&self) -> Option<u8> {
        if self.mode == ApicMode::Disabled {
            return None;
        }
        let v = self.irr.highest()?;
        (u32::from(v) & PRIORITY_CLASS_MASK > self.ppr).then_some(v)
    }

    /// The vCPU took `vector` (it was injected): move it from the IRR to
    /// the ISR, or only clear the IRR for an AutoEOI vector (KVM
    /// `kvm_apic_ack_interrupt`). Returns false, changing nothing, if the
    /// vector was not requested.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.deliver(&vm_lapic::Interrupt::fixed(0x40));
    /// assert!(apic.acknowledge(0x40)); // injected: now in service
    /// assert!(apic.isr().test(0x40) && !apic.irr().test(0x40));
    /// assert!(!apic.acknowledge(0x41)); // never requested
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    #[inline]
    pub fn acknowledge(&mut self, vector: u8) -> bool {
        if !self.irr.clear(vector) {
            return false;
        }
        let once = self.auto_eoi_once.clear(vector);
        if !(once || self.auto_eoi.test(vector)) {
            self.isr.set(vector);
            self.lazy_known = Some(vector);
            self.update_ppr();
        }
        true
    }

    /// [`LocalApic::pending`] then [`LocalApic::acknowledge`].
    pub fn acknowledge_pending(&mut self) -> Option<u8> {
        let v = self.pending()?;
        self.acknowledge(v).then_some(v)
    }

    /// EOI: clears the highest in-service vector (KVM `apic_set_eoi`).
    /// `None` if nothing was in service.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.deliver(&vm_lapic::Interrupt::fixed(0x40));
    /// assert_eq!(apic.acknowledge_pending(), Some(0x40));
    /// let eoi = apic.eoi().expect("0x40 was in service");
    /// assert_eq!((eoi.vector, eoi.notify_ioapic), (0x40, false)); // edge: no IOAPIC EOI
    /// assert_eq!(apic.eoi(), None);
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    #[inline]
    pub fn eoi(&mut self) -> Option<Eoi> {
        let v = self.isr.highest()?;
        Some(self.eoi_vector(v))
    }

    fn eoi_vector(&mut self, vector: u8) -> Eoi {
        self.isr.clear(vector);
        self.update_ppr();
        self.lazy_known = None;
        self.lazy_armed = None;
        let level_triggered = self.tmr.test(vector);
        Eoi {
            vector,
            level_triggered,
            notify_ioapic: level_triggered && self.svr & SVR_SUPPRESS_EOI_BROADCAST == 0,
        }
    }

    fn eoi_outcome(&mut self) -> Outcome {
        match self.eoi() {
            Some(e) => Outcome::Effect(Effect::Eoi(e)),
            None => Outcome::Done,
        }
    }

    // ---- lazy EOI ---------------------------------------------------------

    /// Before entering the guest: whether `apic_assist` bit 0 ("no EOI
    /// required") may be set now. True only if nothing is pending in the
    /// IRR, the highest in-service vector is the one acknowledged last with
    /// no EOI since, and it is edge-triggered and not AutoEOI (KVM
    /// `apic_sync_pv_eoi_to_guest`). Every call re-decides: on false the
    /// VMM must leave the bit clear.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.deliver(&vm_lapic::Interrupt::fixed(0x40));
    /// apic.acknowledge(0x40);
    /// assert!(apic.arm_lazy_eoi()); // set apic_assist bit 0, enter the guest
    /// // After the exit: the guest had cleared the bit instead of writing EOI.
    /// let eoi = apic.complete_lazy_eoi(true);
    /// assert_eq!(eoi.map(|e| e.vector), Some(0x40));
    /// assert!(apic.isr().is_empty());
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn arm_lazy_eoi(&mut self) -> bool {
        self.lazy_armed = None;
        if !self.irr.is_empty() {
            return false;
        }
        let Some(v) = self.lazy_known else {
            return false;
        };
        if self.isr.highest() != Some(v) || self.tmr.test(v) || self.auto_eoi.test(v) {
            return false;
        }
        self.lazy_armed = Some(v);
        true
    }

    /// After leaving the guest, before anything else touches this APIC:
    /// the VMM read and cleared `apic_assist` bit 0; `guest_cleared` says
    /// whether the guest had cleared it. If it had, the armed vector's EOI
    /// is performed here (KVM `apic_sync_pv_eoi_from_guest`). A guest that
    /// wrote the EOI itself instead already disarmed it: nothing happens.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.deliver(&vm_lapic::Interrupt::fixed(0x40));
    /// apic.acknowledge(0x40);
    /// assert!(apic.arm_lazy_eoi());
    /// // The guest left the bit set: it has not finished the handler.
    /// assert_eq!(apic.complete_lazy_eoi(false), None);
    /// assert!(apic.isr().test(0x40));
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn complete_lazy_eoi(&mut self, guest_cleared: bool) -> Option<Eoi> {
        let v = self.lazy_armed.take()?;
        if !guest_cleared || !self.isr.test(v) {
            return None;
        }
        Some(self.eoi_vector(v))
    }

    /// Whether a lazy EOI is armed.
    pub fn lazy_eoi_armed(&self) -> bool {
        self.lazy_armed.is_some()
    }

    // ---- acceptance -------------------------------------------------------

    /// Accepts an interrupt message addressed to this APIC (KVM
    /// `__apic_accept_irq`). Fixed and lowest-priority vectors below 16 are
    /// refused with ESR "receive illegal vector" (SDM 10.5.3); a
    /// software-disabled APIC refuses them too but still takes NMI, SMI,
    /// INIT and SIPI (SDM 10.4.7.2). Level-triggered fixed,
    /// lowest-priority and INIT messages with the level de-asserted are
    /// ignored ([`Interrupt::is_level_deassert`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, Delivery, Interrupt, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// // Software-disabled at power-up: fixed interrupts are refused.
    /// assert_eq!(apic.deliver(&Interrupt::fixed(0x40)), Delivery::Ignored);
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// assert_eq!(apic.deliver(&Interrupt::fixed(0x40)), Delivery::Accepted);
    /// assert_eq!(apic.deliver(&Interrupt::fixed(0x40)), Delivery::Coalesced);
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    #[inline]
    pub fn deliver(&mut self, irq: &Interrupt) -> Delivery {
        if self.mode == ApicMode::Disabled {
            return Delivery::Ignored;
        }
        match irq.delivery_mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                // KVM drops a level-triggered de-assert before anything else.
                if irq.is_level_deassert() || !self.software_enabled() {
                    return Delivery::Ignored;
                }
                if irq.vector < FIRST_LEGAL_VECTOR {
                    self.log_error(ESR_RECEIVE_ILLEGAL_VECTOR);
                    return Delivery::Ignored;
                }
                self.tmr
                    .assign(irq.vector, irq.trigger_mode == TriggerMode::Level);
                if self.irr.set(irq.vector) {
                    Delivery::Coalesced
                } else {
                    Delivery::Accepted
                }
            }
            DeliveryMode::Smi => Delivery::Smi,
            DeliveryMode::Nmi => Delivery::Nmi,
            DeliveryMode::Init => {
                // INIT level de-assert is a no-op on P4 and later.
                if irq.is_level_deassert() {
                    Delivery::Ignored
                } else {
                    Delivery::Init
                }
            }
            DeliveryMode::StartUp => Delivery::StartUp(irq.vector),
            DeliveryMode::ExtInt => Delivery::ExtInt,
            DeliveryMode::Reserved => Delivery::Ignored,
        }
    }

    /// Accepts an edge-triggered fixed interrupt on `vector` with AutoEOI:
    /// when the vCPU takes it ([`LocalApic::acknowledge`]) it leaves the
    /// IRR without entering the ISR, so no EOI follows and the PPR does
    /// not rise (TLFS SINTx AutoEOI; KVM `kvm_apic_ack_interrupt` for a
    /// vector in the SynIC's `auto_eoi_bitmap`). For a VMM that knows per
    /// delivery that the source is an AutoEOI SINT (a SynIC interrupt
    /// with its `auto_eoi` flag) instead of keeping
    /// [`LocalApic::set_auto_eoi_vectors`] in step with the SINTs. The
    /// mark lasts until this vector is next acknowledged or the APIC is
    /// reset; a plain delivery of the same vector before then coalesces
    /// with it, as the IRR does. Not part of [`LocalApic::save_state`]
    /// (KVM's `kvm_lapic_state` has no such bit).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, Delivery, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// assert_eq!(apic.deliver_auto_eoi(0x52), Delivery::Accepted);
    /// assert_eq!(apic.acknowledge_pending(), Some(0x52));
    /// assert!(apic.isr().is_empty()); // no EOI expected
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn deliver_auto_eoi(&mut self, vector: u8) -> Delivery {
        let d = self.deliver(&Interrupt::fixed(vector));
        if matches!(d, Delivery::Accepted | Delivery::Coalesced) {
            self.auto_eoi_once.set(vector);
        }
        d
    }

    /// Accepts an edge-triggered fixed interrupt on each of `vectors`, as
    /// [`LocalApic::deliver`] of [`Interrupt::fixed`] one at a time: for a
    /// batch of posted vectors (a posted-interrupt descriptor's PIR, a PV
    /// IPI queue) moved into the IRR at once. Returns whether any vector
    /// was newly set in the IRR ([`Delivery::Accepted`]); coalesced and
    /// refused vectors (0..15: ESR illegal vector) do not count.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock, regs};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let svr = regs::SVR_RESET | regs::SVR_ENABLE;
    /// let _ = apic.write_mmio(regs::SVR.into(), &svr.to_le_bytes());
    /// assert!(apic.deliver_fixed_vectors([0x41, 0x40]));
    /// assert!(!apic.deliver_fixed_vectors([0x40])); // already pending
    /// assert_eq!(apic.pending(), Some(0x41));
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn deliver_fixed_vectors(&mut self, vectors: impl IntoIterator<Item = u8>) -> bool {
        vectors.into_iter().fold(false, |any, v| {
            let accepted = self.deliver(&Interrupt::fixed(v)) == Delivery::Accepted;
            any | accepted
        })
    }

    /// Signals a local interrupt source through its LVT (KVM
    /// `kvm_apic_local_deliver`): LINT0/LINT1 pins, thermal, performance
    /// counters, CMCI. Masked or disabled: [`Delivery::Ignored`].
    pub fn local_interrupt(&mut self, lvt: Lvt) -> Delivery {
        if self.mode == ApicMode::Disabled || (lvt == Lvt::Cmci && !self.cfg.cmci) {
            return Delivery::Ignored;
        }
        let reg = self.lvt[lvt as usize];
        if reg & LVT_MASKED != 0 {
            return Delivery::Ignored;
        }
        let delivery_mode = match lvt {
            // Timer and error LVTs have no delivery-mode field.
            Lvt::Timer | Lvt::Error => DeliveryMode::Fixed,
            _ => DeliveryMode::from_reg(reg),
        };
        let trigger_mode = if matches!(lvt, Lvt::Lint0 | Lvt::Lint1) && reg & TRIGGER_LEVEL != 0 {
            TriggerMode::Level
        } else {
            TriggerMode::Edge
        };
        self.deliver(&Interrupt {
            // The mask keeps 8 bits.
            vector: (reg & VECTOR_MASK) as u8,
            delivery_mode,
            trigger_mode,
            level_assert: true,
        })
    }

    /// Whether 8259 PIC interrupts reach this vCPU: APIC disabled, or LINT0
    /// unmasked in ExtINT mode (KVM `kvm_apic_accept_pic_intr`).
    pub fn accepts_pic_interrupt(&self) -> bool {
        let lint0 = self.lvt[Lvt::Lint0 as usize];
        self.mode == ApicMode::Disabled
            || (lint0 & LVT_MASKED == 0 && DeliveryMode::from_reg(lint0) == DeliveryMode::ExtInt)
    }

    /// Records an APIC error for the next ESR write and raises the error
    /// LVT (SDM 10.5.3). The error vector is set in the IRR directly so an
    /// illegal error vector cannot recurse.
    fn log_error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        let lvt = self.lvt[Lvt::Error as usize];
        // The mask keeps 8 bits.
        let v = (lvt & VECTOR_MASK) as u8;
        if lvt & LVT_MASKED == 0 && self.software_enabled() && v >= FIRST_LEGAL_VECTOR {
            self.tmr.clear(v);
            self.irr.set(v);
        }
    }

    fn send_ipi(&mut self, ipi: Ipi) -> Outcome {
        if matches!(
            ipi.delivery_mode,
            DeliveryMode::Fixed | DeliveryMode::LowestPriority
        ) && ipi.vector < FIRST_LEGAL_VECTOR
        {
            // SDM 10.5.3: "send illegal vector"; the message is not sent.
            self.log_error(ESR_SEND_ILLEGAL_VECTOR);
            return Outcome::Done;
        }
        if ipi.shorthand == Shorthand::SelfOnly {
            let d = self.deliver(&ipi.interrupt());
            return Outcome::Effect(Effect::SelfDelivered(d));
        }
        Outcome::Effect(Effect::SendIpi(ipi))
    }

    // ---- timer ------------------------------------------------------------

    fn timer_mode(&self) -> TimerMode {
        TimerMode::from_lvt(self.lvt[Lvt::Timer as usize])
    }

    fn count_to_ns(&self, count: u64) -> u64 {
        count
            .saturating_mul(self.cfg.bus_cycle_ns)
            .saturating_mul(divisor(self.timer.tdcr))
    }

    fn counting_period(&self) -> u64 {
        let p = self.count_to_ns(u64::from(self.timer.initial));
        if p != 0 && self.timer_mode() == TimerMode::Periodic {
            p.max(self.cfg.min_periodic_ns)
        } else {
            p
        }
    }

    /// Starts counting down from the initial count (KVM `start_apic_timer`).
    fn start_count(&mut self) -> Option<u64> {
        let now = self.clock.now_ns();
        self.timer.period_ns = self.counting_period();
        self.timer.deadline_ns = match self.timer_mode() {
            TimerMode::OneShot | TimerMode::Periodic if self.timer.period_ns != 0 => {
                Some(now.saturating_add(self.timer.period_ns))
            }
            _ => None,
        };
        self.timer.deadline_ns
    }

    /// LVT timer mode changed (KVM `apic_update_lvtt`): entering or leaving
    /// TSC-deadline mode disarms the timer and clears TMICT.
    fn timer_mode_changed(&mut self, old: TimerMode) -> Option<Effect> {
        let new = self.timer_mode();
        if old == new {
            return None;
        }
        if (old == TimerMode::TscDeadline) != (new == TimerMode::TscDeadline) {
            self.timer = Timer {
                tdcr: self.timer.tdcr,
                ..Timer::default()
            };
            return Some(Effect::Timer(None));
        }
        if new == TimerMode::Reserved {
            self.timer.deadline_ns = None;
            return Some(Effect::Timer(None));
        }
        self.timer.period_ns = self.counting_period();
        None
    }

    /// The current-count register (KVM `apic_get_tmcct`): 0 when not
    /// counting, else the ticks left in this period.
    fn current_count(&self) -> u32 {
        if !matches!(self.timer_mode(), TimerMode::OneShot | TimerMode::Periodic)
            || self.timer.initial == 0
            || self.timer.period_ns == 0
        {
            return 0;
        }
        let Some(deadline) = self.timer.deadline_ns else {
            return 0;
        };
        let now = self.clock.now_ns();
        let period = self.timer.period_ns;
        let remaining = if now < deadline {
            deadline - now
        } else if self.timer_mode() == TimerMode::Periodic {
            // Not polled yet: the count has wrapped into a later period.
            period - (now - deadline) % period
        } else {
            0
        };
        let tick = self.count_to_ns(1).max(1);
        u32::try_from(remaining / tick)
            .unwrap_or(u32::MAX)
            .min(self.timer.initial)
    }

    /// When the timer next expires (absolute [`Clock::now_ns`] time).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let mut apic = LocalApic::new(Config::new(0), clock.clone())?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.write_mmio(0x3E0, &0xBu32.to_le_bytes()); // divide by 1
    /// let _ = apic.write_mmio(0x320, &0x30u32.to_le_bytes()); // one-shot, vector 0x30
    /// let _ = apic.write_mmio(0x380, &1000u32.to_le_bytes()); // 1000 ticks of 1 ns
    /// assert_eq!(apic.next_deadline(), Some(1000));
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn next_deadline(&self) -> Option<u64> {
        self.timer.deadline_ns
    }

    /// Call when the host timer for [`LocalApic::next_deadline`] fires (or
    /// any time): fires an expired timer through the LVT timer and moves a
    /// periodic timer to its next period (ticks missed while the VMM was
    /// late are merged into one interrupt).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let mut apic = LocalApic::new(Config::new(0), clock.clone())?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let _ = apic.write_mmio(0x3E0, &0xBu32.to_le_bytes()); // divide by 1
    /// let _ = apic.write_mmio(0x320, &0x30u32.to_le_bytes()); // one-shot, vector 0x30
    /// let _ = apic.write_mmio(0x380, &1000u32.to_le_bytes());
    /// clock.advance(1000); // the host timer fired
    /// let poll = apic.poll_timer();
    /// assert!(poll.expired && poll.next_deadline.is_none());
    /// assert_eq!(apic.pending(), Some(0x30));
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn poll_timer(&mut self) -> TimerPoll {
        let now = self.clock.now_ns();
        let Some(deadline) = self.timer.deadline_ns else {
            return TimerPoll {
                expired: false,
                next_deadline: None,
            };
        };
        if now < deadline {
            return TimerPoll {
                expired: false,
                next_deadline: Some(deadline),
            };
        }
        let _ = self.local_interrupt(Lvt::Timer);
        let period = self.timer.period_ns;
        self.timer.deadline_ns = match self.timer_mode() {
            TimerMode::Periodic if period != 0 => {
                let missed = (now - deadline) / period;
                Some(deadline.saturating_add(missed.saturating_add(1).saturating_mul(period)))
            }
            TimerMode::TscDeadline => {
                // SDM 10.5.4.1: the timer disarms and IA32_TSC_DEADLINE reads 0.
                self.timer.tsc_deadline = 0;
                None
            }
            _ => None,
        };
        TimerPoll {
            expired: true,
            next_deadline: self.timer.deadline_ns,
        }
    }

    fn write_tsc_deadline(&mut self, value: u64) -> Outcome {
        // KVM `kvm_set_lapic_tscdeadline_msr`: ignored unless the APIC is
        // enabled and in TSC-deadline mode.
        if self.mode == ApicMode::Disabled || self.timer_mode() != TimerMode::TscDeadline {
            return Outcome::Done;
        }
        self.timer.tsc_deadline = value;
        self.timer.deadline_ns = (value != 0).then(|| self.clock.tsc_to_ns(value));
        Outcome::Effect(Effect::Timer(self.timer.deadline_ns))
    }

    fn read_tsc_deadline(&self) -> u64 {
        if self.mode == ApicMode::Disabled || self.timer_mode() != TimerMode::TscDeadline {
            0
        } else {
            self.timer.tsc_deadline
        }
    }

    fn write_divide(&mut self, value: u32) -> Outcome {
        let old_div = divisor(self.timer.tdcr);
        self.timer.set_tdcr(value);
        let new_div = divisor(self.timer.tdcr);
        if old_div == new_div || self.timer.period_ns == 0 {
            return Outcome::Done;
        }
        // KVM `update_target_expiration`: scale what is left of this count.
        let now = self.clock.now_ns();
        self.timer.period_ns = self.counting_period();
        if let Some(d) = self.timer.deadline_ns {
            let left =
                u128::from(d.saturating_sub(now)) * u128::from(new_div) / u128::from(old_div);
            let left = u64::try_from(left).unwrap_or(u64::MAX);
            self.timer.deadline_ns = Some(now.saturating_add(left));
        }
        Outcome::Effect(Effect::Timer(self.timer.deadline_ns))
    }

    // ---- registers ----------------------------------------------------------

    /// Reads register `reg` (a 16-byte aligned offset) as the current mode
    /// allows (KVM `kvm_lapic_readable_reg_mask`). `None`: not readable.
    fn reg_read(&self, reg: u32) -> Option<u32> {
        let x2 = self.mode == ApicMode::X2Apic;
        let bitmap_index = |base: u32| ((reg - base) / REG_ALIGN) as usize;
        Some(match reg {
            ID if x2 => self.cfg.apic_id,
            ID => self.xapic_id << XAPIC_ID_SHIFT,
            LVR => self.version(),
            TPR => self.tpr,
            // Arbitration priority is not modelled; KVM reads 0 as well.
            APR if !x2 => 0,
            PPR => self.ppr,
            LDR => self.ldr,
            DFR if !x2 => self.dfr,
            SVR => self.svr,
            r if (ISR..ISR + BITMAP_SPAN).contains(&r) => self.isr.reg32(bitmap_index(ISR)),
            r if (TMR..TMR + BITMAP_SPAN).contains(&r) => self.tmr.reg32(bitmap_index(TMR)),
            r if (IRR..IRR + BITMAP_SPAN).contains(&r) => self.irr.reg32(bitmap_index(IRR)),
            ESR => self.esr,
            LVT_CMCI if !self.cfg.cmci => return None,
            ICR_LOW => self.icr_low,
            ICR_HIGH if !x2 => self.icr_high,
            TIMER_INITIAL => self.timer.initial,
            TIMER_CURRENT => self.current_count(),
            TIMER_DIVIDE => self.timer.tdcr,
            r => self.lvt[Lvt::from_reg(r)? as usize],
        })
    }

    /// Writes register `reg` (KVM `kvm_lapic_reg_write`). In x2APIC mode
    /// read-only, non-existent and reserved-bit writes are #GP (SDM
    /// 10.12.1.3); the MMIO path drops them instead.
    fn reg_write(&mut self, reg: u32, val: u32) -> Outcome {
        let x2 = self.mode == ApicMode::X2Apic;
        match reg {
            ID if !x2 => {
                self.xapic_id = val >> XAPIC_ID_SHIFT;
                self.topology_effect()
            }
            TPR => {
                if x2 && val & !TPR_MASK != 0 {
                    return Outcome::Gp;
                }
                self.set_tpr(val);
                Outcome::Done
            }
            EOI => {
                // SDM table 10-6: a non-zero x2APIC EOI write is #GP.
                if x2 && val != 0 {
                    return Outcome::Gp;
                }
                self.eoi_outcome()
            }
            LDR if !x2 => {
                self.ldr = val & LDR_XAPIC_MASK;
                self.topology_effect()
            }
            DFR if !x2 => {
                self.dfr = val | DFR_RESERVED_ONES;
                self.topology_effect()
            }
            SVR => {
                let mask = self.svr_writable();
                if x2 && val & !mask != 0 {
                    return Outcome::Gp;
                }
                let was = self.software_enabled();
                self.svr = val & mask;
                if !self.software_enabled() {
                    // SDM 10.4.7.2: software disable masks every LVT.
                    for l in &mut self.lvt {
                        *l |= LVT_MASKED;
                    }
                }
                if was != self.software_enabled() {
                    self.topology_effect()
                } else {
                    Outcome::Done
                }
            }
            ICR_LOW if !x2 => {
                self.icr_low = val & ICR_LOW_STORED;
                self.send_ipi(Ipi::from_xapic(self.icr_low, self.icr_high))
            }
            ICR_HIGH if !x2 => {
                self.icr_high = val & ICR_HIGH_XAPIC_MASK;
                Outcome::Done
            }
            TIMER_INITIAL => {
                if self.timer_mode() == TimerMode::TscDeadline {
                    return Outcome::Done;
                }
                self.timer.initial = val;
                Outcome::Effect(Effect::Timer(self.start_count()))
            }
            TIMER_DIVIDE => {
                if x2 && val & !TDCR_MASK != 0 {
                    return Outcome::Gp;
                }
                self.write_divide(val)
            }
            ESR => {
                if x2 && val != 0 {
                    return Outcome::Gp;
                }
                // SDM 10.5.3: a write latches the errors seen since the last one.
                self.esr = self.esr_pending;
                self.esr_pending = 0;
                Outcome::Done
            }
            SELF_IPI if x2 => {
                if val & !VECTOR_MASK != 0 {
                    return Outcome::Gp;
                }
                let mut ipi = Ipi::from_x2apic(0);
                // The mask keeps 8 bits.
                ipi.vector = (val & VECTOR_MASK) as u8;
                ipi.level_assert = true;
                ipi.shorthand = Shorthand::SelfOnly;
                self.send_ipi(ipi)
            }
            r => match Lvt::from_reg(r) {
                Some(Lvt::Cmci) if !self.cfg.cmci => Outcome::Gp,
                Some(lvt) => {
                    if x2 && val & !lvt.accepted() != 0 {
                        return Outcome::Gp;
                    }
                    let mut v = val & lvt.writable();
                    if !self.software_enabled() {
                        v |= LVT_MASKED;
                    }
                    let old_mode = self.timer_mode();
                    self.lvt[lvt as usize] = v;
                    if lvt == Lvt::Timer {
                        if let Some(e) = self.timer_mode_changed(old_mode) {
                            return Outcome::Effect(e);
                        }
                    }
                    Outcome::Done
                }
                // Read-only or non-existent.
                None => Outcome::Gp,
            },
        }
    }

    fn topology_effect(&self) -> Outcome {
        Outcome::Effect(Effect::Topology(self.identity()))
    }

    /// A guest read of the xAPIC MMIO page at `offset` (0..4096) into
    /// `data`. Reads of 1, 2 or 4 bytes within one register return its
    /// bytes; anything else (other sizes, crossing a register, unreadable
    /// registers, offsets past the page) reads zeros. While the APIC is
    /// disabled or in x2APIC mode the page reads all ones (KVM's
    /// `KVM_X86_QUIRK_LAPIC_MMIO_HOLE` behaviour).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock};
    ///
    /// let apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let mut version = [0u8; 4];
    /// apic.read_mmio(0x30, &mut version); // offset from the MMIO base
    /// assert_eq!(u32::from_le_bytes(version), 0x0005_0014);
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn read_mmio(&self, offset: u64, data: &mut [u8]) {
        if self.mode != ApicMode::XApic {
            data.fill(u8::MAX);
            return;
        }
        data.fill(0);
        if offset >= MMIO_PAGE_SIZE {
            return;
        }
        // offset < 4096 fits u32.
        let offset = offset as u32;
        let within = (offset % REG_ALIGN) as usize;
        let reg = offset - offset % REG_ALIGN;
        if within + data.len() > REG_WIDTH || reg > LAST_REG {
            return;
        }
        if let Some(v) = self.reg_read(reg) {
            let bytes = v.to_le_bytes();
            if let Some(src) = bytes.get(within..within + data.len()) {
                data.copy_from_slice(src);
            }
        }
    }

    /// A guest write to the xAPIC MMIO page. Only 4-byte writes at a
    /// 16-byte aligned offset take effect (SDM 10.4.1, KVM
    /// `apic_mmio_write`); others, and all writes while the APIC is
    /// disabled or in x2APIC mode, are dropped. Never [`Outcome::Gp`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, Effect, LocalApic, ManualClock, Outcome};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// // Software enable changes what IPI routing needs to know.
    /// let out = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes());
    /// assert!(matches!(out, Outcome::Effect(Effect::Topology(id)) if id.software_enabled));
    /// // A 2-byte write is dropped (SDM 10.4.1).
    /// assert_eq!(apic.write_mmio(0x80, &[0x20, 0]), Outcome::Done);
    /// assert_eq!(apic.tpr(), 0);
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn write_mmio(&mut self, offset: u64, data: &[u8]) -> Outcome {
        if self.mode != ApicMode::XApic
            || offset >= MMIO_PAGE_SIZE
            || offset % u64::from(REG_ALIGN) != 0
        {
            return Outcome::Done;
        }
        let Ok(bytes) = <[u8; REG_WIDTH]>::try_from(data) else {
            return Outcome::Done;
        };
        // offset < 4096 fits u32.
        let reg = offset as u32;
        if reg > LAST_REG {
            return Outcome::Done;
        }
        match self.reg_write(reg, u32::from_le_bytes(bytes)) {
            Outcome::Gp => Outcome::Done,
            o => o,
        }
    }

    /// RDMSR of an MSR for which [`handles_msr`] is true; others are #GP.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock, MsrRead};
    ///
    /// let apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// // IA32_APIC_BASE: default base, enabled (bit 11), BSP (bit 8).
    /// assert_eq!(apic.read_msr(0x1B), MsrRead::Value(0xFEE0_0900));
    /// assert_eq!(apic.read_msr(0x802), MsrRead::Gp); // x2APIC ID, but in xAPIC mode
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn read_msr(&self, msr: u32) -> MsrRead {
        match msr {
            MSR_APIC_BASE => MsrRead::Value(self.apic_base),
            MSR_TSC_DEADLINE => MsrRead::Value(self.read_tsc_deadline()),
            HV_X64_MSR_EOI | HV_X64_MSR_ICR | HV_X64_MSR_TPR
                if synthetic_read_faults(msr, self.mode) =>
            {
                MsrRead::Gp
            }
            HV_X64_MSR_ICR => MsrRead::Value(self.icr64()),
            HV_X64_MSR_TPR => MsrRead::Value(u64::from(self.tpr)),
            _ => {
                let Some(reg) = x2apic_msr_to_reg(msr) else {
                    return MsrRead::Gp;
                };
                if self.mode != ApicMode::X2Apic {
                    return MsrRead::Gp;
                }
                if reg == ICR_LOW {
                    return MsrRead::Value(self.icr64());
                }
                match self.reg_read(reg) {
                    Some(v) => MsrRead::Value(u64::from(v)),
                    None => MsrRead::Gp,
                }
            }
        }
    }

    fn icr64(&self) -> u64 {
        (u64::from(self.icr_high) << HIGH_HALF_SHIFT) | u64::from(self.icr_low)
    }

    /// WRMSR of an MSR for which [`handles_msr`] is true; others are #GP.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock, MsrRead, HV_X64_MSR_TPR};
    ///
    /// let mut apic = LocalApic::new(Config::new(5), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_msr(0x1B, 0xFEE0_0C00); // IA32_APIC_BASE: EN | EXTD
    /// assert_eq!(apic.read_msr(0x802), MsrRead::Value(5)); // x2APIC ID
    /// assert!(!apic.write_msr(HV_X64_MSR_TPR, 0x20).is_gp());
    /// assert_eq!(apic.tpr(), 0x20);
    /// assert!(apic.write_msr(HV_X64_MSR_TPR, 0x100).is_gp()); // bits 63:8 reserved
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn write_msr(&mut self, msr: u32, value: u64) -> Outcome {
        match msr {
            MSR_APIC_BASE => self.set_apic_base(value, false),
            MSR_TSC_DEADLINE => self.write_tsc_deadline(value),
            HV_X64_MSR_EOI | HV_X64_MSR_ICR | HV_X64_MSR_TPR => self.write_hv_apic(msr, value),
            _ => {
                let Some(reg) = x2apic_msr_to_reg(msr) else {
                    return Outcome::Gp;
                };
                if self.mode != ApicMode::X2Apic {
                    return Outcome::Gp;
                }
                if reg == ICR_LOW {
                    return self.write_icr64(value);
                }
                // SDM 10.12.1.2: bits 63:32 of all but the ICR are reserved.
                if value >> HIGH_HALF_SHIFT != 0 {
                    return Outcome::Gp;
                }
                // Bits 31:0 after the check above.
                self.reg_write(reg, value as u32)
            }
        }
    }

    /// A Hyper-V synthetic EOI, ICR or TPR write, in either APIC mode (KVM
    /// `kvm_hv_vapic_msr_write` -> `kvm_lapic_msr_write`); #GP as
    /// [`synthetic_write_faults`] says.
    fn write_hv_apic(&mut self, msr: u32, value: u64) -> Outcome {
        if synthetic_write_faults(msr, value, self.mode) {
            return Outcome::Gp;
        }
        match msr {
            HV_X64_MSR_EOI => self.eoi_outcome(),
            HV_X64_MSR_ICR => self.write_icr64(value),
            HV_X64_MSR_TPR => {
                // Bits 7:0 after the check above.
                self.set_tpr(value as u32);
                Outcome::Done
            }
            _ => Outcome::Gp,
        }
    }

    /// A 64-bit ICR write: x2APIC MSR 0x830 or the Hyper-V synthetic ICR.
    /// The destination layout follows the mode (KVM
    /// `kvm_x2apic_icr_write` -> `kvm_apic_send_ipi`): bits 63:32 in x2APIC
    /// mode, bits 63:56 in xAPIC mode.
    fn write_icr64(&mut self, value: u64) -> Outcome {
        if value & ICR_X2APIC_RESERVED != 0 {
            return Outcome::Gp;
        }
        // Truncations split the value into its halves.
        let low = value as u32 & ICR_LOW_STORED;
        let high = (value >> HIGH_HALF_SHIFT) as u32;
        self.icr_low = low;
        let ipi = if self.mode == ApicMode::X2Apic {
            self.icr_high = high;
            Ipi::from_x2apic(value)
        } else {
            self.icr_high = high & ICR_HIGH_XAPIC_MASK;
            Ipi::from_xapic(low, high)
        };
        self.send_ipi(ipi)
    }

    /// IA32_APIC_BASE write (KVM `kvm_apic_set_base`). Reserved bits, EXTD
    /// without x2APIC support or without EN, and (unless `host_initiated`)
    /// x2APIC -> xAPIC and disabled -> x2APIC are #GP. Disabling resets the
    /// APIC to its power-up register state (SDM 10.12.5.1).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{ApicMode, Config, LocalApic, ManualClock};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let x2apic = 0xFEE0_0000 | 1 << 11 | 1 << 10 | 1 << 8; // EN | EXTD | BSP
    /// let _ = apic.set_apic_base(x2apic, false);
    /// assert_eq!(apic.mode(), ApicMode::X2Apic);
    /// // x2APIC -> xAPIC directly: #GP for the guest, allowed for the VMM.
    /// assert!(apic.set_apic_base(0xFEE0_0900, false).is_gp());
    /// assert!(!apic.set_apic_base(0xFEE0_0900, true).is_gp());
    /// # Ok::<(), vm_lapic::ConfigError>(())
    /// ```
    pub fn set_apic_base(&mut self, value: u64, host_initiated: bool) -> Outcome {
        if value == self.apic_base {
            return Outcome::Done;
        }
        let mut reserved = !self.phys_mask() | APIC_BASE_RESERVED_LOW;
        if !self.cfg.x2apic {
            reserved |= APIC_BASE_EXTD;
        }
        if value & reserved != 0 {
            return Outcome::Gp;
        }
        let Some(new) = ApicMode::from_apic_base(value) else {
            return Outcome::Gp;
        };
        let old = self.mode;
        if !host_initiated && !old.guest_may_switch_to(new) {
            return Outcome::Gp;
        }
        self.apic_base = value;
        if old == new {
            return Outcome::Done;
        }
        self.mode = new;
        match new {
            ApicMode::Disabled => {
                self.xapic_id = self.cfg.apic_id & XAPIC_ID_MASK;
                self.reset_registers();
            }
            ApicMode::XApic => {
                self.xapic_id = self.cfg.apic_id & XAPIC_ID_MASK;
                if old == ApicMode::X2Apic {
                    self.ldr = 0;
                }
            }
            ApicMode::X2Apic => {
                self.ldr = x2apic_ldr(self.cfg.apic_id);
                self.dfr = DFR_RESET;
                self.icr_high = 0;
            }
        }
        self.topology_effect()
    }

    // ---- snapshot helpers -------------------------------------------------

    pub(crate) fn raw_reg(&self, reg: u32) -> u32 {
        // Every register, whatever the mode, for the KVM register page.
        match reg {
            ID => self.xapic_id << XAPIC_ID_SHIFT,
            APR | RRD | EOI | SELF_IPI => 0,
            DFR => self.dfr,
            ICR_HIGH => self.icr_high,
            LVT_CMCI if !self.cfg.cmci => 0,
            r => self.reg_read(r).unwrap_or(0),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn restore_raw(
        &mut self,
        xapic_id: u32,
        tpr: u32,
        ldr: u32,
        dfr: u32,
        svr: u32,
        esr: u32,
        icr: (u32, u32),
        lvt: [u32; LVT_COUNT],
        bitmaps: (VectorBitmap, VectorBitmap, VectorBitmap),
        timer: (u32, u32, u32),
    ) -> ApicIdentity {
        let x2 = self.mode == ApicMode::X2Apic;
        self.xapic_id = xapic_id & XAPIC_ID_MASK;
        self.tpr = tpr & TPR_MASK;
        self.ldr = if x2 {
            x2apic_ldr(self.cfg.apic_id)
        } else {
            ldr & LDR_XAPIC_MASK
        };
        self.dfr = if x2 {
            DFR_RESET
        } else {
            dfr | DFR_RESERVED_ONES
        };
        self.svr = svr & self.svr_writable();
        self.esr = esr;
        self.esr_pending = 0;
        self.icr_low = icr.0 & ICR_LOW_STORED;
        self.icr_high = if x2 {
            icr.1
        } else {
            icr.1 & ICR_HIGH_XAPIC_MASK
        };
        for l in Lvt::ALL {
            self.lvt[l as usize] = lvt[l as usize] & l.writable();
        }
        (self.isr, self.tmr, self.irr) = bitmaps;
        self.lazy_known = None;
        self.lazy_armed = None;
        self.update_ppr();
        let (initial, current, tdcr) = timer;
        self.timer = Timer::default();
        self.timer.set_tdcr(tdcr);
        self.timer.initial = initial;
        if matches!(self.timer_mode(), TimerMode::OneShot | TimerMode::Periodic) {
            // KVM `__start_apic_timer(apic, APIC_TMCCT)`: resume from the
            // saved current count.
            self.start_count();
            if current != 0 && current <= initial {
                let now = self.clock.now_ns();
                self.timer.deadline_ns =
                    Some(now.saturating_add(self.count_to_ns(u64::from(current))));
            } else if self.timer_mode() == TimerMode::OneShot {
                // Expired one-shot: stays expired.
                self.timer.deadline_ns = None;
            }
        }
        self.identity()
    }
}

#[cfg(test)]
#[path = "apic_tests.rs"]
mod tests;
