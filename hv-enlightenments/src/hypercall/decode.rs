//! Host side: decode a trapped hypercall into what the VMM must do, with
//! the statuses KVM's `kvm_hv_hypercall`, `kvm_hv_flush_tlb` and
//! `kvm_hv_send_ipi` (arch/x86/kvm/hyperv.c) return for invalid input.

use zerocopy::IntoBytes;

use super::control::{CallCode, Control, HypercallResult};
use super::gva::{FlushFlags, GvaRanges};
use super::memory::GuestMemoryRead;
use super::status::HvStatus;
use super::vpset::{GENERIC_SET_ALL, GENERIC_SET_SPARSE_4K, MAX_SPARSE_BANKS, SparseVpSet, VpSet};
use crate::HV_PAGE_SIZE;

/// XMM registers that carry fast call input (`HV_HYPERCALL_MAX_XMM_REGISTERS`).
pub const FAST_XMM_REGISTERS: usize = 6;
/// Fast input words carried in general registers: RDX and R8.
pub(crate) const GPR_INPUT_WORDS: usize = 2;
/// Input words per XMM register: low half, then high half.
pub(crate) const WORDS_PER_XMM: usize = 2;
/// 8-byte input words a fast call can carry: RDX, R8 and both halves of
/// XMM0-XMM5.
pub const FAST_INPUT_WORDS: usize = GPR_INPUT_WORDS + WORDS_PER_XMM * FAST_XMM_REGISTERS;
/// Lowest vector a synthetic cluster IPI may carry (`HV_IPI_LOW_VECTOR`).
pub const IPI_LOW_VECTOR: u32 = 0x10;
/// Highest vector a synthetic cluster IPI may carry (`HV_IPI_HIGH_VECTOR`).
pub const IPI_HIGH_VECTOR: u32 = 0xFF;

/// Input words before the variable header: `struct hv_tlb_flush` without
/// its list (address space, flags, processor mask).
const FLUSH_HEADER_WORDS: usize = 3;
/// `struct hv_tlb_flush_ex` up to the banks (address space, flags, format,
/// valid bank mask).
const FLUSH_EX_HEADER_WORDS: usize = 4;
/// `struct hv_send_ipi` (vector + reserved, cpu mask).
const IPI_HEADER_WORDS: usize = 2;
/// `struct hv_send_ipi_ex` up to the banks (vector + reserved, format, valid
/// bank mask).
const IPI_EX_HEADER_WORDS: usize = 3;
/// Bytes in one input word.
pub(crate) const WORD: usize = 8;
/// Bits of the fast SendSyntheticClusterIpi RDX that hold the vector; the
/// rest is the reserved part of `struct hv_send_ipi` and must be zero.
const FAST_IPI_VECTOR_BITS: u32 = 32;

/// The values of a trapped hypercall, named by their 64-bit registers
/// (TLFS 3.7). A 32-bit caller's register pairs map onto them through
/// [`HypercallGprs::hypercall_regs`](super::HypercallGprs::hypercall_regs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HypercallRegs {
    /// The control word.
    pub rcx: u64,
    /// Input GPA, or the first input word of a fast call.
    pub rdx: u64,
    /// Output GPA, or the second input word of a fast call.
    pub r8: u64,
    /// XMM0-XMM5, only read for fast calls whose input does not fit in RDX
    /// and R8 (see [`Control::uses_xmm_input`]); may be left zero otherwise.
    pub xmm: [u128; FAST_XMM_REGISTERS],
}

impl HypercallRegs {
    /// The control word.
    pub const fn control(&self) -> Control {
        Control::from_bits(self.rcx)
    }

    /// The fast input words in order: RDX, R8, then low and high halves of
    /// XMM0..XMM5 (KVM's `kvm_hv_get_hc_data` order).
    pub fn fast_words(&self) -> [u64; FAST_INPUT_WORDS] {
        let mut words = [0u64; FAST_INPUT_WORDS];
        words[0] = self.rdx;
        words[1] = self.r8;
        for (pair, xmm) in words[GPR_INPUT_WORDS..]
            .chunks_exact_mut(WORDS_PER_XMM)
            .zip(self.xmm)
        {
            pair[0] = xmm as u64;
            pair[1] = (xmm >> u64::BITS) as u64;
        }
        words
    }
}

