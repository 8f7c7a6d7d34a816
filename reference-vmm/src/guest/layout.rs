//! Guest-physical memory layout of the built-in guest kernel.
//!
//! Everything below [`IDENTITY_LIMIT`] is identity-mapped with 2 MiB pages
//! that are user-accessible (U/S = 1, no SMEP/SMAP), so that the CPL3 parts
//! of the built-in guests can run natively on hosts that emulate CPL0.

/// PML4 table.
pub const PML4: u64 = 0x1000;
/// PDPT for the first 512 GiB.
pub const PDPT: u64 = 0x2000;
/// Page directory for 0..1 GiB (2 MiB pages).
pub const PD_LOW: u64 = 0x3000;
/// Page directory for 1..2 GiB (only entry 0 is used, pointing at [`PT_TEST`]).
pub const PD_TEST: u64 = 0x4000;
/// Page table with 4 KiB pages for the TLB test window at [`TLB_TEST_VA`].
pub const PT_TEST: u64 = 0x5000;
/// Page directory for 3..4 GiB: maps the xAPIC MMIO page (2 MiB page,
/// uncached) for guests that stay in xAPIC mode.
pub const PD_APIC: u64 = 0xF000;
/// xAPIC MMIO base (identity-mapped through [`PD_APIC`]).
pub const XAPIC_MMIO: u64 = 0xFEE0_0000;
/// Interrupt descriptor table (256 gates of 16 bytes).
pub const IDT: u64 = 0x6000;
/// Where the guest kernel puts its hypercall page.
pub const HYPERCALL_PAGE: u64 = 0x7000;
/// Shared data of the guest kernel (scenario parameters and results).
pub const SHARED: u64 = 0x8000;
/// Size of [`SHARED`] (its last page holds [`PD_APIC`]).
pub const SHARED_SIZE: u64 = 0x7000;
/// Guest kernel code.
pub const KERNEL_CODE: u64 = 0x10000;
/// Size reserved for the kernel code.
pub const KERNEL_CODE_SIZE: u64 = 0x10000;
/// Scenario (CPL3) code.
pub const USER_CODE: u64 = 0x20000;
/// Size reserved for scenario code.
pub const USER_CODE_SIZE: u64 = 0x20000;
/// Two physical pages the TLB test window is switched between.
pub const TLB_PAGE_A: u64 = 0x40000;
/// Second TLB test page.
pub const TLB_PAGE_B: u64 = 0x41000;
/// Virtual address of the TLB test window (mapped through [`PT_TEST`]).
pub const TLB_TEST_VA: u64 = 0x4000_0000;
/// Per-vCPU areas start here.
pub const PERCPU_BASE: u64 = 0x10_0000;
/// Size of one vCPU's area: GDT+TSS page, VP assist page, kernel stack,
/// user stack.
pub const PERCPU_SIZE: u64 = 0x4000;
/// Offset of the GDT (and TSS) page in a per-vCPU area.
pub const PERCPU_GDT: u64 = 0x0;
/// Offset of the VP assist page in a per-vCPU area.
pub const PERCPU_ASSIST: u64 = 0x1000;
/// Offset of the top of the kernel stack in a per-vCPU area.
pub const PERCPU_KSTACK_TOP: u64 = 0x3000;
/// Offset of the top of the user stack in a per-vCPU area.
pub const PERCPU_USTACK_TOP: u64 = 0x4000;
/// Offset of the per-vCPU variables (kept on the GDT page, after the TSS).
pub const PERCPU_VARS: u64 = 0x800;
/// Bytes of the per-vCPU variables (the rest of the GDT page).
pub const PERCPU_VARS_SIZE: u64 = PERCPU_ASSIST - PERCPU_VARS;
/// Identity mapping covers this many bytes.
pub const IDENTITY_LIMIT: u64 = 1 << 30;

/// Base of vCPU `index`'s area.
pub const fn percpu(index: u64) -> u64 {
    PERCPU_BASE + index * PERCPU_SIZE
}

/// Guest memory size needed for `vcpus` vCPUs (rounded up to 2 MiB).
pub const fn memory_size(vcpus: u64) -> u64 {
    let end = percpu(vcpus);
    (end + 0x1f_ffff) & !0x1f_ffff
}
