//! The hypercall calling conventions (TLFS chapter 3, "Hypercall
//! Interface"): which registers carry the control word, the input and
//! output values and the result, by the caller's mode. The mapping is the
//! one KVM's `kvm_hv_hypercall` and `kvm_hv_hypercall_set_result` use.
//!
//! See [`HypercallMode`] for the table.
//!
//! ```
//! use hv_enlightenments::hypercall::{HypercallGprs, HypercallMode, HypercallResult};
//!
//! // A 32-bit caller: control in EDX:EAX, input GPA in EBX:ECX.
//! let mut gprs = HypercallGprs { rax: 0x0000_0008, rcx: 0x0010_0000, ..Default::default() };
//! let mode = HypercallMode::from_cpu(false, false);
//! let regs = gprs.hypercall_regs(mode);
//! assert_eq!((regs.rcx, regs.rdx), (0x8, 0x0010_0000));
//!
//! // The result goes back in EDX:EAX.
//! let out = mode.result_regs(HypercallResult::success(0).encode());
//! out.apply(&mut gprs.rax, &mut gprs.rdx);
//! assert_eq!(gprs.result(mode), 0);
//! ```

use super::decode::{FAST_XMM_REGISTERS, HypercallRegs};

/// Bits in each half of a 32-bit register pair.
const HALF_BITS: u32 = 32;
/// The low half of a register: what 32-bit code sees.
const LOW_HALF: u64 = 0xFFFF_FFFF;

/// Joins `high:low` from the low 32 bits of each.
const fn pair(high: u64, low: u64) -> u64 {
    ((high & LOW_HALF) << HALF_BITS) | (low & LOW_HALF)
}

/// Which calling convention a trapped call used.
///
/// | value | 64-bit mode | 32-bit code (protected or compatibility mode) |
/// |---|---|---|
/// | control word | RCX | EDX:EAX |
/// | input GPA, or fast input word 0 | RDX | EBX:ECX |
/// | output GPA, or fast input word 1 | R8 | EDI:ESI |
/// | result | RAX | EDX:EAX |
///
/// A pair is high:low, each half the low 32 bits of its register. Fast
/// calls with [`Control::uses_xmm_input`](super::Control::uses_xmm_input)
/// carry further input words in XMM0-XMM5, which the VMM reads itself into
/// [`HypercallRegs::xmm`] (they are not general registers). The VMM
/// writes no register but the result's. The caller must be at CPL 0 in
/// protected mode ([`caller_may_call`]); otherwise, and while the
/// hypercall page is disabled, the call raises #UD instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HypercallMode {
    /// 64-bit mode (EFER.LMA and CS.L): RCX, RDX, R8; result in RAX.
    Bits64,
    /// Any other protected mode, compatibility mode included: register
    /// pairs EDX:EAX, EBX:ECX, EDI:ESI; result in EDX:EAX.
    Bits32,
}

impl HypercallMode {
    /// The convention of a caller with `efer_lma` (EFER bit 10) and `cs_l`
    /// (the L bit of CS): 64-bit only with both, as KVM's
    /// `is_64_bit_hypercall`.
    ///
    /// ```
    /// use hv_enlightenments::hypercall::HypercallMode;
    ///
    /// assert_eq!(HypercallMode::from_cpu(true, true), HypercallMode::Bits64);
    /// // Compatibility mode: a 32-bit caller under a 64-bit kernel.
    /// assert_eq!(HypercallMode::from_cpu(true, false), HypercallMode::Bits32);
    /// ```
    pub const fn from_cpu(efer_lma: bool, cs_l: bool) -> Self {
        if efer_lma && cs_l {
            Self::Bits64
        } else {
            Self::Bits32
        }
    }

    /// The registers to write for the result `value` (a
    /// [`HypercallResult::encode`](super::HypercallResult::encode)d value):
    /// RAX, or EDX:EAX with the upper halves zero.
    pub const fn result_regs(self, value: u64) -> ResultRegs {
        match self {
            Self::Bits64 => ResultRegs {
                rax: value,
                rdx: None,
            },
            Self::Bits32 => ResultRegs {
                rax: value & LOW_HALF,
                rdx: Some(value >> HALF_BITS),
            },
        }
    }
}

