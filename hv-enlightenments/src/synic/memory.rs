//! How the SynIC reads and writes the guest's message and event flags
//! pages.

use core::cell::Cell;

use crate::hypercall::{GuestMemoryRead, MemoryError};

/// Guest memory the SynIC writes: the message page slots and the event
/// flags. Reads come from [`GuestMemoryRead`]. No access crosses a page.
///
/// With the `vm-memory` feature this is implemented for every
/// `vm_memory::Bytes<GuestAddress>`; [`CellMemory`] is a byte buffer for
/// tests and small guests.
pub trait SynicMemory: GuestMemoryRead {
    /// Writes `buf` at `gpa`, entirely or not at all.
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError>;

    /// ORs `mask` into the byte at `gpa` and returns the byte's old value.
    ///
    /// The default reads and writes back, which is atomic only with
    /// respect to the caller: a guest that clears a flag on another vCPU
    /// between the two may see it set again (a spurious event, which a
    /// VMBus guest tolerates, as it rechecks its rings). A VMM with a host
    /// mapping of guest RAM should override this with an atomic
    /// `fetch_or` on the byte, as openvmm's `GlobalSynic::signal_event`
    /// does.
    fn fetch_or_u8(&self, gpa: u64, mask: u8) -> Result<u8, MemoryError> {
        let mut old = [0u8; 1];
        self.read(gpa, &mut old)?;
        if old[0] & mask != mask {
            self.write(gpa, &[old[0] | mask])?;
        }
        Ok(old[0])
    }
}

/// A byte buffer mapped at `base`, writable through a shared reference:
/// for tests, fuzzing and single-threaded guests.
///
/// ```
/// use hv_enlightenments::hypercall::GuestMemoryRead;
/// use hv_enlightenments::synic::{CellMemory, SynicMemory};
///
/// let mut page = [0u8; 16];
/// let mem = CellMemory::new(0x1000, &mut page);
/// mem.write(0x1004, &[7])?;
/// assert_eq!(mem.fetch_or_u8(0x1004, 0x80)?, 7);
/// let mut b = [0u8];
/// mem.read(0x1004, &mut b)?;
/// assert_eq!(b, [0x87]);
/// assert!(mem.write(0x1010, &[0]).is_err()); // one past the end
/// # Ok::<(), hv_enlightenments::hypercall::MemoryError>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct CellMemory<'a> {
    base: u64,
    bytes: &'a [Cell<u8>],
}

impl<'a> CellMemory<'a> {
    /// `bytes` mapped at guest physical address `base`.
    pub fn new(base: u64, bytes: &'a mut [u8]) -> Self {
        Self {
            base,
            bytes: Cell::from_mut(bytes).as_slice_of_cells(),
        }
    }

    fn range(&self, gpa: u64, len: usize) -> Result<&'a [Cell<u8>], MemoryError> {
        let err = MemoryError { gpa, len };
        let start = usize::try_from(gpa.checked_sub(self.base).ok_or(err)?).map_err(|_| err)?;
        let end = start.checked_add(len).ok_or(err)?;
        self.bytes.get(start..end).ok_or(err)
    }
}

impl GuestMemoryRead for CellMemory<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let src = self.range(gpa, buf.len())?;
        for (d, s) in buf.iter_mut().zip(src) {
            *d = s.get();
        }
        Ok(())
    }
}

impl SynicMemory for CellMemory<'_> {
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        let dst = self.range(gpa, buf.len())?;
        for (d, s) in dst.iter().zip(buf) {
            d.set(*s);
        }
        Ok(())
    }
}

/// vm-memory's guest memory: a write that cannot be made in full is a
/// failure.
#[cfg(feature = "vm-memory")]
impl<M> SynicMemory for M
where
    M: vm_memory::Bytes<vm_memory::GuestAddress> + ?Sized,
{
    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), MemoryError> {
        self.write_slice(buf, vm_memory::GuestAddress(gpa))
            .map_err(|_| MemoryError {
                gpa,
                len: buf.len(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_memory_bounds() {
        let mut bytes = [0u8; 8];
        let mem = CellMemory::new(0x100, &mut bytes);
        assert!(mem.write(0x107, &[1]).is_ok());
        assert!(mem.write(0x107, &[1, 2]).is_err());
        assert!(mem.write(0xFF, &[1]).is_err());
        assert!(mem.write(u64::MAX, &[1]).is_err());
        assert_eq!(mem.fetch_or_u8(0x107, 2), Ok(1));
        assert_eq!(mem.fetch_or_u8(0x107, 2), Ok(3));
        assert!(mem.fetch_or_u8(0x108, 2).is_err());
    }
}
