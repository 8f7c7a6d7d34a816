//! Linux: ELF64 `vmlinux` through the PVH entry, and bzImage through the
//! 64-bit entry of the boot protocol (Documentation/arch/x86/boot.rst).
//!
//! The image is checked here (every program header, note and size against
//! the file and RAM) before linux-loader copies it.

use std::io::Cursor;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::Elf;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, KnownLayout};

use super::{
    BootSetup, CpuMode, EntryState, Error, KernelKind, LoadOptions, check_placement, layout,
    page_align_up, write_cmdline,
};

/// `hvm_start_info.magic` (xen/include/public/arch-x86/hvm/start_info.h).
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336E_C578;
/// `XEN_ELFNOTE_PHYS32_ENTRY` (xen/include/public/elfnote.h).
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Name of Xen ELF notes.
const XEN_NOTE_NAME: &[u8] = b"Xen\0";
/// ELF program header types.
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// `e_ident[EI_DATA]` for little-endian.
const ELFDATA2LSB: u8 = 1;

/// Offset of the setup header in a bzImage.
const SETUP_HEADER_OFFSET: usize = 0x1F1;
/// "HdrS" at 0x202.
const HDRS_OFFSET: usize = 0x202;
const HDRS: &[u8; 4] = b"HdrS";
/// Oldest boot protocol accepted: 2.12 has `xloadflags` (XLF_KERNEL_64).
const MIN_BOOT_PROTOCOL: u16 = 0x020C;
/// `xloadflags` bit: the kernel has the legacy 64-bit entry at 0x200.
const XLF_KERNEL_64: u16 = 1 << 0;
/// `loadflags` bit: protected-mode code is loaded at 0x100000.
const LOADED_HIGH: u8 = 1 << 0;
/// Offset of the 64-bit entry from the start of the protected-mode code.
const STARTUP_64_OFFSET: u64 = 0x200;
/// `type_of_loader` for a boot loader without an assigned ID.
const LOADER_TYPE_UNDEFINED: u8 = 0xFF;
/// Sector size of `setup_sects`.
const SECTOR: usize = 512;

/// ELF64 file header (little-endian fields, no alignment needed).
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Ehdr {
    e_ident: [u8; 16],
    e_type: U16,
    e_machine: U16,
    e_version: U32,
    e_entry: U64,
    e_phoff: U64,
    e_shoff: U64,
    e_flags: U32,
    e_ehsize: U16,
    e_phentsize: U16,
    e_phnum: U16,
    e_shentsize: U16,
    e_shnum: U16,
    e_shstrndx: U16,
}

/// ELF64 program header.
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf64Phdr {
    p_type: U32,
    p_flags: U32,
    p_offset: U64,
    p_vaddr: U64,
    p_paddr: U64,
    p_filesz: U64,
    p_memsz: U64,
    p_align: U64,
}

/// ELF note header (same for ELF32 and ELF64).
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct NoteHdr {
    n_namesz: U32,
    n_descsz: U32,
    n_type: U32,
}

/// `data[off..off + len]`, or `None` if it is not all in `data`.
pub(super) fn slice_at(data: &[u8], off: u64, len: u64) -> Option<&[u8]> {
    let off = usize::try_from(off).ok()?;
    let len = usize::try_from(len).ok()?;
    data.get(off..off.checked_add(len)?)
}

