//! Synthetic timers: four per VP, counting partition reference time
//! (100 ns units), one-shot or periodic, expiring as a SynIC message
//! (`HVMSG_TIMER_EXPIRED`) or, in direct mode, as an APIC vector (TLFS
//! "Synthetic Timers"; Linux `union hv_stimer_config`; KVM `stimer_*`,
//! `kvm_hv_process_stimers`).
//!
//! A pure state machine, kept inside [`Vp`](crate::msr::Vp): the guest's
//! CONFIG/COUNT writes only record the change and mark the timer pending
//! (as KVM's `stimer_set_config`/`stimer_set_count` do); the VMM then runs
//! [`synic::process_stimers`](crate::synic::process_stimers) with the
//! current reference time, which starts, expires and delivers, and arms
//! its host timer for [`Vp::stimer_deadline`](crate::msr::Vp::stimer_deadline).
//! No threads, no allocation.

use bitfield_struct::bitfield;

use super::{SintInterrupt, SintInterrupts};

/// Timers per VP (`HV_SYNIC_STIMER_COUNT`).
pub const HV_STIMER_COUNT: usize = 4;

/// HV_X64_MSR_STIMERx_CONFIG (`union hv_stimer_config`): bit 0 enable, 1
/// periodic, 2 lazy, 3 auto_enable, 11:4 apic_vector, 12 direct_mode,
/// 19:16 sintx; 15:13 and 63:20 reserved.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct StimerConfigMsr {
    /// The timer runs.
    pub enable: bool,
    /// COUNT is a period rather than an absolute expiry time.
    pub periodic: bool,
    /// Lazy: missed periodic expirations may be dropped. KVM never reads
    /// it; every periodic timer here drops them (see
    /// [`Stimer`]).
    pub lazy: bool,
    /// A non-zero COUNT write sets `enable`.
    pub auto_enable: bool,
    /// Direct mode: the vector to raise.
    pub apic_vector: u8,
    /// Raise `apic_vector` instead of sending a message (needs CPUID
    /// 0x40000003 EDX bit 19).
    pub direct_mode: bool,
    #[bits(3)]
    __: u8,
    /// Message mode: the SINT that receives `HVMSG_TIMER_EXPIRED`.
    #[bits(4)]
    pub sintx: u8,
    #[bits(44)]
    __: u64,
}

impl StimerConfigMsr {
    /// Reserved bits 15:13 and 63:20.
    pub const RESERVED: u64 = (0x7 << 13) | !0xF_FFFF;

    /// The value, or `None` when a reserved bit is set. (KVM stores such
    /// a value unchecked; like every MSR value in this crate a reserved
    /// bit is #GP, which a TLFS-following guest never sees.)
    pub const fn from_guest(value: u64) -> Option<Self> {
        if value & Self::RESERVED != 0 {
            None
        } else {
            Some(Self::from_bits(value))
        }
    }
}

/// One synthetic timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stimer {
    config: StimerConfigMsr,
    count: u64,
    /// Absolute expiry (reference time), 0 when not started.
    exp_time: u64,
    /// Needs a look at the next [`Stimers::process`] (KVM
    /// `stimer_pending_bitmap`).
    pending: bool,
    /// Expired but not delivered yet (slot busy, page disabled).
    msg_pending: bool,
}

impl Stimer {
    /// CONFIG as the guest reads it.
    pub fn config(&self) -> StimerConfigMsr {
        self.config
    }

    /// COUNT as the guest reads it.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The running expiry, in reference time.
    pub fn expiration(&self) -> Option<u64> {
        (self.config.enable() && self.exp_time != 0 && !self.msg_pending).then_some(self.exp_time)
    }

    /// An expiry waits for its SINT to be acknowledged.
    pub fn message_pending(&self) -> bool {
        self.msg_pending
    }

    /// KVM `stimer_cleanup`: cancel, forget the expiry.
    fn cleanup(&mut self) {
        self.pending = false;
        self.msg_pending = false;
        self.exp_time = 0;
    }

    /// KVM `stimer_start` (the hrtimer arming is the VMM's, from
    /// [`Stimers::next_deadline`]). Periodic: the first period starts now;
    /// after an expiry, periods missed while the VMM was late are skipped
    /// and the phase kept: `exp = now + (count - (now - exp) % count)`.
    fn start(&mut self, now: u64) {
        if self.config.periodic() {
            if self.exp_time == 0 {
                self.exp_time = now.saturating_add(self.count);
            } else if now >= self.exp_time {
                // count != 0 here (process only starts such timers).
                let late = (now - self.exp_time) % self.count.max(1);
                self.exp_time = now.saturating_add(self.count - late);
            }
        } else {
            self.exp_time = self.count;
        }
    }
}

