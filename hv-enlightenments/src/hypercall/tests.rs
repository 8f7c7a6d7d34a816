//! Decoder rules, the invalid-input table, encoder choices and
//! encode -> decode round trips.

extern crate std;

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

/// Guest memory of the tests: three pages at `BASE`.
const BASE: u64 = 0x10_0000;
/// A page-aligned input GPA inside it.
const INPUT: u64 = BASE + 0x1000;
const MEM_LEN: usize = 3 * HV_PAGE_SIZE;

struct Guest {
    bytes: Vec<u8>,
}

impl Guest {
    fn new() -> Self {
        Self {
            bytes: vec![0; MEM_LEN],
        }
    }

    fn write_words(&mut self, gpa: u64, words: &[u64]) {
        let at = (gpa - BASE) as usize;
        for (i, w) in words.iter().enumerate() {
            self.bytes[at + 8 * i..at + 8 * i + 8].copy_from_slice(&w.to_le_bytes());
        }
    }

    fn mem(&self) -> SliceMemory<'_> {
        SliceMemory::new(BASE, &self.bytes)
    }
}

fn control(code: CallCode, var: u16, reps: u16) -> Control {
    Control::new()
        .with_code(code.0)
        .with_variable_header_size(var)
        .with_rep_count(reps)
}

/// Decodes a memory-input call with `words` at `gpa`.
fn mem_call(control: Control, gpa: u64, words: &[u64]) -> Result<Hypercall, HvStatus> {
    let mut guest = Guest::new();
    let at = gpa.clamp(BASE, BASE + MEM_LEN as u64 - 8 * words.len() as u64) & !7;
    guest.write_words(at, words);
    let regs = HypercallRegs {
        rcx: control.into_bits(),
        rdx: gpa,
        ..Default::default()
    };
    decode(&regs, &guest.mem())
}

/// Decodes a memory-input flush and reads its ranges while the memory is
/// still there.
fn mem_flush(control: Control, gpa: u64, words: &[u64]) -> (Flush, Vec<u64>) {
    let mut guest = Guest::new();
    guest.write_words(gpa, words);
    let regs = HypercallRegs {
        rcx: control.into_bits(),
        rdx: gpa,
        ..Default::default()
    };
    let f = flush(decode(&regs, &guest.mem()));
    let ranges = raw(&f, &guest.mem());
    (f, ranges)
}

/// The raw range entries of `f`.
fn raw<M: GuestMemoryRead + ?Sized>(f: &Flush, mem: &M) -> Vec<u64> {
    f.ranges.iter(mem).map(|r| r.unwrap().0).collect()
}

fn fast_call(control: Control, rdx: u64, r8: u64, xmm: [u128; 6]) -> Result<Hypercall, HvStatus> {
    let regs = HypercallRegs {
        rcx: control.with_fast(true).into_bits(),
        rdx,
        r8,
        xmm,
    };
    decode(&regs, &NoMemory)
}

fn flush(result: Result<Hypercall, HvStatus>) -> Flush {
    match result {
        Ok(Hypercall::Flush(f)) => f,
        other => panic!("expected a flush, got {other:?}"),
    }
}

fn ipi(result: Result<Hypercall, HvStatus>) -> SendIpi {
    match result {
        Ok(Hypercall::SendIpi(i)) => i,
        other => panic!("expected an IPI, got {other:?}"),
    }
}

fn vps(set: &VpSet) -> Vec<u32> {
    match set {
        VpSet::All => panic!("expected a sparse set"),
        VpSet::Sparse(s) => s.iter().collect(),
    }
}

const SPACE: CallCode = CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE;
const LIST: CallCode = CallCode::FLUSH_VIRTUAL_ADDRESS_LIST;
const SPACE_EX: CallCode = CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX;
const LIST_EX: CallCode = CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX;
const IPI: CallCode = CallCode::SEND_SYNTHETIC_CLUSTER_IPI;
const IPI_EX: CallCode = CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX;
const CR3: u64 = 0x1234_5000;