/// A decoded virtual address flush (any of the four flush calls).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flush {
    /// Which call it was.
    pub code: CallCode,
    /// The address space (CR3 without PCID bits) to flush, unless
    /// [`FlushFlags::ALL_VIRTUAL_ADDRESS_SPACES`] is set.
    pub address_space: u64,
    /// The flags as given.
    pub flags: FlushFlags,
    /// The VPs to flush. Non-Ex calls with `HV_FLUSH_ALL_PROCESSORS` or a
    /// zero processor mask give [`VpSet::All`] (KVM treats a zero mask as
    /// all, for WS2012); Ex calls with any format but sparse give it too.
    pub targets: VpSet,
    /// For the list calls, the GVA ranges (read them through the memory
    /// given to [`decode`]); empty for the space calls, which flush the
    /// whole address space(s).
    pub ranges: GvaRanges,
    /// The call's rep count: what "reps completed" must say on success.
    pub rep_count: u16,
}

impl Flush {
    /// Whether the whole address space(s) must be flushed rather than a
    /// list of ranges.
    pub fn whole_space(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// A decoded SendSyntheticClusterIpi(Ex).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendIpi {
    /// Which call it was.
    pub code: CallCode,
    /// The vector, 0x10..=0xFF, to deliver as a fixed, edge interrupt.
    ///
    /// The one exception: an Ex call with an empty sparse set succeeds
    /// without its vector being checked (as in `kvm_hv_send_ipi`); it has
    /// no targets, and `vector` holds the low byte of whatever was given.
    pub vector: u8,
    /// The VPs to interrupt. Indices naming no VP are to be ignored.
    pub targets: VpSet,
}

/// A decoded hypercall: what the VMM must do before answering
/// [`Hypercall::completed`].
#[derive(Clone, Debug, PartialEq, Eq)]
// The flush carries its range list inline so that decoding needs no heap.
#[allow(clippy::large_enum_variant)]
pub enum Hypercall {
    /// Flush the targets' TLBs, then answer.
    Flush(Flush),
    /// Deliver the vector to the targets, then answer.
    SendIpi(SendIpi),
    /// The guest spun `count` times on a lock; the VMM may yield the vCPU.
    NotifyLongSpinWait {
        /// The spin count from RDX.
        count: u64,
    },
}

impl Hypercall {
    /// The result to return once the call's effect is done: success, with
    /// every rep completed for the list calls (KVM always flushes fully).
    pub fn completed(&self) -> HypercallResult {
        match self {
            Self::Flush(flush) => HypercallResult::success(flush.rep_count),
            Self::SendIpi(_) | Self::NotifyLongSpinWait { .. } => HypercallResult::success(0),
        }
    }

    /// The call code.
    pub fn code(&self) -> CallCode {
        match self {
            Self::Flush(flush) => flush.code,
            Self::SendIpi(ipi) => ipi.code,
            Self::NotifyLongSpinWait { .. } => CallCode::NOTIFY_LONG_SPIN_WAIT,
        }
    }
}

/// Where the input block is: guest memory at RDX, or the fast registers.
pub(crate) enum Input<'m, M: ?Sized> {
    Memory { mem: &'m M, gpa: u64 },
    Fast([u64; FAST_INPUT_WORDS]),
}

impl<M: GuestMemoryRead + ?Sized> Input<'_, M> {
    /// Fills `dst` with the input words from word `offset` on. The caller
    /// has checked that the whole input fits its page or the registers.
    fn read(&self, offset: usize, dst: &mut [u64]) -> Result<(), HvStatus> {
        match self {
            Self::Fast(words) => {
                let src = words
                    .get(offset..offset + dst.len())
                    .ok_or(HvStatus::INVALID_HYPERCALL_INPUT)?;
                dst.copy_from_slice(src);
            }
            Self::Memory { mem, gpa } => {
                // Unreadable input is INVALID_HYPERCALL_INPUT, as when
                // kvm_vcpu_read_guest fails in kvm_hv_flush_tlb.
                let at = gpa.wrapping_add((offset * WORD) as u64);
                mem.read(at, dst.as_mut_bytes())
                    .map_err(|_| HvStatus::INVALID_HYPERCALL_INPUT)?;
                for word in dst.iter_mut() {
                    *word = u64::from_le(*word);
                }
            }
        }
        Ok(())
    }
}

