//! The partition reference time: HV_X64_MSR_TIME_REF_COUNT and the
//! reference TSC page (TLFS "Partition Reference Counter" and "Partition
//! Reference TSC Mechanism"; Linux `struct ms_hyperv_tsc_page` and
//! `hv_read_tsc_page_tsc`; KVM `get_time_ref_counter` and
//! `kvm_hv_setup_tsc_page`).
//!
//! Both count 100 ns units. The VMM picks the epoch (VM creation, say) and
//! the TSC it counts from (the guest's); the functions here do the
//! arithmetic, in 128 bits so that no `u64` TSC value overflows.
//!
//! ```
//! use hv_enlightenments::reftime::{
//!     next_sequence, time_ref_count, ReferenceTscPage, TscConversion, TscFrequency,
//! };
//!
//! // A 2.5 GHz guest TSC (KVM_GET_TSC_KHZ says 2_500_000).
//! let freq = TscFrequency::from_khz(2_500_000).unwrap();
//! // TIME_REF_COUNT from a guest TSC value, counting from TSC 0.
//! assert_eq!(time_ref_count(2_500_000_000, freq, 0), 10_000_000); // 1 s
//!
//! // The reference TSC page that agrees with it (within one unit).
//! let conv = TscConversion::new(freq, 0)?;
//! let page = ReferenceTscPage::new(next_sequence(0), conv);
//! let tsc = 7_500_000_123;
//! let by_page = page.reference_time(tsc).unwrap(); // what the guest computes
//! assert!(time_ref_count(tsc, freq, 0).abs_diff(by_page) <= 1);
//! let bytes: [u8; 24] = page.to_bytes(); // written at the page's GPA
//! # Ok::<(), hv_enlightenments::reftime::Error>(())
//! ```

use core::num::NonZeroU64;
use core::ops::Range;

use zerocopy::byteorder::little_endian::{I64, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Reference time units per second: one unit is 100 ns.
pub const REF_TIME_HZ: u64 = 10_000_000;
/// Hz in a kHz (KVM reports the guest TSC frequency in kHz).
const HZ_PER_KHZ: u64 = 1_000;
/// Bits of the fraction in the page's 64.64 fixed-point scale.
const SCALE_SHIFT: u32 = 64;

/// The sequence that marks the page invalid: the guest reads
/// TIME_REF_COUNT instead (Linux `hv_read_tsc_page_tsc` returns
/// `U64_MAX` and the clocksource falls back to the MSR).
pub const SEQUENCE_INVALID: u32 = 0;
/// A sequence KVM never publishes (`kvm_hv_setup_tsc_page` skips it).
const SEQUENCE_SKIPPED: u32 = u32::MAX;

/// Errors of the reference time arithmetic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The TSC runs at 10 MHz or slower, so one TSC tick is at least one
    /// reference unit and the page's scale (a fraction below 1) cannot
    /// express it. Publish no page; TIME_REF_COUNT still works.
    #[error("a {hz} Hz TSC is too slow for the reference TSC page (must exceed 10 MHz)")]
    TscTooSlow {
        /// The frequency given.
        hz: u64,
    },
}

/// A TSC frequency in Hz, never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TscFrequency(NonZeroU64);

impl TscFrequency {
    /// `hz` Hz; `None` for 0.
    pub const fn from_hz(hz: u64) -> Option<Self> {
        match NonZeroU64::new(hz) {
            Some(hz) => Some(Self(hz)),
            None => None,
        }
    }

    /// `khz` kHz, as `KVM_GET_TSC_KHZ` reports it; `None` for 0 or a value
    /// whose Hz do not fit `u64`.
    pub const fn from_khz(khz: u64) -> Option<Self> {
        match khz.checked_mul(HZ_PER_KHZ) {
            Some(hz) => Self::from_hz(hz),
            None => None,
        }
    }

    /// The frequency in Hz.
    pub const fn hz(self) -> u64 {
        self.0.get()
    }
}

/// TIME_REF_COUNT at guest TSC `tsc`: `tsc * 10^7 / hz` (rounded down)
/// plus `offset` (wrapping), in 100 ns units.
///
/// `offset` moves the epoch: 0 counts from TSC 0 (KVM starts a new vCPU's
/// TSC at 0, so that is VM creation); `-(time_ref_count(t0, freq, 0) as
/// i64)` counts from TSC `t0`. The product is taken in 128 bits, so every
/// `u64` TSC is exact; only a TSC slower than 10 MHz can produce a count
/// above `u64::MAX`, which wraps like the counter itself.
///
/// While a reference TSC page is published, answer the MSR with
/// [`TscConversion::reference_time`] instead, so that the two never
/// disagree (KVM `get_time_ref_counter` does the same).
pub const fn time_ref_count(tsc: u64, freq: TscFrequency, offset: i64) -> u64 {
    let units = (tsc as u128 * REF_TIME_HZ as u128) / freq.hz() as u128;
    (units as u64).wrapping_add_signed(offset)
}