#[test]
fn invalid_input_table() {
    let inv = HvStatus::INVALID_HYPERCALL_INPUT;
    let flush3 = [CR3, 0, 1];
    let flush_ex = [CR3, 0, GENERIC_SET_SPARSE_4K, 0b1, 1];
    let no_xmm = [0u128; 6];
    type Row = (&'static str, Result<Hypercall, HvStatus>, HvStatus);
    let rows: Vec<Row> = vec![
        (
            "reserved bit 27",
            mem_call(
                Control::from_bits(control(SPACE, 0, 0).into_bits() | 1 << 27),
                INPUT,
                &flush3,
            ),
            inv,
        ),
        (
            "reserved bit 31 (nested)",
            mem_call(
                Control::from_bits(control(SPACE, 0, 0).into_bits() | 1 << 31),
                INPUT,
                &flush3,
            ),
            inv,
        ),
        (
            "reserved bit 44",
            mem_call(
                Control::from_bits(control(SPACE, 0, 0).into_bits() | 1 << 44),
                INPUT,
                &flush3,
            ),
            inv,
        ),
        (
            "reserved bit 63",
            mem_call(
                Control::from_bits(control(SPACE, 0, 0).into_bits() | 1 << 63),
                INPUT,
                &flush3,
            ),
            inv,
        ),
        (
            "list with rep count 0",
            mem_call(control(LIST, 0, 0), INPUT, &flush3),
            inv,
        ),
        (
            "list Ex with rep count 0",
            mem_call(control(LIST_EX, 1, 0), INPUT, &flush_ex),
            inv,
        ),
        (
            "list with rep start 1",
            mem_call(
                control(LIST, 0, 2).with_rep_start(1),
                INPUT,
                &[CR3, 0, 1, 0, 0],
            ),
            inv,
        ),
        (
            "space with rep count 1",
            mem_call(control(SPACE, 0, 1), INPUT, &[CR3, 0, 1, 0]),
            inv,
        ),
        (
            "space Ex with rep start 1",
            mem_call(control(SPACE_EX, 1, 0).with_rep_start(1), INPUT, &flush_ex),
            inv,
        ),
        (
            "IPI with rep count 1",
            mem_call(control(IPI, 0, 1), INPUT, &[0x40, 1]),
            inv,
        ),
        (
            "IPI Ex with rep start 1",
            mem_call(
                control(IPI_EX, 0, 0).with_rep_start(1),
                INPUT,
                &[0x40, 1, 0],
            ),
            inv,
        ),
        (
            "non-Ex flush with variable header",
            mem_call(control(SPACE, 1, 0), INPUT, &[CR3, 0, 1, 0]),
            inv,
        ),
        (
            "non-Ex IPI with variable header",
            mem_call(control(IPI, 1, 0), INPUT, &[0x40, 1, 0]),
            inv,
        ),
        (
            "Ex header smaller than bank bits",
            mem_call(control(SPACE_EX, 1, 0), INPUT, &[CR3, 0, 0, 0b11, 1, 1]),
            inv,
        ),
        (
            "Ex header larger than bank bits",
            mem_call(control(SPACE_EX, 2, 0), INPUT, &[CR3, 0, 0, 0b1, 1, 1]),
            inv,
        ),
        (
            "Ex header with no bank bits",
            mem_call(control(IPI_EX, 1, 0), INPUT, &[0x40, 0, 0, 1]),
            inv,
        ),
        (
            "Ex all format, header vs bank bits",
            mem_call(
                control(SPACE_EX, 0, 0),
                INPUT,
                &[CR3, 0, GENERIC_SET_ALL, 1],
            ),
            inv,
        ),
        (
            "misaligned input GPA",
            mem_call(control(SPACE, 0, 0), INPUT + 4, &flush3),
            HvStatus::INVALID_ALIGNMENT,
        ),
        (
            "input straddles a page",
            mem_call(control(SPACE, 0, 0), INPUT + 0xFF0, &flush3),
            inv,
        ),
        (
            "list longer than the page",
            mem_call(
                control(LIST, 0, (MAX_GVA_RANGES + 1) as u16),
                INPUT,
                &flush3,
            ),
            inv,
        ),
        (
            "Ex banks push the list past the page",
            mem_call(
                control(LIST_EX, 1, MAX_GVA_RANGES as u16 - 1),
                INPUT,
                &flush_ex,
            ),
            inv,
        ),
        (
            "unreadable input GPA",
            mem_call(control(SPACE, 0, 0), 0x4000_0000, &flush3),
            inv,
        ),
        (
            "vector below 0x10",
            mem_call(control(IPI, 0, 0), INPUT, &[0x0F, 1]),
            inv,
        ),
        (
            "vector above 0xFF",
            mem_call(control(IPI, 0, 0), INPUT, &[0x100, 1]),
            inv,
        ),
        (
            "Ex vector below 0x10",
            mem_call(control(IPI_EX, 1, 0), INPUT, &[0x0F, 0, 1, 1]),
            inv,
        ),
        (
            "Ex all-format vector 0",
            mem_call(control(IPI_EX, 0, 0), INPUT, &[0, GENERIC_SET_ALL, 0]),
            inv,
        ),
        (
            "fast IPI reserved half set",
            fast_call(control(IPI, 0, 0), 1 << 32 | 0x40, 1, no_xmm),
            inv,
        ),
        (
            "fast IPI vector below 0x10",
            fast_call(control(IPI, 0, 0), 0x0F, 1, no_xmm),
            inv,
        ),
        (
            "fast list that does not fit XMM",
            fast_call(control(LIST, 0, 12), CR3, 0, no_xmm),
            inv,
        ),
        (
            "fast Ex list that does not fit XMM",
            fast_call(control(LIST_EX, 1, 10), CR3, 0, [1 << 64; 6]),
            inv,
        ),
        (
            "fast Ex IPI banks do not fit XMM",
            fast_call(control(IPI_EX, 12, 0), 0x40, 0, [0xFFF; 6]),
            inv,
        ),
        (
            "fast Ex flush with 11 banks does not fit",
            fast_call(control(SPACE_EX, 11, 0), CR3, 0, [0x7FF << 64; 6]),
            inv,
        ),
        (
            "spin wait with reps",
            mem_call(control(CallCode::NOTIFY_LONG_SPIN_WAIT, 0, 1), INPUT, &[]),
            inv,
        ),
        (
            "unknown code 0x0001",
            mem_call(control(CallCode(0x0001), 0, 0), INPUT, &flush3),
            HvStatus::INVALID_HYPERCALL_CODE,
        ),
        (
            "unknown code 0xFFFF",
            mem_call(control(CallCode(0xFFFF), 0, 0), INPUT, &flush3),
            HvStatus::INVALID_HYPERCALL_CODE,
        ),
        (
            "post message is not decoded",
            mem_call(control(CallCode(0x005C), 0, 0), INPUT, &flush3),
            HvStatus::INVALID_HYPERCALL_CODE,
        ),
    ];
    for (name, got, want) in rows {
        assert_eq!(got.as_ref().err(), Some(&want), "{name}: {got:?}");
    }
}

#[test]
fn unreadable_banks_and_ranges() {
    // Memory ends 40 bytes into the input page: the Ex header (32 bytes)
    // reads, the banks or ranges after it do not.
    let mut bytes = vec![0u8; HV_PAGE_SIZE + 40];
    let words = [CR3, 0, GENERIC_SET_SPARSE_4K, 0b11, 1, 2];
    for (i, w) in words.iter().take(5).enumerate() {
        bytes[HV_PAGE_SIZE + 8 * i..][..8].copy_from_slice(&w.to_le_bytes());
    }
    let mem = SliceMemory::new(BASE, &bytes);
    let at = BASE + HV_PAGE_SIZE as u64;
    let regs = |c: Control| HypercallRegs {
        rcx: c.into_bits(),
        rdx: at,
        ..Default::default()
    };
    let inv = Err(HvStatus::INVALID_HYPERCALL_INPUT);
    assert_eq!(decode(&regs(control(SPACE_EX, 2, 0)), &mem), inv);
    // Ranges after one readable bank: the header and bank read, the list not.
    let mut one_bank = words;
    one_bank[3] = 0b1;
    for (i, w) in one_bank.iter().take(5).enumerate() {
        bytes[HV_PAGE_SIZE + 8 * i..][..8].copy_from_slice(&w.to_le_bytes());
    }
    let mem = SliceMemory::new(BASE, &bytes);
    assert_eq!(decode(&regs(control(LIST_EX, 1, 1)), &mem), inv);
    assert!(decode(&regs(control(SPACE_EX, 1, 0)), &mem).is_ok());
}

#[test]
fn zero_processor_mask_means_all() {
    // kvm_hv_flush_tlb: WS2012 sends mask 0 without ALL_PROCESSORS.
    let f = flush(mem_call(control(SPACE, 0, 0), INPUT, &[CR3, 0, 0]));
    assert_eq!(f.targets, VpSet::All);
    let f = flush(mem_call(control(SPACE, 0, 0), INPUT, &[CR3, 1, 0b110]));
    assert_eq!(f.targets, VpSet::All);
    let f = flush(mem_call(control(SPACE, 0, 0), INPUT, &[CR3, 0, 0b110]));
    assert_eq!(vps(&f.targets), [1, 2]);
    assert_eq!((f.address_space, f.whole_space()), (CR3, true));
    // The IPI has no such rule: mask 0 is nobody.
    let i = ipi(mem_call(control(IPI, 0, 0), INPUT, &[0x40, 0]));
    assert_eq!(vps(&i.targets), Vec::<u32>::new());
}

#[test]
fn list_ranges_and_reps() {
    let (f, r) = mem_flush(
        control(LIST, 0, 2),
        INPUT,
        &[CR3, 2, 0b1, 0x7000_0003, 0x9000_0000],
    );
    assert_eq!(r, [0x7000_0003, 0x9000_0000]);
    assert_eq!(GvaRange(r[0]).page_count(), 4);
    assert_eq!(f.flags, FlushFlags::ALL_VIRTUAL_ADDRESS_SPACES);
    assert_eq!(Hypercall::Flush(f).completed().encode(), 2 << 32);
}

#[test]
fn full_page_list_fits() {
    // 509 entries after the 24-byte header end exactly at the page end.
    let mut words = vec![CR3, 0, 1];
    words.extend((0..MAX_GVA_RANGES as u64).map(|i| i << 12));
    let (f, r) = mem_flush(control(LIST, 0, MAX_GVA_RANGES as u16), INPUT, &words);
    assert_eq!(f.ranges.len(), MAX_GVA_RANGES);
    assert_eq!(r.last(), Some(&(508 << 12)));
    // The Ex header is one word longer: 508 fit with no banks.
    let mut words = vec![CR3, 0, GENERIC_SET_ALL, 0];
    words.extend(0..508u64);
    let f = flush(mem_call(control(LIST_EX, 0, 508), INPUT, &words));
    assert_eq!((f.targets, f.ranges.len()), (VpSet::All, 508));
    assert_eq!(
        mem_call(control(LIST_EX, 0, 509), INPUT, &words).err(),
        Some(HvStatus::INVALID_HYPERCALL_INPUT)
    );
}

#[test]
fn ex_flush_formats() {
    // Any format other than sparse is "all" for a flush; banks are skipped
    // but still counted before the list.
    let (f, r) = mem_flush(
        control(LIST_EX, 1, 1),
        INPUT,
        &[CR3, 0, 7, 0b1, 0xFF, 0x5000],
    );
    assert_eq!(f.targets, VpSet::All);
    assert_eq!(r, [0x5000]);
    // An empty sparse set succeeds with every rep done.
    let f = flush(mem_call(control(LIST_EX, 0, 3), INPUT, &[CR3, 0, 0, 0]));
    assert!(!f.targets.is_all() && f.targets.iter_present(64).next().is_none());
    assert_eq!(Hypercall::Flush(f).completed(), HypercallResult::success(3));
    // Sparse banks map to VPs 64k + bit.
    let f = flush(mem_call(
        control(SPACE_EX, 2, 0),
        INPUT,
        &[CR3, 0, 0, 1 << 1 | 1 << 63, 0b1, 1 << 63],
    ));
    assert_eq!(vps(&f.targets), [64, 4095]);
}

#[test]
fn ex_ipi_formats() {
    let i = ipi(mem_call(
        control(IPI_EX, 0, 0),
        INPUT,
        &[0xEF, GENERIC_SET_ALL, 0],
    ));
    assert_eq!((i.vector, i.targets), (0xEF, VpSet::All));
    // Only format 1 is "all" for an IPI; others read as sparse.
    let i = ipi(mem_call(
        control(IPI_EX, 1, 0),
        INPUT,
        &[0x31, 5, 0b100, 0b1],
    ));
    assert_eq!(vps(&i.targets), [128]);
    // kvm_hv_send_ipi returns success for an empty sparse set before it
    // checks the vector.
    let i = ipi(mem_call(control(IPI_EX, 0, 0), INPUT, &[0x3, 0, 0]));
    assert!(i.targets.iter_present(u32::MAX).next().is_none());
    // The reserved half of the memory header is not checked (as KVM).
    let i = ipi(mem_call(
        control(IPI, 0, 0),
        INPUT,
        &[0xFFFF_FFFF_0000_0040, 0b11],
    ));
    assert_eq!((i.vector, vps(&i.targets)), (0x40, vec![0, 1]));
}

#[test]
fn fast_forms() {
    // Fast non-Ex IPI: RDX = vector, R8 = mask.
    let i = ipi(fast_call(control(IPI, 0, 0), 0xFF, 1 << 63, [0; 6]));
    assert_eq!((i.vector, vps(&i.targets)), (0xFF, vec![63]));
    // Fast Ex IPI: R8 = format, XMM0 low = bank mask, then banks.
    let i = ipi(fast_call(
        control(IPI_EX, 2, 0),
        0x20,
        0,
        [0b101 | 0b1 << 64, 0b10, 0, 0, 0, 0],
    ));
    assert_eq!(vps(&i.targets), [0, 129]);
    // KVM reads only the low 32 bits of RDX for the Ex form.
    assert!(fast_call(control(IPI_EX, 0, 0), 1 << 40 | 0x20, 1, [0; 6]).is_ok());
    // Fast non-Ex flush list: XMM0 low = mask, then 11 entries fill XMM0-5.
    let mut xmm = [0u128; 6];
    xmm[0] = 0b1001 | 0x1000 << 64;
    for (i, reg) in xmm.iter_mut().enumerate().skip(1) {
        *reg = (0x1000 * (2 * i as u128)) | (0x1000 * (2 * i as u128 + 1)) << 64;
    }
    let f = flush(fast_call(control(LIST, 0, 11), CR3, 4, xmm));
    assert_eq!(vps(&f.targets), [0, 3]);
    assert_eq!(
        raw(&f, &NoMemory),
        (1..=11).map(|i| i * 0x1000).collect::<Vec<u64>>()
    );
    assert_eq!(f.flags, FlushFlags::NON_GLOBAL_MAPPINGS_ONLY);
    // Fast Ex flush: XMM0 = format | mask, banks, then ranges.
    let f = flush(fast_call(
        control(LIST_EX, 1, 1),
        CR3,
        0,
        [
            u128::from(GENERIC_SET_SPARSE_4K) | (1 << 5) << 64,
            0b1 | 0x7000 << 64,
            0,
            0,
            0,
            0,
        ],
    ));
    assert_eq!(vps(&f.targets), [320]);
    assert_eq!(raw(&f, &NoMemory), [0x7000]);
}

#[test]
fn spin_wait() {
    let regs = HypercallRegs {
        rcx: control(CallCode::NOTIFY_LONG_SPIN_WAIT, 0, 0)
            .with_fast(true)
            .into_bits(),
        rdx: 0xFFF,
        ..Default::default()
    };
    let call = decode(&regs, &NoMemory).unwrap();
    assert_eq!(call, Hypercall::NotifyLongSpinWait { count: 0xFFF });
    assert_eq!(call.code(), CallCode::NOTIFY_LONG_SPIN_WAIT);
    assert_eq!(call.completed().encode(), 0);
}

#[cfg(feature = "vm-memory")]
#[test]
fn vm_memory_backend() {
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(BASE), 2 * HV_PAGE_SIZE)]).unwrap();
    let words: [u64; 5] = [CR3, 0, 0b1, 0x4000, 0x8000];
    mem.write_slice(words.as_bytes(), GuestAddress(INPUT))
        .unwrap();
    let regs = HypercallRegs {
        rcx: control(LIST, 0, 2).into_bits(),
        rdx: INPUT,
        ..Default::default()
    };
    let f = flush(decode(&regs, &mem));
    assert_eq!(raw(&f, &mem), [0x4000, 0x8000]);
    // Past the end of guest memory.
    let regs = HypercallRegs {
        rdx: BASE + 2 * HV_PAGE_SIZE as u64,
        ..regs
    };
    assert_eq!(decode(&regs, &mem), Err(HvStatus::INVALID_HYPERCALL_INPUT));
    use zerocopy::IntoBytes;
}

