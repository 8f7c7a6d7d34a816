//! Loader tests on synthetic images built here, plus a smoke test against a
//! real kernel when `HV_GUEST_VMLINUX` / `HV_GUEST_BZIMAGE` name one.

use linux_loader::loader::bootparam::boot_params;
use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use zerocopy::FromBytes;

use super::multiboot::{BOOTLOADER_MAGIC, HEADER_MAGIC, Info, MmapEntry, ModEntry};
use super::*;

mod linux;
mod multiboot;

use linux::check_start_info;

const MIB: u64 = 1 << 20;

fn memory(size: u64) -> GuestMemoryMmap {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
}

fn opts(ram_size: u64) -> LoadOptions {
    LoadOptions {
        ram_size,
        ..Default::default()
    }
}

fn put(buf: &mut Vec<u8>, off: usize, bytes: &[u8]) {
    if buf.len() < off + bytes.len() {
        buf.resize(off + bytes.len(), 0);
    }
    buf[off..off + bytes.len()].copy_from_slice(bytes);
}

fn mb_header(flags: u32) -> Vec<u8> {
    let checksum = 0u32.wrapping_sub(HEADER_MAGIC).wrapping_sub(flags);
    [HEADER_MAGIC, flags, checksum]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect()
}

/// An ELF32 multiboot kernel: one PT_LOAD of `code` (+ `bss` zero bytes)
/// at physical `paddr`, virtual `vaddr`; entry at `vaddr + 4`; multiboot
/// header at file offset `hdr_off`.
struct Elf32Image {
    paddr: u32,
    vaddr: u32,
    code: Vec<u8>,
    bss: u32,
    hdr_off: usize,
}

impl Elf32Image {
    fn new(paddr: u32) -> Self {
        Elf32Image {
            paddr,
            vaddr: paddr.wrapping_add(0xC000_0000),
            code: (0..64u8).collect(),
            bss: 0x2000,
            hdr_off: 0x60,
        }
    }

    fn build(&self) -> Vec<u8> {
        // The code follows the header, page-aligned.
        let code_off = (self.hdr_off + 12).next_multiple_of(0x1000);
        let mut f = Vec::new();
        put(&mut f, 0, b"\x7fELF\x01\x01\x01");
        put(&mut f, 16, &2u16.to_le_bytes()); // ET_EXEC
        put(&mut f, 18, &3u16.to_le_bytes()); // EM_386
        put(&mut f, 20, &1u32.to_le_bytes());
        put(&mut f, 24, &self.vaddr.wrapping_add(4).to_le_bytes()); // e_entry
        put(&mut f, 28, &52u32.to_le_bytes()); // e_phoff
        put(&mut f, 40, &52u16.to_le_bytes()); // e_ehsize
        put(&mut f, 42, &32u16.to_le_bytes()); // e_phentsize
        put(&mut f, 44, &1u16.to_le_bytes()); // e_phnum
        let phdr: Vec<u8> = [
            1, // PT_LOAD
            code_off as u32,
            self.vaddr,
            self.paddr,
            self.code.len() as u32,
            self.code.len() as u32 + self.bss,
            5,
            0x1000,
        ]
        .iter()
        .flat_map(|w: &u32| w.to_le_bytes())
        .collect();
        put(&mut f, 52, &phdr);
        put(&mut f, self.hdr_off, &mb_header(0x3));
        put(&mut f, code_off, &self.code);
        f
    }
}

/// An a.out-kludge image loaded at `load_addr`: header at the start of the
/// text, entry right after the header, 0x3000 bytes of bss.
fn aout_image(load_addr: u32) -> Vec<u8> {
    let mut f = mb_header(0x1_0003);
    let len = 0x200u32;
    for w in [
        load_addr,                // header_addr
        load_addr,                // load_addr
        load_addr + len,          // load_end_addr
        load_addr + len + 0x3000, // bss_end_addr
        load_addr + 32,           // entry_addr
    ] {
        f.extend_from_slice(&w.to_le_bytes());
    }
    f.resize(len as usize, 0x90);
    f
}

