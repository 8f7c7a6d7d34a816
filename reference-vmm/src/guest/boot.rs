//! Long-mode start state built by the VMM: page tables, a per-vCPU GDT with
//! a TSS (and its I/O permission bitmap), the IDT, and the special
//! registers and MSRs each vCPU starts with.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::guest::layout::*;

/// Kernel code selector.
pub const SEL_KCODE: u16 = 0x08;
/// Kernel data selector.
pub const SEL_KDATA: u16 = 0x10;
/// User 32-bit code selector.
pub const SEL_UCODE32: u16 = 0x18;
/// User data selector (RPL 3).
pub const SEL_UDATA: u16 = 0x20 | 3;
/// User 64-bit code selector (RPL 3).
pub const SEL_UCODE: u16 = 0x28 | 3;
/// TSS selector.
pub const SEL_TSS: u16 = 0x30;

/// Offset of the TSS inside the per-vCPU GDT page.
const TSS_OFFSET: u64 = 0x100;
/// Size of the 64-bit TSS without I/O bitmap (SDM Vol. 3 8.7).
const TSS_SIZE: u64 = 104;
/// The I/O permission bitmap covers ports 0..IOMAP_PORTS.
pub const IOMAP_PORTS: u64 = 1024;
/// Last byte of the TSS including the I/O bitmap and its 0xFF terminator.
const TSS_LIMIT: u64 = TSS_SIZE + IOMAP_PORTS / 8;

/// Page-table entry bits (SDM Vol. 3 4.5).
pub const PTE_P: u64 = 1 << 0;
/// Writable.
pub const PTE_W: u64 = 1 << 1;
/// User-accessible.
pub const PTE_U: u64 = 1 << 2;
/// Large page (in a PDE).
pub const PTE_PS: u64 = 1 << 7;
/// Cache disable.
pub const PTE_PCD: u64 = 1 << 4;

/// CR0: PE | MP | ET | NE | WP | PG.
const CR0_LONG: u64 = 0x8005_0033;
/// CR4: PAE | OSFXSR | OSXMMEXCPT.
const CR4_LONG: u64 = (1 << 5) | (1 << 9) | (1 << 10);
/// EFER: SCE | LME | LMA.
const EFER_LONG: u64 = (1 << 0) | (1 << 8) | (1 << 10);

/// Writes the shared page tables: 0..1 GiB identity-mapped with 2 MiB
/// user pages, the 4 KiB TLB test window mapping [`TLB_PAGE_A`], and the
/// xAPIC MMIO page.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    let flags = PTE_P | PTE_W | PTE_U;
    mem.write_obj(PDPT | flags, GuestAddress(PML4))?;
    mem.write_obj(PD_LOW | flags, GuestAddress(PDPT))?;
    mem.write_obj(PD_TEST | flags, GuestAddress(PDPT + 8))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | flags | PTE_PS, GuestAddress(PD_LOW + i * 8))?;
    }
    mem.write_obj(PT_TEST | flags, GuestAddress(PD_TEST))?;
    // 3..4 GiB: only the 2 MiB page holding the xAPIC MMIO page.
    mem.write_obj(PD_APIC | flags, GuestAddress(PDPT + 3 * 8))?;
    let apic_2m = XAPIC_MMIO & !0x1F_FFFF;
    let slot = (apic_2m >> 21) & 511;
    mem.write_obj(
        apic_2m | flags | PTE_PS | PTE_PCD,
        GuestAddress(PD_APIC + slot * 8),
    )?;
    mem.write_obj(TLB_PAGE_A | flags, GuestAddress(PT_TEST))?;
    Ok(())
}

fn tss_descriptor(base: u64, limit: u64) -> (u64, u64) {
    // 64-bit available TSS (type 9), present, DPL 0 (SDM Vol. 3 8.2.3).
    let low = (limit & 0xFFFF)
        | ((base & 0xFF_FFFF) << 16)
        | (0x89u64 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((base >> 24) & 0xFF) << 56);
    (low, base >> 32)
}

/// Writes vCPU `index`'s GDT and TSS. `io_ports` are the ports CPL3 code
/// may use directly (the hypercall trap port among them, so that a CPL3
/// call reaches the VMM and is refused there with #UD).
pub fn write_gdt_tss(
    mem: &GuestMemoryMmap,
    index: u64,
    io_ports: &[u16],
) -> Result<(), vm_memory::GuestMemoryError> {
    let base = percpu(index) + PERCPU_GDT;
    let tss = base + TSS_OFFSET;
    let (tss_lo, tss_hi) = tss_descriptor(tss, TSS_LIMIT);
    let gdt: [u64; 8] = [
        0,
        0x00AF_9A00_0000_FFFF, // kernel code, 64-bit
        0x00CF_9200_0000_FFFF, // kernel data
        0x00CF_FA00_0000_FFFF, // user code, 32-bit (SYSRET base)
        0x00CF_F200_0000_FFFF, // user data
        0x00AF_FA00_0000_FFFF, // user code, 64-bit
        tss_lo,
        tss_hi,
    ];
    for (i, d) in gdt.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(base + i as u64 * 8))?;
    }
    let mut t = [0u8; TSS_LIMIT as usize + 1];
    let rsp0 = percpu(index) + PERCPU_KSTACK_TOP;
    t[4..12].copy_from_slice(&rsp0.to_le_bytes());
    t[102..104].copy_from_slice(&(TSS_SIZE as u16).to_le_bytes());
    for b in &mut t[TSS_SIZE as usize..] {
        *b = 0xFF;
    }
    for &p in io_ports {
        let p = u64::from(p);
        if p < IOMAP_PORTS {
            t[(TSS_SIZE + p / 8) as usize] &= !(1u8 << (p % 8));
        }
    }
    mem.write_slice(&t, GuestAddress(tss))
}

