//! The posted-interrupt descriptor in the VT-x layout (Intel SDM Vol. 3,
//! "Posted-Interrupt Processing"; Linux `arch/x86/include/asm/posted_intr.h`,
//! `struct pi_desc`).
//!
//! A sender posts a vector into the 256-bit PIR and sets ON (outstanding
//! notification); only the sender that moves ON from 0 to 1 with SN clear
//! needs to notify the target. The target's vCPU thread takes the pending
//! vectors: it clears ON first, then fetches and clears the PIR.
//!
//! # Memory ordering
//!
//! Every access that decides delivery is a read-modify-write (RMW), and an
//! RMW always reads the latest value of its location. That makes the
//! argument hold with acquire/release alone, which is what the loom models
//! check (`tests/loom.rs`):
//!
//! * No lost vector: a post RMWs its PIR word, then the control word;
//!   [`take`] RMWs the control word (clearing ON), then swaps every PIR
//!   word. If `take`'s swap comes before the post's PIR update, the swap
//!   released to the post's update, so the post's control RMW comes after
//!   `take` cleared ON: ON is set again afterwards, and the post notifies.
//!   A PIR bit is cleared only by a swap, so one `take` gets it.
//! * No missed wake-up: the vCPU publishes its run state, then RMWs the
//!   control word ([`take`], or [`clear_suppress`] when halting); a post
//!   RMWs the control word, then reads the run state. Whichever control
//!   RMW comes second reads the other's write: the vCPU sees ON, or the
//!   post synchronises with the vCPU and sees its new run state. See
//!   [`crate::run_state`].
//!
//! The code uses `SeqCst` anyway: on x86-64 every RMW is `lock`-prefixed
//! whatever the ordering and loads are plain, so it costs nothing on the
//! hot path.
//!
//! One deliberate difference from the hardware: a post while SN is set
//! still sets ON (without asking for a notification), so that clearing SN
//! finds ON set, the state KVM's `vmx_vcpu_pi_load` restores by hand.
//!
//! [`take`]: PostedInterruptDescriptor::take
//! [`clear_suppress`]: PostedInterruptDescriptor::clear_suppress

use crate::sync::atomic::{AtomicU64, Ordering::SeqCst};

/// Number of 64-bit words in the PIR (256 bits, one per vector).
pub const PIR_WORDS: usize = 4;
/// Size of the descriptor in bytes (SDM: 64 bytes).
pub const DESCRIPTOR_SIZE: usize = 64;
/// Required alignment of the descriptor in bytes (SDM: 64-byte aligned).
pub const DESCRIPTOR_ALIGN: usize = 64;

/// Bit of the descriptor at which the control word starts (bits 319:256).
pub const CONTROL_BIT_OFFSET: u32 = 256;
/// ON, outstanding notification: descriptor bit 256, control bit 0.
pub const CONTROL_ON: u64 = 1 << (256 - CONTROL_BIT_OFFSET);
/// SN, suppress notification: descriptor bit 257, control bit 1.
pub const CONTROL_SN: u64 = 1 << (257 - CONTROL_BIT_OFFSET);
/// Shift of NV, the notification vector: descriptor bits 279:272.
pub const CONTROL_NV_SHIFT: u32 = 272 - CONTROL_BIT_OFFSET;
/// Mask of NV in the control word, after shifting.
pub const CONTROL_NV_MASK: u64 = 0xff;
/// Shift of NDST, the notification destination: descriptor bits 319:288.
pub const CONTROL_NDST_SHIFT: u32 = 288 - CONTROL_BIT_OFFSET;
/// Mask of NDST in the control word, after shifting.
pub const CONTROL_NDST_MASK: u64 = 0xffff_ffff;

/// What one [`PostedInterruptDescriptor::post_outcome`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PostOutcome {
    /// The vector was already pending in the PIR: it merges with the
    /// pending one, as a second IPI merges in the IRR. Nothing to notify.
    Coalesced,
    /// The vector is newly pending, but a notification is already
    /// outstanding (ON was set) or notifications are suppressed (SN set).
    Pending,
    /// The vector is newly pending and this post moved ON from 0 to 1 with
    /// SN clear: the caller must notify the target.
    Notify,
}

impl PostOutcome {
    /// Whether the poster must notify the target.
    pub fn needs_notification(self) -> bool {
        self == Self::Notify
    }

    /// Whether this post added the vector to the PIR (it was not pending).
    pub fn newly_pending(self) -> bool {
        self != Self::Coalesced
    }
}

