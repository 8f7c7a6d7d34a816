//! A vCPU as every thread sees it: the state other threads share with it
//! (local APIC, Hyper-V VP state, pending flush, NMIs, INIT/SIPI, kick
//! target) behind its lock, its posted-interrupt descriptor and run state
//! (ipiv), and the kick-or-wake rules that follow a change of that state.
//! Its run loop is [`crate::runner`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hv_enlightenments::msr as hvmsr;
use hv_enlightenments::synic::MessageQueue;
use ipiv::{Notify, PendingVectors, PostedVcpu, RunState};
use lapic::LocalApic;

use crate::error::Error;
use crate::ipi_path::{Inbound, Stamp};
use crate::kvm::kick::KickTarget;
use crate::metrics::{VcpuMetrics, bump};
use crate::profile::{self, ExitProfile};

/// Where a vCPU is in the INIT/SIPI protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MpState {
    /// Runs guest code.
    #[default]
    Runnable,
    /// After INIT (or at creation, for an external guest's application
    /// processors): waits for a STARTUP IPI.
    WaitForSipi,
}

/// INIT/SIPI state of one vCPU, kept under its lock.
#[derive(Debug, Clone, Copy, Default)]
pub struct MpEvents {
    /// Where the vCPU is.
    pub state: MpState,
    /// An INIT arrived and was not yet acted on.
    pub init_pending: bool,
    /// A STARTUP IPI arrived with this vector and was not yet acted on.
    pub sipi_pending: Option<u8>,
}

impl MpEvents {
    /// Whether the vCPU thread has something to act on.
    pub fn pending(&self) -> bool {
        self.init_pending || self.sipi_pending.is_some()
    }
}

/// How long a halted vCPU sleeps before it re-checks for a stop request
/// on its own (a stop also wakes it): long, so that a thousand halted
/// vCPUs cost the host nothing.
pub(crate) const HALT_SLICE: Duration = Duration::from_secs(1);
/// How long a flushing vCPU waits for a target to leave guest mode.
pub const FLUSH_WAIT: Duration = Duration::from_secs(10);
/// NMIs latched at most: one pending behind one being delivered.
const MAX_PENDING_NMIS: u8 = 2;

/// State of a vCPU that other threads read and change, behind its lock.
pub struct State {
    /// The local APIC.
    pub apic: LocalApic,
    /// Hyper-V per-VP MSR state (`None` when the enlightenments are off).
    pub vp: Option<hvmsr::Vp>,
    /// Messages the VMM posted to this VP's SynIC whose slot was busy,
    /// delivered at its EOM (one per SINT).
    pub messages: MessageQueue,
    /// Threads waiting for this vCPU to flush or leave guest mode.
    pub flush_waiters: u32,
    /// The thread is running and `kick` is valid.
    pub alive: bool,
    /// Kick target (valid while `alive`).
    pub kick: Option<KickTarget>,
    /// A halted vCPU was told to wake up.
    pub woken: bool,
    /// INIT/SIPI state (used where the VMM runs that protocol).
    pub mp: MpEvents,
    /// NMIs to hand to KVM (`KVM_NMI`) before the next entry; at most
    /// two, as KVM keeps at most one pending behind the
    /// one being delivered (x86.c `process_nmi`).
    pub nmi_pending: u8,
    /// Kernel irqchip: AutoEOI SINT vectors delivered to KVM's LAPIC,
    /// which sets their ISR bit; the VMM completes them (see
    /// [`crate::irqchip::kernel`]).
    pub aeoi_outstanding: lapic::VectorBitmap,
    /// Kernel irqchip: the NMI pin (LINT1) was raised; the vCPU thread
    /// delivers it as KVM's LAPIC says ([`crate::irqchip::kernel`]).
    pub lint1_pending: bool,
    /// What the irqchip backend saw of this vCPU when its thread stopped,
    /// where only that thread could read it (for timeout reports).
    pub exit_snapshot: Option<String>,
}

