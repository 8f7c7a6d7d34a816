//! Guest side: build the cheapest valid flush or IPI hypercall for a target
//! set, the way Linux's `hyperv_flush_tlb_multi` (arch/x86/hyperv/mmu.c)
//! and `__send_ipi_mask` (arch/x86/hyperv/hv_apic.c) choose.
//!
//! Order of preference: a fast call in RDX/R8 (IPI to VPs below 64); the
//! non-Ex forms (every target below VP 64, or `ALL_PROCESSORS` for a flush
//! of every present CPU); the Ex forms (sparse banks, or the "all" format
//! for an IPI to every present CPU). XMM input is used only when allowed.
//! A flush whose ranges do not fit one page becomes a whole-space flush.

use super::control::{CallCode, Control};
use super::decode::{
    FAST_INPUT_WORDS, FAST_XMM_REGISTERS, GPR_INPUT_WORDS, HypercallRegs, IPI_LOW_VECTOR, WORD,
    WORDS_PER_XMM,
};
use super::gva::{FlushFlags, GvaRange};
use super::vpset::{self, GENERIC_SET_ALL, GENERIC_SET_SPARSE_4K, MAX_VPS, SparseVpSet};
use crate::HV_PAGE_SIZE;

/// Words the encoder may write: one page.
const PAGE_WORDS: usize = HV_PAGE_SIZE / WORD;
/// Linux's "VP index not known yet" (`VP_INVAL`, `U32_MAX`).
const VP_INVAL: u32 = u32::MAX;

/// Why no hypercall was built: the caller takes the native path (or, for
/// [`EncodeError::NoTargets`], does nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A target's VP index is not known yet (`u32::MAX`: the CPU is not up).
    #[error("VP index of a target is not known")]
    UnknownVpIndex,
    /// A target's VP index is at or above 4096: no VP set can name it.
    #[error("VP index {0} is beyond what a VP set can name")]
    VpIndexOutOfRange(u32),
    /// The IPI vector is below 0x10.
    #[error("vector {0:#x} cannot be sent by hypercall")]
    InvalidVector(u8),
    /// The targets need an Ex call and EX_PROCESSOR_MASKS is not published.
    #[error("targets need an Ex call, which is not available")]
    ExUnavailable,
    /// The target set is empty: there is nothing to do.
    #[error("no targets")]
    NoTargets,
    /// Memory input is needed and the input page GPA is not page aligned.
    #[error("input page GPA {0:#x} is not page aligned")]
    MisalignedInputPage(u64),
}

/// What the guest may use, from the hypervisor's CPUID leaves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// CPUID 0x40000004 EAX bit 11 (EX_PROCESSOR_MASKS_RECOMMENDED).
    pub ex_processor_masks: bool,
    /// CPUID 0x40000003 EDX bit 4 (XMM hypercall input).
    pub xmm_input: bool,
}

/// The target VPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Targets<'a> {
    /// VP indices of the targets (duplicates allowed).
    pub vps: &'a [u32],
    /// Whether `vps` is every present CPU (Linux:
    /// `cpumask_equal(mask, cpu_present_mask)`).
    pub all_present: bool,
}

impl<'a> Targets<'a> {
    /// Targets `vps`, not known to be every present CPU.
    pub const fn new(vps: &'a [u32]) -> Self {
        Self {
            vps,
            all_present: false,
        }
    }

    /// Targets `vps`, which is every present CPU.
    pub const fn all_present(vps: &'a [u32]) -> Self {
        Self {
            vps,
            all_present: true,
        }
    }
}

/// What to flush.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushRequest<'a> {
    /// The address space (CR3 without PCID bits).
    pub address_space: u64,
    /// ALL_VIRTUAL_ADDRESS_SPACES and NON_GLOBAL_MAPPINGS_ONLY as wanted;
    /// ALL_PROCESSORS is set or cleared by the encoder.
    pub flags: FlushFlags,
    /// The ranges; empty means the whole address space.
    pub ranges: &'a [GvaRange],
}

/// A built hypercall: load these registers and call the hypercall page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodedCall {
    /// The control word (RCX).
    pub control: Control,
    /// RDX: the input page GPA, or the first fast input word.
    pub rdx: u64,
    /// R8: the second fast input word, or 0 (no output).
    pub r8: u64,
    /// XMM0-XMM5 for fast calls with more input ([`EncodedCall::xmm_used`]).
    pub xmm: [u128; FAST_XMM_REGISTERS],
    /// XMM registers that carry input.
    pub xmm_used: usize,
    /// Bytes of the input page used; 0 for fast calls.
    pub input_len: usize,
}

impl EncodedCall {
    /// RCX.
    pub const fn rcx(&self) -> u64 {
        self.control.into_bits()
    }

