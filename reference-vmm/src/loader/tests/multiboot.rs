//! Multiboot v1: ELF32 and a.out-kludge images, the header search, the
//! info structure.

use super::*;

#[test]
fn multiboot_elf32_loads_and_info_parses_back() {
    let mem = memory(16 * MIB);
    // Dirty the bss so that zeroing is observable.
    mem.write_slice(&[0xAA; 0x3000], GuestAddress(0x10_0000))
        .unwrap();
    let image = Elf32Image::new(0x10_0000);
    let o = LoadOptions {
        cmdline: "console=ttyS0 loglevel=8".into(),
        modules: vec![
            (vec![1u8; 0x1800], "first mod".into()),
            (vec![2u8; 10], "second".into()),
        ],
        ..opts(16 * MIB)
    };
    let setup = load(&mem, &image.build(), &o).unwrap();
    assert_eq!(setup.kind, KernelKind::Multiboot);
    // e_entry is virtual; the entry is its physical counterpart.
    assert_eq!(setup.entry.rip, 0x10_0004);
    assert_eq!(setup.entry.mode, CpuMode::Protected32);
    let regs = setup.entry.regs();
    assert_eq!(regs.rax, u64::from(BOOTLOADER_MAGIC));
    assert_eq!(regs.rbx, layout::MBI);
    assert_eq!(regs.rflags, 0x2);
    assert_eq!(read_bytes(&mem, 0x10_0000, 64), image.code);
    assert!(read_bytes(&mem, 0x10_0040, 0x2000).iter().all(|&b| b == 0));
    assert_eq!(read_bytes(&mem, 0x10_2040, 1), [0xAA]);

    let raw = read_bytes(&mem, layout::MBI, size_of::<Info>());
    let info = Info::read_from_bytes(&raw).unwrap();
    let flags = info.flags.get();
    assert_eq!(flags, (1 << 0) | (1 << 2) | (1 << 3) | (1 << 6) | (1 << 9));
    assert_eq!(info.mem_lower.get(), 639);
    assert_eq!(info.mem_upper.get(), 15 * 1024);
    assert_eq!(
        read_cstr(&mem, info.cmdline.get().into()),
        "console=ttyS0 loglevel=8"
    );
    assert_eq!(
        read_cstr(&mem, info.boot_loader_name.get().into()),
        "reference-vmm"
    );

    // mmap: size field first, counting the 20 bytes after it.
    let len = info.mmap_length.get() as usize;
    assert_eq!(len, 3 * 24);
    let raw = read_bytes(&mem, info.mmap_addr.get().into(), len);
    let entries: Vec<(u32, u64, u64, u32)> = raw
        .chunks_exact(24)
        .map(|c| {
            let e = MmapEntry::read_from_bytes(c).unwrap();
            (
                e.size.get(),
                e.base_addr.get(),
                e.length.get(),
                e.type_.get(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (20, 0, 0x9FC00, 1),
            (20, 0x9FC00, 0x100000 - 0x9FC00, 2),
            (20, 0x100000, 15 * MIB, 1)
        ]
    );
    assert_eq!(&raw[..4], &20u32.to_le_bytes());

    // Modules: page-aligned after the kernel's bss, in order, with strings.
    assert_eq!(info.mods_count.get(), 2);
    let raw = read_bytes(&mem, info.mods_addr.get().into(), 32);
    let m0 = ModEntry::read_from_bytes(&raw[..16]).unwrap();
    let m1 = ModEntry::read_from_bytes(&raw[16..]).unwrap();
    assert_eq!(
        (m0.mod_start.get(), m0.mod_end.get()),
        (0x10_3000, 0x10_4800)
    );
    assert_eq!(
        (m1.mod_start.get(), m1.mod_end.get()),
        (0x10_5000, 0x10_500A)
    );
    assert_eq!(read_cstr(&mem, m0.string.get().into()), "first mod");
    assert_eq!(read_cstr(&mem, m1.string.get().into()), "second");
    assert_eq!(read_bytes(&mem, 0x10_3000, 0x1800), vec![1u8; 0x1800]);
    assert_eq!(read_bytes(&mem, 0x10_5000, 10), vec![2u8; 10]);

    // The GDT is there for every kind.
    let gdt2: u64 = mem.read_obj(GuestAddress(layout::GDT + 0x20)).unwrap();
    assert_eq!(gdt2, layout::GDT_ENTRIES[4]);
}

#[test]
fn multiboot_aout_kludge_loads() {
    let mem = memory(8 * MIB);
    mem.write_slice(&[0xAA; 0x4000], GuestAddress(0x20_0000))
        .unwrap();
    let image = aout_image(0x20_0000);
    let setup = load(&mem, &image, &opts(8 * MIB)).unwrap();
    assert_eq!(setup.kind, KernelKind::Multiboot);
    assert_eq!(setup.entry.rip, 0x20_0020);
    assert_eq!(read_bytes(&mem, 0x20_0000, 0x200), image);
    assert!(read_bytes(&mem, 0x20_0200, 0x3000).iter().all(|&b| b == 0));
    assert_eq!(read_bytes(&mem, 0x20_3200, 1), [0xAA]);
}

#[test]
fn multiboot_aout_kludge_rejects_bad_addresses() {
    let mem = memory(8 * MIB);
    let set = |img: &mut Vec<u8>, field: usize, v: u32| put(img, 12 + 4 * field, &v.to_le_bytes());
    // load_addr above header_addr.
    let mut img = aout_image(0x20_0000);
    set(&mut img, 1, 0x20_0004);
    assert!(matches!(
        load(&mem, &img, &opts(8 * MIB)),
        Err(Error::Malformed(_))
    ));
    // load_end_addr past the end of the file.
    let mut img = aout_image(0x20_0000);
    set(&mut img, 2, 0x20_1000);
    assert!(matches!(
        load(&mem, &img, &opts(8 * MIB)),
        Err(Error::Truncated(_))
    ));
    // bss past the end of RAM.
    let mut img = aout_image(0x20_0000);
    set(&mut img, 3, 0xFFFF_0000);
    assert!(matches!(
        load(&mem, &img, &opts(8 * MIB)),
        Err(Error::OutOfRam { .. })
    ));
    // Entry outside the image.
    let mut img = aout_image(0x20_0000);
    set(&mut img, 4, 0x30_0000);
    assert!(matches!(
        load(&mem, &img, &opts(8 * MIB)),
        Err(Error::Malformed(_))
    ));
}

#[test]
fn multiboot_bad_checksum_is_an_error() {
    let mem = memory(4 * MIB);
    let mut img = Elf32Image::new(0x10_0000).build();
    img[0x60 + 8] ^= 1;
    assert!(matches!(
        load(&mem, &img, &opts(4 * MIB)),
        Err(Error::BadChecksum)
    ));
}

#[test]
fn multiboot_header_must_end_within_8_kib() {
    let mem = memory(4 * MIB);
    let mut image = Elf32Image::new(0x10_0000);
    image.hdr_off = 8192 - 12;
    let setup = load(&mem, &image.build(), &opts(4 * MIB)).unwrap();
    assert_eq!(setup.kind, KernelKind::Multiboot);
    image.hdr_off = 8192 - 8;
    assert!(matches!(
        load(&mem, &image.build(), &opts(4 * MIB)),
        Err(Error::NoMultibootHeader)
    ));
    image.hdr_off = 8192;
    assert!(matches!(
        load(&mem, &image.build(), &opts(4 * MIB)),
        Err(Error::NoMultibootHeader)
    ));
}

#[test]
fn multiboot_unaligned_header_is_not_found() {
    let mem = memory(4 * MIB);
    let mut image = Elf32Image::new(0x10_0000);
    image.hdr_off = 0x62;
    assert!(matches!(
        load(&mem, &image.build(), &opts(4 * MIB)),
        Err(Error::NoMultibootHeader)
    ));
}