/// A posted-interrupt descriptor: PIR, ON, SN, NV and NDST at their VT-x
/// bit positions, 64 bytes, 64-byte aligned.
///
/// All operations take `&self` and are lock-free: any number of threads
/// may post while the owning vCPU thread takes.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct PostedInterruptDescriptor {
    /// Posted-interrupt requests, bits 255:0; bit `v` is vector `v`.
    pir: [AtomicU64; PIR_WORDS],
    /// Bits 319:256: ON, SN, NV, NDST.
    control: AtomicU64,
    /// Bits 511:320, reserved.
    _reserved: [u64; 3],
}

// The layout is the hardware's; fail the build if it ever drifts.
#[cfg(not(loom))]
const _: () = {
    assert!(core::mem::size_of::<PostedInterruptDescriptor>() == DESCRIPTOR_SIZE);
    assert!(core::mem::align_of::<PostedInterruptDescriptor>() == DESCRIPTOR_ALIGN);
    assert!(core::mem::offset_of!(PostedInterruptDescriptor, control) * 8 == 256);
};

impl PostedInterruptDescriptor {
    /// An empty descriptor: no vector pending, ON and SN clear, NV and NDST 0.
    ///
    /// ```
    /// use ipiv::PostedInterruptDescriptor;
    ///
    /// let pid = PostedInterruptDescriptor::new();
    /// assert!(!pid.has_pending() && !pid.outstanding());
    /// pid.set_notification(0xF2, 1); // NV, NDST
    /// assert_eq!((pid.notification_vector(), pid.notification_destination()), (0xF2, 1));
    /// ```
    pub fn new() -> Self {
        Self {
            pir: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
            control: AtomicU64::new(0),
            _reserved: [0; 3],
        }
    }

    /// Posts `vector` and says whether the target must be notified: true
    /// only when this call moved ON from 0 to 1 while SN was clear.
    ///
    /// Every `u8` is a valid PIR index; rejecting vectors 0..=15 is the
    /// caller's policy (see [`crate::ipi`]).
    ///
    /// ```
    /// use ipiv::PostedInterruptDescriptor;
    ///
    /// let pid = PostedInterruptDescriptor::new();
    /// assert!(pid.post(0x40)); // ON went 0 -> 1: notify the target
    /// assert!(!pid.post(0x41)); // a notification is already outstanding
    /// pid.take();
    /// pid.set_suppress(); // SN: the target is preempted
    /// assert!(!pid.post(0x42));
    /// assert!(pid.is_pending(0x42));
    /// ```
    #[inline]
    #[must_use = "a true result means the target must be notified"]
    pub fn post(&self, vector: u8) -> bool {
        self.post_outcome(vector).needs_notification()
    }

    /// Posts `vector` and reports what happened (see [`PostOutcome`]).
    ///
    /// ```
    /// use ipiv::{PostOutcome, PostedInterruptDescriptor};
    ///
    /// let pid = PostedInterruptDescriptor::new();
    /// assert_eq!(pid.post_outcome(0x40), PostOutcome::Notify);
    /// assert_eq!(pid.post_outcome(0x41), PostOutcome::Pending);
    /// assert_eq!(pid.post_outcome(0x41), PostOutcome::Coalesced);
    /// ```
    #[inline]
    #[must_use = "PostOutcome::Notify means the target must be notified"]
    pub fn post_outcome(&self, vector: u8) -> PostOutcome {
        let (word, bit) = pir_position(vector);
        let Some(slot) = self.pir.get(word) else {
            // `pir_position` keeps `word` below PIR_WORDS for every u8.
            return PostOutcome::Coalesced;
        };
        if slot.fetch_or(bit, SeqCst) & bit != 0 {
            // Already pending: whoever set the bit is responsible for ON
            // (KVM's __vmx_deliver_posted_interrupt returns here too).
            return PostOutcome::Coalesced;
        }
        // ON after the PIR bit; an RMW, so it reads the latest ON and SN.
        let control = self.control.fetch_or(CONTROL_ON, SeqCst);
        if control & (CONTROL_ON | CONTROL_SN) == 0 {
            PostOutcome::Notify
        } else {
            PostOutcome::Pending
        }
    }

