//! Multiboot v1 (Multiboot Specification 0.6.96): ELF32 kernels and the
//! header's a.out kludge, with modules, memory map and command line.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use super::linux::slice_at;
use super::{
    BootSetup, CpuMode, EntryState, Error, KernelKind, LoadOptions, check_placement, layout,
    page_align_up, write_cmdline,
};

/// Header magic (spec 3.1.2).
pub const HEADER_MAGIC: u32 = 0x1BAD_B002;
/// EAX at the entry point (spec 3.2).
pub const BOOTLOADER_MAGIC: u32 = 0x2BAD_B002;
/// The header lies 4-byte aligned within the first 8192 bytes (spec 3.1.1).
pub const HEADER_SEARCH: usize = 8192;
/// Header flag: page-align modules (we always do).
const FLAG_PAGE_ALIGN: u32 = 1 << 0;
/// Header flag: wants mem_* (we always give it).
const FLAG_MEMORY_INFO: u32 = 1 << 1;
/// Header flag: the a.out kludge address fields are valid.
const FLAG_AOUT_KLUDGE: u32 = 1 << 16;
/// Required flags (bits 0-15) this loader honours; any other makes it refuse (spec 3.1.2).
const SUPPORTED_REQUIRED: u32 = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO;
const REQUIRED_MASK: u32 = 0xFFFF;

/// Info flags (spec 3.3).
const INFO_MEMORY: u32 = 1 << 0;
const INFO_CMDLINE: u32 = 1 << 2;
const INFO_MODS: u32 = 1 << 3;
const INFO_MMAP: u32 = 1 << 6;
const INFO_LOADER_NAME: u32 = 1 << 9;
/// Name written at `boot_loader_name`.
const LOADER_NAME: &[u8] = b"reference-vmm\0";

/// ELF32 constants.
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const PT_LOAD: u32 = 1;

/// A multiboot v1 header found in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Header {
    /// File offset of the header.
    pub offset: usize,
    /// Header flags.
    pub flags: u32,
    /// a.out kludge fields (valid with flag bit 16).
    pub header_addr: u32,
    pub load_addr: u32,
    pub load_end_addr: u32,
    pub bss_end_addr: u32,
    pub entry_addr: u32,
}

impl Header {
    /// Whether the a.out kludge address fields are to be used.
    pub fn is_aout_kludge(&self) -> bool {
        self.flags & FLAG_AOUT_KLUDGE != 0
    }
}

/// Raw header fields (spec 3.1.2).
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct RawHeader {
    magic: U32,
    flags: U32,
    checksum: U32,
    header_addr: U32,
    load_addr: U32,
    load_end_addr: U32,
    bss_end_addr: U32,
    entry_addr: U32,
}
const BASE_HEADER_LEN: usize = 12;

/// Finds the first header with a valid checksum in the first 8 KiB.
/// `Err(BadChecksum)` if only headers with a wrong checksum are there.
pub(super) fn find_header(kernel: &[u8]) -> Result<Option<Header>, Error> {
    let window = &kernel[..kernel.len().min(HEADER_SEARCH)];
    let mut bad_checksum = false;
    for offset in (0..window.len()).step_by(4) {
        let Some(base) = window.get(offset..offset + BASE_HEADER_LEN) else {
            break;
        };
        let Ok(words) = <[U32; 3]>::read_from_bytes(base) else {
            break;
        };
        let (magic, flags, checksum) = (words[0].get(), words[1].get(), words[2].get());
        if magic != HEADER_MAGIC {
            continue;
        }
        if magic.wrapping_add(flags).wrapping_add(checksum) != 0 {
            bad_checksum = true;
            continue;
        }
        let mut header = Header {
            offset,
            flags,
            header_addr: 0,
            load_addr: 0,
            load_end_addr: 0,
            bss_end_addr: 0,
            entry_addr: 0,
        };
        if header.is_aout_kludge() {
            let raw = window
                .get(offset..offset + size_of::<RawHeader>())
                .and_then(|b| RawHeader::read_from_bytes(b).ok())
                .ok_or(Error::Truncated("multiboot a.out kludge fields past 8 KiB"))?;
            header.header_addr = raw.header_addr.get();
            header.load_addr = raw.load_addr.get();
            header.load_end_addr = raw.load_end_addr.get();
            header.bss_end_addr = raw.bss_end_addr.get();
            header.entry_addr = raw.entry_addr.get();
        }
        return Ok(Some(header));
    }
    if bad_checksum {
        Err(Error::BadChecksum)
    } else {
        Ok(None)
    }
}

