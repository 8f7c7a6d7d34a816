//! Hypercalls: the hypercall page and the calling conventions, and for the
//! PV TLB flush and PV IPI calls the control and result words, statuses,
//! call codes, VP sets, a host-side decoder and a guest-side encoder (TLFS
//! chapters 3, 10 and 12).
//!
//! Host side: the VMM writes the hypercall page ([`HypercallTrap`],
//! [`write_hypercall_page`]) when the guest enables it; when the stub
//! traps, it fills [`HypercallRegs`] from the vCPU
//! ([`HypercallGprs::hypercall_regs`] for the caller's [`HypercallMode`]:
//! RCX, RDX, R8 or the 32-bit register pairs, plus XMM0-5 when
//! [`Control::uses_xmm_input`]), calls [`decode`] with a
//! [`GuestMemoryRead`], performs the effect and writes the result
//! ([`HypercallMode::result_regs`]: RAX, or EDX:EAX):
//!
//! ```
//! use hv_enlightenments::hypercall::{
//!     decode, encode_send_ipi, EncodeOptions, Hypercall, HypercallResult, SliceMemory,
//!     Targets, HV_PAGE_SIZE,
//! };
//!
//! // A guest IPI to VPs 1 and 3 (the encoder picks the fast form).
//! let mut page = [0u8; HV_PAGE_SIZE];
//! let call = encode_send_ipi(
//!     Targets::new(&[1, 3]),
//!     0x40,
//!     EncodeOptions::default(),
//!     &mut page,
//!     0x1000,
//! )
//! .unwrap();
//!
//! // The VMM side.
//! let mem = SliceMemory::new(0x1000, &page);
//! let rax = match decode(&call.regs(), &mem) {
//!     Ok(Hypercall::SendIpi(ipi)) => {
//!         let targets: Vec<u32> = ipi.targets.iter_present(8).collect();
//!         assert_eq!((ipi.vector, targets), (0x40, vec![1, 3]));
//!         HypercallResult::success(0).encode()
//!     }
//!     Ok(other) => other.completed().encode(),
//!     Err(status) => HypercallResult::from(status).encode(),
//! };
//! assert_eq!(rax, 0);
//! ```

mod access;
mod control;
mod convention;
mod decode;
mod encode;
mod gva;
mod memory;
mod page;
mod status;
mod vpset;

#[cfg(test)]
mod tests;

/// The crate-root [`HV_PAGE_SIZE`], here for the
/// page buffers of [`encode_send_ipi`], [`encode_flush`] and
/// [`write_hypercall_page`].
pub use crate::HV_PAGE_SIZE;
pub use access::{HypercallAccess, Refusal};
pub use control::{CallCode, Control, HypercallResult};
#[cfg(feature = "kvm")]
pub use convention::caller_may_call_sregs;
pub use convention::{HypercallGprs, HypercallMode, ResultRegs, caller_may_call};
pub use decode::{
    FAST_INPUT_WORDS, FAST_XMM_REGISTERS, Flush, Hypercall, HypercallRegs, IPI_HIGH_VECTOR,
    IPI_LOW_VECTOR, SendIpi, decode,
};
/// The input reader the SynIC's own decoder ([`crate::synic::decode_synic`])
/// shares.
pub(crate) use decode::{Input, input};
pub use encode::{
    EncodeError, EncodeOptions, EncodedCall, FlushRequest, Targets, encode_flush, encode_send_ipi,
};
pub use gva::{FlushFlags, GvaRange, GvaRangeIter, GvaRanges, MAX_FAST_GVA_RANGES, MAX_GVA_RANGES};
pub use memory::{GuestMemoryRead, MemoryError, NoMemory, SliceMemory};
pub use page::{
    HYPERCALL_PAGE_FILLER, HypercallStub, HypercallTrap, MAX_STUB_LEN, TRAP_OFFSET,
    write_hypercall_page,
};
pub use status::HvStatus;
pub use vpset::{
    Error as VpSetError, GENERIC_SET_ALL, GENERIC_SET_SPARSE_4K, MAX_SPARSE_BANKS, MAX_VPS,
    PresentBanks, PresentVps, SparseVpIter, SparseVpSet, VPS_PER_BANK, VpSet,
};
