//! The hypercall page: the code the VMM writes into the page the guest
//! names in HV_X64_MSR_HYPERCALL (TLFS chapter 3, "Establishing the
//! Hypercall Interface"). The guest calls offset 0 with the registers of
//! [`HypercallMode`](super::HypercallMode); the stub traps to the VMM with
//! an instruction the VMM chooses, then returns with the result the VMM
//! put in RAX (EDX:EAX).
//!
//! Layout, as KVM's `kvm_hv_set_msr_pw` writes it: the trapping instruction
//! at [`TRAP_OFFSET`], `RET`, then INT3 to the end of the page. The stub
//! is the same bytes in 32-bit and 64-bit code, so one page serves callers
//! in either mode.
//!
//! ```
//! use hv_enlightenments::hypercall::{HV_PAGE_SIZE, HypercallTrap};
//!
//! // The VMM intercepts byte writes to port 0xE0 (KVM_EXIT_IO, out, size 1).
//! let trap = HypercallTrap::PortIo { port: 0xE0 };
//! let stub = trap.stub();
//! assert_eq!(stub.as_bytes(), &[0xE6, 0xE0, 0xC3]); // out 0xE0, al; ret
//! assert_eq!(trap.io_port(), Some(0xE0));
//!
//! // On a HYPERCALL enable, write the whole page.
//! let page = stub.page();
//! assert_eq!(page[..3], *stub.as_bytes());
//! assert!(page[3..].iter().all(|&b| b == 0xCC));
//! assert_eq!(page.len(), HV_PAGE_SIZE);
//!
//! // A call that must fail with #UD (CPL > 0, page disabled) faults "at
//! // the hypercall instruction": RIP after the trap minus its length.
//! let rip_after = 0xFFFF_8000_0010_0002_u64;
//! assert_eq!(rip_after - trap.instruction_len() as u64, 0xFFFF_8000_0010_0000);
//! ```

use core::ops::Range;

use crate::HV_PAGE_SIZE;

/// `OUT imm8, AL` (SDM "OUT": `E6 ib`): writes AL to port `ib`. The port
/// is an immediate, so no register of the calling convention is touched.
const OPCODE_OUT_IMM8_AL: u8 = 0xE6;
/// `VMCALL` (SDM "VMCALL": `0F 01 C1`), Intel VMX.
const VMCALL: [u8; 3] = [0x0F, 0x01, 0xC1];
/// `VMMCALL` (AMD APM "VMMCALL": `0F 01 D9`), AMD SVM.
const VMMCALL: [u8; 3] = [0x0F, 0x01, 0xD9];
/// `RET` (near return, `C3`): back to the caller with RAX (EDX:EAX) set.
const OPCODE_RET: u8 = 0xC3;
/// `INT3` (`CC`): fills the rest of the page, so that a jump past the stub
/// traps (KVM pads the page the same way).
pub const HYPERCALL_PAGE_FILLER: u8 = 0xCC;

/// Offset of the trapping instruction in the page: the guest calls the
/// page's first byte.
pub const TRAP_OFFSET: usize = 0;
/// Longest trapping instruction: `VMCALL` and `VMMCALL`, 3 bytes.
const MAX_TRAP_LEN: usize = 3;
/// Longest stub: the trapping instruction and `RET`.
pub const MAX_STUB_LEN: usize = MAX_TRAP_LEN + 1;

/// How the hypercall page gives control to the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HypercallTrap {
    /// `OUT port, AL` (`E6 ib`): a one-byte port write the VMM intercepts
    /// (on KVM, `KVM_EXIT_IO` with direction out and size 1, RIP still at
    /// the instruction until the exit is completed). For hosts without an
    /// in-kernel Hyper-V.
    ///
    /// The port is 8 bits: ports above 0xFF need `MOV DX, port` first,
    /// which would overwrite RDX (the input GPA in 64-bit mode, the high
    /// half of the control word in 32-bit mode) before the VMM reads it.
    PortIo {
        /// The port, 0..=0xFF.
        port: u8,
    },
    /// `VMCALL` (`0F 01 C1`), Intel: for a hypervisor core that routes
    /// Hyper-V hypercalls to the VMM or serves them itself (KVM with
    /// in-kernel Hyper-V writes this page itself).
    Vmcall,
    /// `VMMCALL` (`0F 01 D9`), AMD: as [`HypercallTrap::Vmcall`].
    Vmmcall,
}

impl HypercallTrap {
    /// The trapping instruction's bytes, in the first
    /// [`instruction_len`](Self::instruction_len) entries.
    const fn instruction(self) -> [u8; MAX_TRAP_LEN] {
        match self {
            Self::PortIo { port } => [OPCODE_OUT_IMM8_AL, port, 0],
            Self::Vmcall => VMCALL,
            Self::Vmmcall => VMMCALL,
        }
    }

    /// Length in bytes of the trapping instruction (2 for the port write,
    /// 3 for `VMCALL`/`VMMCALL`).
    pub const fn instruction_len(self) -> usize {
        match self {
            Self::PortIo { .. } => 2,
            Self::Vmcall | Self::Vmmcall => MAX_TRAP_LEN,
        }
    }

    /// Where the trapping instruction sits in the page.
    pub const fn instruction_range(self) -> Range<usize> {
        TRAP_OFFSET..TRAP_OFFSET + self.instruction_len()
    }