/// One piece of the image to copy: file bytes at `addr`, then zeros up to `addr + memsz`.
struct Piece<'a> {
    addr: u64,
    data: &'a [u8],
    memsz: u64,
}

/// The pieces and entry point of an a.out-kludge image (spec 3.1.3).
fn aout_pieces<'a>(kernel: &'a [u8], h: &Header, ram: u64) -> Result<(Vec<Piece<'a>>, u64), Error> {
    let (header_addr, load_addr) = (u64::from(h.header_addr), u64::from(h.load_addr));
    let before = header_addr
        .checked_sub(load_addr)
        .ok_or(Error::Malformed("multiboot load_addr above header_addr"))?;
    let file_off = (h.offset as u64)
        .checked_sub(before)
        .ok_or(Error::Malformed(
            "multiboot load_addr before the start of the file",
        ))?;
    let load_end = match h.load_end_addr {
        0 => load_addr + (kernel.len() as u64 - file_off),
        e => u64::from(e),
    };
    let size = load_end
        .checked_sub(load_addr)
        .ok_or(Error::Malformed("multiboot load_end_addr below load_addr"))?;
    let data =
        slice_at(kernel, file_off, size).ok_or(Error::Truncated("multiboot a.out text/data"))?;
    let bss_end = match h.bss_end_addr {
        0 => load_end,
        e => u64::from(e),
    };
    let memsz = bss_end.checked_sub(load_addr).ok_or(Error::Malformed(
        "multiboot bss_end_addr below load_end_addr",
    ))?;
    if memsz < size {
        return Err(Error::Malformed(
            "multiboot bss_end_addr below load_end_addr",
        ));
    }
    check_placement("kernel", load_addr, memsz, ram)?;
    let entry = u64::from(h.entry_addr);
    if !(load_addr..load_end).contains(&entry) {
        return Err(Error::Malformed(
            "multiboot entry_addr outside the loaded image",
        ));
    }
    Ok((
        vec![Piece {
            addr: load_addr,
            data,
            memsz,
        }],
        entry,
    ))
}

/// ELF32 file header.
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf32Ehdr {
    e_ident: [u8; 16],
    e_type: U16,
    e_machine: U16,
    e_version: U32,
    e_entry: U32,
    e_phoff: U32,
    e_shoff: U32,
    e_flags: U32,
    e_ehsize: U16,
    e_phentsize: U16,
    e_phnum: U16,
    e_shentsize: U16,
    e_shnum: U16,
    e_shstrndx: U16,
}

/// ELF32 program header.
#[derive(FromBytes, KnownLayout, Immutable)]
#[repr(C)]
struct Elf32Phdr {
    p_type: U32,
    p_offset: U32,
    p_vaddr: U32,
    p_paddr: U32,
    p_filesz: U32,
    p_memsz: U32,
    p_flags: U32,
    p_align: U32,
}