/// A vCPU as seen by every thread.
///
/// What a sender touches on each target of a multicast (the
/// posted-interrupt entry's address, the interrupt path's stamps, the
/// flush request) comes first, in the struct's first cache line.
#[repr(C, align(64))]
pub struct Vcpu {
    /// Posted-interrupt descriptor and run state.
    pub posted: Arc<PostedVcpu>,
    /// The last interrupt posted to this vCPU, for its path's timing.
    pub inbound: Inbound,
    /// vCPU index (= VP index = APIC ID in this VMM).
    pub index: u32,
    /// Flush the guest TLB before the next entry: set by a flush request
    /// without the lock, taken by the entry (see [`Vcpu::ask_flush`]).
    flush_pending: AtomicBool,
    /// Moves whenever an event is latched under the lock (an IRR change,
    /// an NMI, INIT/SIPI, a stop): a thread polling in HLT watches it
    /// instead of taking the lock.
    events: AtomicU64,
    state: Mutex<State>,
    cond: Condvar,
    /// Counters.
    pub metrics: VcpuMetrics,
    /// VMM CPU time and waiting per exit class, sampled.
    pub profile: ExitProfile,
}

// What a multicast touches on each target shares the first cache line.
const _: () = assert!(std::mem::offset_of!(Vcpu, flush_pending) < 64);

impl Vcpu {
    /// A vCPU with its APIC, VP state and posted-interrupt entry.
    pub fn new(
        index: u32,
        apic: LocalApic,
        vp: Option<hvmsr::Vp>,
        posted: Arc<PostedVcpu>,
    ) -> Self {
        Self {
            index,
            posted,
            state: Mutex::new(State {
                apic,
                vp,
                messages: MessageQueue::new(),
                flush_waiters: 0,
                alive: false,
                kick: None,
                woken: false,
                mp: MpEvents::default(),
                nmi_pending: 0,
                aeoi_outstanding: lapic::VectorBitmap::EMPTY,
                lint1_pending: false,
                exit_snapshot: None,
            }),
            cond: Condvar::new(),
            events: AtomicU64::new(0),
            flush_pending: AtomicBool::new(false),
            metrics: VcpuMetrics::default(),
            profile: ExitProfile::default(),
            inbound: Inbound::default(),
        }
    }

    /// Locks the shared state (a poisoned lock is still usable: the state
    /// holds no invariant a panicking thread could break halfway).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The event count ([`Vcpu::events`] field): it changes after every
    /// event latched under the lock.
    pub(crate) fn events(&self) -> u64 {
        self.events.load(Ordering::Acquire)
    }

    fn latched(&self) {
        self.events.fetch_add(1, Ordering::Release);
    }

    fn run_state(&self) -> RunState {
        self.posted.run_state().get()
    }

    /// Kicks the vCPU out of KVM_RUN (it must be alive).
    fn kick_locked(&self, s: &State) {
        if !s.alive {
            return;
        }
        if let Some(k) = &s.kick {
            bump(&self.metrics.kicks);
            // SAFETY: `alive` is true under the lock the vCPU thread takes
            // to clear it before it exits and drops its VcpuFd.
            match profile::notification(|| unsafe { k.kick() }) {
                Ok(true) => bump(&self.metrics.kick_signals),
                Ok(false) => {}
                Err(e) => log::warn!("vCPU {}: {e}", self.index),
            }
        }
    }

    fn wake_locked(&self, s: &mut State) {
        s.woken = true;
        bump(&self.metrics.wakeups);
        profile::notification(|| self.cond.notify_all());
    }

    /// Carries out what ipiv said after a post.
    pub fn notify(&self, n: Notify) {
        match n {
            Notify::None => {}
            Notify::Kick => {
                self.inbound.sent();
                self.kick_locked(&self.lock());
            }
            Notify::Wake => {
                self.inbound.sent();
                self.wake_locked(&mut self.lock());
            }
        }
    }

