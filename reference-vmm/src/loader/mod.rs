//! Guest kernel loader: Linux (PVH `vmlinux` or bzImage) and multiboot v1.
//!
//! [`load`] detects the format of a kernel image, copies it into guest
//! memory with its command line, initrd or modules, writes the boot
//! structures the format asks for (PVH `hvm_start_info`, bzImage
//! `boot_params`, multiboot info) at the fixed addresses of [`layout`], and
//! returns the register state the boot vCPU starts in.
//!
//! Everything the image says is untrusted: offsets and sizes are checked
//! against the file and against RAM, and a kernel that does not fit RAM or
//! overlaps the loader's structures is an [`Error`], never a panic.
//!
//! ```no_run
//! use reference_vmm::loader::{self, LoadOptions};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let ram_size = 256 << 20;
//! let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), ram_size as usize)])?;
//! let kernel = std::fs::read("vmlinux")?;
//! let opts = LoadOptions {
//!     cmdline: "console=ttyS0".into(),
//!     ram_size,
//!     ..Default::default()
//! };
//! let setup = loader::load(&mem, &kernel, &opts)?;
//! let regs = setup.entry.regs();
//! # let _ = regs;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod layout;

mod entry;
mod linux;
mod multiboot;

#[cfg(test)]
mod tests;

pub use entry::{CpuMode, EntryState};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// What went wrong loading a kernel.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image is none of the supported formats.
    #[error(
        "unknown kernel format: not an ELF64 with a Xen PVH note, a bzImage or a multiboot v1 image"
    )]
    UnknownFormat,
    /// An ELF64 image without a `XEN_ELFNOTE_PHYS32_ENTRY` note.
    #[error("ELF64 kernel has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhNote,
    /// An ELF32 image without a multiboot v1 header in its first 8 KiB.
    #[error("ELF32 kernel has no multiboot v1 header in its first 8 KiB")]
    NoMultibootHeader,
    /// A multiboot header magic was found, but no header with a valid checksum.
    #[error("multiboot header checksum mismatch")]
    BadChecksum,
    /// The image ends before a structure it describes.
    #[error("truncated image: {0}")]
    Truncated(&'static str),
    /// A field of the image is inconsistent.
    #[error("malformed image: {0}")]
    Malformed(&'static str),
    /// The image asks for something this loader does not provide.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Something to be loaded lies (partly) outside RAM.
    #[error("{what} [{start:#x}, {end:#x}) does not fit in {ram_size:#x} bytes of RAM")]
    OutOfRam {
        /// What was being placed.
        what: &'static str,
        /// Start guest-physical address.
        start: u64,
        /// End guest-physical address (exclusive).
        end: u64,
        /// RAM size.
        ram_size: u64,
    },
    /// Something to be loaded overlaps a range the loader keeps.
    #[error("{what} [{start:#x}, {end:#x}) overlaps {other}")]
    Overlap {
        /// What was being placed.
        what: &'static str,
        /// Start guest-physical address.
        start: u64,
        /// End guest-physical address (exclusive).
        end: u64,
        /// The range it collides with.
        other: &'static str,
    },
    /// `LoadOptions::ram_size` is not usable or not backed by the memory given.
    #[error("RAM size {0:#x} is not between 2 MiB and 3 GiB or not backed by guest memory")]
    RamSize(u64),
    /// The command line is not valid.
    #[error("command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// The command line is longer than the kernel (or the loader) accepts.
    #[error("command line of {len} bytes exceeds the limit of {max}")]
    CmdlineTooLong {
        /// Length including the NUL.
        len: usize,
        /// Limit including the NUL.
        max: usize,
    },
    /// Too many modules, or their strings do not fit the multiboot area.
    #[error("too many multiboot modules or module strings too long")]
    TooManyModules,
    /// linux-loader refused the image.
    #[error("kernel loader: {0}")]
    KernelLoader(#[from] linux_loader::loader::Error),
    /// linux-loader could not write the boot parameters.
    #[error("boot configurator: {0}")]
    Configurator(#[from] linux_loader::configurator::Error),
    /// Writing guest memory failed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// How the kernel is to be loaded and what it is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Kernel command line (printable ASCII, [`layout::CMDLINE_MAX`] bytes
    /// with the NUL at most; a bzImage's `cmdline_size` may lower that).
    pub cmdline: String,
    /// Initial ramdisk (Linux kinds; for multiboot, use `modules`).
    pub initrd: Option<Vec<u8>>,
    /// Multiboot modules with their strings.
    pub modules: Vec<(Vec<u8>, String)>,
    /// Guest-physical address of the ACPI RSDP, if there are ACPI tables.
    pub rsdp: Option<u64>,
    /// RAM size: one region at 0, [`layout::MIN_RAM`]..=[`layout::MAX_RAM`].
    pub ram_size: u64,
}

/// The format a kernel image was loaded as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelKind {
    /// ELF64 `vmlinux` entered through its Xen PVH entry point.
    LinuxPvh,
    /// bzImage entered through its 64-bit entry (`code32_start + 0x200`).
    LinuxBzImage,
    /// Multiboot v1 (ELF32 or a.out kludge).
    Multiboot,
}

/// A loaded kernel: its kind and the boot vCPU's entry state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootSetup {
    /// Format the image was loaded as.
    pub kind: KernelKind,
    /// Register state the boot vCPU starts with.
    pub entry: EntryState,
}

/// Bytes of a 4 KiB page.
const PAGE_SIZE: u64 = 0x1000;

/// Loads `kernel` into `mem` and writes its boot structures.
///
/// The format is detected from the image: an ELF64 with a Xen PVH note
/// ([`KernelKind::LinuxPvh`]), a bzImage ("HdrS" at 0x202,
/// [`KernelKind::LinuxBzImage`]), or an ELF32 / a.out-kludge image with a
/// multiboot v1 header in its first 8 KiB ([`KernelKind::Multiboot`]).
pub fn load(mem: &GuestMemoryMmap, kernel: &[u8], opts: &LoadOptions) -> Result<BootSetup, Error> {
    let ram = opts.ram_size;
    if !(layout::MIN_RAM..=layout::MAX_RAM).contains(&ram)
        || !GuestMemoryBackend::check_range(mem, GuestAddress(0), ram as usize)
    {
        return Err(Error::RamSize(ram));
    }
    let setup = match detect(kernel)? {
        KernelKind::LinuxPvh => linux::load_pvh(mem, kernel, opts)?,
        KernelKind::LinuxBzImage => linux::load_bzimage(mem, kernel, opts)?,
        KernelKind::Multiboot => multiboot::load(mem, kernel, opts)?,
    };
    write_gdt(mem)?;
    Ok(setup)
}

/// Detects the format of `kernel` without loading it.
pub fn detect(kernel: &[u8]) -> Result<KernelKind, Error> {
    const ELFMAG: &[u8; 4] = b"\x7fELF";
    const ELFCLASS32: u8 = 1;
    const ELFCLASS64: u8 = 2;
    if kernel.starts_with(ELFMAG) {
        match kernel.get(4) {
            Some(&ELFCLASS64) => {
                if linux::pvh_entry(kernel)?.is_some() {
                    Ok(KernelKind::LinuxPvh)
                } else if multiboot::find_header(kernel)?.is_some_and(|h| h.is_aout_kludge()) {
                    Ok(KernelKind::Multiboot)
                } else {
                    Err(Error::NoPvhNote)
                }
            }
            Some(&ELFCLASS32) => match multiboot::find_header(kernel)? {
                Some(_) => Ok(KernelKind::Multiboot),
                None => Err(Error::NoMultibootHeader),
            },
            _ => Err(Error::Malformed("ELF class is neither 32 nor 64 bits")),
        }
    } else if linux::is_bzimage(kernel) {
        Ok(KernelKind::LinuxBzImage)
    } else if multiboot::find_header(kernel)?.is_some_and(|h| h.is_aout_kludge()) {
        Ok(KernelKind::Multiboot)
    } else {
        Err(Error::UnknownFormat)
    }
}

/// Writes [`layout::GDT_ENTRIES`] at [`layout::GDT`].
fn write_gdt(mem: &GuestMemoryMmap) -> Result<(), Error> {
    for (i, entry) in layout::GDT_ENTRIES.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(layout::GDT + 8 * i as u64))?;
    }
    Ok(())
}