// ---- Encoder choices ----

fn page() -> [u8; HV_PAGE_SIZE] {
    [0; HV_PAGE_SIZE]
}

const EX: EncodeOptions = EncodeOptions {
    ex_processor_masks: true,
    xmm_input: false,
};
const EX_XMM: EncodeOptions = EncodeOptions {
    ex_processor_masks: true,
    xmm_input: true,
};

#[test]
fn ipi_encoder_choices() {
    let mut p = page();
    let c = encode_send_ipi(Targets::new(&[0, 63]), 0x30, EX, &mut p, INPUT).unwrap();
    assert_eq!(
        (c.code(), c.control.fast(), c.rdx, c.r8, c.input_len),
        (IPI, true, 0x30, 1 | 1 << 63, 0)
    );
    // Every present CPU, all below 64: still the fast mask form.
    let c = encode_send_ipi(Targets::all_present(&[0, 1]), 0x30, EX, &mut p, INPUT).unwrap();
    assert_eq!(c.code(), IPI);
    // A target at 64 needs Ex.
    let c = encode_send_ipi(Targets::new(&[1, 64]), 0x30, EX, &mut p, INPUT).unwrap();
    assert_eq!(
        (
            c.code(),
            c.control.fast(),
            c.control.variable_header_size(),
            c.input_len
        ),
        (IPI_EX, false, 2, 40)
    );
    assert_eq!(c.rdx, INPUT);
    // Every present CPU with one at 64 or above: the "all" format.
    let c = encode_send_ipi(Targets::all_present(&[0, 100]), 0x30, EX, &mut p, INPUT).unwrap();
    assert_eq!(
        (c.code(), c.control.variable_header_size(), c.input_len),
        (IPI_EX, 0, 24)
    );
    assert_eq!(&p[8..16], &GENERIC_SET_ALL.to_le_bytes());
    // XMM allowed: the Ex form goes in registers.
    let c = encode_send_ipi(Targets::new(&[1, 64]), 0x30, EX_XMM, &mut p, INPUT).unwrap();
    assert_eq!((c.control.fast(), c.xmm_used, c.input_len), (true, 2, 0));
    assert!(c.control.uses_xmm_input());
}

