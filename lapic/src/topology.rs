//! The VM-wide view used for destination resolution: which vCPU owns which
//! APIC ID, logical ID and destination format, as the local APICs' register
//! writes leave them.
//!
//! Matching follows KVM `kvm_apic_match_dest`, `kvm_apic_match_physical_addr`
//! and `kvm_apic_match_logical_addr`; lowest-priority delivery is resolved
//! with KVM's vector hashing (`kvm_vector_to_index`): the target is the
//! `vector % n`-th of the `n` candidates, so the choice is deterministic and
//! needs no other vCPU's state.

use crate::icr::{Destination, DestinationMode, Shorthand};
use crate::interrupt::{DeliveryMode, Interrupt};
use crate::mode::ApicMode;
use crate::regs::{
    DFR_MODEL_CLUSTER, DFR_MODEL_FLAT, DFR_MODEL_SHIFT, LDR_X2APIC_CLUSTER_SHIFT, LDR_XAPIC_SHIFT,
    X2APIC_CLUSTER_ID_SHIFT, X2APIC_ID_IN_CLUSTER_MASK, XAPIC_ID_MASK,
};

/// Most vCPUs a topology holds.
pub const MAX_VCPUS: usize = 4096;
/// Largest APIC ID a vCPU may be given (IDs 0..=4095).
pub const MAX_APIC_ID: u32 = 4095;
/// xAPIC physical and logical broadcast destination.
pub const XAPIC_BROADCAST: u32 = 0xFF;
/// x2APIC physical and logical broadcast destination.
pub const X2APIC_BROADCAST: u32 = u32::MAX;
/// x2APIC logical destination: bits 15:0 are the member bitmap.
const X2APIC_LOGICAL_MEMBERS: u32 = 0xFFFF;
/// xAPIC cluster model: bits 7:4 cluster, 3:0 members.
const XAPIC_CLUSTER_SHIFT: u32 = 4;
/// xAPIC cluster model member bits.
const XAPIC_CLUSTER_MEMBERS: u32 = 0xF;
/// Marker for an unused slot in the APIC ID lookup table.
const NO_VCPU: u16 = u16::MAX;
/// Bits per word of a [`VcpuSet`].
const SET_WORD_BITS: usize = 64;
/// Words in a [`VcpuSet`].
const SET_WORDS: usize = MAX_VCPUS / SET_WORD_BITS;

/// The x2APIC logical ID derived from an x2APIC ID (SDM 10.12.10.2):
/// cluster `id >> 4` in bits 31:16, bit `id & 0xF` in bits 15:0.
pub const fn x2apic_ldr(id: u32) -> u32 {
    ((id >> X2APIC_CLUSTER_ID_SHIFT) << LDR_X2APIC_CLUSTER_SHIFT)
        | (1 << (id & X2APIC_ID_IN_CLUSTER_MASK))
}

/// Errors in how the VMM builds or updates the topology.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The vCPU index is not below [`MAX_VCPUS`].
    #[error("vCPU index {0} is not below {MAX_VCPUS}")]
    VcpuIndex(usize),
    /// The APIC ID is above [`MAX_APIC_ID`].
    #[error("APIC ID {0} is above {MAX_APIC_ID}")]
    ApicId(u32),
    /// Another vCPU already has this initial APIC ID.
    #[error("APIC ID {0} is already used by vCPU {1}")]
    DuplicateApicId(u32, usize),
    /// The vCPU was never added.
    #[error("vCPU {0} is not in the topology")]
    UnknownVcpu(usize),
    /// The initial APIC ID of a vCPU cannot change.
    #[error("the initial APIC ID of vCPU {0} cannot change")]
    InitialIdChanged(usize),
}

/// What destination resolution needs to know about one local APIC.
/// [`crate::LocalApic::identity`] produces it; register writes that change
/// it come back as [`crate::Effect::Topology`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ApicIdentity {
    /// Operating mode.
    pub mode: ApicMode,
    /// The APIC ID the VMM assigned (the x2APIC ID; read-only).
    pub initial_id: u32,
    /// The current physical ID: the 8-bit xAPIC ID register in xAPIC mode
    /// (guest-writable), the x2APIC ID otherwise.
    pub apic_id: u32,
    /// LDR as read.
    pub ldr: u32,
    /// DFR as read (xAPIC only; all ones otherwise).
    pub dfr: u32,
    /// SVR software enable: a software-disabled APIC takes no fixed or
    /// lowest-priority interrupts and is never a lowest-priority target.
    pub software_enabled: bool,
}

