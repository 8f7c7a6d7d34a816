//! Flush flags and GVA range list entries of the virtual address flush
//! calls (TLFS 12.4 "Virtual Address Flush"; Linux `HV_FLUSH_*`,
//! `fill_gva_list` in `arch/x86/hyperv/mmu.c`).

use core::fmt;

use zerocopy::IntoBytes;

use super::memory::{GuestMemoryRead, MemoryError};
use crate::{HV_PAGE_SHIFT, HV_PAGE_SIZE};

/// The low 12 bits of a list entry: additional pages after the first.
const ADDITIONAL_PAGES_MASK: u64 = (1 << HV_PAGE_SHIFT) - 1;

/// Bytes in one list entry.
const ENTRY: usize = 8;
/// Size of the smallest flush list header (`struct hv_tlb_flush`: address
/// space, flags, processor mask).
const MIN_FLUSH_HEADER: usize = 3 * ENTRY;
/// Most GVA entries any flush list input can carry: what fits in one page
/// after the smallest header (Linux's `max_gvas`, 509).
pub const MAX_GVA_RANGES: usize = (HV_PAGE_SIZE - MIN_FLUSH_HEADER) / ENTRY;

bitflags::bitflags! {
    /// Flags of the flush calls (`HV_FLUSH_*`). Unknown bits are kept:
    /// KVM's `kvm_hv_flush_tlb` does not check them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct FlushFlags: u64 {
        /// Flush on every VP; the processor mask is ignored (non-Ex calls).
        const ALL_PROCESSORS = 1 << 0;
        /// Flush every address space, not only `address_space`.
        const ALL_VIRTUAL_ADDRESS_SPACES = 1 << 1;
        /// Global mappings may be kept.
        const NON_GLOBAL_MAPPINGS_ONLY = 1 << 2;
        /// List entries use the extended range format (CPUID 0x40000003 EDX
        /// bit 14). Entries are carried raw either way.
        const USE_EXTENDED_RANGE_FORMAT = 1 << 3;
    }
}

/// One GVA list entry: bits 63:12 the first page's GVA, bits 11:0 the
/// number of additional pages (so 1..=4096 pages).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GvaRange(pub u64);

impl GvaRange {
    /// Most pages one entry covers (`HV_TLB_FLUSH_UNIT` / page size).
    pub const MAX_PAGES: u64 = ADDITIONAL_PAGES_MASK + 1;

    /// An entry for `additional_pages + 1` pages from the page holding
    /// `gva`; `additional_pages` is truncated to its 12 bits.
    pub const fn new(gva: u64, additional_pages: u16) -> Self {
        Self((gva & !ADDITIONAL_PAGES_MASK) | (additional_pages as u64 & ADDITIONAL_PAGES_MASK))
    }

    /// The GVA of the first page.
    pub const fn base(self) -> u64 {
        self.0 & !ADDITIONAL_PAGES_MASK
    }

    /// Pages after the first.
    pub const fn additional_pages(self) -> u16 {
        (self.0 & ADDITIONAL_PAGES_MASK) as u16
    }

    /// Pages covered, 1..=4096.
    pub const fn page_count(self) -> u64 {
        self.additional_pages() as u64 + 1
    }

    /// One past the last byte covered; saturates at the top of the space.
    pub const fn end(self) -> u64 {
        self.base()
            .saturating_add(self.page_count() << HV_PAGE_SHIFT)
    }
}

impl fmt::Debug for GvaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{}p", self.base(), self.page_count())
    }
}

/// Most GVA entries a fast flush list call can carry: the XMM words left
/// after the non-Ex header (14 input words - 3).
pub const MAX_FAST_GVA_RANGES: usize = 11;
/// Entries read from guest memory at a time while iterating.
const READ_CHUNK: usize = 32;

/// Where a list call's entries are.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RangesAt {
    /// In guest memory, from this GPA (inside the input page).
    Memory(u64),
    /// In the fast call's XMM registers, copied here.
    Registers([u64; MAX_FAST_GVA_RANGES]),
}

