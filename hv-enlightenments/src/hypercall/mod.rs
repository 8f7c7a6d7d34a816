//! The PV TLB flush and PV IPI hypercalls: control and result words,
//! statuses, call codes, VP sets, a host-side decoder and a guest-side
//! encoder (TLFS chapters 3, 10 and 12).

mod control;
mod decode;
mod gva;
mod memory;
mod status;
mod vpset;

pub use control::{CallCode, Control, HypercallResult};
pub use decode::{
    FAST_INPUT_WORDS, FAST_XMM_REGISTERS, Flush, Hypercall, HypercallRegs, IPI_HIGH_VECTOR,
    IPI_LOW_VECTOR, SendIpi, decode,
};
pub use gva::{FlushFlags, GvaRange, GvaRanges, HV_PAGE_SIZE, MAX_GVA_RANGES};
pub use memory::{GuestMemoryRead, MemoryError, NoMemory, SliceMemory};
pub use status::HvStatus;
pub use vpset::{
    Error as VpSetError, GENERIC_SET_ALL, GENERIC_SET_SPARSE_4K, MAX_SPARSE_BANKS, MAX_VPS,
    PresentVps, SparseVpIter, SparseVpSet, VPS_PER_BANK, VpSet,
};