/// The guest's TSC to reference time conversion published in the
/// reference TSC page: `((tsc * scale) >> 64) + offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TscConversion {
    /// Reference units per TSC tick, as a 0.64 fixed-point fraction:
    /// `(10^7 << 64) / hz`.
    pub scale: u64,
    /// Reference units added after scaling (may be negative).
    pub offset: i64,
}

impl TscConversion {
    /// The scale for `freq`: `(10^7 << 64) / hz`, rounded down (KVM's
    /// `compute_tsc_page_parameters` derives the same value from the
    /// kvmclock multiplier).
    const fn scale(freq: TscFrequency) -> Result<u64, Error> {
        let scale = ((REF_TIME_HZ as u128) << SCALE_SHIFT) / freq.hz() as u128;
        if scale > u64::MAX as u128 {
            return Err(Error::TscTooSlow { hz: freq.hz() });
        }
        Ok(scale as u64)
    }

    /// The conversion for `freq` with the same `offset` as
    /// [`time_ref_count`]: both give the same count within one unit (the
    /// page's value is never above the MSR's, and at most one below).
    pub const fn new(freq: TscFrequency, offset: i64) -> Result<Self, Error> {
        match Self::scale(freq) {
            Ok(scale) => Ok(Self { scale, offset }),
            Err(e) => Err(e),
        }
    }

    /// The conversion for `freq` that gives exactly `ref_time` at guest
    /// TSC `tsc`: for a VMM whose clock is not the TSC, read both at the
    /// same moment (KVM anchors the page at the kvmclock's
    /// `tsc_timestamp`/`system_time` pair the same way).
    ///
    /// ```
    /// use hv_enlightenments::reftime::{TscConversion, TscFrequency};
    ///
    /// let freq = TscFrequency::from_khz(2_000_000).expect("non-zero");
    /// // At guest TSC 4e9 the VMM's clock says 5 s of partition time.
    /// let conv = TscConversion::anchored(freq, 4_000_000_000, 50_000_000)?;
    /// assert_eq!(conv.reference_time(4_000_000_000), 50_000_000);
    /// # Ok::<(), hv_enlightenments::reftime::Error>(())
    /// ```
    pub const fn anchored(freq: TscFrequency, tsc: u64, ref_time: u64) -> Result<Self, Error> {
        match Self::scale(freq) {
            Ok(scale) => Ok(Self {
                scale,
                // Two's complement: ref_time - scaled(tsc), as i64.
                offset: ref_time.wrapping_sub(scaled(tsc, scale)) as i64,
            }),
            Err(e) => Err(e),
        }
    }

    /// The reference time at guest TSC `tsc`, as the guest computes it
    /// from the page (Linux `hv_read_tsc_page_tsc`: `mul_u64_u64_shr` then
    /// a wrapping add).
    pub const fn reference_time(self, tsc: u64) -> u64 {
        scaled(tsc, self.scale).wrapping_add_signed(self.offset)
    }
}

/// `(tsc * scale) >> 64`, which always fits `u64` because `scale < 2^64`.
const fn scaled(tsc: u64, scale: u64) -> u64 {
    ((tsc as u128 * scale as u128) >> SCALE_SHIFT) as u64
}

/// The next sequence to publish after `old`: `old + 1`, skipping
/// [`SEQUENCE_INVALID`] and `0xFFFFFFFF` (KVM `kvm_hv_setup_tsc_page`).
pub const fn next_sequence(old: u32) -> u32 {
    match old.wrapping_add(1) {
        SEQUENCE_INVALID | SEQUENCE_SKIPPED => 1,
        next => next,
    }
}

/// The header of the reference TSC page, the first 24 bytes of the page
/// (Linux `struct ms_hyperv_tsc_page`); the rest of the page is reserved
/// and left zero. Little-endian in guest memory whatever the host:
/// [`to_bytes`](Self::to_bytes) is what to write.
///
/// | offset | field |
/// |---|---|
/// | 0 | `tsc_sequence: u32`, 0 = invalid |
/// | 4 | reserved `u32` |
/// | 8 | `tsc_scale: u64` |
/// | 16 | `tsc_offset: i64` |
///
/// The guest reads the sequence, the scale and offset, its TSC, then the
/// sequence again, and retries if it changed. So a page the guest may be
/// reading is updated in three steps, each visible before the next (KVM
/// `kvm_hv_setup_tsc_page`): write [`SEQUENCE_INVALID`] into
/// [`SEQUENCE`](Self::SEQUENCE), then the new
/// [`PARAMETERS`](Self::PARAMETERS), then the new sequence
/// ([`next_sequence`] of the old one).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ReferenceTscPage {
    tsc_sequence: U32,
    reserved: U32,
    tsc_scale: U64,
    tsc_offset: I64,
}

