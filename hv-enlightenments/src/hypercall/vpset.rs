//! Virtual processor sets: the `HV_VP_SET` of the Ex hypercalls (TLFS 10.6
//! "Virtual Processor Set"; Linux `struct hv_vpset`) and the 64-bit
//! processor mask of the non-Ex ones.

use core::fmt;

/// VPs in one sparse bank (`HV_VCPUS_PER_SPARSE_BANK`).
pub const VPS_PER_BANK: u32 = 64;
/// Banks a sparse set can hold: one bit each in `valid_bank_mask`
/// (`HV_MAX_SPARSE_VCPU_BANKS`).
pub const MAX_SPARSE_BANKS: usize = 64;
/// One past the highest VP index a sparse set can name (64 banks of 64).
pub const MAX_VPS: u32 = VPS_PER_BANK * MAX_SPARSE_BANKS as u32;

/// `HV_GENERIC_SET_SPARSE_4K`: the set is `valid_bank_mask` plus banks.
pub const GENERIC_SET_SPARSE_4K: u64 = 0;
/// `HV_GENERIC_SET_ALL`: every VP of the partition.
pub const GENERIC_SET_ALL: u64 = 1;

/// Errors building a VP set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A VP index is at or above [`MAX_VPS`] (this includes `u32::MAX`,
    /// Linux's "VP index not known yet").
    #[error("VP index {0} cannot be put in a sparse VP set (limit {MAX_VPS})")]
    VpIndexOutOfRange(u32),
    /// The number of banks given differs from the bits set in the mask.
    #[error("{banks} banks given for a valid_bank_mask with {mask_bits} bits set")]
    BankCountMismatch {
        /// Bits set in `valid_bank_mask`.
        mask_bits: u32,
        /// Banks given.
        banks: usize,
    },
}

/// A set of VP indices as a hypercall names it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
// Sets are decoded without a heap; the banks stay inline.
#[allow(clippy::large_enum_variant)]
pub enum VpSet {
    /// Every VP of the partition (`HV_GENERIC_SET_ALL`, or the non-Ex
    /// `HV_FLUSH_ALL_PROCESSORS` flag, or a zero non-Ex flush mask).
    All,
    /// An explicit sparse set.
    Sparse(SparseVpSet),
}

impl VpSet {
    /// Whether the set is [`VpSet::All`].
    pub const fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }

    /// Whether `vp` is in the set.
    pub fn contains(&self, vp: u32) -> bool {
        match self {
            Self::All => true,
            Self::Sparse(set) => set.contains(vp),
        }
    }

    /// The VP indices in the set that are below `vp_count` (the partition's
    /// VPs), in ascending order. [`VpSet::All`] yields `0..vp_count`.
    /// Indices at or above `vp_count` name no VP and are skipped, as KVM's
    /// `sparse_set_to_vcpu_mask` ignores them.
    ///
    /// ```
    /// use hv_enlightenments::hypercall::{SparseVpSet, VpSet};
    ///
    /// let set = VpSet::Sparse(SparseVpSet::from_vps([1, 70, 300])?);
    /// assert_eq!(set.iter_present(128).collect::<Vec<_>>(), [1, 70]);
    /// assert_eq!(VpSet::All.iter_present(3).collect::<Vec<_>>(), [0, 1, 2]);
    /// # Ok::<(), hv_enlightenments::hypercall::VpSetError>(())
    /// ```
    pub fn iter_present(&self, vp_count: u32) -> PresentVps<'_> {
        match self {
            Self::All => PresentVps::All(0..vp_count),
            Self::Sparse(set) => PresentVps::Sparse {
                iter: set.iter(),
                limit: vp_count,
            },
        }
    }

    /// The set's VPs below `vp_count` a bank at a time: `(first VP of the
    /// bank, bank word)` in ascending bank order, each word masked to the
    /// VPs below `vp_count`, banks with none of them left out. Walking the
    /// words' set bits (`trailing_zeros`) visits exactly the VPs of
    /// [`VpSet::iter_present`], and a VMM can bound a bank's 64 targets
    /// once rather than each target. No bank wholly at or above
    /// `vp_count` is looked at, whatever the set holds. Only the 64 banks
    /// a set can name are walked: for [`VpSet::All`] with `vp_count` above
    /// [`MAX_VPS`], the VPs from [`MAX_VPS`] on are not visited.
    ///
    /// ```
    /// use hv_enlightenments::hypercall::{SparseVpSet, VpSet};
    ///
    /// let set = VpSet::Sparse(SparseVpSet::from_vps([1, 3, 70, 300])?);
    /// assert_eq!(set.present_banks(128).collect::<Vec<_>>(), [(0, 0b1010), (64, 1 << 6)]);
    /// // 66 VPs: bank 1 keeps VPs 64 and 65 only.
    /// assert_eq!(VpSet::All.present_banks(66).collect::<Vec<_>>(), [(0, u64::MAX), (64, 0b11)]);
    /// # Ok::<(), hv_enlightenments::hypercall::VpSetError>(())
    /// ```
    pub fn present_banks(&self, vp_count: u32) -> PresentBanks<'_> {
        let (mask, banks) = match self {
            Self::All => (u64::MAX, &[][..]),
            Self::Sparse(set) => (set.valid_bank_mask, set.banks()),
        };
        PresentBanks {
            all: self.is_all(),
            mask: mask & banks_below(vp_count),
            banks,
            vp_count,
        }
    }
}

