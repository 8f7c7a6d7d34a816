//! Synthetic MSR hot paths: the EOI alias (one per interrupt without lazy
//! EOI), a SINT write with AutoEOI tracking, and the CPUID policy.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use hv_enlightenments::cpuid::{CpuidBuilder, Privileges};
use hv_enlightenments::msr::{
    self, HV_X64_MSR_EOI, HV_X64_MSR_SINT0, HV_X64_MSR_VP_INDEX, MsrScope, Vp,
};

fn bench(c: &mut Criterion) {
    let mut vp = Vp::new(0, Privileges::all()).unwrap();
    c.bench_function("msr_write_eoi", |b| {
        b.iter(|| {
            let msr = black_box(HV_X64_MSR_EOI);
            match msr::scope(msr) {
                Some(MsrScope::Vp) => vp.write(msr, black_box(0), &|_| true),
                _ => unreachable!(),
            }
        })
    });
    c.bench_function("msr_read_vp_index", |b| {
        b.iter(|| vp.read(black_box(HV_X64_MSR_VP_INDEX)))
    });
    let mut toggle = 0u64;
    c.bench_function("msr_write_sint_auto_eoi_toggle", |b| {
        b.iter(|| {
            toggle ^= 1 << 17;
            vp.write(black_box(HV_X64_MSR_SINT0 + 3), 0x40 | toggle, &|_| true)
        })
    });
    c.bench_function("cpuid_build_300_vcpus", |b| {
        b.iter(|| CpuidBuilder::new(black_box(300)).build())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