#[test]
fn ipi_encoder_refusals() {
    let mut p = page();
    let go = |vps: &[u32], vector: u8, o: EncodeOptions, p: &mut [u8; HV_PAGE_SIZE]| {
        encode_send_ipi(Targets::new(vps), vector, o, p, INPUT).err()
    };
    assert_eq!(
        go(&[1, u32::MAX], 0x30, EX, &mut p),
        Some(EncodeError::UnknownVpIndex)
    );
    assert_eq!(
        go(&[MAX_VPS], 0x30, EX, &mut p),
        Some(EncodeError::VpIndexOutOfRange(MAX_VPS))
    );
    assert_eq!(go(&[MAX_VPS - 1], 0x30, EX, &mut p), None);
    assert_eq!(
        go(&[1], 0x0F, EX, &mut p),
        Some(EncodeError::InvalidVector(0x0F))
    );
    assert_eq!(go(&[1], 0x10, EX, &mut p), None);
    assert_eq!(go(&[], 0x30, EX, &mut p), Some(EncodeError::NoTargets));
    assert_eq!(
        go(&[64], 0x30, EncodeOptions::default(), &mut p),
        Some(EncodeError::ExUnavailable)
    );
    assert_eq!(
        encode_send_ipi(Targets::new(&[64]), 0x30, EX, &mut p, INPUT + 8).err(),
        Some(EncodeError::MisalignedInputPage(INPUT + 8))
    );
}