/// The program headers of an ELF64 image, each checked to lie in the file.
fn elf64_phdrs(kernel: &[u8]) -> Result<Vec<Elf64Phdr>, Error> {
    let (ehdr, _) =
        Elf64Ehdr::read_from_prefix(kernel).map_err(|_| Error::Truncated("ELF64 header"))?;
    if ehdr.e_ident[5] != ELFDATA2LSB {
        return Err(Error::Unsupported("big-endian ELF"));
    }
    let phentsize = u64::from(ehdr.e_phentsize.get());
    if phentsize != size_of::<Elf64Phdr>() as u64 {
        return Err(Error::Malformed("ELF64 program header size"));
    }
    if ehdr.e_phoff.get() < size_of::<Elf64Ehdr>() as u64 {
        return Err(Error::Malformed(
            "ELF64 program headers overlap the ELF header",
        ));
    }
    let count = u64::from(ehdr.e_phnum.get());
    let table = slice_at(kernel, ehdr.e_phoff.get(), count * phentsize)
        .ok_or(Error::Truncated("ELF64 program headers"))?;
    let mut phdrs = Vec::with_capacity(count as usize);
    for raw in table.chunks_exact(size_of::<Elf64Phdr>()) {
        let phdr =
            Elf64Phdr::read_from_bytes(raw).map_err(|_| Error::Truncated("program header"))?;
        let filesz = if phdr.p_type.get() == PT_LOAD || phdr.p_type.get() == PT_NOTE {
            phdr.p_filesz.get()
        } else {
            0
        };
        slice_at(kernel, phdr.p_offset.get(), filesz)
            .ok_or(Error::Truncated("ELF64 segment past the end of the file"))?;
        phdrs.push(phdr);
    }
    Ok(phdrs)
}

/// The PVH entry point of an ELF64 image: the first
/// `XEN_ELFNOTE_PHYS32_ENTRY` note named "Xen", if any.
pub(super) fn pvh_entry(kernel: &[u8]) -> Result<Option<u32>, Error> {
    for phdr in elf64_phdrs(kernel)? {
        if phdr.p_type.get() != PT_NOTE {
            continue;
        }
        let notes = slice_at(kernel, phdr.p_offset.get(), phdr.p_filesz.get())
            .ok_or(Error::Truncated("ELF note segment"))?;
        let mut pos = 0u64;
        while let Some(raw) = slice_at(notes, pos, size_of::<NoteHdr>() as u64) {
            let nhdr = NoteHdr::read_from_bytes(raw).map_err(|_| Error::Truncated("ELF note"))?;
            let namesz = u64::from(nhdr.n_namesz.get());
            let descsz = u64::from(nhdr.n_descsz.get());
            let name_off = pos + size_of::<NoteHdr>() as u64;
            // Name and descriptor are each padded to 4 bytes (ELF spec, Note Section).
            let desc_off = name_off + namesz.next_multiple_of(4);
            let name =
                slice_at(notes, name_off, namesz).ok_or(Error::Truncated("ELF note name"))?;
            let desc =
                slice_at(notes, desc_off, descsz).ok_or(Error::Truncated("ELF note desc"))?;
            if nhdr.n_type.get() == XEN_ELFNOTE_PHYS32_ENTRY && name == XEN_NOTE_NAME {
                let bytes: [u8; 4] = desc
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(Error::Malformed("PVH entry note shorter than 4 bytes"))?;
                return Ok(Some(u32::from_le_bytes(bytes)));
            }
            pos = desc_off + descsz.next_multiple_of(4);
        }
    }
    Ok(None)
}

/// Whether `kernel` carries the boot protocol's "HdrS" signature.
pub(super) fn is_bzimage(kernel: &[u8]) -> bool {
    kernel.get(HDRS_OFFSET..HDRS_OFFSET + 4) == Some(HDRS.as_slice())
}

/// Places `size` bytes page-aligned as high as possible below `limit` and
/// at or above `low`; returns the address.
fn place_high(
    what: &'static str,
    size: u64,
    low: u64,
    limit: u64,
    ram_size: u64,
) -> Result<u64, Error> {
    let low = page_align_up(low).ok_or(Error::Malformed("kernel end overflows"))?;
    let start = limit.checked_sub(size).map(|a| a & !(super::PAGE_SIZE - 1));
    match start {
        Some(start) if start >= low => {
            check_placement(what, start, size, ram_size)?;
            Ok(start)
        }
        _ => Err(Error::OutOfRam {
            what,
            start: low,
            end: low.saturating_add(size),
            ram_size: limit,
        }),
    }
}

