//! The VMM's service path of a 64-bank Ex hypercall without KVM: decode
//! (hv-enlightenments, input read from guest memory) and dispatch
//! (reference-vmm's flush requests) of the FlushVirtualAddressSpaceEx call
//! the `hypercall-ex64` scenario makes, on 1024 vCPUs that are not in
//! guest mode (so every existing target gets a deferred flush).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use hv_enlightenments::hypercall::{HypercallRegs, decode};
use lapic::LocalApic;
use reference_vmm::clock::HostClock;
use reference_vmm::guest::scenarios::ex64_input;
use reference_vmm::hyperv::hypercall::dispatch;
use reference_vmm::metrics::VcpuMetrics;
use reference_vmm::vcpu::Vcpu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const VCPUS: u32 = 1024;
const INPUT_GPA: u64 = 0x10_0000;

fn vcpus() -> Vec<Vcpu> {
    let clock = Arc::new(HostClock::new(1_000_000, None));
    let table = ipiv::PidTable::new(VCPUS - 1).expect("PID table");
    (0..VCPUS)
        .map(|i| {
            let apic = LocalApic::new(lapic::Config::new(i), clock.clone()).expect("APIC");
            let posted = table.register(i).expect("PID entry");
            Vcpu::new(i, apic, None, posted)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (control, words) = ex64_input();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("memory");
    for (i, w) in words.iter().enumerate() {
        mem.write_obj(*w, GuestAddress(INPUT_GPA + 8 * i as u64))
            .expect("input");
    }
    let regs = HypercallRegs {
        rcx: control,
        rdx: INPUT_GPA,
        r8: 0,
        ..Default::default()
    };
    let vcpus = vcpus();
    let metrics = VcpuMetrics::default();
    let mut g = c.benchmark_group("ex64_flush");
    g.bench_function("decode", |b| {
        b.iter(|| decode(black_box(&regs), &mem).expect("decodes"))
    });
    g.bench_function("decode_dispatch_1024_vcpus", |b| {
        b.iter(|| {
            let call = decode(black_box(&regs), &mem).expect("decodes");
            dispatch(&vcpus, &metrics, &call, |t, v| t.post(v)).expect("dispatches")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