/// The GVA entries of a flush list call.
///
/// Entries in guest memory are not copied by the decoder (it only checks
/// that they are readable): a VMM that flushes whole address spaces anyway
/// never pays for them. Read them with [`GvaRanges::iter`] or
/// [`GvaRanges::read`], passing the same memory as to
/// [`decode`](super::decode). Entries of fast calls are held inline.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct GvaRanges {
    len: usize,
    at: RangesAt,
}

impl Default for GvaRanges {
    fn default() -> Self {
        Self::new()
    }
}

impl GvaRanges {
    /// No entries (a space flush).
    pub const fn new() -> Self {
        Self {
            len: 0,
            at: RangesAt::Memory(0),
        }
    }

    /// `len` entries in guest memory at `gpa`; the decoder has checked that
    /// they lie in the input page.
    pub(crate) const fn in_memory(gpa: u64, len: usize) -> Self {
        Self {
            len,
            at: RangesAt::Memory(gpa),
        }
    }

    /// Entries carried in registers; `None` when more than
    /// [`MAX_FAST_GVA_RANGES`].
    pub fn in_registers(raw: &[u64]) -> Option<Self> {
        let mut words = [0u64; MAX_FAST_GVA_RANGES];
        words.get_mut(..raw.len())?.copy_from_slice(raw);
        Some(Self {
            len: raw.len(),
            at: RangesAt::Registers(words),
        })
    }

    /// Number of entries.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries in input order, read from `mem` a chunk at a time. An
    /// item is `Err` (and ends the iteration) if the memory has become
    /// unreadable since decoding; flush everything then.
    pub fn iter<'a, M: GuestMemoryRead + ?Sized>(&'a self, mem: &'a M) -> GvaRangeIter<'a, M> {
        GvaRangeIter {
            ranges: self,
            mem,
            next: 0,
            buf: [0; READ_CHUNK],
            buf_start: 0,
            buf_len: 0,
            failed: false,
        }
    }

    /// Copies the raw entries into `buf` (which must hold [`Self::len`]
    /// of them; at most [`MAX_GVA_RANGES`]) and returns them.
    pub fn read<'b, M: GuestMemoryRead + ?Sized>(
        &self,
        mem: &M,
        buf: &'b mut [u64],
    ) -> Result<&'b [u64], MemoryError> {
        let dst = buf.get_mut(..self.len).ok_or(MemoryError {
            gpa: self.gpa(),
            len: self.len * ENTRY,
        })?;
        self.fill(mem, 0, dst)?;
        Ok(dst)
    }

    /// Checks that every entry can be read, a chunk at a time.
    pub(crate) fn check_readable<M: GuestMemoryRead + ?Sized>(
        &self,
        mem: &M,
    ) -> Result<(), MemoryError> {
        let mut chunk = [0u64; READ_CHUNK];
        let mut first = 0;
        while first < self.len {
            let count = (self.len - first).min(READ_CHUNK);
            let dst = chunk.get_mut(..count).unwrap_or(&mut []);
            self.fill(mem, first, dst)?;
            first += count;
        }
        Ok(())
    }

    /// The GPA of the first entry (0 for entries in registers).
    const fn gpa(&self) -> u64 {
        match self.at {
            RangesAt::Memory(gpa) => gpa,
            RangesAt::Registers(_) => 0,
        }
    }

    /// Fills `dst` with entries from index `first` on.
    fn fill<M: GuestMemoryRead + ?Sized>(
        &self,
        mem: &M,
        first: usize,
        dst: &mut [u64],
    ) -> Result<(), MemoryError> {
        match &self.at {
            RangesAt::Registers(words) => {
                let src = words.get(first..first + dst.len()).ok_or(MemoryError {
                    gpa: 0,
                    len: dst.len() * ENTRY,
                })?;
                dst.copy_from_slice(src);
            }
            RangesAt::Memory(gpa) => {
                mem.read(gpa.wrapping_add((first * ENTRY) as u64), dst.as_mut_bytes())?;
                for w in dst.iter_mut() {
                    *w = u64::from_le(*w);
                }
            }
        }
        Ok(())
    }
}

