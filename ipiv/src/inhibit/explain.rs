//! Why each active reason is set and what configuration change lifts it.

use core::fmt;

use hv_enlightenments::accel::CpuVendor;

use super::manager::{AVIC_MAX_PHYSICAL_ID, InhibitManager, X2AVIC_MAX_PHYSICAL_ID};
use super::reason::InhibitReason;

/// One active reason, explained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    /// The reason.
    pub reason: InhibitReason,
    /// Why it is set, with the counts behind it.
    pub cause: String,
    /// The configuration change that would lift it.
    pub lift: String,
}

/// Every active reason explained, plus notes that are not inhibits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InhibitReport {
    /// Active reasons (those the host's vendor honours), in KVM's order.
    pub reasons: Vec<Explanation>,
    /// Set reasons the host's vendor ignores.
    pub ignored: Vec<InhibitReason>,
    /// Observations that cost acceleration without inhibiting it.
    pub notes: Vec<String>,
}

impl InhibitManager {
    /// Each active reason with its cause and the change that lifts it.
    ///
    /// ```
    /// use ipiv::{InhibitConfig, InhibitManager, InhibitReason};
    ///
    /// let report = InhibitManager::new(InhibitConfig::default()).explain();
    /// let absent = report.reasons.iter().find(|e| e.reason == InhibitReason::Absent);
    /// assert!(absent.is_some_and(|e| e.lift.contains("irqchip kernel")));
    /// println!("{report}");
    /// ```
    pub fn explain(&self) -> InhibitReport {
        let active = self.active();
        let reasons = active.iter().map(|r| self.explain_one(r)).collect();
        let ignored = self.raw().difference(active).iter().collect();
        let mut notes = Vec::new();
        let x2apic = self.count(|v| v.x2apic);
        if self.vendor() == CpuVendor::Amd
            && self.config().host.hardware_apic_virtualization() == Some(true)
            && self.config().host.x2avic() != Some(true)
            && x2apic > 0
        {
            notes.push(format!(
                "{x2apic} vCPU(s) in x2APIC mode without x2AVIC: AVIC stays on (hybrid mode) but \
                 every x2APIC MSR access exits; hide x2APIC from the guest or use a host with \
                 x2AVIC"
            ));
        }
        InhibitReport {
            reasons,
            ignored,
            notes,
        }
    }

