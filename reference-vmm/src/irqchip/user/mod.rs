//! The userspace irqchip: a lapic [`LocalApic`](lapic::LocalApic) per
//! vCPU, owned by the vCPU's [`State`](crate::vcpu::State). Fixed edge
//! interrupts are posted through ipiv's descriptors and moved into the IRR
//! at entry and exit; everything else is delivered to the lapic under the
//! target's lock.
//! The run-loop side (injection, CR8, lazy EOI, HLT) is in [`entry`], the
//! APIC timers on a [`crate::timers`] queue, INIT/SIPI in [`mp`].

pub mod entry;
pub mod halt;
pub mod mp;

pub use entry::LazyEoiExit;
pub use halt::{HaltPoll, HaltPolling, PollWindow, halt};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use lapic::{
    DeliveryMode, Destination, DestinationMode, Effect, Interrupt, Outcome, Shorthand, Topology,
    TriggerMode, VcpuSet,
};

use super::{ApStart, EoiHook, IrqchipConfig, VcpuCtx};
use crate::error::Error;
use crate::ipi_path::Stamp;
use crate::kvm::msr::MSR_APIC_BASE;
use crate::metrics::bump;
use crate::platform::msi::{
    MSI_DATA_TRIGGER_LEVEL, is_init_deassert, msi_destination, msi_logical,
};
use crate::timers::Timers;
use crate::vcpu::{MpState, Vcpu};

/// Lowest vector a fixed interrupt may carry (SDM 10.5.2).
const FIRST_LEGAL_VECTOR: u8 = 16;
/// Nanoseconds per second.
const NS_PER_SEC: u64 = 1_000_000_000;

/// The frequency the userspace APIC timer counts at with divide-by-1: the
/// bus cycle of the lapic crate's default [`lapic::Config`], which the
/// VMM's APICs use.
pub fn apic_timer_hz() -> u64 {
    NS_PER_SEC / lapic::Config::new(0).bus_cycle_ns.max(1)
}

/// One vCPU's last physical unicast IPI destination and its target
/// (`None`: nobody), valid while the topology's generation is the one
/// recorded. A vCPU that keeps sending to the same APIC (the common case)
/// then resolves without the topology's lock: its read count is written
/// by every sender, so with two vCPUs sending IPIs its cache line moved
/// between their CPUs at every ICR, about 400 TSC cycles a time here.
#[derive(Debug, Default)]
pub struct UnicastCache(Option<(u64, Destination, bool, Option<usize>)>);

/// The userspace irqchip's VM-wide state.
pub struct UserIrqchip {
    topology: RwLock<Topology>,
    /// Moves after every topology update, under the write lock: a
    /// [`UnicastCache`] filled at another generation is stale.
    topology_generation: AtomicU64,
    /// The APIC timers' deadlines.
    pub(super) timers: Timers,
    /// The VMM runs the INIT/SIPI protocol ([`mp`]).
    runs_mp: bool,
    /// Where level-triggered EOIs go.
    pub(super) eoi_hook: Option<EoiHook>,
    /// Lazy EOI is offered.
    lazy_eoi: bool,
    /// HLT polls before it sleeps ([`halt`]).
    pub(super) halt_poll: HaltPolling,
}

impl UserIrqchip {
    /// The backend for `c`.
    pub fn new(c: IrqchipConfig) -> Self {
        Self {
            topology: RwLock::new(c.topology),
            topology_generation: AtomicU64::new(0),
            timers: Timers::default(),
            runs_mp: c.ap_start == ApStart::WaitForSipi,
            eoi_hook: c.eoi_hook,
            lazy_eoi: c.lazy_eoi,
            halt_poll: HaltPolling::new(host_cpus()),
        }
    }

    /// Sets the largest halt-polling window (0: off).
    pub fn set_halt_poll(&self, max: std::time::Duration) {
        self.halt_poll.set_max(max);
    }