    /// The I/O port the trap writes, to match against port-write exits.
    pub const fn io_port(self) -> Option<u16> {
        match self {
            Self::PortIo { port } => Some(port as u16),
            Self::Vmcall | Self::Vmmcall => None,
        }
    }

    /// The stub for this trap: the instruction, then `RET`.
    pub const fn stub(self) -> HypercallStub {
        let insn = self.instruction();
        let len = self.instruction_len();
        let mut bytes = [0u8; MAX_STUB_LEN];
        let mut i = 0;
        while i < len {
            bytes[i] = insn[i];
            i += 1;
        }
        bytes[len] = OPCODE_RET;
        HypercallStub {
            bytes,
            len: len + 1,
        }
    }
}

/// The code at the start of the hypercall page, from
/// [`HypercallTrap::stub`].
///
/// The page, as KVM's `kvm_hv_set_msr_pw` lays it out: the trapping
/// instruction at [`TRAP_OFFSET`], `RET`, then INT3 to the end. The bytes
/// decode the same in 32-bit and 64-bit code, so one page serves callers
/// in either mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HypercallStub {
    bytes: [u8; MAX_STUB_LEN],
    /// Bytes used, <= [`MAX_STUB_LEN`].
    len: usize,
}

impl HypercallStub {
    /// The stub's bytes (at most [`MAX_STUB_LEN`]).
    pub fn as_bytes(&self) -> &[u8] {
        // `len` is set by `HypercallTrap::stub` and is at most MAX_STUB_LEN.
        self.bytes.get(..self.len).unwrap_or(&self.bytes)
    }

    /// Writes the page: the stub at offset 0, INT3 everywhere else.
    pub fn write_page(&self, page: &mut [u8; HV_PAGE_SIZE]) {
        let stub = self.as_bytes();
        let (head, tail) = page.split_at_mut(stub.len());
        head.copy_from_slice(stub);
        tail.fill(HYPERCALL_PAGE_FILLER);
    }

    /// The whole page, as [`write_page`](Self::write_page) fills it.
    pub fn page(&self) -> [u8; HV_PAGE_SIZE] {
        let mut page = [0u8; HV_PAGE_SIZE];
        self.write_page(&mut page);
        page
    }
}

/// Fills `page` with the hypercall page for `trap`: the stub, then INT3.
///
/// ```
/// use hv_enlightenments::hypercall::{write_hypercall_page, HypercallTrap, HV_PAGE_SIZE};
/// let mut page = [0u8; HV_PAGE_SIZE];
/// write_hypercall_page(HypercallTrap::Vmcall, &mut page);
/// assert_eq!(page[..5], [0x0F, 0x01, 0xC1, 0xC3, 0xCC]); // vmcall; ret; int3
/// ```
pub fn write_hypercall_page(trap: HypercallTrap, page: &mut [u8; HV_PAGE_SIZE]) {
    trap.stub().write_page(page);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_stub_is_out_imm8_then_ret() {
        // The bytes the reference VMM assembled with iced-x86 for port 0xE0.
        let stub = HypercallTrap::PortIo { port: 0xE0 }.stub();
        assert_eq!(stub.as_bytes(), &[0xE6, 0xE0, 0xC3]);
        for port in [0u8, 0x80, 0xFF] {
            let trap = HypercallTrap::PortIo { port };
            assert_eq!(trap.stub().as_bytes(), &[0xE6, port, 0xC3]);
            assert_eq!(trap.io_port(), Some(u16::from(port)));
            assert_eq!(trap.instruction_range(), 0..2);
        }
    }

    #[test]
    fn vmcall_stubs_match_kvm_patch_hypercall() {
        // vmx_patch_hypercall / svm_patch_hypercall, then KVM's `ret`.
        let vmcall = HypercallTrap::Vmcall;
        let vmmcall = HypercallTrap::Vmmcall;
        assert_eq!(vmcall.stub().as_bytes(), &[0x0F, 0x01, 0xC1, 0xC3]);
        assert_eq!(vmmcall.stub().as_bytes(), &[0x0F, 0x01, 0xD9, 0xC3]);
        assert_eq!(vmcall.instruction_range(), 0..3);
        assert_eq!(vmcall.io_port(), None);
        assert_eq!(vmmcall.io_port(), None);
        assert!(vmcall.stub().as_bytes().len() <= MAX_STUB_LEN);
    }

    #[test]
    fn page_is_stub_then_int3() {
        for trap in [
            HypercallTrap::PortIo { port: 0xE0 },
            HypercallTrap::Vmcall,
            HypercallTrap::Vmmcall,
        ] {
            let mut page = [0u8; HV_PAGE_SIZE];
            write_hypercall_page(trap, &mut page);
            let stub = trap.stub();
            let n = stub.as_bytes().len();
            assert_eq!(&page[..n], stub.as_bytes());
            assert_eq!(page[trap.instruction_len()], OPCODE_RET);
            assert!(page[n..].iter().all(|&b| b == HYPERCALL_PAGE_FILLER));
            assert_eq!(stub.page(), page);
        }
    }

    #[test]
    fn rewriting_overwrites_everything() {
        let mut page = [0x5Au8; HV_PAGE_SIZE];
        write_hypercall_page(HypercallTrap::Vmcall, &mut page);
        write_hypercall_page(HypercallTrap::PortIo { port: 1 }, &mut page);
        assert_eq!(page[..4], [0xE6, 0x01, 0xC3, 0xCC]);
        assert!(!page.contains(&0x5A));
    }
}