/// The PT_LOAD pieces (at p_paddr) and entry point of an ELF32 image.
fn elf32_pieces(kernel: &[u8], ram: u64) -> Result<(Vec<Piece<'_>>, u64), Error> {
    let (ehdr, _) =
        Elf32Ehdr::read_from_prefix(kernel).map_err(|_| Error::Truncated("ELF32 header"))?;
    if ehdr.e_ident[5] != ELFDATA2LSB {
        return Err(Error::Unsupported("big-endian ELF"));
    }
    if ehdr.e_machine.get() != EM_386 {
        return Err(Error::Unsupported("ELF32 machine is not i386"));
    }
    if usize::from(ehdr.e_phentsize.get()) != size_of::<Elf32Phdr>() {
        return Err(Error::Malformed("ELF32 program header size"));
    }
    let count = u64::from(ehdr.e_phnum.get());
    let table = slice_at(
        kernel,
        u64::from(ehdr.e_phoff.get()),
        count * size_of::<Elf32Phdr>() as u64,
    )
    .ok_or(Error::Truncated("ELF32 program headers"))?;
    let entry_v = u64::from(ehdr.e_entry.get());
    let mut entry = None;
    let mut pieces = Vec::new();
    for raw in table.chunks_exact(size_of::<Elf32Phdr>()) {
        let p = Elf32Phdr::read_from_bytes(raw).map_err(|_| Error::Truncated("program header"))?;
        if p.p_type.get() != PT_LOAD || p.p_memsz.get() == 0 {
            continue;
        }
        let (filesz, memsz) = (u64::from(p.p_filesz.get()), u64::from(p.p_memsz.get()));
        if filesz > memsz {
            return Err(Error::Malformed("ELF32 segment with p_filesz > p_memsz"));
        }
        let data = slice_at(kernel, u64::from(p.p_offset.get()), filesz)
            .ok_or(Error::Truncated("ELF32 segment past the end of the file"))?;
        let paddr = u64::from(p.p_paddr.get());
        check_placement("kernel segment", paddr, memsz, ram)?;
        // e_entry is virtual; map it through the segment holding it (as GRUB does).
        let vaddr = u64::from(p.p_vaddr.get());
        if entry.is_none() && (vaddr..vaddr + memsz).contains(&entry_v) {
            entry = Some(paddr + (entry_v - vaddr));
        }
        pieces.push(Piece {
            addr: paddr,
            data,
            memsz,
        });
    }
    if pieces.is_empty() {
        return Err(Error::Malformed("ELF32 image without loadable segments"));
    }
    let entry = entry.ok_or(Error::Malformed(
        "ELF32 entry point outside the loaded segments",
    ))?;
    Ok((pieces, entry))
}

/// Multiboot information structure (spec 3.3), up to `apm_table`; the VBE
/// and framebuffer fields are left zero.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub(super) struct Info {
    pub flags: U32,
    pub mem_lower: U32,
    pub mem_upper: U32,
    pub boot_device: U32,
    pub cmdline: U32,
    pub mods_count: U32,
    pub mods_addr: U32,
    pub syms: [U32; 4],
    pub mmap_length: U32,
    pub mmap_addr: U32,
    pub drives_length: U32,
    pub drives_addr: U32,
    pub config_table: U32,
    pub boot_loader_name: U32,
    pub apm_table: U32,
    pub vbe_and_framebuffer: [u8; 44],
}

/// Memory map entry (spec 3.3): `size` counts the bytes after itself.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Default)]
#[repr(C)]
pub(super) struct MmapEntry {
    pub size: U32,
    pub base_addr: U64,
    pub length: U64,
    pub type_: U32,
}

/// Module entry (spec 3.3): `[mod_start, mod_end)` and a string.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Default)]
#[repr(C)]
pub(super) struct ModEntry {
    pub mod_start: U32,
    pub mod_end: U32,
    pub string: U32,
    pub reserved: U32,
}

/// Writes `len` zero bytes at `addr` in bounded chunks.
fn zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<(), Error> {
    const CHUNK: u64 = 0x10000;
    let zeros = [0u8; CHUNK as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK);
        mem.write_slice(&zeros[..n as usize], GuestAddress(addr + done))?;
        done += n;
    }
    Ok(())
}

