//! Decode + iterate and encode of Ex flush calls: 1 and 64 banks, with no
//! ranges and with a long range list. Throughput is in targets (one VP
//! per bank), so `elem/s` gives the cost per target.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use hv_enlightenments::hypercall::{
    EncodeOptions, FlushFlags, FlushRequest, GvaRange, HV_PAGE_SIZE, Hypercall, SliceMemory,
    Targets, VpSet, decode, encode_flush,
};

const INPUT_GPA: u64 = 0x20_0000;
/// One VP in each of `banks` banks, starting at bank 1 so an Ex call is
/// needed even for one bank.
fn targets(banks: u32) -> Vec<u32> {
    (0..banks).map(|b| ((b + 1) % 64) * 64 + b % 64).collect()
}

fn ranges(n: usize) -> Vec<GvaRange> {
    (0..n as u64)
        .map(|i| GvaRange::new(0x7f00_0000_0000 + (i << 24), 15))
        .collect()
}

/// Decodes and walks every target and range, as a VMM would.
fn decode_and_walk(
    regs: &hv_enlightenments::hypercall::HypercallRegs,
    mem: &SliceMemory<'_>,
) -> u64 {
    let mut acc = 0u64;
    if let Ok(Hypercall::Flush(f)) = decode(regs, mem) {
        match &f.targets {
            VpSet::All => acc += 1,
            VpSet::Sparse(set) => {
                for vp in set.iter() {
                    acc = acc.wrapping_add(u64::from(vp));
                }
            }
        }
        for r in f.ranges.iter(mem) {
            acc = acc.wrapping_add(r.map_or(u64::MAX, |r| r.page_count()));
        }
    }
    acc
}

fn bench(c: &mut Criterion) {
    let options = EncodeOptions {
        ex_processor_masks: true,
        xmm_input: false,
    };
    let mut group = c.benchmark_group("ex_flush");
    // 64 banks leave room for 444 entries in the page; 500 only fits with
    // fewer banks.
    for (banks, nranges) in [(1u32, 0usize), (1, 500), (64, 0), (64, 444)] {
        let vps = targets(banks);
        let rs = ranges(nranges);
        let request = FlushRequest {
            address_space: 0x1234_5000,
            flags: FlushFlags::empty(),
            ranges: &rs,
        };
        let mut page = [0u8; HV_PAGE_SIZE];
        let call = encode_flush(Targets::new(&vps), request, options, &mut page, INPUT_GPA)
            .expect("benchmark input encodes");
        assert_eq!(usize::from(call.control.rep_count()), nranges);
        let regs = call.regs();
        let mem = SliceMemory::new(INPUT_GPA, &page);
        let id = format!("{banks}banks_{nranges}ranges");
        // Per target: one VP per bank.
        group.throughput(Throughput::Elements(u64::from(banks)));
        assert!(decode_and_walk(&regs, &mem) > 0);
        group.bench_function(BenchmarkId::new("decode_iterate", &id), |b| {
            b.iter(|| decode_and_walk(black_box(&regs), black_box(&mem)))
        });
        group.bench_function(BenchmarkId::new("encode", &id), |b| {
            let mut out = [0u8; HV_PAGE_SIZE];
            b.iter(|| {
                encode_flush(
                    Targets::new(black_box(&vps)),
                    black_box(request),
                    options,
                    &mut out,
                    INPUT_GPA,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
