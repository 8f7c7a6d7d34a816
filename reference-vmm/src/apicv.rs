//! The APICv/AVIC inhibit model, driven live: ipiv's [`InhibitManager`]
//! fed with what the guest does that would inhibit APIC virtualization
//! under KVM (today: SynIC SINTs with AutoEOI, KVM `synic_update_vector`).
//! vCPUs request from their exit path ([`Apicv::request`], a short queue
//! lock) and apply at the top of their run loop, a safe point where they
//! hold no guest-memory guard ([`Apicv::apply`], through ipiv's
//! [`VcpuGate`]), as KVM applies `KVM_REQ_APICV_UPDATE` at entry.
//!
//! Neither irqchip of this VMM has hardware APIC virtualization to
//! inhibit (the userspace APIC has none; KVM's LAPIC does not know of a
//! userspace SynIC), so the model says what KVM would do, and records
//! every change for the run's report.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use ipiv::InhibitSet;
use ipiv::inhibit::{
    InhibitConfig, InhibitEvent, InhibitManager, InhibitReport, InhibitRequests, VcpuGate,
};

/// Changes kept for the report (the first ones; later ones are counted).
const HISTORY: usize = 64;

/// One change of the effective inhibit reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InhibitChange {
    /// The vCPU whose safe point applied it.
    pub vcpu: u32,
    /// Effective reasons before.
    pub before: InhibitSet,
    /// Effective reasons after.
    pub after: InhibitSet,
}

/// The inhibit model of one VM.
pub struct Apicv {
    requests: InhibitRequests,
    manager: Mutex<InhibitManager>,
    /// Requests not applied yet (a cheap check for the run loop).
    pending: AtomicU64,
    changes: AtomicU64,
    history: Mutex<Vec<InhibitChange>>,
}

impl Apicv {
    /// The model for `config`.
    pub fn new(config: InhibitConfig) -> Self {
        Self {
            requests: InhibitRequests::new(),
            manager: Mutex::new(InhibitManager::new(config)),
            pending: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            history: Mutex::new(Vec::new()),
        }
    }

    fn manager(&self) -> MutexGuard<'_, InhibitManager> {
        self.manager.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// From an exit path: vCPU `vcpu` did `event`. Applied at a safe
    /// point.
    pub fn request(&self, vcpu: u32, event: InhibitEvent) {
        let _ = self.requests.request(vcpu, event);
        self.pending.fetch_add(1, Ordering::Release);
    }

    /// At vCPU `vcpu`'s safe point (the top of its run loop): applies the
    /// queued requests, if any, and records a change of the reasons.
    pub fn apply(&self, vcpu: u32, gate: &mut VcpuGate) {
        if self.pending.load(Ordering::Acquire) == 0 {
            return;
        }
        let update = {
            let mut m = self.manager();
            self.pending.store(0, Ordering::Release);
            m.apply_pending(&self.requests, &gate.safe_point())
        };
        if update.before == update.after {
            return;
        }
        log::debug!(
            "vCPU {vcpu}: APICv inhibits {:?} -> {:?}",
            update.before,
            update.after
        );
        self.changes.fetch_add(1, Ordering::Relaxed);
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() < HISTORY {
            h.push(InhibitChange {
                vcpu,
                before: update.before,
                after: update.after,
            });
        }
    }

    /// The effective reasons now.
    pub fn active(&self) -> InhibitSet {
        self.manager().active()
    }

    /// vCPUs with an AutoEOI SINT now.
    pub fn auto_eoi_vcpus(&self) -> usize {
        self.manager().auto_eoi_vcpus()
    }

    /// Each active reason with its cause and what would lift it.
    pub fn explain(&self) -> InhibitReport {
        self.manager().explain()
    }

    /// Changes of the effective reasons so far, and the first
    /// 64 of them.
    pub fn changes(&self) -> (u64, Vec<InhibitChange>) {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        (self.changes.load(Ordering::Relaxed), h.clone())
    }
}
