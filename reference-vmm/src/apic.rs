//! A compact local APIC model used by the VMM's userspace irqchip: IRR,
//! ISR, TPR, ICR, EOI and the LVT timer on host time, addressed by x2APIC
//! MSR index (xAPIC MMIO offsets map onto the same registers).

use std::time::{Duration, Instant};

/// x2APIC MSR range (SDM Vol. 3 11.12.1.2).
pub const X2APIC_MSR_FIRST: u32 = 0x800;
/// Last x2APIC MSR.
pub const X2APIC_MSR_LAST: u32 = 0x8FF;
/// Default xAPIC MMIO base.
pub const XAPIC_BASE: u64 = 0xFEE0_0000;

const REG_ID: u32 = 0x802;
const REG_VERSION: u32 = 0x803;
const REG_TPR: u32 = 0x808;
const REG_PPR: u32 = 0x80A;
const REG_EOI: u32 = 0x80B;
const REG_LDR: u32 = 0x80D;
const REG_SVR: u32 = 0x80F;
const REG_ISR0: u32 = 0x810;
const REG_TMR0: u32 = 0x818;
const REG_IRR0: u32 = 0x820;
const REG_ESR: u32 = 0x828;
const REG_ICR: u32 = 0x830;
const REG_LVT_TIMER: u32 = 0x832;
const REG_LVT_LAST: u32 = 0x837;
const REG_TIMER_INIT: u32 = 0x838;
const REG_TIMER_CUR: u32 = 0x839;
const REG_TIMER_DIV: u32 = 0x83E;
const REG_SELF_IPI: u32 = 0x83F;

/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;
/// LVT timer periodic mode.
const LVT_TIMER_PERIODIC: u32 = 1 << 17;
/// Nanoseconds per timer tick before the divider (a 1 GHz APIC bus).
const TICK_NS: u64 = 1;

/// Destination shorthand of an ICR write (SDM Vol. 3 11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shorthand {
    /// Use the destination field.
    None,
    /// Self.
    SelfOnly,
    /// All including self.
    All,
    /// All excluding self.
    AllButSelf,
}

/// What a register write asks the VMM to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Nothing outside this APIC.
    None,
    /// An interrupt was completed (vector).
    Eoi(u8),
    /// Send a fixed IPI.
    Ipi {
        /// Vector.
        vector: u8,
        /// Physical destination APIC ID (x2APIC: 32 bits).
        dest: u32,
        /// Shorthand.
        shorthand: Shorthand,
    },
    /// The timer was (re)programmed.
    TimerChanged,
}

/// Register access the guest is not allowed to make (answered with #GP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid local APIC access to register {0:#x}")]
pub struct Fault(pub u32);

/// One local APIC.
#[derive(Debug)]
pub struct Apic {
    id: u32,
    tpr: u32,
    svr: u32,
    irr: [u64; 4],
    isr: [u64; 4],
    lvt: [u32; 6],
    timer_init: u32,
    timer_div: u32,
    timer_deadline: Option<Instant>,
    timer_period: Duration,
}

fn bit_set(v: &mut [u64; 4], n: u8) {
    v[usize::from(n >> 6)] |= 1 << (n & 63);
}

fn bit_clear(v: &mut [u64; 4], n: u8) {
    v[usize::from(n >> 6)] &= !(1 << (n & 63));
}

fn highest(v: &[u64; 4]) -> Option<u8> {
    (0..4usize)
        .rev()
        .find(|&i| v[i] != 0)
        .map(|i| (i as u8) * 64 + 63 - v[i].leading_zeros() as u8)
}

impl Apic {
    /// An APIC with x2APIC ID `id`, software-enabled, timer masked.
    pub fn new(id: u32) -> Self {
        Self {
            id,
            tpr: 0,
            svr: 0x1FF,
            irr: [0; 4],
            isr: [0; 4],
            lvt: [LVT_MASKED; 6],
            timer_init: 0,
            timer_div: 0,
            timer_deadline: None,
            timer_period: Duration::ZERO,
        }
    }

    /// This APIC's ID.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Marks `vector` pending. Vectors below 16 are illegal and dropped.
    pub fn accept(&mut self, vector: u8) -> bool {
        if vector < 16 {
            return false;
        }
        bit_set(&mut self.irr, vector);
        true
    }