/// Iterator returned by [`GvaRanges::iter`].
pub struct GvaRangeIter<'a, M: ?Sized> {
    ranges: &'a GvaRanges,
    mem: &'a M,
    next: usize,
    buf: [u64; READ_CHUNK],
    buf_start: usize,
    buf_len: usize,
    failed: bool,
}

impl<M: GuestMemoryRead + ?Sized> Iterator for GvaRangeIter<'_, M> {
    type Item = Result<GvaRange, MemoryError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next >= self.ranges.len {
            return None;
        }
        if self.next >= self.buf_start + self.buf_len {
            let count = (self.ranges.len - self.next).min(READ_CHUNK);
            let dst = self.buf.get_mut(..count)?;
            if let Err(err) = self.ranges.fill(self.mem, self.next, dst) {
                self.failed = true;
                return Some(Err(err));
            }
            self.buf_start = self.next;
            self.buf_len = count;
        }
        let raw = *self.buf.get(self.next - self.buf_start)?;
        self.next += 1;
        Some(Ok(GvaRange(raw)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.failed {
            0
        } else {
            self.ranges.len - self.next
        };
        (0, Some(left))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    #[test]
    fn entry_layout() {
        let r = GvaRange::new(0x7fff_1234_5678, 3);
        assert_eq!(r.0, 0x7fff_1234_5003);
        assert_eq!(r.base(), 0x7fff_1234_5000);
        assert_eq!(r.page_count(), 4);
        assert_eq!(r.end(), 0x7fff_1234_9000);
        assert_eq!(GvaRange::new(0, u16::MAX).page_count(), GvaRange::MAX_PAGES);
        assert_eq!(GvaRange(u64::MAX).end(), u64::MAX);
    }

    #[test]
    fn capacity_is_one_page() {
        assert_eq!(MAX_GVA_RANGES, 509);
        assert!(GvaRanges::in_registers(&[0; MAX_FAST_GVA_RANGES]).is_some());
        assert!(GvaRanges::in_registers(&[0; MAX_FAST_GVA_RANGES + 1]).is_none());
    }

    #[test]
    fn lazy_reads() {
        use crate::hypercall::memory::{NoMemory, SliceMemory};
        let r = GvaRanges::in_registers(&[0x1000, 0x2001]).unwrap();
        let got: Result<std::vec::Vec<_>, _> = r.iter(&NoMemory).collect();
        assert_eq!(got.unwrap(), [GvaRange(0x1000), GvaRange(0x2001)]);
        // 70 entries in memory: three chunks.
        let bytes: std::vec::Vec<u8> = (0..70u64).flat_map(|i| (i << 12).to_le_bytes()).collect();
        let mem = SliceMemory::new(0x8000, &bytes);
        let r = GvaRanges::in_memory(0x8000, 70);
        assert!(
            r.iter(&mem)
                .map(|x| x.unwrap().0)
                .eq((0..70).map(|i| i << 12))
        );
        let mut buf = [0u64; 70];
        assert_eq!(r.read(&mem, &mut buf).unwrap()[69], 69 << 12);
        assert!(r.read(&mem, &mut [0u64; 69]).is_err());
        // Memory gone after the first chunk: 32 entries, one error, the end.
        let short = SliceMemory::new(0x8000, &bytes[..300]);
        let mut it = r.iter(&short);
        assert!(it.by_ref().take(READ_CHUNK).all(|x| x.is_ok()));
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        assert!(r.read(&NoMemory, &mut buf).is_err());
    }

    #[test]
    fn flag_bits_match_hvgdk_mini() {
        assert_eq!(FlushFlags::ALL_PROCESSORS.bits(), 1);
        assert_eq!(FlushFlags::ALL_VIRTUAL_ADDRESS_SPACES.bits(), 2);
        assert_eq!(FlushFlags::NON_GLOBAL_MAPPINGS_ONLY.bits(), 4);
        assert_eq!(FlushFlags::USE_EXTENDED_RANGE_FORMAT.bits(), 8);
    }
}