    /// The APIC topology (destination resolution).
    pub fn topology(&self) -> RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|e| e.into_inner())
    }

    fn topology_mut(&self) -> RwLockWriteGuard<'_, Topology> {
        self.topology.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records vCPU `index`'s new APIC identity.
    fn update_topology(&self, index: u32, id: lapic::ApicIdentity) {
        let mut t = self.topology_mut();
        if let Err(e) = t.update(index as usize, id) {
            log::warn!("vCPU {index}: topology update: {e}");
        }
        self.topology_generation.fetch_add(1, Ordering::Release);
    }

    /// The target of an IPI to `dest` when that is a physical unicast
    /// (`Some(None)`: no vCPU has the ID), from `cache` while the topology
    /// has not changed since it was filled, else from the topology, which
    /// then fills it; `None`: another kind of destination, which
    /// [`Topology::resolve`] settles.
    fn unicast_target(
        &self,
        cache: Option<&mut UnicastCache>,
        dest: Destination,
        irq: &Interrupt,
    ) -> Option<Option<usize>> {
        let lowest = irq.delivery_mode == DeliveryMode::LowestPriority;
        let Some(cache) = cache else {
            return self.topology().unicast_target(dest, irq);
        };
        let generation = self.topology_generation.load(Ordering::Acquire);
        if let Some((g, d, l, target)) = cache.0 {
            if (g, d, l) == (generation, dest, lowest) {
                return Some(target);
            }
        }
        let t = self.topology();
        // Under the read lock no update is halfway: the generation is the
        // one of what `t` holds.
        let generation = self.topology_generation.load(Ordering::Acquire);
        let target = t.unicast_target(dest, irq)?;
        cache.0 = Some((generation, dest, lowest, target));
        Some(target)
    }

    /// With the INIT/SIPI protocol, every vCPU but the first waits for a
    /// SIPI.
    pub(super) fn start_vcpu(&self, v: &Vcpu) {
        if self.runs_mp && v.index > 0 {
            v.lock().mp.state = MpState::WaitForSipi;
        }
    }

    fn eoi(&self, vector: u8) {
        if let Some(h) = &self.eoi_hook {
            h(vector);
        }
    }

    /// Applies what lapic asked for after a register write of vCPU `me`
    /// (`cache`: its unicast IPI cache, where its thread has it).
    /// `false`: #GP.
    pub fn apply_apic_outcome(
        &self,
        vcpus: &[Vcpu],
        me: &Vcpu,
        cache: Option<&mut UnicastCache>,
        o: Outcome,
    ) -> bool {
        let e = match o {
            Outcome::Done => return true,
            Outcome::Gp => return false,
            Outcome::Effect(e) => e,
        };
        match e {
            Effect::SendIpi(ipi) => {
                let irq = ipi.interrupt();
                let fixed = matches!(
                    irq.delivery_mode,
                    DeliveryMode::Fixed | DeliveryMode::LowestPriority
                ) && irq.vector >= FIRST_LEGAL_VECTOR;
                let count = || bump(&me.metrics.ipis_posted);
                if let Some(target) = self.unicast_target(cache, ipi.destination(), &irq) {
                    self.deliver_to(vcpus, target, &irq, fixed, count);
                } else {
                    let mut targets = VcpuSet::new();
                    self.topology()
                        .resolve_ipi(me.index as usize, &ipi, &mut targets);
                    self.deliver_to(vcpus, targets.iter(), &irq, fixed, count);
                }
            }
            Effect::SelfDelivered(_) => {}
            Effect::Eoi(e) => {
                bump(&me.metrics.eoi_msr);
                if e.notify_ioapic {
                    self.eoi(e.vector);
                }
            }
            Effect::Timer(Some(deadline)) => self.timers.arm(me.index as usize, deadline),
            Effect::Timer(None) => self.timers.disarm(me.index as usize),
            Effect::Topology(id) => self.update_topology(me.index, id),
        }
        true
    }

    /// WRMSR of an APIC MSR or a Hyper-V alias lapic serves (`false`:
    /// #GP). IA32_APIC_BASE is mirrored to KVM.
    pub(super) fn wrmsr(&self, cx: &mut VcpuCtx, index: u32, value: u64) -> Result<bool, Error> {
        if !lapic::handles_msr(index) {
            log::debug!(
                "vCPU {}: wrmsr {index:#x} <- {value:#x} -> #GP",
                cx.me.index
            );
            return Ok(false);
        }
        let o = cx.me.lock().apic.write_msr(index, value);
        let ok = self.apply_apic_outcome(cx.vcpus, cx.me, Some(&mut cx.local.unicast), o);
        if ok && index == MSR_APIC_BASE {
            mirror_apic_base(cx)?;
        }
        Ok(ok)
    }

    /// Delivers an MSI-format message: resolved against the APIC topology
    /// and delivered to each target's lapic (fixed edge vectors through
    /// the posted-interrupt path), which is notified.
    pub fn deliver_msi(&self, vcpus: &[Vcpu], address: u64, data: u32) {
        let irq = Interrupt {
            vector: data as u8,
            delivery_mode: DeliveryMode::from_reg(data),
            trigger_mode: if data & MSI_DATA_TRIGGER_LEVEL != 0 {
                TriggerMode::Level
            } else {
                TriggerMode::Edge
            },
            // KVM `kvm_set_msi_irq` asserts every MSI; only an INIT level
            // de-assert is dropped (a no-op since the P4, SDM 10.6.1), in
            // both irqchips (the kernel backend does not send it).
            level_assert: !is_init_deassert(data),
        };
        let dest = Destination {
            mode: if msi_logical(address) {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            shorthand: Shorthand::None,
            id: msi_destination(address),
        };
        let mut targets = VcpuSet::new();
        self.topology().resolve(None, dest, &irq, &mut targets);
        let fixed = matches!(
            irq.delivery_mode,
            DeliveryMode::Fixed | DeliveryMode::LowestPriority
        ) && irq.vector >= FIRST_LEGAL_VECTOR
            && irq.trigger_mode == TriggerMode::Edge;
        self.deliver_to(vcpus, targets.iter(), &irq, fixed, || {});
    }

    /// Delivers `irq` to every vCPU in `targets`, calling `each` once per
    /// existing target. `posted`: a fixed edge vector, which goes through
    /// the posted-interrupt path; anything else is delivered to the lapic
    /// under the target's lock (NMIs latched for `KVM_NMI`, INIT and SIPI
    /// latched for the MP protocol when the VMM runs it).
    fn deliver_to(
        &self,
        vcpus: &[Vcpu],
        targets: impl IntoIterator<Item = usize>,
        irq: &Interrupt,
        posted: bool,
        mut each: impl FnMut(),
    ) {
        let stamp = Stamp::now();
        for t in targets {
            let Some(tv) = vcpus.get(t) else { continue };
            each();
            if posted {
                tv.post_at(irq.vector, stamp);
            } else {
                let mut s = tv.lock();
                match s.apic.deliver(irq) {
                    lapic::Delivery::Nmi => tv.latch_nmi_locked(&mut s),
                    d if self.runs_mp => mp::latch(tv, &mut s, d),
                    _ => tv.notify_apic_locked(&mut s),
                }
            }
        }
    }

    /// Acts on latched INIT/SIPI events where the VMM runs that protocol.
    pub(super) fn accept_mp_events(
        &self,
        cx: &mut VcpuCtx,
        stop: &dyn Fn() -> bool,
    ) -> Result<bool, Error> {
        if !self.runs_mp {
            return Ok(true);
        }
        mp::accept_events(cx, stop, |id| self.update_topology(cx.me.index, id))
    }
}