    fn ppr(&self) -> u32 {
        let isrv = highest(&self.isr).map_or(0, u32::from);
        if (self.tpr & 0xF0) >= (isrv & 0xF0) {
            self.tpr
        } else {
            isrv & 0xF0
        }
    }

    /// The vector that would be delivered now, if any.
    pub fn deliverable(&self) -> Option<u8> {
        let v = highest(&self.irr)?;
        (u32::from(v) & 0xF0 > self.ppr() & 0xF0).then_some(v)
    }

    /// Moves `vector` from IRR to ISR (the CPU accepted it).
    pub fn acknowledge(&mut self, vector: u8) {
        bit_clear(&mut self.irr, vector);
        bit_set(&mut self.isr, vector);
    }

    /// Completes the highest in-service interrupt.
    pub fn eoi(&mut self) -> Option<u8> {
        let v = highest(&self.isr)?;
        bit_clear(&mut self.isr, v);
        Some(v)
    }

    /// Whether the in-service interrupt may be completed lazily (Hyper-V
    /// "no EOI required"): nothing pending in IRR and exactly one vector in
    /// service, all interrupts being edge-triggered here. Matches KVM's
    /// `kvm_hv_vapic_assist`-era rule (`apic_sync_pv_eoi_to_guest`).
    pub fn lazy_eoi_allowed(&self) -> bool {
        self.irr == [0; 4] && self.isr.iter().map(|w| w.count_ones()).sum::<u32>() == 1
    }

    /// Reads x2APIC register `msr`.
    pub fn read(&self, msr: u32, now: Instant) -> Result<u64, Fault> {
        let v = match msr {
            REG_ID => self.id,
            REG_VERSION => 0x0005_0014,
            REG_TPR => self.tpr,
            REG_PPR => self.ppr(),
            REG_LDR => ((self.id >> 4) << 16) | (1 << (self.id & 0xF)),
            REG_SVR => self.svr,
            REG_ISR0..=0x817 => {
                (self.isr[((msr - REG_ISR0) / 2) as usize] >> (32 * (msr & 1))) as u32
            }
            REG_TMR0..=0x81F => 0,
            REG_IRR0..=0x827 => {
                (self.irr[((msr - REG_IRR0) / 2) as usize] >> (32 * (msr & 1))) as u32
            }
            REG_ESR => 0,
            REG_ICR => return Ok(0),
            REG_LVT_TIMER..=REG_LVT_LAST => self.lvt[(msr - REG_LVT_TIMER) as usize],
            REG_TIMER_INIT => self.timer_init,
            REG_TIMER_CUR => self.current_count(now),
            REG_TIMER_DIV => self.timer_div,
            _ => return Err(Fault(msr)),
        };
        Ok(u64::from(v))
    }

    fn divider(&self) -> u64 {
        // SDM Vol. 3 11.5.4: bits 0,1,3 encode 2^(n+1), 0b111 = 1.
        let n = (self.timer_div & 3) | ((self.timer_div >> 1) & 4);
        if n == 7 { 1 } else { 2 << n }
    }

    fn current_count(&self, now: Instant) -> u32 {
        match self.timer_deadline {
            Some(d) if d > now => {
                let left = (d - now).as_nanos() as u64 / (TICK_NS * self.divider());
                left.min(u64::from(u32::MAX)) as u32
            }
            _ => 0,
        }
    }