/// Writes an IDT whose gate `v` points at `handlers[v]` (interrupt gates,
/// kernel code selector; DPL 3 for the vectors in `user_gates`, else 0).
pub fn write_idt(
    mem: &GuestMemoryMmap,
    handlers: &[u64; 256],
    user_gates: &[u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    for (v, &h) in handlers.iter().enumerate() {
        let dpl: u64 = if user_gates.contains(&(v as u8)) {
            3
        } else {
            0
        };
        let low = (h & 0xFFFF)
            | (u64::from(SEL_KCODE) << 16)
            | ((0x8E | (dpl << 5)) << 40)
            | (((h >> 16) & 0xFFFF) << 48);
        let high = h >> 32;
        let a = IDT + v as u64 * 16;
        mem.write_obj(low, GuestAddress(a))?;
        mem.write_obj(high, GuestAddress(a + 8))?;
    }
    Ok(())
}

fn seg(selector: u16, code: bool, dpl: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xFFFF_FFFF,
        selector,
        type_: if code { 11 } else { 3 },
        present: 1,
        dpl,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Special registers for vCPU `index` entering the guest kernel at CPL0 in
/// long mode. GS base points at the vCPU's variables.
pub fn long_mode_sregs(mut sregs: kvm_sregs, index: u64) -> kvm_sregs {
    let base = percpu(index);
    sregs.cr0 = CR0_LONG;
    sregs.cr3 = PML4;
    sregs.cr4 = CR4_LONG;
    sregs.efer = EFER_LONG;
    sregs.cs = seg(SEL_KCODE, true, 0);
    let data = seg(SEL_KDATA, false, 0);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.ss = data;
    sregs.gs = data;
    sregs.gs.base = base + PERCPU_VARS;
    sregs.tr = kvm_segment {
        base: base + TSS_OFFSET,
        limit: TSS_LIMIT as u32,
        selector: SEL_TSS,
        type_: 11,
        present: 1,
        dpl: 0,
        db: 0,
        s: 0,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.ldt = kvm_segment {
        type_: 2,
        present: 1,
        unusable: 1,
        ..Default::default()
    };
    sregs.gdt.base = base + PERCPU_GDT;
    sregs.gdt.limit = 8 * 8 - 1;
    sregs.idt.base = IDT;
    sregs.idt.limit = 256 * 16 - 1;
    sregs
}

/// General registers for vCPU `index` entering the guest kernel at `entry`.
pub fn entry_regs(index: u64, entry: u64, vcpus: u64) -> kvm_regs {
    kvm_regs {
        rip: entry,
        rsp: percpu(index) + PERCPU_KSTACK_TOP,
        rflags: 2,
        rdi: index,
        rsi: vcpus,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), layout_size())]).unwrap()
    }

    fn layout_size() -> usize {
        crate::guest::layout::memory_size(2) as usize
    }

    #[test]
    fn tss_descriptor_and_io_bitmap() {
        let m = mem();
        write_gdt_tss(&m, 1, &[0xE0]).unwrap();
        let base = percpu(1);
        let lo: u64 = m.read_obj(GuestAddress(base + u64::from(SEL_TSS))).unwrap();
        let tss = base + TSS_OFFSET;
        // Base bits 23:0 and 31:24, limit, type 9 present.
        assert_eq!((lo >> 16) & 0xFF_FFFF, tss & 0xFF_FFFF);
        assert_eq!(lo >> 56, (tss >> 24) & 0xFF);
        assert_eq!(lo & 0xFFFF, TSS_LIMIT);
        assert_eq!((lo >> 40) & 0xFF, 0x89);
        let rsp0: u64 = m.read_obj(GuestAddress(tss + 4)).unwrap();
        assert_eq!(rsp0, percpu(1) + PERCPU_KSTACK_TOP);
        // Port 0xE0 allowed, 0xE1 denied, terminator set.
        let byte: u8 = m.read_obj(GuestAddress(tss + TSS_SIZE + 0xE0 / 8)).unwrap();
        assert_eq!(byte, 0xFE);
        let term: u8 = m.read_obj(GuestAddress(tss + TSS_LIMIT)).unwrap();
        assert_eq!(term, 0xFF);
    }

    #[test]
    fn page_tables_map_user_pages_and_the_test_window() {
        let m = mem();
        write_page_tables(&m).unwrap();
        let pde: u64 = m.read_obj(GuestAddress(PD_LOW + 8)).unwrap();
        assert_eq!(pde, (1 << 21) | PTE_P | PTE_W | PTE_U | PTE_PS);
        let pte: u64 = m.read_obj(GuestAddress(PT_TEST)).unwrap();
        assert_eq!(pte & !0xFFF, TLB_PAGE_A);
    }

    #[test]
    fn idt_gate_dpl() {
        let m = mem();
        let mut h = [0x1_2345_6789u64; 256];
        h[3] = 0xFFFF_8000_0000_1000;
        write_idt(&m, &h, &[3]).unwrap();
        let g3: u64 = m.read_obj(GuestAddress(IDT + 3 * 16)).unwrap();
        let g3_hi: u64 = m.read_obj(GuestAddress(IDT + 3 * 16 + 8)).unwrap();
        assert_eq!((g3 >> 40) & 0xFF, 0xEE, "present, DPL 3, interrupt gate");
        assert_eq!(g3_hi, 0xFFFF_8000);
        let g4: u64 = m.read_obj(GuestAddress(IDT + 4 * 16)).unwrap();
        assert_eq!((g4 >> 40) & 0xFF, 0x8E);
    }
}
