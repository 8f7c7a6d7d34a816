//! What a guest access or a VMM call asks the VMM to do next.

use crate::icr::Ipi;
use crate::interrupt::Delivery;
use crate::topology::ApicIdentity;

/// Result of a register or MSR write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Outcome {
    /// Done; nothing outside the APIC changed.
    Done,
    /// The access faults: inject #GP(0) and do not advance RIP.
    Gp,
    /// Done, and the VMM has something to apply.
    Effect(Effect),
}

impl Outcome {
    /// Whether the access must fault with #GP(0).
    pub fn is_gp(&self) -> bool {
        matches!(self, Outcome::Gp)
    }

    /// The effect to apply, if any.
    pub fn effect(&self) -> Option<Effect> {
        match self {
            Outcome::Effect(e) => Some(*e),
            _ => None,
        }
    }
}

/// A consequence of an access that reaches outside the APIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Route this IPI: resolve it with [`crate::Topology::resolve_ipi`]
    /// (after releasing this APIC's lock) and
    /// [`crate::LocalApic::deliver`] its [`Ipi::interrupt`] to each target.
    /// Targets may include the sender.
    SendIpi(Ipi),
    /// A self-IPI (shorthand "self" or the x2APIC SELF IPI register) was
    /// delivered to this APIC already; act on the [`Delivery`] as for any
    /// other delivery.
    SelfDelivered(Delivery),
    /// An EOI completed.
    Eoi(Eoi),
    /// The timer was reprogrammed: re-arm the host timer for this absolute
    /// [`crate::Clock::now_ns`] deadline, or cancel it on `None`.
    Timer(Option<u64>),
    /// Mode, APIC ID, LDR, DFR or software enable changed: pass it to
    /// [`crate::Topology::update`]. When the mode became
    /// [`crate::ApicMode::Disabled`] the APIC was reset and its timer
    /// stopped: cancel the host timer too.
    Topology(ApicIdentity),
}

/// A completed end-of-interrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Eoi {
    /// The vector whose in-service bit was cleared (a SynIC also wants it).
    pub vector: u8,
    /// Its TMR bit was set: it was delivered level-triggered.
    pub level_triggered: bool,
    /// Broadcast the EOI to the IOAPIC(s) so they clear remote IRR: the
    /// vector is level-triggered and SVR does not suppress the broadcast.
    pub notify_ioapic: bool,
}

/// Result of [`crate::LocalApic::poll_timer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub struct TimerPoll {
    /// The timer expired; if its LVT was unmasked its vector is now in the
    /// IRR.
    pub expired: bool,
    /// When to poll next (absolute clock ns), or `None` if disarmed.
    pub next_deadline: Option<u64>,
}

/// Result of an MSR read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[must_use]
pub enum MsrRead {
    /// The value to return in EDX:EAX.
    Value(u64),
    /// Inject #GP(0).
    Gp,
}
