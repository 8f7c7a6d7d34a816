//! Which guest pages the VMM can write on the guest's behalf.
//!
//! The hypercall, VP assist, SynIC message and SynIC event flags MSRs name
//! a page the VMM fills or clears when the guest enables it. KVM refuses
//! such a write with #GP, and keeps the old MSR value, when the page is
//! not guest RAM (`kvm_hv_set_msr_pw`: the hypercall page is written before
//! `hv_hypercall` is stored; `kvm_hv_set_msr`: VP assist; `synic_set_msr`:
//! SIMP/SIEFP). The crate never touches guest memory, so it asks the VMM
//! through [`GuestRam`] before it commits the value.

/// The VMM's answer to "is this page guest RAM I can write?".
///
/// Implemented for closures, so a VMM passes a one-line check, for
/// example with vm-memory:
///
/// ```
/// # fn check_range(_gpa: u64, _len: usize) -> bool { true }
/// use hv_enlightenments::HV_PAGE_SIZE;
/// use hv_enlightenments::msr::GuestRam;
/// let ram = |gpa: u64| check_range(gpa, HV_PAGE_SIZE);
/// assert!(ram.is_ram_page(0x1000));
/// ```
pub trait GuestRam {
    /// Whether the whole [`HV_PAGE_SIZE`](crate::HV_PAGE_SIZE)-byte page at `gpa` (page
    /// aligned) is guest RAM the VMM can write.
    fn is_ram_page(&self, gpa: u64) -> bool;
}

impl<F: Fn(u64) -> bool> GuestRam for F {
    fn is_ram_page(&self, gpa: u64) -> bool {
        self(gpa)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closures_answer() {
        let low = |gpa: u64| gpa < 0x10_0000;
        assert!(low.is_ram_page(0xF_F000));
        assert!(!low.is_ram_page(0x10_0000));
    }
}
