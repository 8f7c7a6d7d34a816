//! What the host does for architectural APIC accesses: the input the CPUID
//! hint policy needs and the host probe (in the `ipiv` crate) produces.

/// Where the guest's local APIC is emulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqchipMode {
    /// The VMM emulates the local APIC in userspace: every architectural
    /// APIC access (xAPIC MMIO, x2APIC MSR) exits to userspace.
    User,
    /// The host kernel's local APIC (KVM's in-kernel LAPIC, full or split
    /// irqchip): architectural APIC accesses never reach userspace.
    Kernel,
}

/// CPU vendor of the host, as far as APIC virtualization is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuVendor {
    /// Intel (VT-x: APICv, IPI virtualization).
    Intel,
    /// AMD or Hygon (SVM: AVIC, x2AVIC).
    Amd,
    /// Anything else, or not known.
    Other,
}

/// The host's hardware APIC virtualization, as probed.
///
/// Each field is `None` when the host did not say (a module parameter file
/// is missing, a CPUID leaf is absent): unknown is shown as unknown, never
/// guessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HostApicAccel {
    /// Host CPU vendor.
    pub vendor: CpuVendor,
    /// `kvm_intel.enable_apicv`.
    pub apicv: Option<bool>,
    /// `kvm_intel.enable_ipiv` (IPI virtualization).
    pub ipiv: Option<bool>,
    /// `kvm_amd.avic`.
    pub avic: Option<bool>,
    /// `kvm_amd.force_avic`.
    pub force_avic: Option<bool>,
    /// CPUID 0x8000000A EDX bit 13: the CPU implements AVIC.
    pub cpu_avic: Option<bool>,
    /// CPUID 0x8000000A EDX bit 18: the CPU implements x2AVIC.
    pub cpu_x2avic: Option<bool>,
}

impl HostApicAccel {
    /// A host known to have no hardware APIC virtualization at all.
    pub const NONE: Self = Self {
        vendor: CpuVendor::Other,
        apicv: Some(false),
        ipiv: Some(false),
        avic: Some(false),
        force_avic: Some(false),
        cpu_avic: Some(false),
        cpu_x2avic: Some(false),
    };

    /// Whether KVM on this host virtualizes APIC accesses in hardware
    /// (Intel APICv, or AMD AVIC enabled in `kvm_amd` on a CPU that has it).
    /// `None` when the probe could not tell.
    pub fn hardware_apic_virtualization(&self) -> Option<bool> {
        match self.vendor {
            CpuVendor::Intel => self.apicv,
            CpuVendor::Amd => match (self.avic, self.force_avic, self.cpu_avic) {
                (Some(false), _, _) => Some(false),
                (Some(true), Some(true), _) => Some(true),
                (Some(true), _, cpu) => cpu,
                (None, _, _) => None,
            },
            CpuVendor::Other => match (self.apicv, self.avic) {
                (Some(true), _) | (_, Some(true)) => Some(true),
                (Some(false), Some(false)) => Some(false),
                _ => None,
            },
        }
    }

    /// Whether APICv/AVIC serves this VM's APIC accesses: it needs the
    /// in-kernel local APIC (KVM sets `APICV_INHIBIT_REASON_ABSENT`
    /// without one), so a userspace irqchip means `Some(false)`. `None`
    /// when the probe could not tell.
    ///
    /// ```
    /// use hv_enlightenments::accel::{CpuVendor, HostApicAccel, IrqchipMode};
    ///
    /// let apicv = HostApicAccel { vendor: CpuVendor::Intel, apicv: Some(true), ..HostApicAccel::NONE };
    /// assert_eq!(apicv.apic_virtualization_active(IrqchipMode::Kernel), Some(true));
    /// assert_eq!(apicv.apic_virtualization_active(IrqchipMode::User), Some(false));
    /// ```
    pub fn apic_virtualization_active(&self, irqchip: IrqchipMode) -> Option<bool> {
        match irqchip {
            IrqchipMode::User => Some(false),
            IrqchipMode::Kernel => self.hardware_apic_virtualization(),
        }
    }

    /// Whether AVIC may stay active with the guest in x2APIC mode (x2AVIC,
    /// "hybrid AVIC" since Linux 6.0). `None` when unknown.
    pub fn x2avic(&self) -> Option<bool> {
        match self.hardware_apic_virtualization() {
            Some(false) => Some(false),
            _ if self.vendor == CpuVendor::Amd => self.cpu_x2avic,
            Some(true) => Some(false),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_means_no_hardware_virtualization() {
        assert_eq!(
            HostApicAccel::NONE.hardware_apic_virtualization(),
            Some(false)
        );
        assert_eq!(HostApicAccel::NONE.x2avic(), Some(false));
    }

    #[test]
    fn amd_avic_needs_the_cpu_bit_unless_forced() {
        let mut h = HostApicAccel::NONE;
        h.vendor = CpuVendor::Amd;
        h.avic = Some(true);
        h.cpu_avic = Some(false);
        assert_eq!(h.hardware_apic_virtualization(), Some(false));
        h.force_avic = Some(true);
        assert_eq!(h.hardware_apic_virtualization(), Some(true));
        h.cpu_x2avic = Some(true);
        assert_eq!(h.x2avic(), Some(true));
        h.avic = None;
        assert_eq!(h.hardware_apic_virtualization(), None);
    }

    #[test]
    fn apic_virtualization_needs_the_kernel_irqchip() {
        let mut h = HostApicAccel::NONE;
        h.vendor = CpuVendor::Intel;
        h.apicv = Some(true);
        assert_eq!(h.apic_virtualization_active(IrqchipMode::User), Some(false));
        assert_eq!(
            h.apic_virtualization_active(IrqchipMode::Kernel),
            Some(true)
        );
        h.apicv = None;
        assert_eq!(h.apic_virtualization_active(IrqchipMode::Kernel), None);
    }

    #[test]
    fn intel_follows_enable_apicv() {
        let mut h = HostApicAccel::NONE;
        h.vendor = CpuVendor::Intel;
        h.apicv = Some(true);
        assert_eq!(h.hardware_apic_virtualization(), Some(true));
        assert_eq!(h.x2avic(), Some(false));
        h.apicv = None;
        assert_eq!(h.hardware_apic_virtualization(), None);
    }
}
