//! Random operation sequences over a small VM of local APICs, with the
//! model's invariants checked after every step. Shared by the proptest in
//! `tests/invariants.rs` and the cargo-fuzz target in `fuzz/`.

use std::sync::Arc;

use hv_enlightenments::msr::{HV_X64_MSR_EOI, HV_X64_MSR_ICR, HV_X64_MSR_TPR};
use vm_lapic::regs::{
    APIC_BASE_ENABLE, APIC_BASE_EXTD, APIC_DEFAULT_BASE, MSR_APIC_BASE, MSR_TSC_DEADLINE,
    MSR_X2APIC_FIRST,
};
use vm_lapic::{
    ApicMode, Config, Delivery, DeliveryMode, Effect, IdFormat, Interrupt, LocalApic, Lvt,
    ManualClock, Outcome, Topology, TriggerMode, VcpuSet, VectorBitmap,
};

/// APIC IDs of the VM: one above 255 so xAPIC-mode aliasing is exercised.
const IDS: [u32; 3] = [0, 1, 0x101];

struct Bytes<'a> {
    data: &'a [u8],
}

impl Bytes<'_> {
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
}

fn expected_ppr(tpr: u8, isr: &VectorBitmap) -> u8 {
    let isrv = isr.highest().unwrap_or(0);
    if tpr & 0xF0 >= isrv & 0xF0 {
        tpr
    } else {
        isrv & 0xF0
    }
}

struct Vm {
    apics: Vec<LocalApic>,
    topo: Topology,
    clock: Arc<ManualClock>,
}

impl Vm {
    fn new() -> Self {
        let clock = Arc::new(ManualClock::new(2_000_000));
        let mut topo = Topology::new();
        let mut apics = Vec::new();
        for (i, id) in IDS.into_iter().enumerate() {
            let a = LocalApic::new(Config::new(id), clock.clone()).expect("valid config");
            topo.add(i, a.identity()).expect("valid topology");
            apics.push(a);
        }
        Self { apics, topo, clock }
    }

    /// Applies an outcome of vCPU `src` as a VMM would, checking each
    /// effect against the APIC's state.
    fn apply(&mut self, src: usize, out: Outcome) {
        let Outcome::Effect(e) = out else {
            return;
        };
        match e {
            Effect::Topology(id) => {
                assert_eq!(id, self.apics[src].identity());
                self.topo.update(src, id).expect("known vCPU");
            }
            Effect::Timer(d) => assert_eq!(d, self.apics[src].next_deadline()),
            Effect::Eoi(e) => {
                assert!(!self.apics[src].isr().test(e.vector));
                assert_eq!(e.level_triggered, self.apics[src].tmr().test(e.vector));
            }
            Effect::SelfDelivered(_) => {}
            Effect::SendIpi(ipi) => {
                let mut targets = VcpuSet::new();
                let n = self.topo.resolve_ipi(src, &ipi, &mut targets);
                assert_eq!(n, targets.len());
                if ipi.delivery_mode == DeliveryMode::LowestPriority {
                    assert!(n <= 1);
                }
                for t in targets.iter() {
                    let before = *self.apics[t].isr();
                    let d = self.apics[t].deliver(&ipi.interrupt());
                    assert_eq!(before, *self.apics[t].isr(), "delivery set an ISR bit");
                    if d == Delivery::Accepted || d == Delivery::Coalesced {
                        assert!(self.apics[t].irr().test(ipi.vector));
                    }
                }
            }
        }
    }

    fn check(&self, isr_before: &[VectorBitmap], acked: Option<(usize, u8)>) {
        for (i, a) in self.apics.iter().enumerate() {
            assert_eq!(a.ppr(), expected_ppr(a.tpr(), a.isr()), "PPR of vCPU {i}");
            if let Some(v) = a.pending() {
                assert!(a.irr().test(v));
                assert!(v & 0xF0 > a.ppr());
                assert_ne!(a.mode(), ApicMode::Disabled);
            }
            let new_bits: Vec<u8> = a.isr().iter().filter(|v| !isr_before[i].test(*v)).collect();
            match acked {
                Some((who, v)) if who == i => assert!(new_bits.is_empty() || new_bits == [v]),
                _ => assert!(new_bits.is_empty(), "ISR bit set outside acknowledge"),
            }
            assert_eq!(
                self.topo.identity(i),
                Some(a.identity()),
                "topology of vCPU {i}"
            );
        }
    }
}

fn pick_msr(b: &mut Bytes<'_>) -> u32 {
    match b.u8() % 8 {
        0 => MSR_APIC_BASE,
        1 => MSR_TSC_DEADLINE,
        2 => HV_X64_MSR_EOI,
        3 => HV_X64_MSR_ICR,
        4 => HV_X64_MSR_TPR,
        5 => b.u32(),
        _ => MSR_X2APIC_FIRST + u32::from(b.u8()),
    }
}

fn pick_apic_base(b: &mut Bytes<'_>) -> u64 {
    let base = APIC_DEFAULT_BASE;
    match b.u8() % 5 {
        0 => base,
        1 => base | APIC_BASE_ENABLE,
        2 => base | APIC_BASE_ENABLE | APIC_BASE_EXTD,
        3 => base | APIC_BASE_EXTD,
        _ => b.u64(),
    }
}