/// The banks holding a VP below `vp_count`, as a `valid_bank_mask`.
const fn banks_below(vp_count: u32) -> u64 {
    let full = vp_count.div_ceil(VPS_PER_BANK);
    if full >= MAX_SPARSE_BANKS as u32 {
        u64::MAX
    } else {
        (1u64 << full) - 1
    }
}

/// The bits of the bank starting at VP `base` that name a VP below
/// `vp_count`.
const fn vps_below(base: u32, vp_count: u32) -> u64 {
    let left = vp_count.saturating_sub(base);
    if left >= VPS_PER_BANK {
        u64::MAX
    } else {
        (1u64 << left) - 1
    }
}

/// Iterator returned by [`VpSet::present_banks`].
#[derive(Clone, Debug)]
pub struct PresentBanks<'a> {
    /// [`VpSet::All`]: every bank word is full.
    all: bool,
    /// Banks still to visit, already cut to those below `vp_count`.
    mask: u64,
    /// The sparse set's compact banks (empty for [`VpSet::All`]).
    banks: &'a [u64],
    vp_count: u32,
}

impl Iterator for PresentBanks<'_> {
    type Item = (u32, u64);

    #[inline]
    fn next(&mut self) -> Option<(u32, u64)> {
        while self.mask != 0 {
            let bank = self.mask.trailing_zeros();
            self.mask &= self.mask - 1;
            let word = if self.all {
                u64::MAX
            } else {
                // Banks are visited in ascending order and none below the
                // cut is skipped, so the next compact slot is this bank's.
                let (slot, rest) = self.banks.split_first()?;
                self.banks = rest;
                *slot
            };
            let base = bank * VPS_PER_BANK;
            let word = word & vps_below(base, self.vp_count);
            if word != 0 {
                return Some((base, word));
            }
        }
        None
    }
}

/// Iterator returned by [`VpSet::iter_present`].
#[derive(Clone, Debug)]
pub enum PresentVps<'a> {
    /// Every VP below the count.
    All(core::ops::Range<u32>),
    /// The sparse set's VPs below `limit`.
    Sparse {
        /// The set's iterator.
        iter: SparseVpIter<'a>,
        /// The VP count.
        limit: u32,
    },
}

impl Iterator for PresentVps<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match self {
            Self::All(range) => range.next(),
            // Ascending order: the first index at or past the limit ends it.
            Self::Sparse { iter, limit } => iter.next().filter(|vp| vp < limit),
        }
    }
}

/// A sparse VP set: `valid_bank_mask` and the banks it marks present, in
/// ascending bank order, exactly as they sit in guest memory (banks stay
/// compact: `banks()[i]` is the bank of the i-th set mask bit).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SparseVpSet {
    valid_bank_mask: u64,
    banks: [u64; MAX_SPARSE_BANKS],
}

