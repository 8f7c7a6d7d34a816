//! Flush flags and GVA range list entries of the virtual address flush
//! calls (TLFS 12.4 "Virtual Address Flush"; Linux `HV_FLUSH_*`,
//! `fill_gva_list` in `arch/x86/hyperv/mmu.c`).

use core::fmt;

/// Bytes in a Hyper-V page (`HV_HYP_PAGE_SIZE`).
pub const HV_PAGE_SIZE: usize = 4096;
/// Bits of the page offset (`HV_HYP_PAGE_SHIFT`).
const HV_PAGE_SHIFT: u32 = 12;
/// The low 12 bits of a list entry: additional pages after the first.
const ADDITIONAL_PAGES_MASK: u64 = (1 << HV_PAGE_SHIFT) - 1;

/// Size of the smallest flush list header (`struct hv_tlb_flush`: address
/// space, flags, processor mask).
const MIN_FLUSH_HEADER: usize = 3 * 8;
/// Most GVA entries any flush list input can carry: what fits in one page
/// after the smallest header (Linux's `max_gvas`, 509).
pub const MAX_GVA_RANGES: usize = (HV_PAGE_SIZE - MIN_FLUSH_HEADER) / 8;

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

/// The GVA entries of a flush list call, copied out of the input (at most
/// one page's worth, so no allocation is needed).
#[derive(Clone)]
pub struct GvaRanges {
    len: usize,
    entries: [u64; MAX_GVA_RANGES],
}

impl Default for GvaRanges {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for GvaRanges {
    fn eq(&self, other: &Self) -> bool {
        self.as_raw() == other.as_raw()
    }
}

impl Eq for GvaRanges {}

impl fmt::Debug for GvaRanges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl GvaRanges {
    /// No entries.
    pub const fn new() -> Self {
        Self {
            len: 0,
            entries: [0; MAX_GVA_RANGES],
        }
    }

    /// Entries from `raw`; `None` when there are more than
    /// [`MAX_GVA_RANGES`].
    pub fn from_raw(raw: &[u64]) -> Option<Self> {
        let mut ranges = Self::new();
        ranges.entries.get_mut(..raw.len())?.copy_from_slice(raw);
        ranges.len = raw.len();
        Some(ranges)
    }

    /// The entries as the guest wrote them.
    pub fn as_raw(&self) -> &[u64] {
        self.entries.get(..self.len).unwrap_or(&[])
    }

    /// Room for `len` raw entries, filled by the decoder.
    pub(crate) fn raw_mut(&mut self, len: usize) -> Option<&mut [u64]> {
        let slot = self.entries.get_mut(..len)?;
        self.len = len;
        Some(slot)
    }

    /// Number of entries.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no entries.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The entries in input order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = GvaRange> + Clone + '_ {
        self.as_raw().iter().map(|&raw| GvaRange(raw))
    }
}

#[cfg(test)]
mod tests {
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
        assert!(GvaRanges::from_raw(&[0; MAX_GVA_RANGES]).is_some());
        assert!(GvaRanges::from_raw(&[0; MAX_GVA_RANGES + 1]).is_none());
        let r = GvaRanges::from_raw(&[0x1000, 0x2001]).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r.iter().map(GvaRange::page_count).eq([1, 2]));
    }

    #[test]
    fn flag_bits_match_hvgdk_mini() {
        assert_eq!(FlushFlags::ALL_PROCESSORS.bits(), 1);
        assert_eq!(FlushFlags::ALL_VIRTUAL_ADDRESS_SPACES.bits(), 2);
        assert_eq!(FlushFlags::NON_GLOBAL_MAPPINGS_ONLY.bits(), 4);
        assert_eq!(FlushFlags::USE_EXTENDED_RANGE_FORMAT.bits(), 8);
    }
}