    /// Takes every pending vector: clears ON, then fetches and clears the
    /// PIR, one word at a time. Each posted vector is returned by exactly
    /// one `take`.
    ///
    /// ```
    /// use ipiv::PostedInterruptDescriptor;
    ///
    /// let pid = PostedInterruptDescriptor::new();
    /// pid.post(0x40);
    /// pid.post(0xF0);
    /// let pending = pid.take();
    /// assert_eq!(pending.iter().collect::<Vec<_>>(), [0x40, 0xF0]);
    /// assert!(pid.take().is_empty() && !pid.outstanding());
    /// ```
    #[inline]
    pub fn take(&self) -> PendingVectors {
        // Clear ON before reading the PIR: a post racing with this take
        // either has its bit swapped out below or sets ON again afterwards.
        self.control.fetch_and(!CONTROL_ON, SeqCst);
        let mut words = [0u64; PIR_WORDS];
        for (out, slot) in words.iter_mut().zip(self.pir.iter()) {
            // Always a swap, never "load, then swap if non-zero": only an
            // RMW is sure to read a bit set just before it.
            *out = slot.swap(0, SeqCst);
        }
        PendingVectors { words }
    }

    /// Whether a notification is outstanding (ON).
    #[inline]
    pub fn outstanding(&self) -> bool {
        self.control.load(SeqCst) & CONTROL_ON != 0
    }

    /// Whether notifications are suppressed (SN).
    pub fn suppressed(&self) -> bool {
        self.control.load(SeqCst) & CONTROL_SN != 0
    }

    /// Whether any vector is pending in the PIR or a notification is
    /// outstanding: what a vCPU must check before it sleeps.
    #[inline]
    pub fn has_pending(&self) -> bool {
        self.outstanding() || self.pir.iter().any(|w| w.load(SeqCst) != 0)
    }

    /// Whether `vector` is pending in the PIR.
    pub fn is_pending(&self, vector: u8) -> bool {
        let (word, bit) = pir_position(vector);
        self.pir
            .get(word)
            .is_some_and(|slot| slot.load(SeqCst) & bit != 0)
    }

    /// Sets SN: later posts ask for no notification. Used while the
    /// target cannot take notifications anyway (for example while it is
    /// preempted outside the guest).
    pub fn set_suppress(&self) {
        self.control.fetch_or(CONTROL_SN, SeqCst);
    }

    /// Clears SN and returns whether vectors are pending: ON was set (by a
    /// post while SN was set, or before) or the PIR is not empty. Like
    /// KVM's `vmx_vcpu_pi_load` after it clears SN.
    pub fn clear_suppress(&self) -> bool {
        let control = self.control.fetch_and(!CONTROL_SN, SeqCst);
        control & CONTROL_ON != 0 || self.pir.iter().any(|w| w.load(SeqCst) != 0)
    }

    /// Notification vector (NV).
    pub fn notification_vector(&self) -> u8 {
        ((self.control.load(SeqCst) >> CONTROL_NV_SHIFT) & CONTROL_NV_MASK) as u8
    }

    /// Notification destination (NDST): the physical APIC ID (x2APIC) or
    /// the xAPIC ID in bits 15:8, as the hardware expects.
    pub fn notification_destination(&self) -> u32 {
        ((self.control.load(SeqCst) >> CONTROL_NDST_SHIFT) & CONTROL_NDST_MASK) as u32
    }

    /// Sets NV and NDST, keeping ON and SN.
    pub fn set_notification(&self, vector: u8, destination: u32) {
        let keep =
            !((CONTROL_NV_MASK << CONTROL_NV_SHIFT) | (CONTROL_NDST_MASK << CONTROL_NDST_SHIFT));
        let fields = (u64::from(vector) << CONTROL_NV_SHIFT)
            | (u64::from(destination) << CONTROL_NDST_SHIFT);
        let mut control = self.control.load(SeqCst);
        loop {
            match self.control.compare_exchange_weak(
                control,
                (control & keep) | fields,
                SeqCst,
                SeqCst,
            ) {
                Ok(_) => return,
                Err(now) => control = now,
            }
        }
    }

    /// The raw control word (bits 319:256), for diagnostics.
    pub fn control_word(&self) -> u64 {
        self.control.load(SeqCst)
    }
}

impl Default for PostedInterruptDescriptor {
    fn default() -> Self {
        Self::new()
    }
}

/// PIR word index and bit mask of `vector`.
#[inline]
fn pir_position(vector: u8) -> (usize, u64) {
    (usize::from(vector / 64), 1u64 << (vector % 64))
}

/// Vectors taken from a descriptor's PIR, as a 256-bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PendingVectors {
    words: [u64; PIR_WORDS],
}

impl PendingVectors {
    /// A set from the four PIR words, word 0 holding vectors 0..=63.
    pub fn from_words(words: [u64; PIR_WORDS]) -> Self {
        Self { words }
    }

    /// The four PIR words, word 0 holding vectors 0..=63.
    pub fn words(&self) -> [u64; PIR_WORDS] {
        self.words
    }

    /// Whether no vector was pending.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Whether `vector` is in the set.
    pub fn contains(&self, vector: u8) -> bool {
        let (word, bit) = pir_position(vector);
        self.words.get(word).is_some_and(|w| w & bit != 0)
    }