/// Where an expiry goes: the VMM's answers to "deliver this".
pub(crate) trait ExpiryTarget {
    /// Sends `HVMSG_TIMER_EXPIRED` for timer `index` to SINT `sint`;
    /// `drop_if_busy` for periodic ticks (KVM `no_retry`). `Ok(irq)`:
    /// delivered (or dropped when periodic), raise `irq` if any.
    /// `Err(())`: not delivered, retry on the SINT's acknowledgement.
    fn send(
        &mut self,
        index: u8,
        sint: u8,
        expiration: u64,
        now: u64,
        drop_if_busy: bool,
    ) -> Result<Option<SintInterrupt>, ()>;
}

/// What [`synic::process_stimers`](crate::synic::process_stimers) asks of
/// the VMM: interrupts to raise on this VP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StimerExpiry {
    /// SINT interrupts for delivered `HVMSG_TIMER_EXPIRED` messages.
    pub messages: SintInterrupts,
    /// Direct-mode timers that expired: raise each vector (fixed, edge),
    /// by timer index.
    pub direct: [Option<u8>; HV_STIMER_COUNT],
}

impl StimerExpiry {
    /// Whether nothing is to be raised.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.direct.iter().all(Option::is_none)
    }

    /// Every vector to raise on this VP, with its AutoEOI flag (direct
    /// mode never uses AutoEOI).
    pub fn vectors(&self) -> impl Iterator<Item = (u8, bool)> + '_ {
        self.messages
            .iter()
            .map(|i| (i.vector, i.auto_eoi))
            .chain(self.direct.iter().flatten().map(|&v| (v, false)))
    }
}

/// The four timers of one VP.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Stimers {
    timers: [Stimer; HV_STIMER_COUNT],
}

impl Stimers {
    /// Timer `n` (0..=3).
    pub fn get(&self, n: usize) -> Option<&Stimer> {
        self.timers.get(n)
    }

    /// CONFIG write (KVM `stimer_set_config`): cancels the timer; a
    /// running timer reconfigured for message mode with SINT 0 is
    /// disabled; an enabled one is started at the next `process`.
    /// `None` (#GP) for reserved bits, or direct mode without
    /// `direct_allowed` (KVM under enforced CPUID, EDX bit 19).
    pub(crate) fn write_config(
        &mut self,
        n: usize,
        value: u64,
        direct_allowed: bool,
    ) -> Option<()> {
        let mut new = StimerConfigMsr::from_guest(value)?;
        if new.direct_mode() && !direct_allowed {
            return None;
        }
        let t = self.timers.get_mut(n)?;
        let old = t.config;
        t.cleanup();
        if old.enable() && !new.direct_mode() && new.sintx() == 0 {
            new.set_enable(false);
        }
        t.config = new;
        t.pending = new.enable();
        Some(())
    }

    /// COUNT write (KVM `stimer_set_count`): cancels the timer; 0 disables
    /// it, whatever AutoEnable says; a non-zero count with AutoEnable
    /// enables it.
    pub(crate) fn write_count(&mut self, n: usize, value: u64) -> Option<()> {
        let t = self.timers.get_mut(n)?;
        t.cleanup();
        t.count = value;
        if value == 0 {
            t.config.set_enable(false);
        } else if t.config.auto_enable() {
            t.config.set_enable(true);
        }
        t.pending = t.config.enable();
        Some(())
    }

    /// SINT `sint` was acknowledged (EOM, or an EOI of its vector): timers
    /// whose message waits for it try again (KVM
    /// `kvm_hv_notify_acked_sint`).
    pub(crate) fn sint_acked(&mut self, sint: u8) {
        for t in &mut self.timers {
            if t.msg_pending
                && t.config.enable()
                && !t.config.direct_mode()
                && t.config.sintx() == sint
            {
                t.pending = true;
            }
        }
    }

    /// The earliest expiry to arm a host timer for, in reference time.
    pub fn next_deadline(&self) -> Option<u64> {
        self.timers.iter().filter_map(Stimer::expiration).min()
    }

    /// Whether a timer needs `process` now (changed, or due at `now`).
    pub fn needs_processing(&self, now: u64) -> bool {
        self.timers
            .iter()
            .any(|t| t.pending || t.expiration().is_some_and(|e| now >= e))
    }