impl Default for SparseVpSet {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for SparseVpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl SparseVpSet {
    /// The empty set.
    pub const fn empty() -> Self {
        Self {
            valid_bank_mask: 0,
            banks: [0; MAX_SPARSE_BANKS],
        }
    }

    /// The set of a non-Ex processor mask: VP n is in the set when bit n is.
    pub const fn from_mask(mask: u64) -> Self {
        let mut set = Self::empty();
        if mask != 0 {
            set.valid_bank_mask = 1;
            set.banks[0] = mask;
        }
        set
    }

    /// Builds a set from its wire form. `banks` must hold exactly one bank
    /// per bit set in `valid_bank_mask`.
    pub fn from_banks(valid_bank_mask: u64, banks: &[u64]) -> Result<Self, Error> {
        let mask_bits = valid_bank_mask.count_ones();
        let mut set = Self {
            valid_bank_mask,
            banks: [0; MAX_SPARSE_BANKS],
        };
        match set.banks.get_mut(..banks.len()) {
            Some(dst) if banks.len() == mask_bits as usize => dst.copy_from_slice(banks),
            _ => {
                return Err(Error::BankCountMismatch {
                    mask_bits,
                    banks: banks.len(),
                });
            }
        }
        Ok(set)
    }

    /// Builds the smallest set holding `vps`: only non-empty banks are
    /// present. Refuses any index at or above [`MAX_VPS`] (Linux's
    /// `cpumask_to_vpset` fails the same way for unknown or too large
    /// indices, and the caller then takes the native path).
    ///
    /// ```
    /// use hv_enlightenments::hypercall::{SparseVpSet, VpSetError, MAX_VPS};
    ///
    /// let set = SparseVpSet::from_vps([3, 64, 65])?;
    /// assert_eq!((set.bank_count(), set.len(), set.max_vp()), (2, 3, Some(65)));
    /// assert_eq!(SparseVpSet::from_vps([MAX_VPS]), Err(VpSetError::VpIndexOutOfRange(MAX_VPS)));
    /// # Ok::<(), VpSetError>(())
    /// ```
    pub fn from_vps<I: IntoIterator<Item = u32>>(vps: I) -> Result<Self, Error> {
        let mut by_bank = [0u64; MAX_SPARSE_BANKS];
        for vp in vps {
            let slot = by_bank
                .get_mut((vp / VPS_PER_BANK) as usize)
                .ok_or(Error::VpIndexOutOfRange(vp))?;
            *slot |= 1 << (vp % VPS_PER_BANK);
        }
        Ok(Self::from_expanded(&by_bank))
    }

    /// Builds a set from 64 banks indexed by bank number; zero banks are
    /// left out.
    pub fn from_expanded(by_bank: &[u64; MAX_SPARSE_BANKS]) -> Self {
        let mut set = Self::empty();
        let mut n = 0;
        for (bank, &word) in by_bank.iter().enumerate() {
            if word != 0 {
                set.valid_bank_mask |= 1 << bank;
                if let Some(dst) = set.banks.get_mut(n) {
                    *dst = word;
                }
                n += 1;
            }
        }
        set
    }

    /// A set with `valid_bank_mask` whose banks are still zero; the decoder
    /// fills them through [`SparseVpSet::banks_mut`].
    pub(crate) const fn with_mask(valid_bank_mask: u64) -> Self {
        Self {
            valid_bank_mask,
            banks: [0; MAX_SPARSE_BANKS],
        }
    }

    /// The present banks, writable.
    pub(crate) fn banks_mut(&mut self) -> &mut [u64] {
        let n = self.bank_count();
        match self.banks.get_mut(..n) {
            Some(banks) => banks,
            None => &mut [],
        }
    }

    /// `valid_bank_mask`: bit k set when bank k (VPs 64k..64k+63) is present.
    pub const fn valid_bank_mask(&self) -> u64 {
        self.valid_bank_mask
    }

