//! An x2APIC-aware virtual local APIC with the Hyper-V synthetic
//! EOI/ICR/TPR MSRs and lazy EOI. No KVM: a state machine driven by the VMM.

#![warn(missing_docs)]