    /// KVM `kvm_hv_process_stimers` for the timers that changed or are
    /// due at `now`.
    pub(crate) fn process(&mut self, now: u64, target: &mut impl ExpiryTarget) -> StimerExpiry {
        let mut out = StimerExpiry::default();
        for (i, t) in self.timers.iter_mut().enumerate() {
            let due = t.expiration().is_some_and(|e| now >= e);
            if !(t.pending || due) {
                continue;
            }
            t.pending = false;
            if !t.config.enable() {
                continue;
            }
            // i < 4.
            let index = i as u8;
            if t.exp_time != 0 && now >= t.exp_time {
                Self::expire(t, index, now, target, &mut out);
            }
            if t.config.enable() && t.count != 0 {
                if !t.msg_pending {
                    t.start(now);
                    // TLFS 15.3.1 (quoted by KVM): "If a one shot is enabled
                    // and the specified count is in the past, it will
                    // expire immediately."
                    if !t.config.periodic() && now >= t.exp_time {
                        Self::expire(t, index, now, target, &mut out);
                        if !t.config.enable() {
                            t.cleanup();
                        }
                    }
                }
            } else {
                t.cleanup();
            }
        }
        out
    }

    /// KVM `stimer_expiration`.
    fn expire(
        t: &mut Stimer,
        index: u8,
        now: u64,
        target: &mut impl ExpiryTarget,
        out: &mut StimerExpiry,
    ) {
        t.msg_pending = true;
        let delivered = if t.config.direct_mode() {
            if let Some(slot) = out.direct.get_mut(usize::from(index)) {
                *slot = Some(t.config.apic_vector());
            }
            true
        } else {
            match target.send(
                index,
                t.config.sintx(),
                t.exp_time,
                now,
                t.config.periodic(),
            ) {
                Ok(irq) => {
                    if let Some(irq) = irq {
                        out.messages.push(irq);
                    }
                    true
                }
                Err(()) => false,
            }
        };
        if delivered {
            t.msg_pending = false;
            if !t.config.periodic() {
                t.config.set_enable(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records sends; refuses while `busy`.
    #[derive(Default)]
    struct Target {
        busy: bool,
        sent: [u32; HV_STIMER_COUNT],
        last: Option<(u8, u64, u64)>,
    }

    impl ExpiryTarget for Target {
        fn send(
            &mut self,
            index: u8,
            sint: u8,
            expiration: u64,
            now: u64,
            drop_if_busy: bool,
        ) -> Result<Option<SintInterrupt>, ()> {
            if self.busy {
                return if drop_if_busy { Ok(None) } else { Err(()) };
            }
            self.sent[usize::from(index)] += 1;
            self.last = Some((index, expiration, now));
            Ok(Some(SintInterrupt {
                sint,
                vector: 0x40 + sint,
                auto_eoi: false,
            }))
        }
    }

    const ENABLE: u64 = 1;
    const PERIODIC: u64 = 1 << 1;
    const AUTO_ENABLE: u64 = 1 << 3;
    const DIRECT: u64 = 1 << 12;
    const SINT2: u64 = 2 << 16;

    #[test]
    fn layout_matches_hv_stimer_config() {
        let c = StimerConfigMsr::from_bits(0xF_1FFF);
        assert!(c.enable() && c.periodic() && c.lazy() && c.auto_enable() && c.direct_mode());
        assert_eq!((c.apic_vector(), c.sintx()), (0xFF, 0xF));
        assert_eq!(StimerConfigMsr::RESERVED, !0xF_1FFF);
        assert!(StimerConfigMsr::from_guest(1 << 13).is_none());
        assert!(StimerConfigMsr::from_guest(1 << 20).is_none());
        assert!(StimerConfigMsr::from_guest(0xF_1FFF).is_some());
    }

    #[test]
    fn one_shot_with_auto_enable_like_linux() {
        let mut s = Stimers::default();
        let mut t = Target::default();
        // Linux hv_ce_set_oneshot: config = enable? no: auto_enable + sintx, then COUNT.
        s.write_config(0, AUTO_ENABLE | SINT2, false).unwrap();
        assert!(!s.timers[0].config.enable());
        s.write_count(0, 1_000).unwrap();
        assert!(s.timers[0].config.enable());
        assert!(s.needs_processing(0));
        assert!(s.process(100, &mut t).is_empty());
        assert_eq!(s.next_deadline(), Some(1_000));
        assert!(!s.needs_processing(999));
        assert!(s.process(999, &mut t).is_empty());
        let out = s.process(1_005, &mut t);
        assert_eq!(out.messages.iter().next().map(|i| i.sint), Some(2));
        assert_eq!(t.last, Some((0, 1_000, 1_005)));
        // One-shot: disabled after delivery.
        assert!(!s.timers[0].config.enable());
        assert_eq!(s.next_deadline(), None);
        assert!(s.process(5_000, &mut t).is_empty());
    }

    #[test]
    fn one_shot_in_the_past_expires_at_once() {
        let mut s = Stimers::default();
        let mut t = Target::default();
        s.write_config(1, ENABLE | SINT2, false).unwrap();
        s.write_count(1, 50).unwrap();
        let out = s.process(60, &mut t);
        assert!(!out.is_empty());
        assert_eq!(t.sent[1], 1);
        assert_eq!(s.next_deadline(), None);
    }

    #[test]
    fn count_zero_disables_whatever_auto_enable_says() {
        let mut s = Stimers::default();
        s.write_config(0, AUTO_ENABLE | ENABLE | SINT2, false)
            .unwrap();
        s.write_count(0, 0).unwrap();
        assert!(!s.timers[0].config.enable());
        s.write_count(0, u64::MAX).unwrap();
        assert!(s.timers[0].config.enable());
    }

    #[test]
    fn reconfiguring_a_running_timer_to_sint0_disables_it() {
        let mut s = Stimers::default();
        s.write_count(0, 10).unwrap();
        s.write_config(0, ENABLE | SINT2, false).unwrap();
        assert!(s.timers[0].config.enable());
        s.write_config(0, ENABLE, false).unwrap();
        assert!(!s.timers[0].config.enable());
        // Not running before: SINT 0 is accepted enabled.
        s.write_config(0, ENABLE, false).unwrap();
        assert!(s.timers[0].config.enable());
        // Direct mode needs the feature.
        assert_eq!(s.write_config(0, ENABLE | DIRECT, false), None);
        assert_eq!(
            s.write_config(0, ENABLE | DIRECT | 0x50 << 4, true),
            Some(())
        );
        assert_eq!(s.write_config(4, 0, true), None);
        assert_eq!(s.write_count(4, 0), None);
    }

    #[test]
    fn periodic_keeps_phase_and_skips_missed_ticks() {
        let mut s = Stimers::default();
        let mut t = Target::default();
        s.write_count(2, 100).unwrap();
        s.write_config(2, ENABLE | PERIODIC | SINT2, false).unwrap();
        assert!(s.process(1_000, &mut t).is_empty());
        assert_eq!(s.next_deadline(), Some(1_100));
        let _ = s.process(1_100, &mut t);
        assert_eq!(s.next_deadline(), Some(1_200));
        // 3.5 periods late: one tick, the next on the original phase.
        let out = s.process(1_550, &mut t);
        assert_eq!(out.messages.iter().count(), 1);
        assert_eq!(t.last, Some((2, 1_200, 1_550)));
        assert_eq!(s.next_deadline(), Some(1_600));
        assert_eq!(t.sent[2], 2);
        // A busy slot drops the tick and the timer keeps running.
        t.busy = true;
        assert!(s.process(1_600, &mut t).is_empty());
        assert_eq!(s.next_deadline(), Some(1_700));
        assert!(!s.timers[2].msg_pending);
    }

    #[test]
    fn one_shot_busy_slot_waits_for_the_sint_ack() {
        let mut s = Stimers::default();
        let mut t = Target {
            busy: true,
            ..Target::default()
        };
        s.write_config(3, ENABLE | SINT2, false).unwrap();
        s.write_count(3, 10).unwrap();
        assert!(s.process(20, &mut t).is_empty());
        assert!(s.timers[3].message_pending());
        assert_eq!(s.next_deadline(), None);
        assert!(!s.needs_processing(1_000));
        t.busy = false;
        // An ack of another SINT does nothing; of SINT 2, retries.
        s.sint_acked(1);
        assert!(!s.needs_processing(30));
        s.sint_acked(2);
        assert!(s.needs_processing(30));
        let out = s.process(30, &mut t);
        assert_eq!(out.messages.iter().count(), 1);
        assert_eq!(t.last, Some((3, 10, 30)));
        assert!(!s.timers[3].config.enable());
    }

    #[test]
    fn direct_mode_raises_the_vector() {
        let mut s = Stimers::default();
        let mut t = Target::default();
        s.write_config(0, ENABLE | DIRECT | 0x90 << 4, true)
            .unwrap();
        s.write_count(0, 10).unwrap();
        let out = s.process(10, &mut t);
        assert_eq!(out.direct, [Some(0x90), None, None, None]);
        assert_eq!(out.vectors().next(), Some((0x90, false)));
        assert_eq!(t.sent, [0; 4]);
    }

    #[test]
    fn periodic_near_the_end_of_time_saturates() {
        let mut s = Stimers::default();
        let mut t = Target::default();
        s.write_count(0, u64::MAX).unwrap();
        s.write_config(0, ENABLE | PERIODIC | SINT2, false).unwrap();
        let _ = s.process(u64::MAX - 1, &mut t);
        assert_eq!(s.next_deadline(), Some(u64::MAX));
        let _ = s.process(u64::MAX, &mut t);
        assert_eq!(s.next_deadline(), Some(u64::MAX));
    }
}