/// Words of the largest Ex header and sparse VP set: the flush header and
/// 64 banks.
const EX_SET_WORDS: usize = FLUSH_EX_HEADER_WORDS + MAX_SPARSE_BANKS;

impl<M: GuestMemoryRead + ?Sized> Input<'_, M> {
    /// Reads an Ex call's fixed header (`header` words) and, when they fit
    /// `words`, the `var_cnt` banks after it, in one read of the input
    /// block: a guest memory look-up costs as much as copying 64 banks.
    /// Returns whether the banks were read (`words[header..][..var_cnt]`).
    /// If the one read fails, the header alone is read, so that a call
    /// whose banks are unreadable is answered exactly as with two reads.
    fn read_ex_head(
        &self,
        header: usize,
        var_cnt: usize,
        words: &mut [u64; EX_SET_WORDS],
    ) -> Result<bool, HvStatus> {
        if let Some(all) = words.get_mut(..header + var_cnt) {
            if self.read(0, all).is_ok() {
                return Ok(true);
            }
        }
        let head = words
            .get_mut(..header)
            .ok_or(HvStatus::INVALID_HYPERCALL_INPUT)?;
        self.read(0, head)?;
        Ok(false)
    }

    /// Fills `set`'s banks, which follow the `header` words: from `words`
    /// when [`Input::read_ex_head`] read them (`banks_read`), else from
    /// the input block now.
    fn fill_banks(
        &self,
        header: usize,
        words: &[u64; EX_SET_WORDS],
        banks_read: bool,
        set: &mut SparseVpSet,
    ) -> Result<(), HvStatus> {
        let dst = set.banks_mut();
        if !banks_read {
            return self.read(header, dst);
        }
        let src = words
            .get(header..header + dst.len())
            .ok_or(HvStatus::INVALID_HYPERCALL_INPUT)?;
        dst.copy_from_slice(src);
        Ok(())
    }
}