/// Whether a caller may make a hypercall at all: protected mode (`cr0_pe`)
/// at CPL 0 (`cpl`, SS.DPL). Real mode, CPL > 0 and virtual-8086 mode
/// (whose CPL is 3) raise #UD (KVM `kvm_hv_hypercall`).
///
/// ```
/// use hv_enlightenments::hypercall::caller_may_call;
///
/// assert!(caller_may_call(true, 0)); // kernel
/// assert!(!caller_may_call(true, 3)); // user space: inject #UD
/// assert!(!caller_may_call(false, 0)); // real mode: inject #UD
/// ```
pub const fn caller_may_call(cr0_pe: bool, cpl: u8) -> bool {
    cr0_pe && cpl == 0
}

/// The general registers a calling convention uses, as the VMM read them
/// at the trap. Plain values: fill it from whatever register block the
/// hypervisor core gives (with the `kvm` feature, `From<&kvm_regs>`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HypercallGprs {
    /// RAX: control low half (32-bit); the result.
    pub rax: u64,
    /// RBX: input high half (32-bit).
    pub rbx: u64,
    /// RCX: control (64-bit); input low half (32-bit).
    pub rcx: u64,
    /// RDX: input (64-bit); control high half and result high half (32-bit).
    pub rdx: u64,
    /// RSI: output low half (32-bit).
    pub rsi: u64,
    /// RDI: output high half (32-bit).
    pub rdi: u64,
    /// R8: output (64-bit).
    pub r8: u64,
}

impl HypercallGprs {
    /// Host side: the control word and the input and output values of the
    /// call, read as `mode` says (KVM `kvm_hv_hypercall`). In 32-bit mode
    /// the upper halves of the registers are ignored. XMM input is left
    /// zero for the VMM to fill when the control word asks for it.
    pub const fn hypercall_regs(&self, mode: HypercallMode) -> HypercallRegs {
        let (rcx, rdx, r8) = match mode {
            HypercallMode::Bits64 => (self.rcx, self.rdx, self.r8),
            HypercallMode::Bits32 => (
                pair(self.rdx, self.rax),
                pair(self.rbx, self.rcx),
                pair(self.rdi, self.rsi),
            ),
        };
        HypercallRegs {
            rcx,
            rdx,
            r8,
            xmm: [0; FAST_XMM_REGISTERS],
        }
    }

    /// Guest side: the registers that pass `regs` in `mode`; the
    /// registers the convention does not use are zero. XMM input, if any,
    /// goes in XMM0-XMM5 separately.
    pub const fn for_call(regs: &HypercallRegs, mode: HypercallMode) -> Self {
        match mode {
            HypercallMode::Bits64 => Self {
                rax: 0,
                rbx: 0,
                rcx: regs.rcx,
                rdx: regs.rdx,
                rsi: 0,
                rdi: 0,
                r8: regs.r8,
            },
            HypercallMode::Bits32 => Self {
                rax: regs.rcx & LOW_HALF,
                rdx: regs.rcx >> HALF_BITS,
                rcx: regs.rdx & LOW_HALF,
                rbx: regs.rdx >> HALF_BITS,
                rsi: regs.r8 & LOW_HALF,
                rdi: regs.r8 >> HALF_BITS,
                r8: 0,
            },
        }
    }

    /// Guest side: the result value as the caller reads it after the call,
    /// RAX or EDX:EAX.
    pub const fn result(&self, mode: HypercallMode) -> u64 {
        match mode {
            HypercallMode::Bits64 => self.rax,
            HypercallMode::Bits32 => pair(self.rdx, self.rax),
        }
    }
}

/// The registers the result of a call goes to, from
/// [`HypercallMode::result_regs`].
#[must_use = "the caller waits for its result in these registers"]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResultRegs {
    /// The value for RAX.
    pub rax: u64,
    /// The value for RDX in 32-bit mode; `None`: RDX is left as it is.
    pub rdx: Option<u64>,
}

impl ResultRegs {
    /// Stores the result into the caller's RAX and, in 32-bit mode, RDX.
    pub fn apply(self, rax: &mut u64, rdx: &mut u64) {
        *rax = self.rax;
        if let Some(high) = self.rdx {
            *rdx = high;
        }
    }
}