/// A set of vCPU indices (0..4096), filled by [`Topology::resolve`] without
/// allocating.
#[derive(Clone, PartialEq, Eq)]
pub struct VcpuSet {
    words: [u64; SET_WORDS],
}

impl Default for VcpuSet {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for VcpuSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl VcpuSet {
    /// The empty set.
    pub const fn new() -> Self {
        Self {
            words: [0; SET_WORDS],
        }
    }

    /// Removes every vCPU.
    pub fn clear(&mut self) {
        self.words = [0; SET_WORDS];
    }

    /// Adds `vcpu`; indices at or above [`MAX_VCPUS`] are ignored.
    ///
    /// ```
    /// use vm_lapic::{VcpuSet, MAX_VCPUS};
    ///
    /// let mut set = VcpuSet::new();
    /// set.insert(5);
    /// set.insert(MAX_VCPUS); // ignored
    /// assert_eq!((set.len(), set.contains(5)), (1, true));
    /// ```
    pub fn insert(&mut self, vcpu: usize) {
        if let Some(w) = self.words.get_mut(vcpu / SET_WORD_BITS) {
            *w |= 1 << (vcpu % SET_WORD_BITS);
        }
    }

    /// Whether `vcpu` is in the set.
    pub fn contains(&self, vcpu: usize) -> bool {
        self.words
            .get(vcpu / SET_WORD_BITS)
            .is_some_and(|w| w & (1 << (vcpu % SET_WORD_BITS)) != 0)
    }

    /// Number of vCPUs in the set.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// The `n`-th member (0-based, ascending).
    pub fn nth(&self, mut n: usize) -> Option<usize> {
        for (i, &w) in self.words.iter().enumerate() {
            let ones = w.count_ones() as usize;
            if n < ones {
                let mut w = w;
                for _ in 0..n {
                    w &= w - 1;
                }
                return Some(i * SET_WORD_BITS + w.trailing_zeros() as usize);
            }
            n -= ones;
        }
        None
    }

    /// Iterates over the members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut w = w;
            core::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(i * SET_WORD_BITS + b)
            })
        })
    }
}

/// One vCPU's APIC as the topology sees it.
#[derive(Clone, Copy, Debug)]
struct Entry {
    present: bool,
    identity: ApicIdentity,
}

const ABSENT: Entry = Entry {
    present: false,
    identity: ApicIdentity {
        mode: ApicMode::Disabled,
        initial_id: 0,
        apic_id: 0,
        ldr: 0,
        dfr: u32::MAX,
        software_enabled: false,
    },
};

impl Entry {
    fn is_broadcast(&self, mda: u32) -> bool {
        match self.identity.mode {
            ApicMode::X2Apic => mda == X2APIC_BROADCAST,
            ApicMode::XApic => mda == XAPIC_BROADCAST,
            ApicMode::Disabled => false,
        }
    }

    /// KVM `kvm_apic_match_physical_addr`, including its acceptance of an
    /// x2APIC-sized ID by an xAPIC-mode APIC whose ID cannot fit 8 bits.
    fn match_physical(&self, mda: u32) -> bool {
        if self.is_broadcast(mda) {
            return true;
        }
        if self.identity.mode == ApicMode::X2Apic || mda > XAPIC_ID_MASK {
            mda == self.identity.initial_id
        } else {
            mda == self.identity.apic_id
        }
    }

    /// KVM `kvm_apic_match_logical_addr`.
    fn match_logical(&self, mda: u32) -> bool {
        if self.is_broadcast(mda) {
            return true;
        }
        let ldr = self.identity.ldr;
        if self.identity.mode == ApicMode::X2Apic {
            return (ldr >> LDR_X2APIC_CLUSTER_SHIFT) == (mda >> LDR_X2APIC_CLUSTER_SHIFT)
                && (ldr & mda & X2APIC_LOGICAL_MEMBERS) != 0;
        }
        let logical = ldr >> LDR_XAPIC_SHIFT;
        match self.identity.dfr >> DFR_MODEL_SHIFT {
            DFR_MODEL_FLAT => logical & mda != 0,
            DFR_MODEL_CLUSTER => {
                (logical >> XAPIC_CLUSTER_SHIFT) == (mda >> XAPIC_CLUSTER_SHIFT)
                    && (logical & mda & XAPIC_CLUSTER_MEMBERS) != 0
            }
            _ => false,
        }
    }

