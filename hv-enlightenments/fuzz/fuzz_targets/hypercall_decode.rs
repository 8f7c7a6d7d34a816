//! Fuzzes the hypercall decoder with guest-controlled registers and input
//! memory, in both the memory and the fast (RDX/R8/XMM) forms.
//!
//! Input layout: RCX, RDX offset, R8 (8 bytes each), XMM0-5 (16 bytes each),
//! then the bytes of guest memory mapped at `BASE`.

#![no_main]

use hv_enlightenments::hypercall::{
    CallCode, EncodeOptions, FlushRequest, GvaRange, HV_PAGE_SIZE, Hypercall, HypercallRegs,
    SliceMemory, Targets, VpSet, decode, encode_flush, encode_send_ipi,
};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x10_0000;
/// The call codes the decoder knows; a selector byte picks one most of the
/// time so the fuzzer does not spend its time on unknown codes.
const CODES: [CallCode; 7] = [
    CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE,
    CallCode::FLUSH_VIRTUAL_ADDRESS_LIST,
    CallCode::NOTIFY_LONG_SPIN_WAIT,
    CallCode::SEND_SYNTHETIC_CLUSTER_IPI,
    CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
    CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX,
];
const HEADER: usize = 3 * 8 + 6 * 16;

fn word(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = data.get(i * 8..i * 8 + 8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut rcx = word(data, 0);
    // The low byte of the code field picks a known code unless its top
    // bit is set.
    if rcx & 0x80 == 0 {
        let code = CODES[(rcx as usize & 0x7F) % CODES.len()];
        rcx = (rcx & !0xFFFF) | u64::from(code.0);
    }
    let memory = data.get(HEADER..).unwrap_or(&[]);
    // RDX: mostly inside (or just past) guest memory, at any alignment.
    let span = memory.len() as u64 + 2 * HV_PAGE_SIZE as u64;
    let rdx_raw = word(data, 1);
    let rdx = if rdx_raw >> 63 == 0 {
        BASE + rdx_raw % span
    } else {
        rdx_raw
    };
    let mut xmm = [0u128; 6];
    for (i, x) in xmm.iter_mut().enumerate() {
        *x = u128::from(word(data, 3 + 2 * i)) | u128::from(word(data, 4 + 2 * i)) << 64;
    }
    let regs = HypercallRegs {
        rcx,
        rdx,
        r8: word(data, 2),
        xmm,
    };
    let mem = SliceMemory::new(BASE, memory);

    match decode(&regs, &mem) {
        Ok(Hypercall::Flush(flush)) => {
            assert!(flush.ranges.len() <= usize::from(flush.rep_count));
            // Re-encoding what was decoded must decode to the same targets.
            if let VpSet::Sparse(set) = &flush.targets {
                let vps: Vec<u32> = set.iter().collect();
                let Ok(ranges) = flush
                    .ranges
                    .iter(&mem)
                    .collect::<Result<Vec<GvaRange>, _>>()
                else {
                    panic!("ranges readable at decode are readable after");
                };
                let request = FlushRequest {
                    address_space: flush.address_space,
                    flags: flush.flags,
                    ranges: &ranges,
                };
                let options = EncodeOptions {
                    ex_processor_masks: true,
                    xmm_input: rcx & 1 << 16 != 0,
                };
                let mut page = [0u8; HV_PAGE_SIZE];
                if let Ok(call) =
                    encode_flush(Targets::new(&vps), request, options, &mut page, BASE)
                {
                    let again = decode(&call.regs(), &SliceMemory::new(BASE, &page));
                    match again {
                        Ok(Hypercall::Flush(f)) => match f.targets {
                            VpSet::Sparse(s) => assert!(s.iter().eq(vps.iter().copied())),
                            VpSet::All => panic!("sparse targets came back as all"),
                        },
                        other => panic!("re-encoded flush decoded as {other:?}"),
                    }
                }
            }
        }
        Ok(Hypercall::SendIpi(ipi)) => {
            if let VpSet::Sparse(set) = &ipi.targets {
                if set.is_empty() {
                    return;
                }
                assert!(ipi.vector >= 0x10);
                let vps: Vec<u32> = set.iter().collect();
                let options = EncodeOptions {
                    ex_processor_masks: true,
                    xmm_input: rcx & 1 << 16 != 0,
                };
                let mut page = [0u8; HV_PAGE_SIZE];
                let call =
                    encode_send_ipi(Targets::new(&vps), ipi.vector, options, &mut page, BASE)
                        .expect("a decoded IPI re-encodes");
                match decode(&call.regs(), &SliceMemory::new(BASE, &page)) {
                    Ok(Hypercall::SendIpi(i)) => {
                        assert_eq!(i.vector, ipi.vector);
                        match i.targets {
                            VpSet::Sparse(s) => assert!(s.iter().eq(vps.iter().copied())),
                            VpSet::All => panic!("sparse targets came back as all"),
                        }
                    }
                    other => panic!("re-encoded IPI decoded as {other:?}"),
                }
            } else {
                assert!(ipi.vector >= 0x10);
            }
        }
        Ok(Hypercall::NotifyLongSpinWait { .. }) | Err(_) => {}
    }
});