/// EFER.LMA (bit 10): long mode is active.
#[cfg(feature = "kvm")]
const EFER_LMA: u64 = 1 << 10;
/// CR0.PE (bit 0): protected mode.
#[cfg(feature = "kvm")]
const CR0_PE: u64 = 1;

/// The convention of the caller whose system registers KVM reports
/// (`KVM_GET_SREGS`, or `kvm_run`'s synced registers): EFER.LMA and CS.L,
/// as [`HypercallMode::from_cpu`].
///
/// ```
/// use hv_enlightenments::hypercall::HypercallMode;
///
/// let mut sregs = kvm_bindings::kvm_sregs::default();
/// assert_eq!(HypercallMode::from(&sregs), HypercallMode::Bits32);
/// (sregs.efer, sregs.cs.l) = (1 << 10 | 1 << 8, 1); // LMA | LME, 64-bit CS
/// assert_eq!(HypercallMode::from(&sregs), HypercallMode::Bits64);
/// ```
#[cfg(feature = "kvm")]
impl From<&kvm_bindings::kvm_sregs> for HypercallMode {
    fn from(sregs: &kvm_bindings::kvm_sregs) -> Self {
        Self::from_cpu(sregs.efer & EFER_LMA != 0, sregs.cs.l != 0)
    }
}

/// [`caller_may_call`] for the caller whose system registers KVM reports:
/// CR0.PE, and the CPL as SS.DPL, which `KVM_GET_SREGS` gives on both VMX
/// (`vmx_get_cpl`) and SVM (`svm_get_segment` reports the VMCB's CPL).
/// When false, inject #UD instead of decoding the call.
///
/// ```
/// use hv_enlightenments::hypercall::caller_may_call_sregs;
///
/// let mut sregs = kvm_bindings::kvm_sregs::default();
/// assert!(!caller_may_call_sregs(&sregs)); // real mode
/// sregs.cr0 |= 1; // PE
/// assert!(caller_may_call_sregs(&sregs));
/// sregs.ss.dpl = 3; // user mode
/// assert!(!caller_may_call_sregs(&sregs));
/// ```
#[cfg(feature = "kvm")]
pub fn caller_may_call_sregs(sregs: &kvm_bindings::kvm_sregs) -> bool {
    caller_may_call(sregs.cr0 & CR0_PE != 0, sregs.ss.dpl)
}

