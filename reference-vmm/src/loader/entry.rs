//! The boot vCPU's register state at the kernel entry point.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};

use super::layout;

/// CR0.PE: protected mode.
const CR0_PE: u64 = 1 << 0;
/// CR0.ET: extension type (hard-wired to 1 on modern CPUs).
const CR0_ET: u64 = 1 << 4;
/// CR0.PG: paging.
const CR0_PG: u64 = 1 << 31;
/// CR4.PAE: physical address extension (required by long mode).
const CR4_PAE: u64 = 1 << 5;
/// EFER.LME: long mode enable.
const EFER_LME: u64 = 1 << 8;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and reads as 1; IF, TF and VM are clear.
const RFLAGS_RESERVED: u64 = 0x2;

/// Processor mode at the entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuMode {
    /// 32-bit flat protected mode, paging off (PVH, multiboot).
    Protected32,
    /// 64-bit long mode on the identity map at [`layout::PML4`] (bzImage).
    Long64,
}

/// The boot vCPU's state at the kernel entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryState {
    /// Processor mode.
    pub mode: CpuMode,
    /// Entry point (guest-physical; identity-mapped in [`CpuMode::Long64`]).
    pub rip: u64,
    /// RAX (multiboot: the boot loader magic 0x2BADB002).
    pub rax: u64,
    /// RBX (PVH: `hvm_start_info` address; multiboot: multiboot info address).
    pub rbx: u64,
    /// RSI (bzImage: `boot_params` address).
    pub rsi: u64,
}

impl EntryState {
    /// General-purpose registers: entry RIP, RFLAGS = 0x2 (interrupts off),
    /// the mode's argument registers, everything else zero.
    pub fn regs(&self) -> kvm_regs {
        kvm_regs {
            rip: self.rip,
            rax: self.rax,
            rbx: self.rbx,
            rsi: self.rsi,
            rflags: RFLAGS_RESERVED,
            ..Default::default()
        }
    }

    /// Special registers derived from `base` (the vCPU's `KVM_GET_SREGS`):
    /// control registers, EFER, flat segments from [`layout::GDT_ENTRIES`],
    /// the GDT at [`layout::GDT`] and an empty IDT. Other fields (APIC base,
    /// interrupt bitmap) are kept.
    pub fn sregs(&self, base: &kvm_sregs) -> kvm_sregs {
        let mut s = *base;
        let code_sel = match self.mode {
            CpuMode::Protected32 => layout::SEL_CODE32,
            CpuMode::Long64 => layout::SEL_CODE64,
        };
        s.cs = segment(code_sel);
        let data = segment(layout::SEL_DATA);
        s.ds = data;
        s.es = data;
        s.fs = data;
        s.gs = data;
        s.ss = data;
        s.tr = segment(layout::SEL_TSS);
        s.ldt = kvm_segment {
            selector: 0,
            type_: 2, // LDT
            present: 1,
            limit: 0xFFFF,
            ..Default::default()
        };
        s.gdt.base = layout::GDT;
        s.gdt.limit = (8 * layout::GDT_ENTRIES.len() - 1) as u16;
        s.idt.base = 0;
        s.idt.limit = 0;
        s.cr2 = 0;
        match self.mode {
            CpuMode::Protected32 => {
                // PVH ABI (xen docs/misc/pvh.pandoc): CR0.PE set, all other
                // writable bits clear; CR4 clear. Multiboot asks the same.
                s.cr0 = CR0_PE | CR0_ET;
                s.cr3 = 0;
                s.cr4 = 0;
                s.efer = 0;
            }
            CpuMode::Long64 => {
                // As firecracker's setup_sregs: PE, PG, PAE, LME|LMA.
                s.cr0 = CR0_PE | CR0_ET | CR0_PG;
                s.cr3 = layout::PML4;
                s.cr4 = CR4_PAE;
                s.efer = EFER_LME | EFER_LMA;
            }
        }
        s
    }
}

/// The hidden part of a segment register for the GDT entry at `selector`.
fn segment(selector: u16) -> kvm_segment {
    let entry = layout::GDT_ENTRIES
        .get(usize::from(selector >> 3))
        .copied()
        .unwrap_or(0);
    let limit_raw = (entry & 0xFFFF) | ((entry >> 32) & 0xF_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        ((limit_raw << 12) | 0xFFF) as u32
    } else {
        limit_raw as u32
    };
    kvm_segment {
        base: ((entry >> 16) & 0xFF_FFFF) | (((entry >> 56) & 0xFF) << 24),
        limit,
        selector,
        type_: ((entry >> 40) & 0xF) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected32_state_is_flat_without_paging() {
        let e = EntryState {
            mode: CpuMode::Protected32,
            rip: 0x10_0000,
            rax: 0x2BAD_B002,
            rbx: layout::MBI,
            rsi: 0,
        };
        let r = e.regs();
        assert_eq!(
            (r.rip, r.rax, r.rbx, r.rflags),
            (0x10_0000, 0x2BAD_B002, layout::MBI, 2)
        );
        let s = e.sregs(&kvm_sregs::default());
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE);
        assert_eq!((s.cr4, s.efer), (0, 0));
        assert_eq!(
            (s.cs.base, s.cs.limit, s.cs.db, s.cs.l),
            (0, 0xFFFF_FFFF, 1, 0)
        );
        assert_eq!((s.cs.type_, s.cs.s, s.cs.present), (0xB, 1, 1));
        assert_eq!((s.ss.limit, s.ss.db, s.ss.type_), (0xFFFF_FFFF, 1, 3));
        assert_eq!(
            (s.tr.base, s.tr.limit, s.tr.type_, s.tr.s),
            (0, 0x67, 0xB, 0)
        );
    }

    #[test]
    fn long64_state_uses_the_identity_map() {
        let e = EntryState {
            mode: CpuMode::Long64,
            rip: 0x10_0200,
            rax: 0,
            rbx: 0,
            rsi: layout::ZERO_PAGE,
        };
        assert_eq!(e.regs().rsi, layout::ZERO_PAGE);
        let s = e.sregs(&kvm_sregs::default());
        assert_eq!(s.cr0 & (CR0_PE | CR0_PG), CR0_PE | CR0_PG);
        assert_eq!((s.cr3, s.cr4 & CR4_PAE), (layout::PML4, CR4_PAE));
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((s.cs.selector, s.cs.l, s.cs.db), (layout::SEL_CODE64, 1, 0));
        assert_eq!(s.ds.selector, layout::SEL_DATA);
        assert_eq!(usize::from(s.gdt.limit) + 1, 8 * layout::GDT_ENTRIES.len());
    }
}