/// A bzImage header with one setup sector and a 4 KiB payload.
fn bzimage(version: u16, initrd_addr_max: u32) -> Vec<u8> {
    let mut f = vec![0u8; 2 * 512 + 0x1000];
    f[0x1F1] = 1; // setup_sects
    put(&mut f, 0x1F4, &(0x1000u32 / 16).to_le_bytes()); // syssize
    put(&mut f, 0x1FE, &0xAA55u16.to_le_bytes());
    put(&mut f, 0x202, b"HdrS");
    put(&mut f, 0x206, &version.to_le_bytes());
    f[0x211] = 1; // LOADED_HIGH
    put(&mut f, 0x214, &0x10_0000u32.to_le_bytes()); // code32_start
    put(&mut f, 0x22C, &initrd_addr_max.to_le_bytes());
    put(&mut f, 0x236, &1u16.to_le_bytes()); // XLF_KERNEL_64
    put(&mut f, 0x238, &255u32.to_le_bytes()); // cmdline_size
    put(&mut f, 0x258, &0x20_0000u64.to_le_bytes()); // pref_address
    put(&mut f, 0x260, &0x10_0000u32.to_le_bytes()); // init_size
    f[1024] = 0xE9;
    f
}

/// An ELF64 with one PT_LOAD at physical 0x200000 and, if `entry` is given,
/// a PT_NOTE holding a Xen PHYS32_ENTRY note.
fn pvh_elf(entry: Option<u32>) -> Vec<u8> {
    let mut f = Vec::new();
    put(&mut f, 0, b"\x7fELF\x02\x01\x01");
    put(&mut f, 16, &2u16.to_le_bytes());
    put(&mut f, 18, &62u16.to_le_bytes()); // EM_X86_64
    put(&mut f, 24, &0x20_0000u64.to_le_bytes()); // e_entry
    put(&mut f, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut f, 54, &56u16.to_le_bytes());
    put(&mut f, 56, &2u16.to_le_bytes());
    let phdr = |t: u32, off: u64, addr: u64, sz: u64| -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&t.to_le_bytes());
        p.extend_from_slice(&5u32.to_le_bytes());
        for w in [off, addr | 0xFFFF_FFFF_8000_0000, addr, sz, sz, 0x1000] {
            p.extend_from_slice(&w.to_le_bytes());
        }
        p
    };
    let mut note = Vec::new();
    // A foreign note first, then the PVH one.
    for w in [4u32, 4, 6] {
        note.extend_from_slice(&w.to_le_bytes());
    }
    note.extend_from_slice(b"Xen\0linu");
    if let Some(e) = entry {
        for w in [4u32, 4, 18] {
            note.extend_from_slice(&w.to_le_bytes());
        }
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&e.to_le_bytes());
    }
    put(&mut f, 64, &phdr(1, 0x1000, 0x20_0000, 0x1000));
    put(&mut f, 120, &phdr(4, 0x400, 0x20_0400, note.len() as u64));
    put(&mut f, 0x400, &note);
    put(&mut f, 0x1000, &[0xF4; 0x1000]);
    f
}

fn read_cstr(mem: &GuestMemoryMmap, addr: u64) -> String {
    let mut out = Vec::new();
    for a in addr..addr + 0x1000 {
        let b: u8 = mem.read_obj(GuestAddress(a)).unwrap();
        if b == 0 {
            break;
        }
        out.push(b);
    }
    String::from_utf8(out).unwrap()
}