/// Writes the initrd (if any) high in RAM; returns (address, size).
fn write_initrd(
    mem: &GuestMemoryMmap,
    opts: &LoadOptions,
    kernel_end: u64,
    limit: u64,
) -> Result<(u64, u64), Error> {
    match opts.initrd.as_deref() {
        Some(initrd) if !initrd.is_empty() => {
            let size = initrd.len() as u64;
            let addr = place_high("initrd", size, kernel_end, limit, opts.ram_size)?;
            mem.write_slice(initrd, GuestAddress(addr))?;
            Ok((addr, size))
        }
        _ => Ok((0, 0)),
    }
}

/// Loads an ELF64 `vmlinux` and writes `hvm_start_info` for its PVH entry.
pub(super) fn load_pvh(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    opts: &LoadOptions,
) -> Result<BootSetup, Error> {
    let ram = opts.ram_size;
    let entry = u64::from(pvh_entry(kernel)?.ok_or(Error::NoPvhNote)?);
    let mut kernel_end = 0;
    let mut entry_loaded = false;
    for phdr in elf64_phdrs(kernel)? {
        // linux-loader copies PT_LOAD segments with a file size to p_paddr;
        // the kernel also owns the memory of bss-only ones.
        let len = phdr.p_memsz.get().max(phdr.p_filesz.get());
        if phdr.p_type.get() != PT_LOAD || len == 0 {
            continue;
        }
        let paddr = phdr.p_paddr.get();
        let end = check_placement("kernel segment", paddr, len, ram)?;
        kernel_end = kernel_end.max(end);
        entry_loaded |= (paddr..end).contains(&entry);
    }
    if !entry_loaded {
        return Err(Error::Malformed(
            "PVH entry point outside the loaded segments",
        ));
    }
    Elf::load(mem, None, &mut Cursor::new(kernel), None)?;

    write_cmdline(mem, &opts.cmdline, layout::CMDLINE_MAX)?;
    let (initrd_addr, initrd_size) = write_initrd(mem, opts, kernel_end, ram)?;

    let memmap: Vec<hvm_memmap_table_entry> = layout::e820(ram)
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: layout::CMDLINE,
        rsdp_paddr: opts.rsdp.unwrap_or(0),
        memmap_paddr: layout::PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        nr_modules: u32::from(initrd_size != 0),
        modlist_paddr: if initrd_size != 0 {
            layout::PVH_MODLIST
        } else {
            0
        },
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(layout::PVH_START_INFO));
    params.set_sections(&memmap, GuestAddress(layout::PVH_MEMMAP));
    if initrd_size != 0 {
        let module = hvm_modlist_entry {
            paddr: initrd_addr,
            size: initrd_size,
            ..Default::default()
        };
        params.set_modules(&[module], GuestAddress(layout::PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemoryMmap>(&params, mem)?;

    Ok(BootSetup {
        kind: KernelKind::LinuxPvh,
        entry: EntryState {
            mode: CpuMode::Protected32,
            rip: entry,
            rax: 0,
            rbx: layout::PVH_START_INFO,
            rsi: 0,
        },
    })
}

/// The setup header of a bzImage, checked for what the 64-bit entry needs.
fn setup_header_of(kernel: &[u8]) -> Result<setup_header, Error> {
    let mut hdr = setup_header::default();
    let raw = kernel
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + size_of::<setup_header>())
        .ok_or(Error::Truncated("bzImage setup header"))?;
    hdr.as_mut_slice().copy_from_slice(raw);
    if hdr.version < MIN_BOOT_PROTOCOL {
        return Err(Error::Unsupported("bzImage boot protocol older than 2.12"));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::Unsupported(
            "bzImage without a 64-bit entry (XLF_KERNEL_64)",
        ));
    }
    if hdr.loadflags & LOADED_HIGH == 0 {
        return Err(Error::Unsupported("zImage (not loaded high)"));
    }
    Ok(hdr)
}