impl ReferenceTscPage {
    /// A header with sequence 0: the guest uses TIME_REF_COUNT.
    pub const INVALID: Self = Self {
        tsc_sequence: U32::new(SEQUENCE_INVALID),
        reserved: U32::new(0),
        tsc_scale: U64::new(0),
        tsc_offset: I64::new(0),
    };
    /// Bytes of the header.
    pub const SIZE: usize = 24;
    /// Bytes of `tsc_sequence` in the page.
    pub const SEQUENCE: Range<usize> = 0..4;
    /// Bytes of `tsc_scale` and `tsc_offset` in the page.
    pub const PARAMETERS: Range<usize> = 8..24;

    /// A header publishing `conversion` under `sequence` (use
    /// [`next_sequence`]; [`SEQUENCE_INVALID`] makes the page invalid).
    pub const fn new(sequence: u32, conversion: TscConversion) -> Self {
        Self {
            tsc_sequence: U32::new(sequence),
            reserved: U32::new(0),
            tsc_scale: U64::new(conversion.scale),
            tsc_offset: I64::new(conversion.offset),
        }
    }

    /// The sequence.
    pub const fn sequence(&self) -> u32 {
        self.tsc_sequence.get()
    }

    /// The conversion, unless the sequence marks the page invalid.
    pub const fn conversion(&self) -> Option<TscConversion> {
        if self.sequence() == SEQUENCE_INVALID {
            return None;
        }
        Some(TscConversion {
            scale: self.tsc_scale.get(),
            offset: self.tsc_offset.get(),
        })
    }

    /// The reference time a guest reading this page computes at `tsc`, or
    /// `None` when it must read TIME_REF_COUNT instead.
    pub const fn reference_time(&self, tsc: u64) -> Option<u64> {
        match self.conversion() {
            Some(conversion) => Some(conversion.reference_time(tsc)),
            None => None,
        }
    }