fn read_bytes(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[test]
fn segments_outside_ram_or_over_the_loader_are_errors() {
    let mem = memory(4 * MIB);
    let o = opts(4 * MIB);
    // One byte past the end of RAM.
    let mut image = Elf32Image::new((4 * MIB) as u32 - 64);
    image.bss = 1;
    assert!(matches!(
        load(&mem, &image.build(), &o),
        Err(Error::OutOfRam { .. })
    ));
    // Exactly up to the end of RAM is fine.
    image.bss = 0;
    load(&mem, &image.build(), &o).unwrap();
    // Wrapping past 4 GiB.
    let image = Elf32Image::new(0xFFFF_FFF0);
    assert!(matches!(
        load(&mem, &image.build(), &o),
        Err(Error::OutOfRam { .. })
    ));
    // Over the loader's structures and the legacy hole.
    for paddr in [
        0x1000,
        layout::LOADER_END as u32 - 0x20,
        0x9FC00 - 0x20,
        0xE0000,
    ] {
        let image = Elf32Image::new(paddr);
        assert!(
            matches!(load(&mem, &image.build(), &o), Err(Error::Overlap { .. })),
            "{paddr:#x}"
        );
    }
    // Low RAM above the loader is allowed.
    let image = Elf32Image::new(layout::LOADER_END as u32);
    load(&mem, &image.build(), &o).unwrap();
    // Modules that do not fit.
    let o = LoadOptions {
        modules: vec![(vec![0; 4 * MIB as usize], "big".into())],
        ..opts(4 * MIB)
    };
    assert!(matches!(
        load(&mem, &Elf32Image::new(0x10_0000).build(), &o),
        Err(Error::OutOfRam { .. })
    ));
}

#[test]
fn truncated_images_are_errors() {
    let mem = memory(4 * MIB);
    let o = opts(4 * MIB);
    let images = [
        Elf32Image::new(0x10_0000).build(),
        aout_image(0x10_0000),
        bzimage(0x020F, 0x37FF_FFFF),
        pvh_elf(Some(0x20_0010)),
    ];
    for full in &images {
        load(&mem, full, &o).unwrap();
        for len in (0..full.len() - 1).step_by(7) {
            assert!(load(&mem, &full[..len], &o).is_err(), "length {len}");
        }
    }
}

#[test]
fn ram_size_must_be_backed_and_bounded() {
    let mem = memory(4 * MIB);
    let img = Elf32Image::new(0x10_0000).build();
    assert!(matches!(
        load(&mem, &img, &opts(8 * MIB)),
        Err(Error::RamSize(_))
    ));
    assert!(matches!(
        load(&mem, &img, &opts(MIB)),
        Err(Error::RamSize(_))
    ));
    assert!(matches!(load(&mem, &img, &opts(0)), Err(Error::RamSize(0))));
}

#[test]
fn command_line_is_bounded() {
    let mem = memory(4 * MIB);
    let img = Elf32Image::new(0x10_0000).build();
    let o = LoadOptions {
        cmdline: "x".repeat(layout::CMDLINE_MAX - 1),
        ..opts(4 * MIB)
    };
    load(&mem, &img, &o).unwrap();
    let o = LoadOptions {
        cmdline: "x".repeat(layout::CMDLINE_MAX),
        ..opts(4 * MIB)
    };
    assert!(matches!(
        load(&mem, &img, &o),
        Err(Error::CmdlineTooLong { .. })
    ));
    let o = LoadOptions {
        cmdline: "a\u{7}b".into(),
        ..opts(4 * MIB)
    };
    assert!(matches!(load(&mem, &img, &o), Err(Error::Cmdline(_))));
}

#[test]
fn unknown_formats_are_errors() {
    assert!(matches!(detect(b""), Err(Error::UnknownFormat)));
    assert!(matches!(detect(&[0x90; 9000]), Err(Error::UnknownFormat)));
    assert!(matches!(detect(b"\x7fELF\x03"), Err(Error::Malformed(_))));
    assert!(matches!(detect(&pvh_elf(None)), Err(Error::NoPvhNote)));
    let mut elf32 = Elf32Image::new(0x10_0000).build();
    elf32[0x60] = 0;
    assert!(matches!(detect(&elf32), Err(Error::NoMultibootHeader)));
}

/// The valid synthetic images, for mutation.
fn seeds() -> Vec<Vec<u8>> {
    vec![
        Elf32Image::new(0x10_0000).build(),
        aout_image(0x10_0000),
        bzimage(0x020F, 0x37FF_FFFF),
        pvh_elf(Some(0x20_0010)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..0x3000)) {
        let mem = memory(4 * MIB);
        let _ = load(&mem, &data, &opts(4 * MIB));
    }

    #[test]
    fn mutated_headers_never_panic(
        seed in 0usize..4,
        edits in proptest::collection::vec((0usize..0x1100, any::<u8>()), 1..12),
        truncate in proptest::option::of(0usize..0x3000),
        cmdline in "[ -~]{0,40}",
        initrd in proptest::option::of(0usize..0x40_0000),
    ) {
        let mem = memory(4 * MIB);
        let mut img = seeds().swap_remove(seed);
        for (off, val) in edits {
            if let Some(b) = img.get_mut(off) {
                *b = val;
            }
        }
        if let Some(len) = truncate {
            img.truncate(len);
        }
        let o = LoadOptions {
            cmdline,
            initrd: initrd.map(|n| vec![1; n]),
            modules: vec![(vec![2; 0x100], "m".into())],
            ..opts(4 * MIB)
        };
        if let Ok(setup) = load(&mem, &img, &o) {
            // Whatever loaded enters inside RAM.
            prop_assert!(setup.entry.rip < 4 * MIB);
        }
    }
}

/// Loads the real kernels named by `HV_GUEST_VMLINUX` / `HV_GUEST_BZIMAGE`
/// (see scripts/fetch-guest-kernel) into 256 MiB.
#[test]
fn real_kernel_smoke() {
    const RAM: u64 = 256 * MIB;
    let mut ran = false;
    if let Some(path) = std::env::var_os("HV_GUEST_VMLINUX") {
        let kernel = std::fs::read(&path).unwrap();
        let mem = memory(RAM);
        let o = LoadOptions {
            cmdline: "console=ttyS0 earlyprintk=serial".into(),
            initrd: Some(vec![0x5A; 0x10_0000]),
            ..opts(RAM)
        };
        let setup = load(&mem, &kernel, &o).unwrap();
        assert_eq!(setup.kind, KernelKind::LinuxPvh);
        assert_eq!(setup.entry.mode, CpuMode::Protected32);
        // Linux's PVH entry (pvh_start_xen) lies in its first loaded segment
        // above CONFIG_PHYSICAL_START.
        assert!(
            (0x100_0000..RAM).contains(&setup.entry.rip),
            "{:#x}",
            setup.entry.rip
        );
        check_start_info(
            &mem,
            RAM,
            "console=ttyS0 earlyprintk=serial",
            Some(0x10_0000),
        );
        println!("vmlinux: PVH entry {:#x}", setup.entry.rip);
        ran = true;
    }
    if let Some(path) = std::env::var_os("HV_GUEST_BZIMAGE") {
        let kernel = std::fs::read(&path).unwrap();
        let mem = memory(RAM);
        let o = LoadOptions {
            cmdline: "console=ttyS0".into(),
            initrd: Some(vec![0x5A; 0x10_0000]),
            ..opts(RAM)
        };
        let setup = load(&mem, &kernel, &o).unwrap();
        assert_eq!(setup.kind, KernelKind::LinuxBzImage);
        assert_eq!(setup.entry.rip, 0x10_0200);
        let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
        assert_eq!(&read_bytes(&mem, layout::ZERO_PAGE + 0x202, 4), b"HdrS");
        let (image, size) = (params.hdr.ramdisk_image, params.hdr.ramdisk_size);
        assert_eq!(size, 0x10_0000);
        assert!(u64::from(image) + u64::from(size) <= RAM);
        assert_eq!(params.e820_entries, 3);
        println!("bzImage: protocol {:#x}", { params.hdr.version });
        ran = true;
    }
    if !ran {
        println!("SKIPPED: set HV_GUEST_VMLINUX / HV_GUEST_BZIMAGE (scripts/fetch-guest-kernel)");
    }
}