/// RDMSR of an APIC MSR or a Hyper-V alias lapic serves (`None`: #GP).
pub fn rdmsr(me: &Vcpu, index: u32) -> Option<u64> {
    if !lapic::handles_msr(index) {
        log::debug!("vCPU {}: rdmsr {index:#x} -> #GP", me.index);
        return None;
    }
    match me.lock().apic.read_msr(index) {
        lapic::MsrRead::Value(v) => Some(v),
        lapic::MsrRead::Gp => None,
    }
}

/// Tells KVM the APIC base the guest set, so that KVM's runtime CPUID
/// update makes CPUID.1:EDX.APIC follow IA32_APIC_BASE.EN (x86.c
/// `__kvm_apic_set_base` -> `kvm_update_cpuid_runtime`). A host-initiated
/// write passes the MSR filter; KVM keeps the value even without an
/// in-kernel APIC.
fn mirror_apic_base(cx: &mut VcpuCtx) -> Result<(), Error> {
    let base = cx.me.lock().apic.apic_base();
    cx.kvm.complete_pending_exit()?;
    if !cx.kvm.set_msr(MSR_APIC_BASE, base)? {
        log::warn!(
            "vCPU {}: KVM refused IA32_APIC_BASE = {base:#x}",
            cx.me.index
        );
    }
    Ok(())
}

/// Where `me`'s xAPIC page is (`None` outside xAPIC mode: x2APIC or
/// disabled, the page is not decoded, SDM 10.12.2).
pub fn apic_page_base(me: &Vcpu) -> Option<u64> {
    let s = me.lock();
    (s.apic.mode() == lapic::ApicMode::XApic).then(|| s.apic.mmio_base())
}

