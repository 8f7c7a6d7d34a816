//! Guest-physical addresses the loader owns, and the e820 map it reports.
//!
//! | Range                  | Holds                                              |
//! |------------------------|----------------------------------------------------|
//! | `0x0000..0x1000`       | left alone (real-mode IVT, BIOS data area)         |
//! | `0x1000..0x1030`       | [`GDT`]: null, null, 64-bit code, data, 32-bit code, TSS |
//! | `0x6000..0x6038`       | [`PVH_START_INFO`] (`hvm_start_info`)              |
//! | `0x6100..0x6800`       | [`PVH_MODLIST`] (`hvm_modlist_entry`, initrd)      |
//! | `0x6800..0x7000`       | [`PVH_MEMMAP`] (`hvm_memmap_table_entry`)          |
//! | `0x7000..0x8000`       | [`ZERO_PAGE`] (bzImage `boot_params`)              |
//! | `0x9000..0xA000`       | [`PML4`] (bzImage only)                            |
//! | `0xA000..0xB000`       | [`PDPT`]                                           |
//! | `0xB000..0xF000`       | [`PD`]: 4 page directories, 2 MiB pages, 0..4 GiB  |
//! | `0x10000..0x20000`     | [`MBI`]: multiboot info, mmap, modules, strings    |
//! | `0x20000..0x30000`     | [`CMDLINE`] (NUL-terminated, [`CMDLINE_MAX`] bytes)|
//! | `0x30000..0x9FC00`     | free (a kernel may load here)                      |
//! | `0x9FC00..0x100000`    | reserved in e820 (EBDA, VGA, ROM, ACPI tables)     |
//! | `0x100000..ram_size`   | kernel, then modules/initrd (initrd at the top)    |

/// Global descriptor table written for every kernel kind.
pub const GDT: u64 = 0x1000;
/// Selector of the 64-bit code segment (`__BOOT_CS` of the Linux 64-bit boot protocol).
pub const SEL_CODE64: u16 = 0x10;
/// Selector of the flat data segment (`__BOOT_DS`).
pub const SEL_DATA: u16 = 0x18;
/// Selector of the flat 32-bit code segment (PVH and multiboot).
pub const SEL_CODE32: u16 = 0x20;
/// Selector of the 32-bit TSS (base 0, limit 0x67) the PVH ABI asks for.
pub const SEL_TSS: u16 = 0x28;
/// The GDT entries, indexed by selector >> 3.
pub const GDT_ENTRIES: [u64; 6] = [
    0,
    0,
    0x00AF_9B00_0000_FFFF, // code, L=1, DPL 0, 4 GiB
    0x00CF_9300_0000_FFFF, // data, read/write, 4 GiB, 32-bit
    0x00CF_9B00_0000_FFFF, // code, D=1, 4 GiB
    0x0000_8B00_0000_0067, // 32-bit TSS (busy), base 0, limit 0x67
];

/// `hvm_start_info` for the Linux PVH entry.
pub const PVH_START_INFO: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST: u64 = 0x6100;
/// PVH memory map.
pub const PVH_MEMMAP: u64 = 0x6800;

/// bzImage `boot_params` ("zero page").
pub const ZERO_PAGE: u64 = 0x7000;

/// Level-4 page table of the identity map built for the bzImage 64-bit entry.
pub const PML4: u64 = 0x9000;
/// Page-directory-pointer table (entries 0..4 used).
pub const PDPT: u64 = 0xA000;
/// First of [`PD_COUNT`] page directories, one page each.
pub const PD: u64 = 0xB000;
/// Page directories: each maps 1 GiB with 2 MiB pages.
pub const PD_COUNT: u64 = 4;

/// Multiboot information structure; mmap, module list and strings follow.
pub const MBI: u64 = 0x10000;
/// Multiboot memory map (entries of 24 bytes).
pub const MBI_MMAP: u64 = 0x10100;
/// Multiboot module list (16 bytes each, [`MAX_MODULES`] at most).
pub const MBI_MODS: u64 = 0x10800;
/// Strings referenced by the multiboot info (boot loader name, module strings).
pub const MBI_STRINGS: u64 = 0x11000;
/// End of the multiboot strings area.
pub const MBI_END: u64 = 0x20000;
/// Most multiboot modules accepted.
pub const MAX_MODULES: usize = 64;

/// Kernel command line.
pub const CMDLINE: u64 = 0x20000;
/// Longest command line accepted, including the terminating NUL.
pub const CMDLINE_MAX: usize = 0x10000;

/// End of the structures above: nothing is loaded below this.
pub const LOADER_END: u64 = 0x30000;

/// End of low RAM in e820 (the EBDA starts here).
pub const LOW_RAM_END: u64 = 0x9FC00;
/// Start of RAM above the legacy hole.
pub const HIGH_RAM_START: u64 = 0x10_0000;
/// Largest RAM size (one region at 0, below the 32-bit MMIO hole).
pub const MAX_RAM: u64 = 3 << 30;
/// Smallest RAM size: room for something above 1 MiB.
pub const MIN_RAM: u64 = 2 << 20;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// The e820 map for `ram_size` bytes of RAM at 0: (address, size, type).
pub fn e820(ram_size: u64) -> [(u64, u64, u32); 3] {
    [
        (0, LOW_RAM_END, E820_RAM),
        (LOW_RAM_END, HIGH_RAM_START - LOW_RAM_END, E820_RESERVED),
        (
            HIGH_RAM_START,
            ram_size.saturating_sub(HIGH_RAM_START),
            E820_RAM,
        ),
    ]
}

/// Ranges nothing from the image may be loaded into: (start, end, what).
pub const FORBIDDEN: [(u64, u64, &str); 2] = [
    (0, LOADER_END, "the loader's boot structures"),
    (LOW_RAM_END, HIGH_RAM_START, "the reserved legacy hole"),
];