    /// Whether an xAPIC-mode APIC's physical ID differs from its assigned
    /// ID, which defeats the by-ID lookup.
    fn id_diverged(&self) -> bool {
        self.present
            && self.identity.mode == ApicMode::XApic
            && self.identity.apic_id != self.identity.initial_id
    }
}

/// VM-wide APIC topology: APIC ID -> vCPU index, logical IDs and DFRs.
///
/// Physical unicast is a table lookup by APIC ID; broadcasts, shorthands and
/// logical destinations scan the vCPUs.
pub struct Topology {
    entries: Vec<Entry>,
    by_id: Vec<u16>,
    diverged: usize,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for Topology {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Topology")
            .field("vcpus", &self.entries.iter().filter(|e| e.present).count())
            .field("diverged_xapic_ids", &self.diverged)
            .finish()
    }
}

impl Topology {
    /// An empty topology.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, LocalApic, ManualClock, Topology};
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let mut topo = Topology::new();
    /// for (vcpu, apic_id) in [(0, 0), (1, 0x101)] {
    ///     let apic = LocalApic::new(Config::new(apic_id), clock.clone())?;
    ///     topo.add(vcpu, apic.identity())?;
    /// }
    /// assert_eq!(topo.vcpu_by_apic_id(0x101), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new() -> Self {
        Self {
            entries: Vec::new(),
            by_id: vec![NO_VCPU; MAX_APIC_ID as usize + 1],
            diverged: 0,
        }
    }

    /// Number of vCPUs added.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| e.present).count()
    }

    /// Whether no vCPU was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds vCPU `vcpu` with the APIC identity its [`crate::LocalApic`]
    /// reports.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{topology, Config, LocalApic, ManualClock, Topology};
    ///
    /// let apic = LocalApic::new(Config::new(7), Arc::new(ManualClock::new(0)))?;
    /// let mut topo = Topology::new();
    /// topo.add(0, apic.identity())?;
    /// // Two vCPUs cannot share an APIC ID.
    /// assert_eq!(topo.add(1, apic.identity()), Err(topology::Error::DuplicateApicId(7, 0)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add(&mut self, vcpu: usize, identity: ApicIdentity) -> Result<(), Error> {
        if vcpu >= MAX_VCPUS {
            return Err(Error::VcpuIndex(vcpu));
        }
        let id = identity.initial_id;
        let slot = self.by_id.get_mut(id as usize).ok_or(Error::ApicId(id))?;
        if *slot != NO_VCPU && usize::from(*slot) != vcpu {
            return Err(Error::DuplicateApicId(id, usize::from(*slot)));
        }
        if self.entries.len() <= vcpu {
            self.entries.resize(vcpu + 1, ABSENT);
        }
        let old = self.entries[vcpu];
        if old.present && old.identity.initial_id != id {
            return Err(Error::InitialIdChanged(vcpu));
        }
        // vcpu < MAX_VCPUS = 4096 fits u16 and is not NO_VCPU.
        *slot = vcpu as u16;
        self.store(vcpu, identity);
        Ok(())
    }

    /// Applies an [`crate::Effect::Topology`] from vCPU `vcpu`'s APIC.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, Effect, LocalApic, ManualClock, Outcome, Topology};
    ///
    /// let mut apic = LocalApic::new(Config::new(0), Arc::new(ManualClock::new(0)))?;
    /// let mut topo = Topology::new();
    /// topo.add(0, apic.identity())?;
    /// if let Outcome::Effect(Effect::Topology(id)) = apic.write_mmio(0xD0, &0x0100_0000u32.to_le_bytes()) {
    ///     topo.update(0, id)?; // the guest set its logical ID (LDR)
    /// }
    /// assert_eq!(topo.identity(0).map(|i| i.ldr), Some(0x0100_0000));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update(&mut self, vcpu: usize, identity: ApicIdentity) -> Result<(), Error> {
        let old = self
            .entries
            .get(vcpu)
            .filter(|e| e.present)
            .ok_or(Error::UnknownVcpu(vcpu))?;
        if old.identity.initial_id != identity.initial_id {
            return Err(Error::InitialIdChanged(vcpu));
        }
        self.store(vcpu, identity);
        Ok(())
    }

    fn store(&mut self, vcpu: usize, identity: ApicIdentity) {
        let new = Entry {
            present: true,
            identity,
        };
        if let Some(e) = self.entries.get_mut(vcpu) {
            if e.id_diverged() {
                self.diverged -= 1;
            }
            *e = new;
            if new.id_diverged() {
                self.diverged += 1;
            }
        }
    }

    /// The identity last recorded for `vcpu`.
    pub fn identity(&self, vcpu: usize) -> Option<ApicIdentity> {
        self.entries
            .get(vcpu)
            .filter(|e| e.present)
            .map(|e| e.identity)
    }

    /// The vCPU whose assigned APIC ID is `apic_id`.
    pub fn vcpu_by_apic_id(&self, apic_id: u32) -> Option<usize> {
        match self.by_id.get(apic_id as usize) {
            Some(&v) if v != NO_VCPU => Some(usize::from(v)),
            _ => None,
        }
    }

    /// Resolves an IPI sent by vCPU `source`.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, Ipi, LocalApic, ManualClock, Topology, VcpuSet};
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let mut topo = Topology::new();
    /// for vcpu in 0..3 {
    ///     let mut apic = LocalApic::new(Config::new(vcpu as u32), clock.clone())?;
    ///     let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    ///     topo.add(vcpu, apic.identity())?;
    /// }
    /// // Fixed 0x40 to all excluding self (ICR shorthand 11b), from vCPU 1.
    /// let ipi = Ipi::from_xapic(0x000C_4040, 0);
    /// let mut targets = VcpuSet::new();
    /// assert_eq!(topo.resolve_ipi(1, &ipi, &mut targets), 2);
    /// assert_eq!(targets.iter().collect::<Vec<_>>(), [0, 2]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resolve_ipi(&self, source: usize, ipi: &crate::Ipi, out: &mut VcpuSet) -> usize {
        self.resolve(Some(source), ipi.destination(), &ipi.interrupt(), out)
    }

    /// The one vCPU a physical unicast `dest` reaches with `irq` (`None`
    /// inside: no vCPU), decided by a table lookup; `None` when `dest` is
    /// not that case (a shorthand, a broadcast, a logical destination, or
    /// a VM where an xAPIC ID no longer matches its vCPU's initial one),
    /// which [`Topology::resolve`] settles with a scan. Its answer is
    /// [`Topology::resolve`]'s for the same arguments, without a
    /// [`VcpuSet`]: the common IPI, sent to one vCPU by APIC ID.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, Destination, DestinationMode, Interrupt, LocalApic, ManualClock, Topology};
    ///
    /// let mut apic = LocalApic::new(Config::new(7), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let mut topo = Topology::new();
    /// topo.add(2, apic.identity())?;
    /// let fixed = Interrupt::fixed(0x50);
    /// let to = |id| Destination { id, ..Default::default() };
    /// assert_eq!(topo.unicast_target(to(7), &fixed), Some(Some(2)));
    /// assert_eq!(topo.unicast_target(to(8), &fixed), Some(None)); // nobody has ID 8
    /// let logical = Destination { mode: DestinationMode::Logical, ..to(1) };
    /// assert_eq!(topo.unicast_target(logical, &fixed), None); // resolve() scans
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unicast_target(&self, dest: Destination, irq: &Interrupt) -> Option<Option<usize>> {
        if dest.shorthand != Shorthand::None
            || dest.mode != DestinationMode::Physical
            || dest.id == XAPIC_BROADCAST
            || dest.id == X2APIC_BROADCAST
            || self.diverged != 0
        {
            return None;
        }
        // With no diverged xAPIC ID, only the APIC assigned this ID can
        // match.
        let lowest = irq.delivery_mode == DeliveryMode::LowestPriority;
        Some(self.vcpu_by_apic_id(dest.id).filter(|&v| {
            self.entries.get(v).is_some_and(|e| {
                e.present
                    && e.identity.mode != ApicMode::Disabled
                    && e.match_physical(dest.id)
                    && (!lowest || e.identity.software_enabled)
            })
        }))
    }

    /// Fills `out` with the vCPUs that `irq` sent to `dest` reaches and
    /// returns how many. `source` is the sending vCPU for an IPI and `None`
    /// for an IOAPIC or MSI message (for which an xAPIC broadcast also
    /// reaches x2APIC-mode APICs, as KVM's `kvm_apic_mda` does).
    /// A lowest-priority interrupt reaches at most one vCPU.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use vm_lapic::{Config, Destination, Interrupt, LocalApic, ManualClock, Topology, VcpuSet};
    ///
    /// let mut apic = LocalApic::new(Config::new(3), Arc::new(ManualClock::new(0)))?;
    /// let _ = apic.write_mmio(0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
    /// let mut topo = Topology::new();
    /// topo.add(0, apic.identity())?;
    /// // An MSI for physical APIC ID 3.
    /// let dest = Destination { id: 3, ..Default::default() };
    /// let mut out = VcpuSet::new();
    /// assert_eq!(topo.resolve(None, dest, &Interrupt::fixed(0x50), &mut out), 1);
    /// assert!(out.contains(0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn resolve(
        &self,
        source: Option<usize>,
        dest: Destination,
        irq: &Interrupt,
        out: &mut VcpuSet,
    ) -> usize {
        out.clear();
        if dest.shorthand == Shorthand::SelfOnly {
            if let Some(s) = source.filter(|s| self.entries.get(*s).is_some_and(|e| e.present)) {
                out.insert(s);
                return 1;
            }
            return 0;
        }
        let lowest = irq.delivery_mode == DeliveryMode::LowestPriority;
        if let Some(unicast) = self.unicast_target(dest, irq) {
            return unicast.map_or(0, |v| {
                out.insert(v);
                1
            });
        }
        let mut n = 0;
        for (v, e) in self.entries.iter().enumerate() {
            if !e.present || e.identity.mode == ApicMode::Disabled {
                continue;
            }
            let hit = match dest.shorthand {
                Shorthand::AllIncludingSelf => true,
                Shorthand::AllExcludingSelf => source != Some(v),
                Shorthand::SelfOnly => false,
                Shorthand::None => {
                    let mda = if source.is_none()
                        && dest.id == XAPIC_BROADCAST
                        && e.identity.mode == ApicMode::X2Apic
                    {
                        X2APIC_BROADCAST
                    } else {
                        dest.id
                    };
                    match dest.mode {
                        DestinationMode::Physical => e.match_physical(mda),
                        DestinationMode::Logical => e.match_logical(mda),
                    }
                }
            };
            if hit && (!lowest || e.identity.software_enabled) {
                out.insert(v);
                n += 1;
            }
        }
        if lowest && n > 1 {
            let pick = out.nth(usize::from(irq.vector) % n);
            out.clear();
            if let Some(p) = pick {
                out.insert(p);
            }
            return 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::DFR_RESET;

    fn xapic(id: u32) -> ApicIdentity {
        ApicIdentity {
            mode: ApicMode::XApic,
            initial_id: id,
            apic_id: id,
            ldr: 0,
            dfr: DFR_RESET,
            software_enabled: true,
        }
    }

    fn x2apic(id: u32) -> ApicIdentity {
        ApicIdentity {
            mode: ApicMode::X2Apic,
            initial_id: id,
            apic_id: id,
            ldr: x2apic_ldr(id),
            dfr: DFR_RESET,
            software_enabled: true,
        }
    }

    fn phys(id: u32) -> Destination {
        Destination {
            mode: DestinationMode::Physical,
            shorthand: Shorthand::None,
            id,
        }
    }

    fn logical(id: u32) -> Destination {
        Destination {
            mode: DestinationMode::Logical,
            shorthand: Shorthand::None,
            id,
        }
    }

    const FIXED: Interrupt = Interrupt::fixed(0x40);

    #[test]
    fn x2apic_ldr_derivation() {
        assert_eq!(x2apic_ldr(0), 0x0000_0001);
        assert_eq!(x2apic_ldr(0x15), 0x0001_0020);
        assert_eq!(x2apic_ldr(4095), 0x00FF_8000);
    }

    #[test]
    fn bounds_on_add() {
        let mut t = Topology::new();
        assert_eq!(t.add(MAX_VCPUS, xapic(0)), Err(Error::VcpuIndex(MAX_VCPUS)));
        assert_eq!(
            t.add(0, x2apic(MAX_APIC_ID + 1)),
            Err(Error::ApicId(MAX_APIC_ID + 1))
        );
        t.add(MAX_VCPUS - 1, x2apic(MAX_APIC_ID)).unwrap();
        assert_eq!(
            t.add(1, x2apic(MAX_APIC_ID)),
            Err(Error::DuplicateApicId(MAX_APIC_ID, MAX_VCPUS - 1))
        );
        assert_eq!(t.update(5, xapic(5)), Err(Error::UnknownVcpu(5)));
        assert_eq!(
            t.update(MAX_VCPUS - 1, x2apic(1)),
            Err(Error::InitialIdChanged(MAX_VCPUS - 1))
        );
    }

    #[test]
    fn physical_unicast_and_broadcast() {
        let mut t = Topology::new();
        for i in 0..4 {
            t.add(i, xapic(i as u32 * 2)).unwrap();
        }
        let mut out = VcpuSet::new();
        assert_eq!(t.resolve(Some(0), phys(4), &FIXED, &mut out), 1);
        assert!(out.contains(2));
        assert_eq!(t.resolve(Some(0), phys(5), &FIXED, &mut out), 0);
        assert_eq!(
            t.resolve(Some(0), phys(XAPIC_BROADCAST), &FIXED, &mut out),
            4
        );
        // A guest-changed xAPIC ID is still found (scan path).
        let mut moved = xapic(6);
        moved.apic_id = 9;
        t.update(3, moved).unwrap();
        assert_eq!(t.resolve(Some(0), phys(9), &FIXED, &mut out), 1);
        assert!(out.contains(3));
        assert_eq!(t.resolve(Some(0), phys(6), &FIXED, &mut out), 0);
    }

    #[test]
    fn x2apic_broadcast_and_legacy_broadcast() {
        let mut t = Topology::new();
        for i in 0..3 {
            t.add(i, x2apic(i as u32 + 0x100)).unwrap();
        }
        let mut out = VcpuSet::new();
        assert_eq!(
            t.resolve(Some(0), phys(X2APIC_BROADCAST), &FIXED, &mut out),
            3
        );
        // 0xFF from an x2APIC sender is APIC ID 0xFF, not a broadcast.
        assert_eq!(
            t.resolve(Some(0), phys(XAPIC_BROADCAST), &FIXED, &mut out),
            0
        );
        // From an IOAPIC/MSI it still broadcasts (KVM kvm_apic_mda).
        assert_eq!(t.resolve(None, phys(XAPIC_BROADCAST), &FIXED, &mut out), 3);
        assert_eq!(t.resolve(Some(0), phys(0x101), &FIXED, &mut out), 1);
        assert!(out.contains(1));
    }

    #[test]
    fn logical_flat_cluster_and_x2apic_cluster() {
        let mut t = Topology::new();
        for i in 0..4u32 {
            let mut id = xapic(i);
            id.ldr = (1 << i) << LDR_XAPIC_SHIFT;
            t.add(i as usize, id).unwrap();
        }
        let mut out = VcpuSet::new();
        // Flat multicast to bits 0 and 2.
        assert_eq!(t.resolve(Some(0), logical(0b0101), &FIXED, &mut out), 2);
        assert!(out.contains(0) && out.contains(2));
        assert_eq!(
            t.resolve(Some(0), logical(XAPIC_BROADCAST), &FIXED, &mut out),
            4
        );
        // Cluster model: cluster 1, member bits 0 and 1.
        for i in 0..4u32 {
            let mut id = xapic(i);
            id.dfr = crate::regs::DFR_RESERVED_ONES;
            id.ldr = ((1 << 4) | (1 << (i % 2))) << LDR_XAPIC_SHIFT;
            if i >= 2 {
                id.ldr = ((2 << 4) | (1 << (i % 2))) << LDR_XAPIC_SHIFT;
            }
            t.update(i as usize, id).unwrap();
        }
        assert_eq!(t.resolve(Some(0), logical(0x13), &FIXED, &mut out), 2);
        assert!(out.contains(0) && out.contains(1));
        assert_eq!(t.resolve(Some(0), logical(0x22), &FIXED, &mut out), 1);
        assert!(out.contains(3));

        let mut t = Topology::new();
        for i in 0..40u32 {
            t.add(i as usize, x2apic(i)).unwrap();
        }
        // Cluster 1 (IDs 16..31), members 0 and 15.
        assert_eq!(
            t.resolve(Some(0), logical(0x0001_8001), &FIXED, &mut out),
            2
        );
        assert!(out.contains(16) && out.contains(31));
        assert_eq!(
            t.resolve(Some(0), logical(X2APIC_BROADCAST), &FIXED, &mut out),
            40
        );
    }

    #[test]
    fn shorthands_and_lowest_priority() {
        let mut t = Topology::new();
        for i in 0..8 {
            t.add(i, xapic(i as u32)).unwrap();
        }
        let mut out = VcpuSet::new();
        let sh = |s| Destination {
            mode: DestinationMode::Physical,
            shorthand: s,
            id: 0,
        };
        assert_eq!(
            t.resolve(Some(3), sh(Shorthand::SelfOnly), &FIXED, &mut out),
            1
        );
        assert!(out.contains(3));
        assert_eq!(
            t.resolve(Some(3), sh(Shorthand::AllIncludingSelf), &FIXED, &mut out),
            8
        );
        assert_eq!(
            t.resolve(Some(3), sh(Shorthand::AllExcludingSelf), &FIXED, &mut out),
            7
        );
        assert!(!out.contains(3));
        let lp = Interrupt {
            delivery_mode: DeliveryMode::LowestPriority,
            ..Interrupt::fixed(0x43)
        };
        assert_eq!(t.resolve(Some(0), phys(XAPIC_BROADCAST), &lp, &mut out), 1);
        // 0x43 % 8 = 3: deterministic.
        assert!(out.contains(3));
        // Software-disabled APICs are not candidates.
        let mut off = xapic(3);
        off.software_enabled = false;
        t.update(3, off).unwrap();
        t.resolve(Some(0), phys(XAPIC_BROADCAST), &lp, &mut out);
        assert!(!out.contains(3));
        // Disabled APICs match nothing.
        let mut dis = xapic(4);
        dis.mode = ApicMode::Disabled;
        t.update(4, dis).unwrap();
        assert_eq!(t.resolve(Some(0), phys(4), &FIXED, &mut out), 0);
    }

    #[test]
    fn unicast_lookup_agrees_with_a_scan() {
        let mut t = Topology::new();
        for (v, id) in [0u32, 3, 4, 0x20, 0x101, 0x102].into_iter().enumerate() {
            let mut e = if id < 0x100 && v % 2 == 0 {
                xapic(id)
            } else {
                x2apic(id)
            };
            e.software_enabled = v != 2;
            if v == 3 {
                e.mode = ApicMode::Disabled;
            }
            t.add(v, e).unwrap();
        }
        let lp = Interrupt {
            delivery_mode: DeliveryMode::LowestPriority,
            ..FIXED
        };
        let scan = |id: u32, irq: &Interrupt| -> Vec<usize> {
            let lowest = irq.delivery_mode == DeliveryMode::LowestPriority;
            (t.entries.iter().enumerate())
                .filter(|(_, e)| {
                    e.present
                        && e.identity.mode != ApicMode::Disabled
                        && e.match_physical(id)
                        && (!lowest || e.identity.software_enabled)
                })
                .map(|(v, _)| v)
                .collect()
        };
        let mut out = VcpuSet::new();
        for id in (0..0x110).chain([X2APIC_BROADCAST]) {
            for irq in [FIXED, lp] {
                let broadcast = id == XAPIC_BROADCAST || id == X2APIC_BROADCAST;
                match t.unicast_target(phys(id), &irq) {
                    Some(hit) => {
                        assert!(!broadcast, "{id:#x}");
                        assert_eq!(hit.into_iter().collect::<Vec<_>>(), scan(id, &irq));
                        assert_eq!(
                            t.resolve(Some(0), phys(id), &irq, &mut out),
                            hit.iter().count()
                        );
                    }
                    None => assert!(broadcast, "{id:#x} not decided by the table"),
                }
            }
        }
        assert_eq!(t.unicast_target(logical(1), &FIXED), None);
        let all = Destination {
            shorthand: Shorthand::AllIncludingSelf,
            ..phys(0)
        };
        assert_eq!(t.unicast_target(all, &FIXED), None);
        // A guest-changed xAPIC ID: only a scan finds it.
        let mut moved = xapic(4);
        moved.apic_id = 9;
        t.update(2, moved).unwrap();
        assert_eq!(t.unicast_target(phys(9), &FIXED), None);
        assert_eq!(t.resolve(Some(0), phys(9), &FIXED, &mut out), 1);
    }

    #[test]
    fn vcpu_set_nth_and_iter() {
        let mut s = VcpuSet::new();
        for v in [1, 64, 4095] {
            s.insert(v);
        }
        s.insert(MAX_VCPUS);
        assert_eq!(s.len(), 3);
        assert_eq!(s.nth(1), Some(64));
        assert_eq!(s.nth(3), None);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![1, 64, 4095]);
    }
}