    fn explain_one(&self, reason: InhibitReason) -> Explanation {
        let host = &self.config().host;
        let (cause, lift) = match reason {
            InhibitReason::Disabled => match host.hardware_apic_virtualization() {
                None => (
                    "the host's APIC virtualization is unknown (module parameters unreadable)"
                        .to_string(),
                    "check kvm_intel.enable_apicv or kvm_amd.avic on the host".to_string(),
                ),
                _ => match host.vendor {
                    CpuVendor::Intel => (
                        "kvm_intel.enable_apicv is off".to_string(),
                        "load kvm_intel with enable_apicv=1 on a CPU with APICv".to_string(),
                    ),
                    CpuVendor::Amd if host.cpu_avic == Some(false) && host.force_avic != Some(true) => (
                        "the host CPU does not report AVIC (SVM or CPUID 0x8000000A EDX[13] clear)"
                            .to_string(),
                        "run on a host whose CPU has AVIC, with kvm_amd loaded and avic=1"
                            .to_string(),
                    ),
                    CpuVendor::Amd => (
                        "kvm_amd.avic is off, or kvm_amd is not loaded".to_string(),
                        "load kvm_amd with avic=1 on a CPU with AVIC (CPUID 0x8000000A EDX[13])"
                            .to_string(),
                    ),
                    CpuVendor::Other => (
                        "the host KVM has no hardware APIC virtualization".to_string(),
                        "run on a host whose KVM uses kvm_intel (APICv) or kvm_amd (AVIC)"
                            .to_string(),
                    ),
                },
            },
            InhibitReason::Absent => (
                "the local APIC is emulated in userspace (irqchip user)".to_string(),
                "use the in-kernel irqchip (irqchip kernel)".to_string(),
            ),
            InhibitReason::Hyperv => (
                format!(
                    "{} vCPU(s) have a SynIC SINT with AutoEOI",
                    self.auto_eoi_vcpus()
                ),
                "set DEPRECATING_AEOI (CPUID 0x40000004 EAX bit 9) and drop \
                 APIC_ACCESS_RECOMMENDED so the guest stops using AutoEOI (Linux guests \
                 set AutoEOI on their SINTs unless DEPRECATING_AEOI is set)"
                    .to_string(),
            ),
            InhibitReason::BlockIrq => (
                format!(
                    "{} vCPU(s) are debugged with KVM_GUESTDBG_BLOCKIRQ",
                    self.count(|v| v.block_irq)
                ),
                "end the debugging session or debug without BLOCKIRQ".to_string(),
            ),
            InhibitReason::PhysicalIdAliased => (
                "two vCPUs share a physical APIC ID".to_string(),
                "give every vCPU a distinct APIC ID".to_string(),
            ),
            InhibitReason::ApicIdModified => (
                "the guest changed an xAPIC ID (sticky)".to_string(),
                "restart the VM; keep the guest from rewriting APIC IDs (x2APIC IDs are \
                 read-only)"
                    .to_string(),
            ),
            InhibitReason::ApicBaseModified => (
                "the guest moved the APIC base away from 0xFEE00000 (sticky)".to_string(),
                "restart the VM with a guest that keeps the default APIC base".to_string(),
            ),
            InhibitReason::Nested => (
                format!(
                    "{} vCPU(s) are running a nested guest",
                    self.count(|v| v.nested)
                ),
                "turn nesting off (hide VMX/SVM from the guest)".to_string(),
            ),
            InhibitReason::IrqWin => (
                format!(
                    "{} vCPU(s) wait for an interrupt window for an ExtINT (legacy PIC) \
                     interrupt",
                    self.count(|v| v.irq_window)
                ),
                "transient; route interrupts through the IOAPIC or MSI instead of the PIC"
                    .to_string(),
            ),
            InhibitReason::PitReinj => (
                "the in-kernel PIT re-injects missed ticks".to_string(),
                "create the PIT without KVM_PIT_SPEC_REINJECT (discard missed ticks)".to_string(),
            ),
            InhibitReason::Sev => (
                "the VM is an SEV guest".to_string(),
                "none for SEV guests; run without SEV to use AVIC".to_string(),
            ),
            InhibitReason::LogicalIdAliased => (
                "logical APIC IDs do not map 1:1 to vCPUs".to_string(),
                "have the guest use x2APIC or physical destination mode".to_string(),
            ),
            InhibitReason::PhysicalIdTooBig => {
                let limit = self.physical_id_limit();
                let max = self.max_apic_id().unwrap_or(limit);
                let lift = if limit == AVIC_MAX_PHYSICAL_ID {
                    format!(
                        "keep APIC IDs at or below {AVIC_MAX_PHYSICAL_ID}, or use a host with \
                         x2AVIC (IDs up to {X2AVIC_MAX_PHYSICAL_ID})"
                    )
                } else {
                    format!("keep APIC IDs at or below {X2AVIC_MAX_PHYSICAL_ID} (fewer vCPUs)")
                };
                (
                    format!("APIC ID {max} is above the AVIC physical ID limit {limit}"),
                    lift,
                )
            }
        };
        Explanation {
            reason,
            cause,
            lift,
        }
    }
}

impl fmt::Display for InhibitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            writeln!(f, "APICv/AVIC inhibits: none")?;
        } else {
            writeln!(f, "APICv/AVIC inhibits:")?;
            for e in &self.reasons {
                writeln!(f, "  {:<20} {}", e.reason.kvm_name(), e.cause)?;
                writeln!(f, "  {:<20} to lift: {}", "", e.lift)?;
            }
        }
        if !self.ignored.is_empty() {
            let names: Vec<_> = self.ignored.iter().map(|r| r.kvm_name()).collect();
            writeln!(
                f,
                "  set but not honoured on this vendor: {}",
                names.join(", ")
            )?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        Ok(())
    }
}
