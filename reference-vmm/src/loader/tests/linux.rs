//! Linux: bzImage boot parameters and the PVH start info.

use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};

use super::*;

#[test]
fn bzimage_detected_and_boot_params_written() {
    let mem = memory(16 * MIB);
    let img = bzimage(0x020F, 0x7F_FFFF);
    assert_eq!(detect(&img).unwrap(), KernelKind::LinuxBzImage);
    let o = LoadOptions {
        cmdline: "console=ttyS0".into(),
        initrd: Some(vec![7; 0x1800]),
        rsdp: Some(0xE0000),
        ..opts(16 * MIB)
    };
    let setup = load(&mem, &img, &o).unwrap();
    assert_eq!(setup.kind, KernelKind::LinuxBzImage);
    assert_eq!(setup.entry.mode, CpuMode::Long64);
    assert_eq!(setup.entry.rip, 0x10_0200);
    assert_eq!(setup.entry.regs().rsi, layout::ZERO_PAGE);
    assert_eq!(read_bytes(&mem, 0x10_0000, 1), [0xE9]);

    let params: boot_params = mem.read_obj(GuestAddress(layout::ZERO_PAGE)).unwrap();
    assert_eq!(params.hdr.type_of_loader, 0xFF);
    assert_eq!(u64::from(params.hdr.cmd_line_ptr), layout::CMDLINE);
    assert_eq!(read_cstr(&mem, layout::CMDLINE), "console=ttyS0");
    // The initrd is page-aligned and ends below initrd_addr_max.
    let (image, size) = (params.hdr.ramdisk_image, params.hdr.ramdisk_size);
    assert_eq!((image, size), (0x7F_E000, 0x1800));
    assert_eq!(read_bytes(&mem, image.into(), 0x1800), vec![7; 0x1800]);
    let rsdp = params.acpi_rsdp_addr;
    assert_eq!(rsdp, 0xE0000);
    assert_eq!(params.e820_entries, 3);
    let e: Vec<(u64, u64, u32)> = params.e820_table[..3]
        .iter()
        .map(|e| (e.addr, e.size, e.r#type))
        .collect();
    assert_eq!(e, layout::e820(16 * MIB));

    // Identity map: PML4[0] -> PDPT, PD[1] maps 2 MiB with a large page.
    let pml4: u64 = mem.read_obj(GuestAddress(layout::PML4)).unwrap();
    assert_eq!(pml4, layout::PDPT | 3);
    let pde: u64 = mem.read_obj(GuestAddress(layout::PD + 8)).unwrap();
    assert_eq!(pde, 0x20_0000 | 0x83);
    let pdpte3: u64 = mem.read_obj(GuestAddress(layout::PDPT + 24)).unwrap();
    assert_eq!(pdpte3, (layout::PD + 3 * 0x1000) | 3);
    let last: u64 = mem
        .read_obj(GuestAddress(layout::PD + 4 * 0x1000 - 8))
        .unwrap();
    assert_eq!(last, 0xFFE0_0000 | 0x83);
}

#[test]
fn bzimage_limits() {
    let mem = memory(16 * MIB);
    let o = opts(16 * MIB);
    assert!(matches!(
        load(&mem, &bzimage(0x020B, 0x37FF_FFFF), &o),
        Err(Error::Unsupported(_))
    ));
    let mut img = bzimage(0x020F, 0x37FF_FFFF);
    img[0x236] = 0; // no XLF_KERNEL_64
    assert!(matches!(load(&mem, &img, &o), Err(Error::Unsupported(_))));
    // init_size beyond RAM.
    let mut img = bzimage(0x020F, 0x37FF_FFFF);
    put(&mut img, 0x260, &0x0100_0000u32.to_le_bytes());
    assert!(matches!(load(&mem, &img, &o), Err(Error::OutOfRam { .. })));
    // Command line longer than cmdline_size.
    let o2 = LoadOptions {
        cmdline: "y".repeat(256),
        ..opts(16 * MIB)
    };
    assert!(matches!(
        load(&mem, &bzimage(0x020F, 0x37FF_FFFF), &o2),
        Err(Error::CmdlineTooLong { len: 257, max: 256 })
    ));
    // Initrd that does not fit below initrd_addr_max above the kernel.
    let o3 = LoadOptions {
        initrd: Some(vec![0; 0x70_0000]),
        ..opts(16 * MIB)
    };
    assert!(matches!(
        load(&mem, &bzimage(0x020F, 0x7F_FFFF), &o3),
        Err(Error::OutOfRam { .. })
    ));
}

#[test]
fn pvh_detected_and_start_info_written() {
    let mem = memory(16 * MIB);
    let img = pvh_elf(Some(0x20_0010));
    assert_eq!(detect(&img).unwrap(), KernelKind::LinuxPvh);
    let o = LoadOptions {
        cmdline: "console=hvc0".into(),
        initrd: Some(vec![9; 0x2345]),
        rsdp: Some(0xE0000),
        ..opts(16 * MIB)
    };
    let setup = load(&mem, &img, &o).unwrap();
    assert_eq!(setup.kind, KernelKind::LinuxPvh);
    assert_eq!(setup.entry.rip, 0x20_0010);
    assert_eq!(setup.entry.regs().rbx, layout::PVH_START_INFO);
    assert_eq!(read_bytes(&mem, 0x20_0000, 4), [0xF4; 4]);
    check_start_info(&mem, 16 * MIB, "console=hvc0", Some(0x2345));
}

#[test]
fn pvh_entry_outside_the_image_is_an_error() {
    let mem = memory(16 * MIB);
    let img = pvh_elf(Some(0x30_0000));
    assert!(matches!(
        load(&mem, &img, &opts(16 * MIB)),
        Err(Error::Malformed(_))
    ));
}

pub(super) fn check_start_info(
    mem: &GuestMemoryMmap,
    ram: u64,
    cmdline: &str,
    initrd: Option<u64>,
) {
    let si: hvm_start_info = mem.read_obj(GuestAddress(layout::PVH_START_INFO)).unwrap();
    assert_eq!(si.magic, 0x336E_C578);
    assert_eq!(si.version, 1);
    assert_eq!(read_cstr(mem, si.cmdline_paddr), cmdline);
    assert_eq!(si.memmap_entries, 3);
    let mut map = Vec::new();
    for i in 0..u64::from(si.memmap_entries) {
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress(si.memmap_paddr + 24 * i))
            .unwrap();
        map.push((e.addr, e.size, e.type_));
    }
    assert_eq!(map, layout::e820(ram));
    match initrd {
        Some(size) => {
            assert_eq!(si.nr_modules, 1);
            let m: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
            assert_eq!(m.size, size);
            assert_eq!(m.paddr % 0x1000, 0);
            assert!(m.paddr + m.size <= ram);
        }
        None => assert_eq!(si.nr_modules, 0),
    }
}