/// A SynIC interrupt of `vector` on `v`'s lapic (see
/// [`Irqchip::deliver_sint`](super::Irqchip::deliver_sint)).
pub fn deliver_sint(v: &Vcpu, vector: u8, auto_eoi: bool) {
    if vector < FIRST_LEGAL_VECTOR {
        return;
    }
    let mut s = v.lock();
    let _ = if auto_eoi {
        s.apic.deliver_auto_eoi(vector)
    } else {
        s.apic.deliver(&Interrupt::fixed(vector))
    };
    v.notify_apic_locked(&mut s);
}

/// Raises `v`'s LINT1 on its lapic (see
/// [`Irqchip::raise_lint1`](super::Irqchip::raise_lint1)).
pub fn raise_lint1(v: &Vcpu) {
    let mut s = v.lock();
    if s.apic.mode() == lapic::ApicMode::Disabled {
        v.latch_nmi_locked(&mut s);
        return;
    }
    match s.apic.local_interrupt(lapic::Lvt::Lint1) {
        lapic::Delivery::Nmi => v.latch_nmi_locked(&mut s),
        lapic::Delivery::Accepted => v.notify_apic_locked(&mut s),
        _ => {}
    }
}

/// CPUs this process may run on (1 if unknown).
fn host_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[cfg(test)]
mod tests {
    use lapic::{ApicIdentity, ApicMode};

    use super::*;

    fn x2apic(id: u32) -> ApicIdentity {
        ApicIdentity {
            mode: ApicMode::X2Apic,
            initial_id: id,
            apic_id: id,
            ldr: lapic::topology::x2apic_ldr(id),
            dfr: u32::MAX,
            software_enabled: true,
        }
    }

    fn chip(vcpus: u32) -> UserIrqchip {
        let mut topology = Topology::new();
        for v in 0..vcpus {
            topology.add(v as usize, x2apic(v)).unwrap();
        }
        UserIrqchip {
            topology: RwLock::new(topology),
            topology_generation: AtomicU64::new(0),
            timers: Timers::default(),
            runs_mp: false,
            eoi_hook: None,
            lazy_eoi: false,
            halt_poll: HaltPolling::new(1),
        }
    }

    fn to(id: u32) -> Destination {
        Destination {
            id,
            ..Destination::default()
        }
    }

    #[test]
    fn unicast_cache_follows_the_topology() {
        let u = chip(3);
        let mut cache = UnicastCache::default();
        let fixed = Interrupt::fixed(0x40);
        let lowest = Interrupt {
            delivery_mode: DeliveryMode::LowestPriority,
            ..fixed
        };
        let mut hit = |d, irq: &Interrupt| u.unicast_target(Some(&mut cache), d, irq);
        assert_eq!(hit(to(2), &fixed), Some(Some(2)));
        assert_eq!(hit(to(2), &fixed), Some(Some(2)), "from the cache");
        // Not a unicast: left to the scan, the cache kept.
        let all = Destination {
            shorthand: Shorthand::AllExcludingSelf,
            ..to(0)
        };
        assert_eq!(hit(all, &fixed), None);

        // The target's APIC is disabled, then software-disabled, then
        // back: every IPI after an update sees it.
        let mut off = x2apic(2);
        off.mode = ApicMode::Disabled;
        u.update_topology(2, off);
        assert_eq!(hit(to(2), &fixed), Some(None));
        let mut soft_off = x2apic(2);
        soft_off.software_enabled = false;
        u.update_topology(2, soft_off);
        assert_eq!(hit(to(2), &fixed), Some(Some(2)));
        // Lowest priority skips a software-disabled APIC: the kind of
        // interrupt is part of the key.
        assert_eq!(hit(to(2), &lowest), Some(None));
        assert_eq!(hit(to(2), &fixed), Some(Some(2)));
        u.update_topology(2, x2apic(2));
        assert_eq!(hit(to(2), &lowest), Some(Some(2)));

        // Each answer is the topology's own.
        for id in 0..4 {
            for irq in [fixed, lowest] {
                let expected = u.topology().unicast_target(to(id), &irq);
                let mut fresh = UnicastCache::default();
                assert_eq!(u.unicast_target(Some(&mut fresh), to(id), &irq), expected);
                assert_eq!(u.unicast_target(None, to(id), &irq), expected);
            }
        }
    }
}