    /// The call code.
    pub const fn code(&self) -> CallCode {
        self.control.call_code()
    }

    /// The registers as the host will see them.
    pub const fn regs(&self) -> HypercallRegs {
        HypercallRegs {
            rcx: self.rcx(),
            rdx: self.rdx,
            r8: self.r8,
            xmm: self.xmm,
        }
    }
}

/// Checks the VP indices and builds their set (`cpumask_to_vpset`).
fn target_set(vps: &[u32]) -> Result<SparseVpSet, EncodeError> {
    if vps.contains(&VP_INVAL) {
        return Err(EncodeError::UnknownVpIndex);
    }
    SparseVpSet::from_vps(vps.iter().copied()).map_err(|err| match err {
        vpset::Error::VpIndexOutOfRange(vp) => EncodeError::VpIndexOutOfRange(vp),
        vpset::Error::BankCountMismatch { .. } => EncodeError::VpIndexOutOfRange(MAX_VPS),
    })
}

/// Input words written straight into the caller's page in memory layout;
/// a fast call then loads them into registers.
struct Words<'p> {
    page: &'p mut [u8; HV_PAGE_SIZE],
    len: usize,
}

impl<'p> Words<'p> {
    fn new(page: &'p mut [u8; HV_PAGE_SIZE]) -> Self {
        Self { page, len: 0 }
    }

    /// Appends `w`; the callers size their input to fit a page.
    fn push(&mut self, w: u64) {
        if let Some(dst) = self.page.get_mut(self.len * WORD..(self.len + 1) * WORD) {
            dst.copy_from_slice(&w.to_le_bytes());
            self.len += 1;
        }
    }

    fn extend(&mut self, ws: impl IntoIterator<Item = u64>) {
        for w in ws {
            self.push(w);
        }
    }

    /// Word `i`, or 0 past the end.
    fn word(&self, i: usize) -> u64 {
        if i >= self.len {
            return 0;
        }
        let mut b = [0u8; WORD];
        if let Some(src) = self.page.get(i * WORD..(i + 1) * WORD) {
            b.copy_from_slice(src);
        }
        u64::from_le_bytes(b)
    }

    /// Emits the call: fast when allowed and the input fits the registers,
    /// else through the page at `input_gpa`.
    fn finish(
        self,
        control: Control,
        fast: bool,
        input_gpa: u64,
    ) -> Result<EncodedCall, EncodeError> {
        if fast && self.len <= FAST_INPUT_WORDS {
            let mut xmm = [0u128; FAST_XMM_REGISTERS];
            let mut xmm_used = 0;
            for (i, reg) in xmm.iter_mut().enumerate() {
                let lo = GPR_INPUT_WORDS + WORDS_PER_XMM * i;
                let hi = lo + 1;
                *reg = u128::from(self.word(lo)) | (u128::from(self.word(hi)) << u64::BITS);
                if lo < self.len {
                    xmm_used = i + 1;
                }
            }
            return Ok(EncodedCall {
                control: control.with_fast(true),
                rdx: self.word(0),
                r8: self.word(1),
                xmm,
                xmm_used,
                input_len: 0,
            });
        }
        if input_gpa % HV_PAGE_SIZE as u64 != 0 {
            return Err(EncodeError::MisalignedInputPage(input_gpa));
        }
        Ok(EncodedCall {
            control,
            rdx: input_gpa,
            r8: 0,
            xmm: [0; FAST_XMM_REGISTERS],
            xmm_used: 0,
            input_len: self.len * WORD,
        })
    }
}