/// Checks that `[start, start + len)` lies in RAM and outside the loader's
/// ranges; returns the end.
fn check_placement(what: &'static str, start: u64, len: u64, ram_size: u64) -> Result<u64, Error> {
    let end = start.checked_add(len).ok_or(Error::OutOfRam {
        what,
        start,
        end: u64::MAX,
        ram_size,
    })?;
    if end > ram_size {
        return Err(Error::OutOfRam {
            what,
            start,
            end,
            ram_size,
        });
    }
    for (lo, hi, other) in layout::FORBIDDEN {
        if start < hi && lo < end.max(start + 1) {
            return Err(Error::Overlap {
                what,
                start,
                end,
                other,
            });
        }
    }
    Ok(end)
}

/// Rounds `x` up to a page boundary (`None` on overflow).
fn page_align_up(x: u64) -> Option<u64> {
    x.checked_add(PAGE_SIZE - 1).map(|v| v & !(PAGE_SIZE - 1))
}

/// Validates the command line and returns it NUL-terminated.
fn cmdline_bytes(cmdline: &str, max: usize) -> Result<Vec<u8>, Error> {
    let len = cmdline.len() + 1;
    if len > max {
        return Err(Error::CmdlineTooLong { len, max });
    }
    if cmdline.is_empty() {
        return Ok(vec![0]);
    }
    if !cmdline.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(Error::Cmdline(linux_loader::cmdline::Error::InvalidAscii));
    }
    let cl = linux_loader::cmdline::Cmdline::try_from(cmdline, max).map_err(Error::Cmdline)?;
    let c = cl.as_cstring().map_err(Error::Cmdline)?;
    Ok(c.into_bytes_with_nul())
}

/// Writes the command line at [`layout::CMDLINE`]; returns its length with the NUL.
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<usize, Error> {
    let bytes = cmdline_bytes(cmdline, max.min(layout::CMDLINE_MAX))?;
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE))?;
    Ok(bytes.len())
}