/// Loads a multiboot v1 image with its modules and writes the multiboot info.
pub(super) fn load(
    mem: &GuestMemoryMmap,
    kernel: &[u8],
    opts: &LoadOptions,
) -> Result<BootSetup, Error> {
    let ram = opts.ram_size;
    let header = find_header(kernel)?.ok_or(Error::NoMultibootHeader)?;
    if header.flags & REQUIRED_MASK & !SUPPORTED_REQUIRED != 0 {
        return Err(Error::Unsupported(
            "multiboot header requires video mode or unknown features",
        ));
    }
    let (pieces, entry) = if header.is_aout_kludge() {
        aout_pieces(kernel, &header, ram)?
    } else if kernel.starts_with(b"\x7fELF") && kernel.get(4) == Some(&1) {
        elf32_pieces(kernel, ram)?
    } else {
        return Err(Error::Unsupported(
            "multiboot image neither ELF32 nor a.out kludge",
        ));
    };

    // Place the modules (page-aligned, after the kernel) before writing anything.
    if opts.modules.len() > layout::MAX_MODULES {
        return Err(Error::TooManyModules);
    }
    let mut cursor = pieces.iter().map(|p| p.addr + p.memsz).max().unwrap_or(0);
    let mut mods = Vec::with_capacity(opts.modules.len());
    let mut strings = LOADER_NAME.to_vec();
    for (data, string) in &opts.modules {
        let start = page_align_up(cursor).ok_or(Error::TooManyModules)?;
        let end = check_placement("module", start, data.len() as u64, ram)?;
        if string.as_bytes().contains(&0) {
            return Err(Error::Unsupported("module string with a NUL byte"));
        }
        let string_addr = layout::MBI_STRINGS + strings.len() as u64;
        strings.extend_from_slice(string.as_bytes());
        strings.push(0);
        mods.push(ModEntry {
            mod_start: U32::new(start as u32),
            mod_end: U32::new(end as u32),
            string: U32::new(string_addr as u32),
            reserved: U32::ZERO,
        });
        cursor = end;
    }
    if layout::MBI_STRINGS + strings.len() as u64 > layout::MBI_END {
        return Err(Error::TooManyModules);
    }

    for p in &pieces {
        mem.write_slice(p.data, GuestAddress(p.addr))?;
        zero(
            mem,
            p.addr + p.data.len() as u64,
            p.memsz - p.data.len() as u64,
        )?;
    }
    for ((data, _), m) in opts.modules.iter().zip(&mods) {
        mem.write_slice(data, GuestAddress(u64::from(m.mod_start.get())))?;
    }
    write_cmdline(mem, &opts.cmdline, layout::CMDLINE_MAX)?;
    mem.write_slice(&strings, GuestAddress(layout::MBI_STRINGS))?;
    let mods_bytes: Vec<u8> = mods.iter().flat_map(|m| m.as_bytes().to_vec()).collect();
    mem.write_slice(&mods_bytes, GuestAddress(layout::MBI_MODS))?;
    let mmap: Vec<u8> = layout::e820(ram)
        .iter()
        .flat_map(|&(base, len, type_)| {
            MmapEntry {
                size: U32::new((size_of::<MmapEntry>() - 4) as u32),
                base_addr: U64::new(base),
                length: U64::new(len),
                type_: U32::new(type_),
            }
            .as_bytes()
            .to_vec()
        })
        .collect();
    mem.write_slice(&mmap, GuestAddress(layout::MBI_MMAP))?;

    let info = Info {
        flags: U32::new(INFO_MEMORY | INFO_CMDLINE | INFO_MODS | INFO_MMAP | INFO_LOADER_NAME),
        mem_lower: U32::new((layout::LOW_RAM_END / 1024) as u32),
        mem_upper: U32::new(((ram - layout::HIGH_RAM_START) / 1024) as u32),
        cmdline: U32::new(layout::CMDLINE as u32),
        mods_count: U32::new(mods.len() as u32),
        mods_addr: U32::new(layout::MBI_MODS as u32),
        mmap_length: U32::new(mmap.len() as u32),
        mmap_addr: U32::new(layout::MBI_MMAP as u32),
        boot_loader_name: U32::new(layout::MBI_STRINGS as u32),
        ..Info::new_zeroed()
    };
    mem.write_slice(info.as_bytes(), GuestAddress(layout::MBI))?;

    Ok(BootSetup {
        kind: KernelKind::Multiboot,
        entry: EntryState {
            mode: CpuMode::Protected32,
            rip: entry,
            rax: u64::from(BOOTLOADER_MAGIC),
            rbx: layout::MBI,
            rsi: 0,
        },
    })
}