/// Builds SendSyntheticClusterIpi(Ex) for `vector` to `targets`, writing
/// memory input (if any) into `page`, which the guest has at `input_gpa`.
///
/// ```
/// use hv_enlightenments::HV_PAGE_SIZE;
/// use hv_enlightenments::hypercall::{
///     encode_send_ipi, CallCode, EncodeError, EncodeOptions, Targets,
/// };
///
/// let mut page = [0u8; HV_PAGE_SIZE];
/// // Every target below VP 64: a fast call, vector in RDX, mask in R8.
/// let call = encode_send_ipi(Targets::new(&[0, 2]), 0x40, EncodeOptions::default(), &mut page, 0)?;
/// assert_eq!((call.code(), call.rdx, call.r8), (CallCode::SEND_SYNTHETIC_CLUSTER_IPI, 0x40, 0b101));
/// // VP 64 needs the Ex form, which CPUID must allow.
/// let no_ex = encode_send_ipi(Targets::new(&[64]), 0x40, EncodeOptions::default(), &mut page, 0);
/// assert_eq!(no_ex, Err(EncodeError::ExUnavailable));
/// # Ok::<(), EncodeError>(())
/// ```
pub fn encode_send_ipi(
    targets: Targets<'_>,
    vector: u8,
    options: EncodeOptions,
    page: &mut [u8; HV_PAGE_SIZE],
    input_gpa: u64,
) -> Result<EncodedCall, EncodeError> {
    if u32::from(vector) < IPI_LOW_VECTOR {
        return Err(EncodeError::InvalidVector(vector));
    }
    let set = target_set(targets.vps)?;
    if set.is_empty() {
        return Err(EncodeError::NoTargets);
    }
    let mut words = Words::new(page);
    if let Some(mask) = set.as_mask() {
        // Every target below 64: RDX = vector, R8 = mask, no memory.
        words.extend([u64::from(vector), mask]);
        let control = Control::new().with_code(CallCode::SEND_SYNTHETIC_CLUSTER_IPI.0);
        return words.finish(control, true, input_gpa);
    }
    if !options.ex_processor_masks {
        return Err(EncodeError::ExUnavailable);
    }
    let control = Control::new().with_code(CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX.0);
    words.push(u64::from(vector));
    let control = if targets.all_present {
        words.extend([GENERIC_SET_ALL, 0]);
        control
    } else {
        words.extend([GENERIC_SET_SPARSE_4K, set.valid_bank_mask()]);
        words.extend(set.banks().iter().copied());
        control.with_variable_header_size(set.bank_count() as u16)
    };
    words.finish(control, options.xmm_input, input_gpa)
}

/// Builds the cheapest flush call for `request` on `targets`, writing
/// memory input (if any) into `page`, which the guest has at `input_gpa`.
///
/// ```
/// use hv_enlightenments::HV_PAGE_SIZE;
/// use hv_enlightenments::hypercall::{
///     encode_flush, CallCode, EncodeOptions, FlushFlags, FlushRequest, GvaRange, Targets,
/// };
///
/// let mut page = [0u8; HV_PAGE_SIZE];
/// let ranges = [GvaRange::new(0x7f00_0000_0000, 3)]; // 4 pages
/// let request = FlushRequest { address_space: 0x1000, flags: FlushFlags::empty(), ranges: &ranges };
/// let call = encode_flush(Targets::new(&[1]), request, EncodeOptions::default(), &mut page, 0x5000)?;
/// assert_eq!(call.code(), CallCode::FLUSH_VIRTUAL_ADDRESS_LIST);
/// assert_eq!((call.rdx, call.control.rep_count()), (0x5000, 1)); // input page, one entry
/// # Ok::<(), hv_enlightenments::hypercall::EncodeError>(())
/// ```
pub fn encode_flush(
    targets: Targets<'_>,
    request: FlushRequest<'_>,
    options: EncodeOptions,
    page: &mut [u8; HV_PAGE_SIZE],
    input_gpa: u64,
) -> Result<EncodedCall, EncodeError> {
    let set = target_set(targets.vps)?;
    let mut flags = request.flags.difference(FlushFlags::ALL_PROCESSORS);
    let mut words = Words::new(page);
    let ex = if targets.all_present {
        flags |= FlushFlags::ALL_PROCESSORS;
        words.extend([request.address_space, flags.bits(), 0]);
        false
    } else if set.is_empty() {
        return Err(EncodeError::NoTargets);
    } else if let Some(mask) = set.as_mask() {
        words.extend([request.address_space, flags.bits(), mask]);
        false
    } else if options.ex_processor_masks {
        words.extend([
            request.address_space,
            flags.bits(),
            GENERIC_SET_SPARSE_4K,
            set.valid_bank_mask(),
        ]);
        words.extend(set.banks().iter().copied());
        true
    } else {
        return Err(EncodeError::ExUnavailable);
    };
    let var_cnt = if ex { set.bank_count() as u16 } else { 0 };

    // Ranges that fit the rest of the page make a list call; more (or
    // none) make a whole-space flush (Linux's max_gvas rule).
    let room = PAGE_WORDS - words.len;
    let list = !request.ranges.is_empty() && request.ranges.len() <= room;
    let code = match (ex, list) {
        (false, false) => CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE,
        (false, true) => CallCode::FLUSH_VIRTUAL_ADDRESS_LIST,
        (true, false) => CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX,
        (true, true) => CallCode::FLUSH_VIRTUAL_ADDRESS_LIST_EX,
    };
    let mut control = Control::new()
        .with_code(code.0)
        .with_variable_header_size(var_cnt);
    if list {
        words.extend(request.ranges.iter().map(|r| r.0));
        control = control.with_rep_count(request.ranges.len() as u16);
    }
    words.finish(control, options.xmm_input, input_gpa)
}
