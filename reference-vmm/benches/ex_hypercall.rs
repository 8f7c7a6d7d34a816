//! The VMM's service path of a 64-bank Ex hypercall without KVM: decode
//! (hv-enlightenments, input read from guest memory) and dispatch
//! (reference-vmm's flush requests and posted IPIs) on 1024 vCPUs.
//!
//! * `ex64_flush`: the FlushVirtualAddressSpaceEx call the `hypercall-ex64`
//!   scenario makes (VP `64 i + 1` in each of the 64 banks; 16 of them
//!   exist). The targets are not in guest mode, so each gets a deferred
//!   flush.
//! * `ex64_ipi`: HvCallSendSyntheticClusterIpiEx with all 64 banks
//!   present, naming every VP but the sender's (1023 existing targets;
//!   banks 16..63 name none), posted through ipiv with `Vcpu::post_at`
//!   and one stamp per call, as the user irqchip's PV IPI does. No target
//!   is woken or kicked: `fresh` targets are outside the guest with
//!   nothing pending (each post sets ON and reads the run state; decode
//!   included), `busy` ones already have a notification outstanding (each
//!   post only sets its PIR bit; decoded beforehand).
//!
//! Throughput is in targets, so criterion's `elem/s` gives the cost per
//! existing target.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hv_enlightenments::hypercall::{
    CallCode, Control, GENERIC_SET_SPARSE_4K, HypercallRegs, MAX_SPARSE_BANKS, decode,
};
use lapic::LocalApic;
use reference_vmm::clock::HostClock;
use reference_vmm::guest::scenarios::ex64_input;
use reference_vmm::hyperv::hypercall::dispatch;
use reference_vmm::ipi_path::Stamp;
use reference_vmm::metrics::VcpuMetrics;
use reference_vmm::vcpu::Vcpu;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const VCPUS: u32 = 1024;
const INPUT_GPA: u64 = 0x10_0000;
/// Existing targets of the flush: VP 64 i + 1 for the 16 banks below 1024.
const FLUSH_TARGETS: u64 = 16;
/// Existing targets of the IPI: every vCPU but the sender, VP 0.
const IPI_TARGETS: u64 = VCPUS as u64 - 1;
/// The IPI's vector in the `fresh` runs.
const VECTOR: u8 = 0x40;
/// Vector kept pending in the `busy` runs, so that ON stays set.
const KEEPER: u8 = 0xff;
/// First vector of a `busy` run; each call of the run posts the next one.
const FIRST: u8 = 0x20;

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

fn memory(words: &[u64]) -> GuestMemoryMmap<()> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("memory");
    for (i, w) in words.iter().enumerate() {
        mem.write_obj(*w, GuestAddress(INPUT_GPA + 8 * i as u64))
            .expect("input");
    }
    mem
}

fn regs(control: u64) -> HypercallRegs {
    HypercallRegs {
        rcx: control,
        rdx: INPUT_GPA,
        r8: 0,
        ..Default::default()
    }
}

/// The SendSyntheticClusterIpiEx input: vector, sparse format, all 64
/// banks present, every VP named but VP 0.
fn ipi_input(vector: u8) -> (u64, Vec<u64>) {
    let mut w = vec![u64::from(vector), GENERIC_SET_SPARSE_4K, u64::MAX];
    w.extend((0..MAX_SPARSE_BANKS).map(|b| if b == 0 { !1 } else { u64::MAX }));
    let control = Control::new()
        .with_code(CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX.0)
        .with_variable_header_size(MAX_SPARSE_BANKS as u16)
        .into_bits();
    (control, w)
}

/// Takes every pending vector (as each target's thread would before it
/// enters the guest again); with `keep_on`, leaves [`KEEPER`] pending.
fn reset(vcpus: &[Vcpu], keep_on: bool) {
    for v in vcpus {
        let d = v.posted.descriptor();
        d.take();
        if keep_on {
            let _ = d.post(KEEPER);
        }
    }
}

fn flush(c: &mut Criterion, vcpus: &[Vcpu], metrics: &VcpuMetrics) {
    let (control, words) = ex64_input();
    let mem = memory(&words);
    let regs = regs(control);
    let mut g = c.benchmark_group("ex64_flush");
    g.throughput(Throughput::Elements(FLUSH_TARGETS));
    g.bench_function("decode", |b| {
        b.iter(|| decode(black_box(&regs), &mem).expect("decodes"))
    });
    g.bench_function("decode_dispatch_1024_vcpus", |b| {
        b.iter(|| {
            let call = decode(black_box(&regs), &mem).expect("decodes");
            dispatch(vcpus, metrics, &call, |t, v| t.post(v)).expect("dispatches")
        })
    });
    g.finish();
}

fn ipi(c: &mut Criterion, vcpus: &[Vcpu], metrics: &VcpuMetrics) {
    let (control, words) = ipi_input(VECTOR);
    let mem = memory(&words);
    let regs = regs(control);
    let mut g = c.benchmark_group("ex64_ipi");
    g.throughput(Throughput::Elements(IPI_TARGETS));
    g.bench_function("decode", |b| {
        b.iter(|| decode(black_box(&regs), &mem).expect("decodes"))
    });
    g.bench_function(BenchmarkId::new("decode_post", "fresh"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                reset(vcpus, false);
                let start = Instant::now();
                let call = decode(black_box(&regs), &mem).expect("decodes");
                let stamp = Stamp::now();
                black_box(
                    dispatch(vcpus, metrics, &call, |t, v| t.post_at(v, stamp)).expect("posts"),
                );
                total += start.elapsed();
            }
            total
        })
    });
    g.bench_function(BenchmarkId::new("post", "busy"), |b| {
        b.iter_custom(|iters| {
            // Dispatch only (decoded beforehand): runs of distinct vectors
            // between resets, one clock read per run.
            let mut total = Duration::ZERO;
            let mut left = iters;
            let calls: Vec<_> = (FIRST..KEEPER)
                .map(|v| {
                    mem.write_obj(u64::from(v), GuestAddress(INPUT_GPA))
                        .expect("vector");
                    decode(&regs, &mem).expect("decodes")
                })
                .collect();
            while left > 0 {
                reset(vcpus, true);
                let run = left.min(calls.len() as u64);
                let start = Instant::now();
                for call in calls.iter().take(run as usize) {
                    let stamp = Stamp::now();
                    black_box(
                        dispatch(vcpus, metrics, call, |t, v| t.post_at(v, stamp)).expect("posts"),
                    );
                }
                total += start.elapsed();
                left -= run;
            }
            total
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let vcpus = vcpus();
    let metrics = VcpuMetrics::default();
    flush(c, &vcpus, &metrics);
    ipi(c, &vcpus, &metrics);
}

criterion_group!(benches, bench);
criterion_main!(benches);