/// ```
/// use hv_enlightenments::hypercall::{HypercallGprs, HypercallMode};
///
/// let regs = kvm_bindings::kvm_regs { rcx: 0x0001_0008, rdx: 7, ..Default::default() };
/// let call = HypercallGprs::from(&regs).hypercall_regs(HypercallMode::Bits64);
/// assert_eq!((call.rcx, call.rdx), (0x0001_0008, 7));
/// ```
#[cfg(feature = "kvm")]
impl From<&kvm_bindings::kvm_regs> for HypercallGprs {
    fn from(regs: &kvm_bindings::kvm_regs) -> Self {
        Self {
            rax: regs.rax,
            rbx: regs.rbx,
            rcx: regs.rcx,
            rdx: regs.rdx,
            rsi: regs.rsi,
            rdi: regs.rdi,
            r8: regs.r8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mode_follows_lma_and_cs_l() {
        assert_eq!(HypercallMode::from_cpu(true, true), HypercallMode::Bits64);
        // Compatibility mode (LMA without CS.L) uses the 32-bit pairs.
        assert_eq!(HypercallMode::from_cpu(true, false), HypercallMode::Bits32);
        assert_eq!(HypercallMode::from_cpu(false, false), HypercallMode::Bits32);
        assert_eq!(HypercallMode::from_cpu(false, true), HypercallMode::Bits32);
    }

    #[test]
    fn only_cpl0_protected_mode_may_call() {
        assert!(caller_may_call(true, 0));
        assert!(!caller_may_call(true, 1));
        assert!(!caller_may_call(true, 3));
        assert!(!caller_may_call(false, 0));
    }

    #[test]
    fn registers_in_each_mode() {
        let gprs = HypercallGprs {
            rax: 0xAAAA_AAAA_0000_0001,
            rbx: 0xBBBB_BBBB_0000_0002,
            rcx: 0xCCCC_CCCC_0000_0003,
            rdx: 0xDDDD_DDDD_0000_0004,
            rsi: 0x5555_5555_0000_0005,
            rdi: 0x6666_6666_0000_0006,
            r8: 0x8888_8888_0000_0008,
        };
        let r = gprs.hypercall_regs(HypercallMode::Bits64);
        assert_eq!((r.rcx, r.rdx, r.r8), (gprs.rcx, gprs.rdx, gprs.r8));
        // 32-bit: the upper halves are not part of the value.
        let r = gprs.hypercall_regs(HypercallMode::Bits32);
        assert_eq!(r.rcx, 0x0000_0004_0000_0001);
        assert_eq!(r.rdx, 0x0000_0002_0000_0003);
        assert_eq!(r.r8, 0x0000_0006_0000_0005);
        assert_eq!(r.xmm, [0; 6]);
    }

    #[test]
    fn result_registers() {
        let v = 0x0000_0123_0000_0003;
        assert_eq!(
            HypercallMode::Bits64.result_regs(v),
            ResultRegs { rax: v, rdx: None }
        );
        assert_eq!(
            HypercallMode::Bits32.result_regs(v),
            ResultRegs {
                rax: 3,
                rdx: Some(0x123)
            }
        );
        let (mut rax, mut rdx) = (u64::MAX, 7);
        HypercallMode::Bits64
            .result_regs(v)
            .apply(&mut rax, &mut rdx);
        assert_eq!((rax, rdx), (v, 7));
    }

    #[cfg(feature = "kvm")]
    #[test]
    fn kvm_sregs_give_mode_and_permission() {
        let mut s = kvm_bindings::kvm_sregs::default();
        (s.efer, s.cs.l, s.cr0, s.ss.dpl) = (EFER_LMA, 1, CR0_PE, 0);
        assert_eq!(HypercallMode::from(&s), HypercallMode::Bits64);
        assert!(caller_may_call_sregs(&s));
        // Compatibility mode; then CPL 3 (also what virtual-8086 mode reports).
        s.cs.l = 0;
        assert_eq!(HypercallMode::from(&s), HypercallMode::Bits32);
        s.ss.dpl = 3;
        assert!(!caller_may_call_sregs(&s));
        // Real mode, whatever SS says.
        (s.cr0, s.ss.dpl) = (0, 0);
        assert!(!caller_may_call_sregs(&s));
    }

    fn mode() -> impl Strategy<Value = HypercallMode> {
        prop_oneof![Just(HypercallMode::Bits64), Just(HypercallMode::Bits32)]
    }

    proptest! {
        #[test]
        fn call_registers_round_trip(rcx: u64, rdx: u64, r8: u64, mode in mode()) {
            let regs = HypercallRegs { rcx, rdx, r8, ..Default::default() };
            let gprs = HypercallGprs::for_call(&regs, mode);
            prop_assert_eq!(gprs.hypercall_regs(mode), regs);
        }

        #[test]
        fn result_round_trips(value: u64, rax: u64, rdx: u64, mode in mode()) {
            let mut gprs = HypercallGprs { rax, rdx, ..Default::default() };
            mode.result_regs(value).apply(&mut gprs.rax, &mut gprs.rdx);
            prop_assert_eq!(gprs.result(mode), value);
            if mode == HypercallMode::Bits64 {
                prop_assert_eq!(gprs.rdx, rdx);
            }
        }

        #[test]
        fn upper_halves_do_not_matter_in_32_bit_mode(a: [u64; 7], high: u32) {
            let gprs = |v: [u64; 7]| HypercallGprs {
                rax: v[0], rbx: v[1], rcx: v[2], rdx: v[3], rsi: v[4], rdi: v[5], r8: v[6],
            };
            let flipped = a.map(|x| x ^ (u64::from(high) << HALF_BITS));
            prop_assert_eq!(
                gprs(a).hypercall_regs(HypercallMode::Bits32),
                gprs(flipped).hypercall_regs(HypercallMode::Bits32)
            );
        }
    }
}