fn ranges(n: usize) -> Vec<GvaRange> {
    (0..n as u64)
        .map(|i| GvaRange::new(i << 20, (i % 7) as u16))
        .collect()
}

#[test]
fn flush_encoder_choices() {
    let mut p = page();
    let req = |r: &'static [GvaRange]| FlushRequest {
        address_space: CR3,
        flags: FlushFlags::ALL_PROCESSORS,
        ranges: r,
    };
    let many: &'static [GvaRange] = Vec::leak(ranges(MAX_GVA_RANGES + 1));
    let go = |t: Targets<'_>, r: &[GvaRange], o: EncodeOptions, p: &mut [u8; HV_PAGE_SIZE]| {
        encode_flush(
            t,
            FlushRequest {
                ranges: r,
                ..req(&[])
            },
            o,
            p,
            INPUT,
        )
    };
    // Every present CPU: non-Ex with ALL_PROCESSORS, even above VP 63.
    let c = go(Targets::all_present(&[0, 300]), &[], EX, &mut p).unwrap();
    assert_eq!((c.code(), c.input_len), (SPACE, 24));
    assert_eq!(&p[8..16], &1u64.to_le_bytes());
    // A caller's ALL_PROCESSORS is dropped for a partial set.
    let c = go(Targets::new(&[2]), &[], EX, &mut p).unwrap();
    assert_eq!(
        (&p[8..16], &p[16..24]),
        (&0u64.to_le_bytes()[..], &4u64.to_le_bytes()[..])
    );
    assert_eq!(c.code(), SPACE);
    // 509 ranges fit the non-Ex page, 510 do not.
    let c = go(Targets::new(&[2]), &many[..MAX_GVA_RANGES], EX, &mut p).unwrap();
    assert_eq!(
        (c.code(), c.control.rep_count(), c.input_len),
        (LIST, 509, HV_PAGE_SIZE)
    );
    let c = go(Targets::new(&[2]), many, EX, &mut p).unwrap();
    assert_eq!((c.code(), c.control.rep_count()), (SPACE, 0));
    // Ex with two banks: 4 + 2 header words leave 506 entries.
    let c = go(Targets::new(&[2, 70]), &many[..506], EX, &mut p).unwrap();
    assert_eq!(
        (
            c.code(),
            c.control.variable_header_size(),
            c.control.rep_count()
        ),
        (LIST_EX, 2, 506)
    );
    let c = go(Targets::new(&[2, 70]), &many[..507], EX, &mut p).unwrap();
    assert_eq!(c.code(), SPACE_EX);
    // XMM: 11 ranges fit the registers after the mask, 12 go to memory.
    let c = go(Targets::new(&[2]), &many[..11], EX_XMM, &mut p).unwrap();
    assert_eq!((c.code(), c.control.fast(), c.xmm_used), (LIST, true, 6));
    let c = go(Targets::new(&[2]), &many[..12], EX_XMM, &mut p).unwrap();
    assert_eq!((c.code(), c.control.fast()), (LIST, false));
    // Refusals.
    assert_eq!(
        go(Targets::new(&[]), &[], EX, &mut p).err(),
        Some(EncodeError::NoTargets)
    );
    assert_eq!(
        go(Targets::all_present(&[u32::MAX]), &[], EX, &mut p).err(),
        Some(EncodeError::UnknownVpIndex)
    );
    assert_eq!(
        go(Targets::new(&[64]), &[], EncodeOptions::default(), &mut p).err(),
        Some(EncodeError::ExUnavailable)
    );
    assert_eq!(
        go(Targets::new(&[4096]), &[], EX, &mut p).err(),
        Some(EncodeError::VpIndexOutOfRange(4096))
    );
}