/// What a run reached, so tests can tell the harness is not vacuous.
#[derive(Debug, Default)]
pub struct Stats {
    /// Successful acknowledges.
    pub acknowledged: usize,
    /// EOIs that retired a vector.
    pub eois: usize,
}

/// Runs the operations encoded in `data`; panics if an invariant breaks.
pub fn run(data: &[u8]) -> Stats {
    let mut stats = Stats::default();
    let mut b = Bytes { data };
    let mut vm = Vm::new();
    let mut steps = 0;
    while !b.is_empty() && steps < 4096 {
        steps += 1;
        let op = b.u8();
        let i = usize::from(b.u8()) % vm.apics.len();
        let isr_before: Vec<VectorBitmap> = vm.apics.iter().map(|a| *a.isr()).collect();
        let mut acked = None;
        match op % 16 {
            0 => {
                let off = u64::from(b.u16() % 0x1010);
                let mut buf = vec![0u8; usize::from(b.u8() % 9)];
                vm.apics[i].read_mmio(off, &mut buf);
            }
            1 => {
                let off = if b.u8() & 1 == 0 {
                    u64::from(b.u8() % 0x41) * 16
                } else {
                    u64::from(b.u16())
                };
                let len = if b.u8() & 3 == 0 {
                    usize::from(b.u8() % 9)
                } else {
                    4
                };
                let v = b.u64().to_le_bytes();
                let out = vm.apics[i].write_mmio(off, &v[..len]);
                assert_ne!(out, Outcome::Gp, "MMIO never faults");
                vm.apply(i, out);
            }
            2 => {
                let msr = pick_msr(&mut b);
                let _ = vm.apics[i].read_msr(msr);
            }
            3 => {
                let msr = pick_msr(&mut b);
                let v = if msr == MSR_APIC_BASE {
                    pick_apic_base(&mut b)
                } else if b.u8() & 1 == 0 {
                    u64::from(b.u32())
                } else {
                    b.u64()
                };
                let out = vm.apics[i].write_msr(msr, v);
                vm.apply(i, out);
            }
            4 => {
                let irq = Interrupt {
                    vector: b.u8(),
                    delivery_mode: DeliveryMode::from_reg(u32::from(b.u8()) << 8),
                    trigger_mode: if b.u8() & 1 == 0 {
                        TriggerMode::Edge
                    } else {
                        TriggerMode::Level
                    },
                    level_assert: b.u8() & 1 == 0,
                };
                let _ = vm.apics[i].deliver(&irq);
            }
            5 => {
                let v = if b.u8() & 1 == 0 {
                    vm.apics[i].pending()
                } else {
                    Some(b.u8())
                };
                if let Some(v) = v {
                    if vm.apics[i].acknowledge(v) {
                        acked = Some((i, v));
                        stats.acknowledged += 1;
                        assert!(!vm.apics[i].irr().test(v));
                    }
                }
            }
            6 => {
                let highest = vm.apics[i].isr().highest();
                let e = vm.apics[i].eoi();
                assert_eq!(e.map(|e| e.vector), highest);
                stats.eois += usize::from(e.is_some());
            }
            7 => {
                vm.clock.advance(u64::from(b.u32()));
                let p = vm.apics[i].poll_timer();
                assert_eq!(p.next_deadline, vm.apics[i].next_deadline());
                if let Some(d) = p.next_deadline {
                    assert!(d > vm_lapic::Clock::now_ns(&*vm.clock));
                }
            }
            8 => {
                if vm.apics[i].arm_lazy_eoi() {
                    assert!(vm.apics[i].irr().is_empty());
                    assert!(vm.apics[i].isr().highest().is_some());
                }
            }
            9 => {
                let armed = vm.apics[i].lazy_eoi_armed();
                if let Some(e) = vm.apics[i].complete_lazy_eoi(b.u8() & 1 == 0) {
                    assert!(armed);
                    assert!(isr_before[i].test(e.vector));
                    assert!(!vm.apics[i].isr().test(e.vector));
                    assert!(!e.level_triggered);
                }
            }
            10 => {
                let w = b.u64();
                vm.apics[i].set_auto_eoi_vectors(VectorBitmap::from_words([
                    w,
                    w.rotate_left(17),
                    w,
                    !w,
                ]));
            }
            11 => {
                let v = pick_apic_base(&mut b);
                let out = vm.apics[i].set_apic_base(v, true);
                vm.apply(i, out);
            }
            12 => {
                let id = vm.apics[i].init_reset();
                vm.topo.update(i, id).expect("known vCPU");
            }
            13 => {
                let format = if b.u8() & 1 == 0 {
                    IdFormat::Legacy
                } else {
                    IdFormat::X2ApicApi
                };
                let page = vm.apics[i].save_state(format);
                let pending = vm.apics[i].pending();
                let id = vm.apics[i]
                    .restore_state(&page, format)
                    .expect("own snapshot");
                vm.topo.update(i, id).expect("known vCPU");
                assert_eq!(vm.apics[i].pending(), pending);
                assert_eq!(*vm.apics[i].isr(), isr_before[i]);
            }
            14 => {
                let lvt = Lvt::ALL[usize::from(b.u8()) % Lvt::ALL.len()];
                let _ = vm.apics[i].local_interrupt(lvt);
            }
            _ => vm.apics[i].set_cr8(u64::from(b.u8())),
        }
        vm.check(&isr_before, acked);
    }
    stats
}
