//! How the decoder reads hypercall input blocks from guest memory.

/// A guest memory read failed: some byte of `gpa..gpa + len` is not backed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("guest memory {gpa:#x}+{len:#x} is not readable")]
pub struct MemoryError {
    /// Start of the read.
    pub gpa: u64,
    /// Length of the read.
    pub len: usize,
}

/// Reads guest physical memory. The decoder asks for at most one page, and
/// never for a range that crosses a page boundary.
///
/// With the `vm-memory` feature this is implemented for every
/// `vm_memory::Bytes<GuestAddress>` (for example `GuestMemoryMmap`).
pub trait GuestMemoryRead {
    /// Fills `buf` from `gpa..gpa + buf.len()`, entirely or not at all.
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError>;
}

/// Guest memory that is one byte slice mapped at `base`: for tests, fuzzing,
/// benchmarks and small guests.
#[derive(Clone, Copy, Debug)]
pub struct SliceMemory<'a> {
    base: u64,
    bytes: &'a [u8],
}

impl<'a> SliceMemory<'a> {
    /// `bytes` mapped at guest physical address `base`.
    ///
    /// ```
    /// use hv_enlightenments::hypercall::{GuestMemoryRead, MemoryError, SliceMemory};
    ///
    /// let bytes = [1u8, 2, 3, 4];
    /// let mem = SliceMemory::new(0x1000, &bytes);
    /// let mut buf = [0u8; 2];
    /// mem.read(0x1002, &mut buf)?;
    /// assert_eq!(buf, [3, 4]);
    /// assert!(mem.read(0x1003, &mut buf).is_err()); // runs past the end
    /// # Ok::<(), MemoryError>(())
    /// ```
    pub const fn new(base: u64, bytes: &'a [u8]) -> Self {
        Self { base, bytes }
    }
}

impl GuestMemoryRead for SliceMemory<'_> {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let err = MemoryError {
            gpa,
            len: buf.len(),
        };
        let start = usize::try_from(gpa.checked_sub(self.base).ok_or(err)?).map_err(|_| err)?;
        let end = start.checked_add(buf.len()).ok_or(err)?;
        let src = self.bytes.get(start..end).ok_or(err)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// No guest memory at all: every read fails. For fast calls, which carry
/// their input in registers.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoMemory;

impl GuestMemoryRead for NoMemory {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Err(MemoryError {
            gpa,
            len: buf.len(),
        })
    }
}

/// vm-memory's guest memory: a read that cannot be satisfied in full
/// (unmapped, or running into a hole) is a failure.
#[cfg(feature = "vm-memory")]
impl<M> GuestMemoryRead for M
where
    M: vm_memory::Bytes<vm_memory::GuestAddress> + ?Sized,
{
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.read_slice(buf, vm_memory::GuestAddress(gpa))
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
    fn slice_memory_bounds() {
        let bytes = [1u8, 2, 3, 4];
        let mem = SliceMemory::new(0x1000, &bytes);
        let mut buf = [0u8; 2];
        assert!(mem.read(0x1002, &mut buf).is_ok());
        assert_eq!(buf, [3, 4]);
        assert!(mem.read(0x1003, &mut buf).is_err());
        assert!(mem.read(0xFFF, &mut buf).is_err());
        assert!(mem.read(u64::MAX, &mut buf).is_err());
        assert!(NoMemory.read(0, &mut buf).is_err());
    }
}