// ---- Round trips ----

/// Decodes an encoded call as the host would.
fn host_decode(call: &EncodedCall, page: &[u8; HV_PAGE_SIZE]) -> Result<Hypercall, HvStatus> {
    let mem = SliceMemory::new(INPUT, page);
    decode(&call.regs(), &mem)
}

fn sorted(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

fn vp_list() -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        proptest::collection::vec(0..64u32, 0..40),
        proptest::collection::vec(0..MAX_VPS, 0..300),
        proptest::collection::vec(0..MAX_VPS, 3000..4096),
    ]
}

fn options() -> impl Strategy<Value = EncodeOptions> {
    (any::<bool>(), any::<bool>()).prop_map(|(ex_processor_masks, xmm_input)| EncodeOptions {
        ex_processor_masks,
        xmm_input,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn vpset_from_vps_round_trip(v in vp_list()) {
        let set = SparseVpSet::from_vps(v.iter().copied()).unwrap();
        let want = sorted(&v);
        prop_assert!(set.iter().eq(want.iter().copied()));
        prop_assert_eq!(set.len(), want.len());
        prop_assert_eq!(set.max_vp(), want.last().copied());
        for vp in want.iter().take(50) {
            prop_assert!(set.contains(*vp));
        }
        let again = SparseVpSet::from_banks(set.valid_bank_mask(), set.banks()).unwrap();
        prop_assert_eq!(again, set);
    }

    #[test]
    fn ipi_round_trip(v in vp_list(), all in any::<bool>(), vector in 0x10u8..=0xFF, o in options()) {
        let mut p = page();
        match encode_send_ipi(Targets { vps: &v, all_present: all }, vector, o, &mut p, INPUT) {
            Ok(call) => {
                let got = ipi(host_decode(&call, &p));
                prop_assert_eq!(got.vector, vector);
                let want = sorted(&v);
                match got.targets {
                    VpSet::All => prop_assert!(all && want.last() >= Some(&64)),
                    VpSet::Sparse(set) => prop_assert!(set.iter().eq(want.iter().copied())),
                }
                // Cheapest form: the mask call whenever it can be used.
                prop_assert_eq!(call.code() == IPI, want.last() < Some(&64));
            }
            Err(EncodeError::NoTargets) => prop_assert!(v.is_empty()),
            Err(EncodeError::ExUnavailable) => prop_assert!(!o.ex_processor_masks),
            Err(e) => prop_assert!(false, "unexpected {:?}", e),
        }
    }

    #[test]
    fn flush_round_trip(
        v in vp_list(),
        all in any::<bool>(),
        raw in proptest::collection::vec(any::<u64>(), 0..600),
        flags in 0u64..8,
        o in options(),
    ) {
        let r: Vec<GvaRange> = raw.iter().map(|&x| GvaRange(x)).collect();
        let req = FlushRequest {
            address_space: CR3,
            flags: FlushFlags::from_bits_retain(flags),
            ranges: &r,
        };
        let mut p = page();
        match encode_flush(Targets { vps: &v, all_present: all }, req, o, &mut p, INPUT) {
            Ok(call) => {
                let got = flush(host_decode(&call, &p));
                let want = sorted(&v);
                prop_assert_eq!(got.address_space, CR3);
                prop_assert_eq!(
                    got.flags.difference(FlushFlags::ALL_PROCESSORS).bits(),
                    flags & !FlushFlags::ALL_PROCESSORS.bits()
                );
                match got.targets {
                    VpSet::All => prop_assert!(all),
                    VpSet::Sparse(set) => {
                        prop_assert!(!all);
                        prop_assert!(set.iter().eq(want.iter().copied()));
                    }
                }
                if got.whole_space() {
                    // Only when no ranges were asked for or they overflow.
                    let header = if call.control.variable_header_size() > 0 { 4 } else { 3 };
                    let room = HV_PAGE_SIZE / 8 - header - usize::from(call.control.variable_header_size());
                    prop_assert!(r.is_empty() || r.len() > room);
                } else {
                    let mem = SliceMemory::new(INPUT, &p);
                    let mut buf = [0u64; MAX_GVA_RANGES];
                    prop_assert_eq!(got.ranges.read(&mem, &mut buf).unwrap(), &raw[..]);
                }
                prop_assert_eq!(got.rep_count as usize, got.ranges.len());
            }
            Err(EncodeError::NoTargets) => prop_assert!(v.is_empty() && !all),
            Err(EncodeError::ExUnavailable) => prop_assert!(!o.ex_processor_masks && !all),
            Err(e) => prop_assert!(false, "unexpected {:?}", e),
        }
    }

    #[test]
    fn decode_never_panics(
        rcx in any::<u64>(),
        rdx_off in 0u64..(2 * HV_PAGE_SIZE as u64),
        r8 in any::<u64>(),
        code in prop_oneof![Just(2u16), Just(3), Just(8), Just(0xB), Just(0x13), Just(0x14), Just(0x15), any::<u16>()],
        xmm in any::<[u128; 6]>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..HV_PAGE_SIZE * 2),
    ) {
        let regs = HypercallRegs {
            rcx: (rcx & !0xFFFF) | u64::from(code),
            rdx: BASE + rdx_off,
            r8,
            xmm,
        };
        let mem = SliceMemory::new(BASE, &bytes);
        match decode(&regs, &mem) {
            Ok(Hypercall::Flush(f)) => prop_assert_eq!(usize::from(f.rep_count) >= f.ranges.len(), true),
            Ok(Hypercall::SendIpi(i)) => {
                prop_assert!(i.vector >= 0x10 || i.targets.iter_present(u32::MAX).next().is_none());
            }
            Ok(Hypercall::NotifyLongSpinWait { .. }) | Err(_) => {}
        }
    }
}
