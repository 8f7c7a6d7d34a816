//! Hot-path benchmarks: one interrupt through deliver -> pending ->
//! acknowledge -> EOI, and resolving a broadcast across 1024 APICs.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use vm_lapic::regs::{APIC_BASE_ENABLE, APIC_BASE_EXTD, APIC_DEFAULT_BASE, MSR_APIC_BASE, SVR};
use vm_lapic::{
    Config, Destination, DestinationMode, Interrupt, LocalApic, ManualClock, Shorthand, Topology,
    VcpuSet,
};

fn enabled(id: u32, x2: bool) -> LocalApic {
    let clock = Arc::new(ManualClock::new(0));
    let mut a = LocalApic::new(Config::new(id), clock).expect("valid config");
    let _ = a.write_mmio(u64::from(SVR), &0x1FFu32.to_le_bytes());
    if x2 {
        let _ = a.write_msr(
            MSR_APIC_BASE,
            APIC_DEFAULT_BASE | APIC_BASE_ENABLE | APIC_BASE_EXTD,
        );
    }
    a
}

fn interrupt_round_trip(c: &mut Criterion) {
    let mut apic = enabled(0, false);
    let irq = Interrupt::fixed(0x40);
    c.bench_function("deliver_pending_ack_eoi", |b| {
        b.iter(|| {
            let _ = apic.deliver(black_box(&irq));
            let v = apic.pending().expect("pending");
            apic.acknowledge(v);
            black_box(apic.eoi())
        })
    });
}

fn broadcast_1024(c: &mut Criterion) {
    let mut topo = Topology::new();
    for i in 0..1024u32 {
        topo.add(i as usize, enabled(i, true).identity())
            .expect("valid topology");
    }
    let mut out = VcpuSet::new();
    let irq = Interrupt::fixed(0x40);
    let bcast = Destination {
        mode: DestinationMode::Physical,
        shorthand: Shorthand::None,
        id: u32::MAX,
    };
    c.bench_function("resolve_broadcast_1024", |b| {
        b.iter(|| black_box(topo.resolve(Some(0), black_box(bcast), &irq, &mut out)))
    });
    let unicast = Destination { id: 777, ..bcast };
    c.bench_function("resolve_unicast_1024", |b| {
        b.iter(|| black_box(topo.resolve(Some(0), black_box(unicast), &irq, &mut out)))
    });
    // The same IPI without a VcpuSet (zeroing its 512 bytes per call).
    c.bench_function("unicast_target_1024", |b| {
        b.iter(|| black_box(topo.unicast_target(black_box(unicast), &irq)))
    });
    let all_but_self = Destination {
        shorthand: Shorthand::AllExcludingSelf,
        ..bcast
    };
    c.bench_function("resolve_all_but_self_1024", |b| {
        b.iter(|| black_box(topo.resolve(Some(0), black_box(all_but_self), &irq, &mut out)))
    });
}

criterion_group!(benches, interrupt_round_trip, broadcast_1024);
criterion_main!(benches);