/// Picks the input block and checks that `words` input words fit it.
///
/// Memory input must lie in one page (INVALID_HYPERCALL_INPUT) and be
/// 8-byte aligned (INVALID_ALIGNMENT), checked in that order as openvmm's
/// hv1_hypercall does (TLFS 3.7). KVM itself does not check either for
/// these calls; a guest following the TLFS never notices the difference.
/// Fast input must fit RDX, R8 and XMM0-5 (`kvm_hv_get_hc_data`).
pub(crate) fn input<'m, M: GuestMemoryRead + ?Sized>(
    regs: &HypercallRegs,
    mem: &'m M,
    words: usize,
) -> Result<Input<'m, M>, HvStatus> {
    if regs.control().fast() {
        if words > FAST_INPUT_WORDS {
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        return Ok(Input::Fast(regs.fast_words()));
    }
    let gpa = regs.rdx;
    let room = HV_PAGE_SIZE - (gpa % HV_PAGE_SIZE as u64) as usize;
    if words * WORD > room {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    if gpa % WORD as u64 != 0 {
        return Err(HvStatus::INVALID_ALIGNMENT);
    }
    Ok(Input::Memory { mem, gpa })
}

/// Decodes the hypercall in `regs`, reading memory input through `mem`.
///
/// `Ok` says what to do; answer with [`Hypercall::completed`] once done.
/// `Err` is the status to answer at once (use
/// [`HypercallResult::from`](HypercallResult) and
/// [`HypercallResult::encode`] for RAX). Nothing the guest passes makes
/// this panic, loop or read outside one page of input.
///
/// Not checked here, because they depend on what the VMM publishes: that
/// the call is advertised in CPUID (KVM answers INVALID_HYPERCALL_CODE),
/// and that XMM input is allowed for fast calls that use it.
///
/// ```
/// use hv_enlightenments::hypercall::{
///     decode, Hypercall, HypercallRegs, HvStatus, NoMemory, SliceMemory,
/// };
///
/// // Fast NotifyLongSpinWait (code 0x0008), count 5 in RDX.
/// let regs = HypercallRegs { rcx: 0x0001_0008, rdx: 5, ..Default::default() };
/// assert_eq!(decode(&regs, &NoMemory), Ok(Hypercall::NotifyLongSpinWait { count: 5 }));
/// // A memory-input IPI whose input GPA is not 8-byte aligned.
/// let page = [0u8; 16];
/// let regs = HypercallRegs { rcx: 0x000B, rdx: 0x1004, ..Default::default() };
/// assert_eq!(decode(&regs, &SliceMemory::new(0x1000, &page)), Err(HvStatus::INVALID_ALIGNMENT));
/// ```
pub fn decode<M: GuestMemoryRead + ?Sized>(
    regs: &HypercallRegs,
    mem: &M,
) -> Result<Hypercall, HvStatus> {
    let control = regs.control();
    if control.has_reserved_bits() {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    match control.call_code() {
        CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE
        | CallCode::FLUSH_VIRTUAL_ADDRESS_LIST
        | CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX
        | CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX => decode_flush(regs, mem),
        CallCode::SEND_SYNTHETIC_CLUSTER_IPI | CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX => {
            decode_send_ipi(regs, mem)
        }
        CallCode::NOTIFY_LONG_SPIN_WAIT => {
            if control.is_rep() || control.variable_header_size() != 0 {
                return Err(HvStatus::INVALID_HYPERCALL_INPUT);
            }
            Ok(Hypercall::NotifyLongSpinWait { count: regs.rdx })
        }
        _ => Err(HvStatus::INVALID_HYPERCALL_CODE),
    }
}

/// The four flush calls (`kvm_hv_flush_tlb` and its callers' checks).
fn decode_flush<M: GuestMemoryRead + ?Sized>(
    regs: &HypercallRegs,
    mem: &M,
) -> Result<Hypercall, HvStatus> {
    let control = regs.control();
    let code = control.call_code();
    let ex = matches!(
        code,
        CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX | CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX
    );
    let list = matches!(
        code,
        CallCode::FLUSH_VIRTUAL_ADDRESS_LIST | CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX
    );
    let var_cnt = usize::from(control.variable_header_size());
    let rep_cnt = control.rep_count();
    // Non-Ex calls have no variable header; list calls need reps from
    // index 0; space calls take none (kvm_hv_hypercall).
    if !ex && var_cnt != 0 {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    if list && (rep_cnt == 0 || control.rep_start() != 0) {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    if !list && control.is_rep() {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    let header = if ex {
        FLUSH_EX_HEADER_WORDS
    } else {
        FLUSH_HEADER_WORDS
    };
    let src = input(regs, mem, header + var_cnt + usize::from(rep_cnt))?;

    let mut head = [0u64; EX_SET_WORDS];
    let banks_read = if ex {
        src.read_ex_head(header, var_cnt, &mut head)?
    } else {
        let fixed = head
            .get_mut(..header)
            .ok_or(HvStatus::INVALID_HYPERCALL_INPUT)?;
        src.read(0, fixed)?;
        false
    };
    let (address_space, flags) = (head[0], FlushFlags::from_bits_retain(head[1]));

    let targets = if !ex {
        let mask = head[2];
        if flags.contains(FlushFlags::ALL_PROCESSORS) || mask == 0 {
            VpSet::All
        } else {
            VpSet::Sparse(SparseVpSet::from_mask(mask))
        }
    } else {
        let (format, valid_bank_mask) = (head[2], head[3]);
        if var_cnt != valid_bank_mask.count_ones() as usize {
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        // kvm_hv_flush_tlb: any format but sparse means all VPs.
        if format != GENERIC_SET_SPARSE_4K {
            VpSet::All
        } else {
            if var_cnt == 0 {
                // An empty sparse set succeeds at once, reps all done.
                return Ok(Hypercall::Flush(Flush {
                    code,
                    address_space,
                    flags,
                    targets: VpSet::Sparse(SparseVpSet::empty()),
                    ranges: GvaRanges::new(),
                    rep_count: rep_cnt,
                }));
            }
            // Its banks are read below, straight into the result.
            VpSet::Sparse(SparseVpSet::with_mask(valid_bank_mask))
        }
    };
    // The result is built first and filled in place: a 64-bank set is
    // 520 bytes, and every move of it costs about as much as its read.
    let mut call = Hypercall::Flush(Flush {
        code,
        address_space,
        flags,
        targets,
        ranges: GvaRanges::new(),
        rep_count: rep_cnt,
    });
    let Hypercall::Flush(flush) = &mut call else {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    };
    if let (true, VpSet::Sparse(set)) = (ex, &mut flush.targets) {
        src.fill_banks(header, &head, banks_read, set)?;
    }

    // Banks sit between the header and the list even for the "all"
    // format (KVM adjusts data_offset by var_cnt either way).
    let first = header + var_cnt;
    if list {
        let count = usize::from(rep_cnt);
        flush.ranges = match &src {
            Input::Fast(words) => words
                .get(first..first + count)
                .and_then(GvaRanges::in_registers)
                .ok_or(HvStatus::INVALID_HYPERCALL_INPUT)?,
            Input::Memory { mem, gpa } => {
                let ranges = GvaRanges::in_memory(gpa.wrapping_add((first * WORD) as u64), count);
                // Unreadable entries fail the call now, as in
                // kvm_hv_get_tlb_flush_entries; the VMM reads them again
                // only if it flushes by range.
                ranges
                    .check_readable(*mem)
                    .map_err(|_| HvStatus::INVALID_HYPERCALL_INPUT)?;
                ranges
            }
        };
    }
    Ok(call)
}

/// SendSyntheticClusterIpi and its Ex form (`kvm_hv_send_ipi`).
fn decode_send_ipi<M: GuestMemoryRead + ?Sized>(
    regs: &HypercallRegs,
    mem: &M,
) -> Result<Hypercall, HvStatus> {
    let control = regs.control();
    let code = control.call_code();
    let ex = code == CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX;
    let var_cnt = usize::from(control.variable_header_size());
    if (!ex && var_cnt != 0) || control.is_rep() {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }

    // For a sparse Ex set: where its banks are, filled in place below.
    let mut head = [0u64; EX_SET_WORDS];
    let mut banks = None;
    let (vector, targets) = if !ex {
        if control.fast() && regs.rdx >> FAST_IPI_VECTOR_BITS != 0 {
            // The reserved half of struct hv_send_ipi must be zero.
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        let src = input(regs, mem, IPI_HEADER_WORDS)?;
        let mut head = [0u64; IPI_HEADER_WORDS];
        src.read(0, &mut head)?;
        (
            head[0] as u32,
            VpSet::Sparse(SparseVpSet::from_mask(head[1])),
        )
    } else {
        let src = input(regs, mem, IPI_EX_HEADER_WORDS + var_cnt)?;
        let banks_read = src.read_ex_head(IPI_EX_HEADER_WORDS, var_cnt, &mut head)?;
        let (vector, format, valid_bank_mask) = (head[0] as u32, head[1], head[2]);
        if var_cnt != valid_bank_mask.count_ones() as usize {
            return Err(HvStatus::INVALID_HYPERCALL_INPUT);
        }
        // kvm_hv_send_ipi: only the "all" format means all; any other
        // format is read as sparse.
        if format == GENERIC_SET_ALL {
            (vector, VpSet::All)
        } else if var_cnt == 0 {
            return Ok(Hypercall::SendIpi(SendIpi {
                code,
                vector: vector as u8,
                targets: VpSet::Sparse(SparseVpSet::empty()),
            }));
        } else {
            banks = Some((src, banks_read));
            (
                vector,
                VpSet::Sparse(SparseVpSet::with_mask(valid_bank_mask)),
            )
        }
    };

    // Unreadable banks and a bad vector are the same status, so the
    // vector is checked before the banks are filled.
    if !(IPI_LOW_VECTOR..=IPI_HIGH_VECTOR).contains(&vector) {
        return Err(HvStatus::INVALID_HYPERCALL_INPUT);
    }
    // Built first and filled in place, as in `decode_flush`.
    let mut call = Hypercall::SendIpi(SendIpi {
        code,
        vector: vector as u8,
        targets,
    });
    if let (Some((src, banks_read)), Hypercall::SendIpi(ipi)) = (banks, &mut call) {
        if let VpSet::Sparse(set) = &mut ipi.targets {
            src.fill_banks(IPI_EX_HEADER_WORDS, &head, banks_read, set)?;
        }
    }
    Ok(call)
}