    /// The highest vector, the one a local APIC would deliver first.
    ///
    /// ```
    /// use ipiv::PendingVectors;
    ///
    /// let pending = PendingVectors::from_words([0, 1 << 0x01, 0, 1 << 0x3F]); // 0x41, 0xFF
    /// assert_eq!((pending.len(), pending.highest()), (2, Some(0xFF)));
    /// ```
    pub fn highest(&self) -> Option<u8> {
        self.iter().next_back()
    }

    /// The vectors in ascending order.
    pub fn iter(&self) -> PendingIter {
        PendingIter { words: self.words }
    }
}

impl IntoIterator for PendingVectors {
    type Item = u8;
    type IntoIter = PendingIter;

    fn into_iter(self) -> PendingIter {
        self.iter()
    }
}

/// Iterator over [`PendingVectors`], ascending (`next_back` descends).
#[derive(Clone, Debug)]
pub struct PendingIter {
    words: [u64; PIR_WORDS],
}

impl Iterator for PendingIter {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        for (index, word) in self.words.iter_mut().enumerate() {
            if *word != 0 {
                let bit = word.trailing_zeros();
                *word &= *word - 1;
                return u8::try_from(index * 64 + bit as usize).ok();
            }
        }
        None
    }
}

impl DoubleEndedIterator for PendingIter {
    fn next_back(&mut self) -> Option<u8> {
        for (index, word) in self.words.iter_mut().enumerate().rev() {
            if *word != 0 {
                let bit = 63 - word.leading_zeros();
                *word &= !(1u64 << bit);
                return u8::try_from(index * 64 + bit as usize).ok();
            }
        }
        None
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_vtx() {
        let d = PostedInterruptDescriptor::new();
        assert_eq!(core::mem::size_of_val(&d), 64);
        assert_eq!(&d as *const _ as usize % 64, 0);
        d.set_notification(0xf2, 0x1234_5678);
        assert!(d.post(0));
        // ON is descriptor bit 256 = control bit 0; NV bits 279:272; NDST 319:288.
        assert_eq!(d.control_word(), 1 | (0xf2 << 16) | (0x1234_5678u64 << 32));
        assert_eq!(d.notification_vector(), 0xf2);
        assert_eq!(d.notification_destination(), 0x1234_5678);
        d.set_suppress();
        assert_eq!(d.control_word() & 0b11, 0b11);
    }

    #[test]
    fn notify_only_on_on_transition() {
        let d = PostedInterruptDescriptor::new();
        assert_eq!(d.post_outcome(0x30), PostOutcome::Notify);
        assert_eq!(d.post_outcome(0x30), PostOutcome::Coalesced);
        assert_eq!(d.post_outcome(0x31), PostOutcome::Pending);
        let taken = d.take();
        assert_eq!(taken.iter().collect::<Vec<_>>(), vec![0x30, 0x31]);
        assert!(!d.outstanding());
        assert!(d.take().is_empty());
        assert_eq!(d.post_outcome(0x30), PostOutcome::Notify);
    }

    #[test]
    fn every_vector_has_its_own_bit() {
        let d = PostedInterruptDescriptor::new();
        for v in 0..=255u8 {
            assert!(!d.is_pending(v));
            assert!(d.post_outcome(v).newly_pending());
            assert!(d.is_pending(v));
        }
        let taken = d.take();
        assert_eq!(taken.len(), 256);
        assert_eq!(taken.words(), [u64::MAX; 4]);
        assert_eq!(taken.highest(), Some(255));
        assert_eq!(taken.iter().next_back(), Some(255));
        assert!(taken.iter().eq(0..=255u8));
    }

    #[test]
    fn suppressed_posts_do_not_notify_and_reappear_on_clear() {
        let d = PostedInterruptDescriptor::new();
        d.set_suppress();
        assert_eq!(d.post_outcome(0x40), PostOutcome::Pending);
        assert_eq!(d.post_outcome(0x41), PostOutcome::Pending);
        assert!(d.has_pending());
        assert!(d.clear_suppress());
        assert!(d.outstanding());
        assert!(d.take().contains(0x40));
        assert!(!d.clear_suppress());
    }

    #[test]
    fn set_notification_keeps_on_and_sn() {
        let d = PostedInterruptDescriptor::new();
        assert!(d.post(0x21));
        d.set_suppress();
        d.set_notification(0xec, 7);
        assert!(d.outstanding());
        assert!(d.suppressed());
        assert_eq!(d.notification_vector(), 0xec);
        assert_eq!(d.notification_destination(), 7);
    }
}