    /// After the APIC's IRR changed under the lock (timer, non-posted
    /// deliveries): kick or wake according to the run state. A vCPU in
    /// guest mode with a lazy EOI armed is kicked even when the new vector
    /// is held back by the PPR: the guest may complete the in-service
    /// interrupt without an exit, and only an exit lets the VMM see that
    /// and inject the held vector (KVM kicks on every IRR change,
    /// lapic.c `__apic_accept_irq`).
    pub(crate) fn notify_apic_locked(&self, s: &mut State) {
        self.latched();
        let deliverable = s.apic.pending().is_some();
        match self.run_state() {
            RunState::InGuest if deliverable || s.apic.lazy_eoi_armed() => self.kick_locked(s),
            RunState::Halted if deliverable => self.wake_locked(s),
            _ => {}
        }
    }

    /// Latches an NMI for the next entry and makes the thread look: a
    /// halted vCPU wakes whatever its IF (SDM 6.7).
    pub(crate) fn latch_nmi_locked(&self, s: &mut State) {
        s.nmi_pending = (s.nmi_pending + 1).min(MAX_PENDING_NMIS);
        self.latch_event_locked(s);
    }

    /// Kicks the vCPU out of guest mode or wakes it, whatever its IF.
    pub(crate) fn latch_event_locked(&self, s: &mut State) {
        self.latched();
        if self.run_state() == RunState::InGuest {
            self.kick_locked(s);
        } else {
            self.wake_locked(s);
        }
    }

    /// After an INIT or SIPI was latched under the lock: kick the vCPU out
    /// of guest mode, or wake it from HLT or wait-for-SIPI.
    pub(crate) fn notify_mp_locked(&self, s: &mut State) {
        self.latched();
        if self.run_state() == RunState::InGuest {
            self.kick_locked(s);
        } else {
            self.wake_locked(s);
        }
    }