    /// The present banks, in ascending bank order (one per mask bit).
    pub fn banks(&self) -> &[u64] {
        let n = self.bank_count();
        self.banks.get(..n).unwrap_or(&self.banks)
    }

    /// Number of present banks (bits set in `valid_bank_mask`): the variable
    /// header size of an Ex call carrying this set.
    pub const fn bank_count(&self) -> usize {
        self.valid_bank_mask.count_ones() as usize
    }

    /// Whether no VP is in the set.
    pub fn is_empty(&self) -> bool {
        self.banks().iter().all(|&b| b == 0)
    }

    /// Number of VPs in the set.
    pub fn len(&self) -> usize {
        self.banks().iter().map(|b| b.count_ones() as usize).sum()
    }

    /// Whether `vp` is in the set (KVM's `hv_is_vp_in_sparse_set`).
    pub fn contains(&self, vp: u32) -> bool {
        let bank = vp / VPS_PER_BANK;
        if bank as usize >= MAX_SPARSE_BANKS || self.valid_bank_mask & (1 << bank) == 0 {
            return false;
        }
        // The bank's slot is the number of present banks below it.
        let below = self.valid_bank_mask & ((1u64 << bank) - 1);
        self.banks
            .get(below.count_ones() as usize)
            .is_some_and(|word| word & (1 << (vp % VPS_PER_BANK)) != 0)
    }

    /// The highest VP index in the set.
    pub fn max_vp(&self) -> Option<u32> {
        let mut mask = self.valid_bank_mask;
        let mut best = None;
        for &word in self.banks() {
            let bank = mask.trailing_zeros();
            mask &= mask - 1;
            if word != 0 {
                best = Some(bank * VPS_PER_BANK + (63 - word.leading_zeros()));
            }
        }
        best
    }

    /// The set as a non-Ex processor mask, when every VP is below 64.
    pub fn as_mask(&self) -> Option<u64> {
        match self.max_vp() {
            None => Some(0),
            Some(vp) if vp < VPS_PER_BANK => Some(self.expanded_bank(0)),
            Some(_) => None,
        }
    }

    /// The contents of bank `bank` (0 when absent).
    pub fn expanded_bank(&self, bank: u32) -> u64 {
        if bank as usize >= MAX_SPARSE_BANKS || self.valid_bank_mask & (1 << bank) == 0 {
            return 0;
        }
        let below = self.valid_bank_mask & ((1u64 << bank) - 1);
        self.banks
            .get(below.count_ones() as usize)
            .copied()
            .unwrap_or(0)
    }

    /// The VP indices in ascending order. Cost is one step per present bank
    /// plus one per VP: set bits are walked with `trailing_zeros`.
    pub fn iter(&self) -> SparseVpIter<'_> {
        SparseVpIter {
            mask: self.valid_bank_mask,
            banks: self.banks().iter(),
            base: 0,
            word: 0,
        }
    }
}

impl<'a> IntoIterator for &'a SparseVpSet {
    type Item = u32;
    type IntoIter = SparseVpIter<'a>;

    fn into_iter(self) -> SparseVpIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`SparseVpSet`]'s VP indices.
#[derive(Clone, Debug)]
pub struct SparseVpIter<'a> {
    mask: u64,
    banks: core::slice::Iter<'a, u64>,
    base: u32,
    word: u64,
}

