//! Fuzzes the kernel loader with arbitrary images: detection, the ELF32,
//! ELF64 and bzImage header parsers, placement checks and the boot
//! structures. Any input must give `Ok` or an error, never a panic.
//!
//! Input layout: one selector byte (command line, initrd and module on or
//! off), then the image.

#![no_main]

use libfuzzer_sys::fuzz_target;
use reference_vmm::loader::{self, LoadOptions};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Small RAM so that placement limits are hit often.
const RAM: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, image)) = data.split_first() else {
        return;
    };
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), RAM as usize)]) else {
        return;
    };
    let opts = LoadOptions {
        cmdline: if sel & 1 != 0 {
            "console=ttyS0".into()
        } else {
            String::new()
        },
        initrd: (sel & 2 != 0).then(|| vec![0x5A; 0x1000 * usize::from(sel >> 4)]),
        modules: if sel & 4 != 0 {
            vec![(vec![0xA5; 0x100], "module".into())]
        } else {
            Vec::new()
        },
        rsdp: (sel & 8 != 0).then_some(0xE0000),
        ram_size: RAM,
    };
    if let Ok(setup) = loader::load(&mem, image, &opts) {
        assert!(setup.entry.rip < RAM);
    }
});