    /// Blocks until woken (or for a slice, to re-check a stop request).
    pub(crate) fn wait_event<'g>(&self, mut s: MutexGuard<'g, State>) -> MutexGuard<'g, State> {
        s.woken = false;
        self.cond
            .wait_timeout(s, HALT_SLICE)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    /// Blocks until woken or `done(state)` (re-checked every slice and at
    /// every wake-up).
    pub(crate) fn wait_woken<'g>(
        &self,
        mut s: MutexGuard<'g, State>,
        done: impl Fn(&State) -> bool,
    ) -> MutexGuard<'g, State> {
        while !s.woken && !done(&s) {
            s = self
                .cond
                .wait_timeout(s, HALT_SLICE)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s
    }

    /// Its thread is running (`kick` reaches it until [`Vcpu::retire`]).
    pub(crate) fn go_live(&self, kick: KickTarget) {
        let mut s = self.lock();
        s.kick = Some(kick);
        s.alive = true;
    }

    /// Its thread stopped (`snapshot`: see [`State::exit_snapshot`]): no
    /// more kicks, out of guest mode, flush waiters released.
    pub(crate) fn retire(&self, snapshot: Option<String>) {
        let mut s = self.lock();
        s.exit_snapshot = snapshot;
        s.alive = false;
        s.kick = None;
        self.posted.run_state().set(RunState::OutsideGuest);
        self.cond.notify_all();
    }

    /// After a flush or an exit: wakes the threads waiting for this vCPU
    /// to flush or leave guest mode.
    pub(crate) fn release_flush_waiters(&self, s: &State) {
        if s.flush_waiters > 0 {
            self.cond.notify_all();
        }
    }

    /// Posts a fixed interrupt through the posted-interrupt descriptor.
    pub fn post(&self, vector: u8) {
        self.post_at(vector, Stamp::now());
    }

    /// [`Vcpu::post`] with the send's stamp read once for all the targets
    /// of a multicast.
    pub fn post_at(&self, vector: u8, stamp: Stamp) {
        self.notify(self.post_unnotified(vector, stamp));
    }

    /// Posts `vector` with the send's `stamp` and returns what ipiv says
    /// the target needs, for the caller to carry out ([`Vcpu::notify`]) or
    /// defer.
    pub(crate) fn post_unnotified(&self, vector: u8, stamp: Stamp) -> Notify {
        // Before the post: the target may take the vector at once.
        self.inbound.sent_at(stamp);
        self.posted.post(vector)
    }

    /// Step 1 of a flush request: asks for a guest TLB flush before the
    /// next entry, without the vCPU's lock. A requester asks every target,
    /// then issues one `fence(SeqCst)`, then calls [`Vcpu::kick_to_flush`]
    /// on each.
    ///
    /// This is a store-buffer handshake with the vCPU's entry (the runner's
    /// `Vcpu::enter_guest`), which publishes "in guest" (a SeqCst store)
    /// and then takes the flag (a SeqCst swap). Whichever side comes
    /// second sees the other's write: a target that step 2 finds outside
    /// guest mode takes the flag before it runs guest code again, and one
    /// that is in guest mode is kicked. A halted target costs a store and
    /// a load; its lock is not taken.
    pub fn ask_flush(&self) {
        // Release: the entry that takes the request sees what the guest
        // changed before it asked (its page tables).
        self.flush_pending.store(true, Ordering::Release);
    }

    /// Step 2 of a flush request, after the fence that follows step 1
    /// ([`Vcpu::ask_flush`]). Returns whether the vCPU is in guest mode (it
    /// was kicked, and the caller should wait with
    /// [`Vcpu::wait_flushed`]); otherwise the flush is deferred to its next
    /// entry. The caller counts requests and deferrals (once per
    /// hypercall, not per target).
    pub fn kick_to_flush(&self) -> bool {
        if self.run_state() != RunState::InGuest {
            return false;
        }
        // The kick under the lock, as every kick: the entry holds it from
        // publishing "in guest" until its flush is done.
        let s = self.lock();
        if self.run_state() == RunState::InGuest {
            self.kick_locked(&s);
            true
        } else {
            false
        }
    }

    /// The entry's side of the flush request ([`Vcpu::ask_flush`]), under
    /// the lock: publishes "in guest" (ipiv's step 1, which takes the
    /// posted vectors to inject), then takes the flush request, in that
    /// order. Returns the vectors and whether a flush was asked for since
    /// the last entry that took one.
    pub(crate) fn enter_guest(&self) -> (PendingVectors, bool) {
        let posted = self
            .posted
            .run_state()
            .enter_guest(self.posted.descriptor());
        (posted, self.flush_pending.swap(false, Ordering::SeqCst))
    }

    /// Waits until the vCPU has flushed or is out of guest mode (it then
    /// flushes before it enters again).
    pub fn wait_flushed(&self, timeout: Duration) -> Result<(), Error> {
        let start = Instant::now();
        let mut s = self.lock();
        s.flush_waiters += 1;
        while self.flush_pending.load(Ordering::SeqCst)
            && s.alive
            && self.run_state() == RunState::InGuest
        {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                s.flush_waiters -= 1;
                return Err(Error::Timeout {
                    waited: timeout,
                    what: format!("vCPU {} to leave guest mode for a TLB flush", self.index),
                });
            }
            s = self
                .cond
                .wait_timeout(s, left.min(HALT_SLICE))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        s.flush_waiters -= 1;
        Ok(())
    }

    /// Fires the APIC timer if due; returns its next deadline (APIC clock
    /// nanoseconds).
    pub fn timer_fire(&self) -> Option<u64> {
        let mut s = self.lock();
        let poll = s.apic.poll_timer();
        if poll.expired {
            bump(&self.metrics.timer_fires);
            self.notify_apic_locked(&mut s);
        }
        poll.next_deadline
    }

    /// Makes the vCPU leave guest mode if it is there (its thread then
    /// runs its exit sync).
    pub(crate) fn kick_out(&self) {
        let s = self.lock();
        if self.run_state() == RunState::InGuest {
            self.kick_locked(&s);
        }
    }

    /// Wakes or kicks the vCPU so it notices a stop request.
    pub fn stop(&self) {
        let mut s = self.lock();
        self.latched();
        s.woken = true;
        self.cond.notify_all();
        if self.run_state() == RunState::InGuest {
            self.kick_locked(&s);
        }
    }

    /// A one-line description for timeout reports.
    pub fn describe(&self) -> String {
        let s = self.lock();
        let state = match s.mp.state {
            MpState::WaitForSipi => "WaitForSipi".to_string(),
            MpState::Runnable => format!("{:?}", self.run_state()),
        };
        let exits = self.metrics.exits.load(Ordering::Relaxed);
        // What the backend recorded where the userspace APIC is unused.
        if let Some(k) = &s.exit_snapshot {
            return format!("vCPU {}: {k}, exits {exits}", self.index);
        }
        let hex = |v: Option<u8>| v.map_or_else(|| "none".to_string(), |v| format!("{v:#04x}"));
        format!(
            "vCPU {}: {state}, APIC pending {}, ISR top {}, exits {exits}",
            self.index,
            hex(s.apic.pending()),
            hex(s.apic.isr().highest()),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};
    use std::sync::atomic::{AtomicBool, AtomicU64, fence};

    use super::*;
    use crate::clock::HostClock;

    fn vcpu(table: &ipiv::PidTable) -> Vcpu {
        let clock = Arc::new(HostClock::new(1_000_000, None));
        let apic = LocalApic::new(lapic::Config::new(0), clock).expect("APIC");
        Vcpu::new(0, apic, None, table.register(0).expect("PID entry"))
    }

    /// A flush request raced against a vCPU thread that enters and leaves
    /// guest mode in a loop: the vCPU never runs guest code with a TLB
    /// older than a request that has returned, whether the request found
    /// it in guest mode (kicked, waited for) or not (deferred to its next
    /// entry). Taking the request before publishing "in guest" fails this.
    #[test]
    fn flush_request_races_the_entry() {
        // Requests made at least, and of each outcome, unless the deadline
        // comes first (a loaded host may starve one thread).
        const REQUESTS: u64 = 200_000;
        const EACH: u64 = 1_000;
        let deadline = Instant::now() + Duration::from_secs(20);
        let table = ipiv::PidTable::new(0).expect("table");
        let v = vcpu(&table);
        // The guest's page tables, the TLB's copy, and the newest version
        // whose flush request returned.
        let version = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let (started, stop) = (AtomicBool::new(false), AtomicBool::new(false));
        let stale = AtomicU64::new(0);
        let (mut kicked, mut deferred) = (0u64, 0u64);
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let mut tlb = 0;
                started.store(true, Relaxed);
                while !stop.load(Relaxed) {
                    let s = v.lock();
                    let (_, flush) = v.enter_guest();
                    if flush {
                        tlb = version.load(Acquire);
                    }
                    drop(s);
                    // Guest code.
                    if tlb < done.load(Acquire) {
                        stale.fetch_add(1, Relaxed);
                    }
                    let _ = v.posted.run_state().leave_guest(v.posted.descriptor());
                }
            });
            while !started.load(Relaxed) {
                std::thread::yield_now();
            }
            while (kicked + deferred < REQUESTS || kicked.min(deferred) < EACH)
                && Instant::now() < deadline
            {
                let n = version.fetch_add(1, Relaxed) + 1;
                v.ask_flush();
                fence(SeqCst);
                if v.kick_to_flush() {
                    kicked += 1;
                    // What `wait_flushed` waits for; this vCPU has no kick
                    // target and leaves guest mode on its own.
                    while v.flush_pending.load(SeqCst) && v.run_state() == RunState::InGuest {
                        std::thread::yield_now();
                    }
                } else {
                    deferred += 1;
                }
                done.store(n, Release);
            }
            stop.store(true, Relaxed);
        });
        assert!(
            kicked > 0 && deferred > 0,
            "both outcomes: {kicked} kicked, {deferred} deferred"
        );
        assert_eq!(stale.load(Relaxed), 0, "guest code ran on a stale TLB");
    }
}