/// Loads a bzImage, writes `boot_params`, the identity map and the command line.
pub(super) fn load_bzimage(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    opts: &LoadOptions,
) -> Result<BootSetup, Error> {
    let ram = opts.ram_size;
    let hdr = setup_header_of(kernel)?;
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let setup_size = (setup_sects + 1) * SECTOR;
    let payload = kernel
        .len()
        .checked_sub(setup_size)
        .filter(|&n| n as u64 > STARTUP_64_OFFSET)
        .ok_or(Error::Truncated("bzImage protected-mode code"))? as u64;
    // syssize: the protected-mode code's size in 16-byte units (boot.rst).
    if payload < u64::from(hdr.syssize) * 16 {
        return Err(Error::Truncated("bzImage shorter than its syssize"));
    }
    let load = u64::from(hdr.code32_start);
    let loaded_end = check_placement("bzImage", load, payload, ram)?;
    // The decompressor uses init_size bytes from the larger of the load
    // address and pref_address (boot.rst, "init_size").
    let footprint_start = load.max(hdr.pref_address);
    let footprint_end = check_placement(
        "bzImage init_size",
        footprint_start,
        u64::from(hdr.init_size),
        ram,
    )?;
    let kernel_end = loaded_end.max(footprint_end);

    let result = BzImage::load(
        mem,
        None,
        &mut Cursor::new(kernel),
        Some(GuestAddress(layout::HIGH_RAM_START)),
    )?;
    let mut params = boot_params {
        hdr: result.setup_header.unwrap_or(hdr),
        ..Default::default()
    };

    // cmdline_size excludes the terminating NUL.
    let max = usize::try_from(hdr.cmdline_size)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let cmdline_len = write_cmdline(mem, &opts.cmdline, max)?;
    let limit = ram.min(u64::from(hdr.initrd_addr_max) + 1);
    let (initrd_addr, initrd_size) = write_initrd(mem, opts, kernel_end, limit)?;

    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = layout::CMDLINE as u32;
    params.hdr.cmdline_size = (cmdline_len - 1) as u32;
    params.hdr.ramdisk_image = initrd_addr as u32;
    params.hdr.ramdisk_size = initrd_size as u32;
    params.acpi_rsdp_addr = opts.rsdp.unwrap_or(0);
    let e820 = layout::e820(ram);
    for (slot, &(addr, size, type_)) in params.e820_table.iter_mut().zip(e820.iter()) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    params.e820_entries = e820.len() as u8;
    let bp = BootParams::new(&params, GuestAddress(layout::ZERO_PAGE));
    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(&bp, mem)?;
    write_identity_map(mem)?;

    Ok(BootSetup {
        kind: KernelKind::LinuxBzImage,
        entry: EntryState {
            mode: CpuMode::Long64,
            rip: load + STARTUP_64_OFFSET,
            rax: 0,
            rbx: 0,
            rsi: layout::ZERO_PAGE,
        },
    })
}

/// Identity-maps the first 4 GiB with 2 MiB pages at [`layout::PML4`]
/// (as firecracker's `setup_page_tables`, extended to 4 GiB).
fn write_identity_map(mem: &GuestMemoryMmap) -> Result<(), Error> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(layout::PDPT | PRESENT_RW, GuestAddress(layout::PML4))?;
    for pd in 0..layout::PD_COUNT {
        let pd_addr = layout::PD + pd * 0x1000;
        mem.write_obj(pd_addr | PRESENT_RW, GuestAddress(layout::PDPT + pd * 8))?;
        let entries: Vec<u8> = (0..512u64)
            .flat_map(|i| (((pd << 30) | (i << 21)) | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes())
            .collect();
        mem.write_slice(&entries, GuestAddress(pd_addr))?;
    }
    Ok(())
}