    /// Writes x2APIC register `msr`.
    pub fn write(&mut self, msr: u32, value: u64, now: Instant) -> Result<Effect, Fault> {
        let v32 = value as u32;
        let high_must_be_zero = msr != REG_ICR;
        if high_must_be_zero && value >> 32 != 0 {
            return Err(Fault(msr));
        }
        Ok(match msr {
            REG_TPR => {
                self.tpr = v32 & 0xFF;
                Effect::None
            }
            REG_EOI => match self.eoi() {
                Some(v) => Effect::Eoi(v),
                None => Effect::None,
            },
            REG_SVR => {
                self.svr = v32 & 0x13FF;
                Effect::None
            }
            REG_ESR => Effect::None,
            REG_ICR => {
                let vector = (value & 0xFF) as u8;
                let shorthand = match (value >> 18) & 3 {
                    0 => Shorthand::None,
                    1 => Shorthand::SelfOnly,
                    2 => Shorthand::All,
                    _ => Shorthand::AllButSelf,
                };
                Effect::Ipi {
                    vector,
                    dest: (value >> 32) as u32,
                    shorthand,
                }
            }
            REG_LVT_TIMER..=REG_LVT_LAST => {
                self.lvt[(msr - REG_LVT_TIMER) as usize] = v32;
                if msr == REG_LVT_TIMER {
                    self.arm(now);
                    Effect::TimerChanged
                } else {
                    Effect::None
                }
            }
            REG_TIMER_INIT => {
                self.timer_init = v32;
                self.arm(now);
                Effect::TimerChanged
            }
            REG_TIMER_DIV => {
                self.timer_div = v32 & 0xB;
                Effect::None
            }
            REG_SELF_IPI => Effect::Ipi {
                vector: v32 as u8,
                dest: self.id,
                shorthand: Shorthand::SelfOnly,
            },
            _ => return Err(Fault(msr)),
        })
    }

    fn arm(&mut self, now: Instant) {
        if self.timer_init == 0 {
            self.timer_deadline = None;
            return;
        }
        self.timer_period =
            Duration::from_nanos(u64::from(self.timer_init) * TICK_NS * self.divider());
        self.timer_deadline = Some(now + self.timer_period);
    }

    /// When the timer fires next.
    pub fn timer_deadline(&self) -> Option<Instant> {
        self.timer_deadline
    }

    /// Fires the timer if it is due: raises its vector unless masked and
    /// re-arms it in periodic mode. Returns whether a vector was raised.
    pub fn timer_tick(&mut self, now: Instant) -> bool {
        let Some(d) = self.timer_deadline else {
            return false;
        };
        if d > now {
            return false;
        }
        let lvt = self.lvt[0];
        if lvt & LVT_TIMER_PERIODIC != 0 && !self.timer_period.is_zero() {
            let mut next = d + self.timer_period;
            if next <= now {
                next = now + self.timer_period;
            }
            self.timer_deadline = Some(next);
        } else {
            self.timer_deadline = None;
        }
        lvt & LVT_MASKED == 0 && self.accept((lvt & 0xFF) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_deliver_eoi() {
        let mut a = Apic::new(3);
        let now = Instant::now();
        assert!(!a.accept(15));
        assert!(a.accept(0x40));
        assert!(a.accept(0x80));
        assert_eq!(a.deliverable(), Some(0x80));
        a.acknowledge(0x80);
        assert_eq!(a.deliverable(), None, "0x40 is below the in-service class");
        assert!(!a.lazy_eoi_allowed());
        assert_eq!(a.write(REG_EOI, 0, now), Ok(Effect::Eoi(0x80)));
        assert_eq!(a.deliverable(), Some(0x40));
        a.acknowledge(0x40);
        assert!(a.lazy_eoi_allowed());
        assert_eq!(a.write(REG_TPR, 1 << 32, now), Err(Fault(REG_TPR)));
        assert_eq!(a.read(0x8FF, now), Err(Fault(0x8FF)));
    }

    #[test]
    fn icr_and_timer() {
        let mut a = Apic::new(0);
        let now = Instant::now();
        assert_eq!(
            a.write(REG_ICR, (300u64 << 32) | 0xF0, now),
            Ok(Effect::Ipi {
                vector: 0xF0,
                dest: 300,
                shorthand: Shorthand::None
            })
        );
        a.write(REG_TIMER_DIV, 0xB, now).unwrap();
        a.write(REG_LVT_TIMER, LVT_TIMER_PERIODIC as u64 | 0xEC, now)
            .unwrap();
        a.write(REG_TIMER_INIT, 1000, now).unwrap();
        assert!(!a.timer_tick(now));
        assert!(a.timer_tick(now + Duration::from_micros(2)));
        assert_eq!(a.deliverable(), Some(0xEC));
        assert!(a.timer_deadline().is_some());
    }
}
