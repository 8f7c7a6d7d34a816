//! 256-bit vector bitmaps: the IRR, ISR and TMR, and the AutoEOI mask.
//!
//! Stored as four `u64` words so the highest set vector is found with at
//! most four `leading_zeros` instructions (SDM vol. 3 10.8.4: the APIC
//! always services the highest-priority vector first).

/// Number of interrupt vectors.
pub const VECTOR_COUNT: usize = 256;
/// Vectors below this value are reserved for exceptions; the APIC flags
/// them as illegal for fixed and lowest-priority delivery (SDM 10.5.3).
pub const FIRST_LEGAL_VECTOR: u8 = 16;

/// Bits per storage word.
const WORD_BITS: u32 = 64;
/// Number of storage words.
const WORDS: usize = VECTOR_COUNT / WORD_BITS as usize;
/// Bits per architectural 32-bit register view (ISR0..ISR7 and so on).
const REG_BITS: usize = 32;
/// Number of 32-bit registers that make up one 256-bit bitmap.
pub const REGS_PER_BITMAP: usize = VECTOR_COUNT / REG_BITS;

/// A set of interrupt vectors (0..=255).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct VectorBitmap {
    words: [u64; WORDS],
}

#[inline]
fn word_index(vector: u8) -> usize {
    // vector >> 6 is at most 3: never out of bounds.
    usize::from(vector >> 6)
}

#[inline]
fn bit(vector: u8) -> u64 {
    1u64 << (u32::from(vector) % WORD_BITS)
}

impl VectorBitmap {
    /// The empty set.
    pub const EMPTY: Self = Self { words: [0; WORDS] };

    /// Builds a bitmap from its four 64-bit words (word 0 holds vectors 0-63).
    pub const fn from_words(words: [u64; WORDS]) -> Self {
        Self { words }
    }

    /// The four 64-bit words (word 0 holds vectors 0-63).
    pub const fn words(&self) -> [u64; WORDS] {
        self.words
    }

    /// Adds `vector`; returns whether it was already present.
    ///
    /// ```
    /// use vm_lapic::VectorBitmap;
    ///
    /// let mut auto_eoi = VectorBitmap::EMPTY;
    /// assert!(!auto_eoi.set(0x31));
    /// assert!(auto_eoi.set(0x31)); // already there
    /// assert_eq!(auto_eoi.highest(), Some(0x31));
    /// ```
    #[inline]
    pub fn set(&mut self, vector: u8) -> bool {
        let w = &mut self.words[word_index(vector)];
        let was = *w & bit(vector) != 0;
        *w |= bit(vector);
        was
    }

    /// Removes `vector`; returns whether it was present.
    #[inline]
    pub fn clear(&mut self, vector: u8) -> bool {
        let w = &mut self.words[word_index(vector)];
        let was = *w & bit(vector) != 0;
        *w &= !bit(vector);
        was
    }

    /// Whether `vector` is present.
    #[inline]
    pub fn test(&self, vector: u8) -> bool {
        self.words[word_index(vector)] & bit(vector) != 0
    }

    /// Sets or clears `vector`.
    #[inline]
    pub fn assign(&mut self, vector: u8, value: bool) {
        if value {
            self.set(vector);
        } else {
            self.clear(vector);
        }
    }

    /// The highest vector present, if any.
    #[inline]
    pub fn highest(&self) -> Option<u8> {
        let mut i = WORDS;
        while i > 0 {
            i -= 1;
            let w = self.words[i];
            if w != 0 {
                let top = WORD_BITS - 1 - w.leading_zeros();
                // i < 4 and top < 64, so the sum is at most 255.
                return u8::try_from(i as u32 * WORD_BITS + top).ok();
            }
        }
        None
    }

    /// Whether no vector is present.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Number of vectors present.
    pub fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }

    /// Removes every vector.
    pub fn clear_all(&mut self) {
        self.words = [0; WORDS];
    }

    /// The architectural 32-bit register `index` (0..8) of this bitmap, as
    /// read at ISR/TMR/IRR + 0x10 * index. Out-of-range indices read 0.
    pub fn reg32(&self, index: usize) -> u32 {
        if index >= REGS_PER_BITMAP {
            return 0;
        }
        let word = self.words[index / 2];
        // Truncation keeps the selected 32-bit half.
        (word >> ((index % 2) * REG_BITS)) as u32
    }

    /// Replaces the architectural 32-bit register `index` (0..8).
    /// Out-of-range indices are ignored.
    pub fn set_reg32(&mut self, index: usize, value: u32) {
        if index >= REGS_PER_BITMAP {
            return;
        }
        let shift = (index % 2) * REG_BITS;
        let w = &mut self.words[index / 2];
        *w = (*w & !(u64::from(u32::MAX) << shift)) | (u64::from(value) << shift);
    }

    /// Iterates over the vectors present, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=u8::MAX).filter(move |v| self.test(*v))
    }
}

impl FromIterator<u8> for VectorBitmap {
    fn from_iter<I: IntoIterator<Item = u8>>(iter: I) -> Self {
        let mut b = Self::EMPTY;
        for v in iter {
            b.set(v);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_and_bounds() {
        let mut b = VectorBitmap::EMPTY;
        assert_eq!(b.highest(), None);
        assert!(b.is_empty());
        for v in [0u8, 63, 64, 127, 128, 255] {
            assert!(!b.set(v));
            assert_eq!(b.highest(), Some(v));
            assert!(b.set(v));
        }
        assert_eq!(b.count(), 6);
        assert!(b.clear(255));
        assert!(!b.clear(255));
        assert_eq!(b.highest(), Some(128));
    }

    #[test]
    fn reg32_views() {
        let mut b = VectorBitmap::EMPTY;
        b.set(32);
        b.set(255);
        assert_eq!(b.reg32(1), 1);
        assert_eq!(b.reg32(7), 1 << 31);
        // One past the last register reads zero and ignores writes.
        assert_eq!(b.reg32(8), 0);
        b.set_reg32(8, u32::MAX);
        assert_eq!(b.count(), 2);
        b.set_reg32(0, 0x8000_0001);
        assert!(b.test(0) && b.test(31));
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 31, 32, 255]);
    }
}
