//! The IPI fast path: post one vector to 1, 64 and 1024 targets.
//!
//! `no_notify`: every target already has a notification outstanding (ON
//! set by an earlier vector), so each post only sets its PIR bit: the
//! common case of a busy target. `coalesced`: the vector is already
//! pending everywhere. `notify_outside`: ON is clear and the targets are
//! outside the guest, so each post sets ON and reads the run state.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ipiv::{Delivery, PidTable};

/// Vector kept pending so that ON stays set.
const KEEPER: u8 = 0xff;
/// First vector posted in a `no_notify` run.
const FIRST: u8 = 0x20;

fn table(n: u32) -> (PidTable, Vec<u32>) {
    let t = PidTable::new(4095).expect("4095 is the largest last index");
    // Spread the IDs like a sparse x2APIC topology.
    let ids: Vec<u32> = (0..n).map(|i| (i * 4) % 4096).collect();
    for &id in &ids {
        t.register(id).expect("distinct ids");
    }
    (t, ids)
}

fn reset(t: &PidTable, keep_on: bool) {
    for v in t.iter() {
        v.descriptor().take();
        if keep_on {
            let _ = v.descriptor().post(KEEPER);
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("post_ipi");
    for n in [1u32, 64, 1024] {
        let (t, ids) = table(n);
        let mut out = vec![Delivery::default(); ids.len()];
        g.throughput(Throughput::Elements(u64::from(n)));

        g.bench_with_input(BenchmarkId::new("no_notify", n), &n, |b, _| {
            b.iter_custom(|iters| {
                // Timed in runs of distinct vectors between resets, so the
                // clock is read once per run rather than once per call.
                let mut total = Duration::ZERO;
                let mut left = iters;
                while left > 0 {
                    reset(&t, true);
                    let run = left.min(u64::from(KEEPER - FIRST));
                    let start = Instant::now();
                    for i in 0..run {
                        let vector = FIRST + i as u8;
                        black_box(t.post_ipi(&ids, vector, &mut out).expect("valid"));
                    }
                    total += start.elapsed();
                    left -= run;
                }
                total
            });
        });

        g.bench_with_input(BenchmarkId::new("coalesced", n), &n, |b, _| {
            reset(&t, true);
            b.iter(|| black_box(t.post_ipi(&ids, KEEPER, &mut out).expect("valid").len()));
        });

        g.bench_with_input(BenchmarkId::new("notify_outside", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    reset(&t, false);
                    let start = Instant::now();
                    black_box(t.post_ipi(&ids, 0x40, &mut out).expect("valid"));
                    total += start.elapsed();
                }
                total
            });
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