    /// The header as the guest sees it in memory.
    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        zerocopy::transmute!(*self)
    }

    /// A header read from guest memory.
    pub fn from_bytes(bytes: [u8; Self::SIZE]) -> Self {
        zerocopy::transmute!(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frequencies the page can express: above 10 MHz, up to 100 GHz.
    const MIN_PAGE_HZ: u64 = REF_TIME_HZ + 1;
    const MAX_TEST_HZ: u64 = 100_000_000_000;

    fn freq(hz: u64) -> TscFrequency {
        TscFrequency::from_hz(hz).unwrap()
    }

    #[test]
    fn layout_matches_ms_hyperv_tsc_page() {
        assert_eq!(size_of::<ReferenceTscPage>(), ReferenceTscPage::SIZE);
        let page = ReferenceTscPage::new(
            0x1122_3344,
            TscConversion {
                scale: 0x0102_0304_0506_0708,
                offset: -2,
            },
        );
        let bytes = page.to_bytes();
        assert_eq!(bytes[ReferenceTscPage::SEQUENCE], [0x44, 0x33, 0x22, 0x11]);
        assert_eq!(bytes[4..8], [0; 4]);
        assert_eq!(bytes[8..16], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(bytes[16..24], (-2i64).to_le_bytes());
        assert_eq!(ReferenceTscPage::PARAMETERS, 8..24);
        assert_eq!(ReferenceTscPage::from_bytes(bytes), page);
        assert_eq!(page.as_bytes(), bytes);
    }

    #[test]
    fn frequencies() {
        assert_eq!(TscFrequency::from_hz(0), None);
        assert_eq!(TscFrequency::from_khz(0), None);
        assert_eq!(TscFrequency::from_khz(u64::MAX), None);
        assert_eq!(
            TscFrequency::from_khz(2_000_000).unwrap().hz(),
            2_000_000_000
        );
    }

    #[test]
    fn time_ref_count_values() {
        let f = freq(2_000_000_000);
        assert_eq!(time_ref_count(0, f, 0), 0);
        assert_eq!(time_ref_count(2_000_000_000, f, 0), REF_TIME_HZ);
        assert_eq!(time_ref_count(199, f, 0), 0); // 99.5 ns rounds down
        assert_eq!(time_ref_count(200, f, 0), 1);
        assert_eq!(time_ref_count(2_000_000_000, f, -(REF_TIME_HZ as i64)), 0);
        assert_eq!(time_ref_count(0, f, -1), u64::MAX); // wraps like the counter
    }

    #[test]
    fn no_overflow_at_u64_max_tsc() {
        // 2^64 ticks at 1 GHz: 184467440737095516 units (rounded down).
        let f = freq(1_000_000_000);
        assert_eq!(time_ref_count(u64::MAX, f, 0), 184_467_440_737_095_516);
        let conv = TscConversion::new(f, 0).unwrap();
        assert!(time_ref_count(u64::MAX, f, 0).abs_diff(conv.reference_time(u64::MAX)) <= 1);
        // The slowest page-capable TSC and the fastest test one.
        for hz in [MIN_PAGE_HZ, MAX_TEST_HZ] {
            let f = freq(hz);
            let conv = TscConversion::new(f, 0).unwrap();
            let direct = time_ref_count(u64::MAX, f, 0);
            assert!(
                direct.abs_diff(conv.reference_time(u64::MAX)) <= 1,
                "{hz} Hz"
            );
        }
        // A 1 Hz TSC: 10^7 units per tick, more than u64 holds; it wraps.
        assert_eq!(
            time_ref_count(u64::MAX, freq(1), 0),
            (u128::from(u64::MAX) * 10_000_000) as u64
        );
    }

    #[test]
    fn too_slow_for_the_page() {
        // Exactly 10 MHz would need a scale of 2^64.
        assert_eq!(
            TscConversion::new(freq(REF_TIME_HZ), 0),
            Err(Error::TscTooSlow { hz: REF_TIME_HZ })
        );
        assert!(TscConversion::anchored(freq(1), 5, 5).is_err());
        assert!(TscConversion::new(freq(MIN_PAGE_HZ), 0).is_ok());
    }

    #[test]
    fn sequence_skips_zero_and_all_ones() {
        assert_eq!(next_sequence(0), 1);
        assert_eq!(next_sequence(1), 2);
        assert_eq!(next_sequence(0xFFFF_FFFD), 0xFFFF_FFFE);
        assert_eq!(next_sequence(0xFFFF_FFFE), 1);
        assert_eq!(next_sequence(u32::MAX), 1);
    }

    #[test]
    fn invalid_page_falls_back() {
        assert_eq!(ReferenceTscPage::INVALID.sequence(), 0);
        assert_eq!(ReferenceTscPage::INVALID.reference_time(1234), None);
        assert_eq!(ReferenceTscPage::default(), ReferenceTscPage::INVALID);
        let conv = TscConversion::new(freq(3_000_000_000), 0).unwrap();
        assert_eq!(ReferenceTscPage::new(0, conv).conversion(), None);
        assert_eq!(ReferenceTscPage::new(7, conv).conversion(), Some(conv));
    }

    proptest! {
        #[test]
        fn page_agrees_with_time_ref_count(
            hz in MIN_PAGE_HZ..=MAX_TEST_HZ,
            tsc: u64,
            offset: i64,
        ) {
            let f = freq(hz);
            let page = ReferenceTscPage::new(1, TscConversion::new(f, offset).unwrap());
            let by_page = page.reference_time(tsc).unwrap();
            let direct = time_ref_count(tsc, f, offset);
            // Never ahead of the MSR, at most one unit behind.
            prop_assert!(direct.wrapping_sub(by_page) <= 1, "{direct} vs {by_page}");
        }

        #[test]
        fn anchored_page_is_exact_at_the_anchor_and_close_elsewhere(
            hz in MIN_PAGE_HZ..=MAX_TEST_HZ,
            anchor: u64,
            tsc: u64,
            offset: i64,
        ) {
            let f = freq(hz);
            let at_anchor = time_ref_count(anchor, f, offset);
            let conv = TscConversion::anchored(f, anchor, at_anchor).unwrap();
            prop_assert_eq!(conv.reference_time(anchor), at_anchor);
            let direct = time_ref_count(tsc, f, offset);
            let diff = direct.wrapping_sub(conv.reference_time(tsc)) as i64;
            prop_assert!((-1..=1).contains(&diff), "{direct} off by {diff}");
        }

        #[test]
        fn page_time_is_monotonic(hz in MIN_PAGE_HZ..=MAX_TEST_HZ, tsc in 0..u64::MAX, step: u32) {
            let conv = TscConversion::new(freq(hz), 0).unwrap();
            let later = tsc.saturating_add(u64::from(step));
            prop_assert!(conv.reference_time(later) >= conv.reference_time(tsc));
        }
    }
}