impl Iterator for SparseVpIter<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        while self.word == 0 {
            if self.mask == 0 {
                return None;
            }
            let bank = self.mask.trailing_zeros();
            self.mask &= self.mask - 1;
            self.base = bank * VPS_PER_BANK;
            self.word = *self.banks.next()?;
        }
        let bit = self.word.trailing_zeros();
        self.word &= self.word - 1;
        Some(self.base + bit)
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;

    #[test]
    fn from_vps_is_compact_and_sorted() {
        let set = SparseVpSet::from_vps([4095, 0, 64, 65, 130, 0]).unwrap();
        assert_eq!(set.valid_bank_mask(), 1 | 2 | 4 | (1 << 63));
        assert_eq!(set.banks(), &[1, 3, 4, 1 << 63]);
        let vps: [u32; 5] = [0, 64, 65, 130, 4095];
        assert!(set.iter().eq(vps));
        assert_eq!(set.len(), 5);
        assert_eq!(set.max_vp(), Some(4095));
        for vp in 0..MAX_VPS {
            assert_eq!(set.contains(vp), vps.contains(&vp), "vp {vp}");
        }
        assert!(!set.contains(u32::MAX));
    }

    #[test]
    fn from_vps_refuses_out_of_range() {
        assert_eq!(
            SparseVpSet::from_vps([1, MAX_VPS]),
            Err(Error::VpIndexOutOfRange(MAX_VPS))
        );
        assert_eq!(
            SparseVpSet::from_vps([u32::MAX]),
            Err(Error::VpIndexOutOfRange(u32::MAX))
        );
        assert!(SparseVpSet::from_vps([MAX_VPS - 1]).is_ok());
    }

    #[test]
    fn from_banks_checks_count() {
        assert!(SparseVpSet::from_banks(0b101, &[1, 2]).is_ok());
        assert_eq!(
            SparseVpSet::from_banks(0b101, &[1]),
            Err(Error::BankCountMismatch {
                mask_bits: 2,
                banks: 1
            })
        );
        assert!(SparseVpSet::from_banks(u64::MAX, &[0; 64]).is_ok());
    }

    #[test]
    fn zero_banks_and_masks() {
        // A present but empty bank contributes nothing.
        let set = SparseVpSet::from_banks(0b11, &[0, 1]).unwrap();
        assert!(set.iter().eq([64]));
        assert_eq!(set.as_mask(), None);
        assert!(SparseVpSet::from_banks(0b1, &[0]).unwrap().is_empty());
        assert_eq!(SparseVpSet::from_mask(0x5).as_mask(), Some(0x5));
        assert!(SparseVpSet::from_mask(0).is_empty());
        assert_eq!(SparseVpSet::from_mask(0).bank_count(), 0);
    }

    /// The bank walk visits exactly the VPs of `iter_present`, for counts
    /// at, one below and one past each bank edge and the set's limit.
    #[test]
    fn present_banks_match_present_vps() {
        let sets = [
            VpSet::All,
            VpSet::Sparse(SparseVpSet::empty()),
            VpSet::Sparse(SparseVpSet::from_vps([0, 63, 64, 65, 1023, 1024, 4095]).unwrap()),
            VpSet::Sparse(SparseVpSet::from_banks(u64::MAX, &[u64::MAX; 64]).unwrap()),
            // Present but empty banks, and one full bank past them.
            VpSet::Sparse(SparseVpSet::from_banks(0b1011, &[0, 0, u64::MAX]).unwrap()),
        ];
        let counts = [
            0,
            1,
            63,
            64,
            65,
            1000,
            1023,
            1024,
            1025,
            4095,
            MAX_VPS,
            MAX_VPS + 1,
        ];
        for set in &sets {
            for n in counts.into_iter().chain([u32::MAX]) {
                let by_bank: Vec<u32> = set
                    .present_banks(n)
                    .flat_map(|(base, mut word)| {
                        assert!(word != 0 && base % VPS_PER_BANK == 0);
                        core::iter::from_fn(move || {
                            (word != 0).then(|| {
                                let bit = word.trailing_zeros();
                                word &= word - 1;
                                base + bit
                            })
                        })
                    })
                    .collect();
                let want: Vec<u32> = set.iter_present(n.min(MAX_VPS)).collect();
                assert_eq!(by_bank, want, "{set:?} below {n}");
            }
        }
    }

    #[test]
    fn present_iteration() {
        assert!(VpSet::All.iter_present(3).eq([0, 1, 2]));
        let set = VpSet::Sparse(SparseVpSet::from_vps([1, 5, 9]).unwrap());
        assert!(set.iter_present(6).eq([1, 5]));
        assert!(set.contains(9) && !set.contains(2));
        assert!(VpSet::All.contains(u32::MAX));
    }
}
