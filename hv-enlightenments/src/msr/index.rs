//! Synthetic MSR indices (TLFS "Synthetic MSRs"; Linux `hyperv-tlfs.h`,
//! `hvgdk_mini.h`).

/// Guest OS identity; hypercalls are refused while it is 0.
pub const HV_X64_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
/// Hypercall page: bit 0 enable, bit 1 locked, bits 63:12 GPA page.
pub const HV_X64_MSR_HYPERCALL: u32 = 0x4000_0001;
/// This virtual processor's index (read-only to the guest).
pub const HV_X64_MSR_VP_INDEX: u32 = 0x4000_0002;
/// Writing bit 0 resets the partition.
pub const HV_X64_MSR_RESET: u32 = 0x4000_0003;
/// Time this VP has run, in 100 ns units.
pub const HV_X64_MSR_VP_RUNTIME: u32 = 0x4000_0010;
/// Partition reference counter, 100 ns units.
pub const HV_X64_MSR_TIME_REF_COUNT: u32 = 0x4000_0020;
/// Reference TSC page: bit 0 enable, bits 63:12 GPA page.
pub const HV_X64_MSR_REFERENCE_TSC: u32 = 0x4000_0021;
/// TSC frequency in Hz.
pub const HV_X64_MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
/// APIC timer frequency in Hz.
pub const HV_X64_MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
/// Synthetic EOI (same effect as an x2APIC EOI write).
pub const HV_X64_MSR_EOI: u32 = 0x4000_0070;
/// Synthetic ICR: one 64-bit write sends an IPI.
pub const HV_X64_MSR_ICR: u32 = 0x4000_0071;
/// Synthetic TPR.
pub const HV_X64_MSR_TPR: u32 = 0x4000_0072;
/// VP assist page: bit 0 enable, bits 63:12 GPA page.
pub const HV_X64_MSR_VP_ASSIST_PAGE: u32 = 0x4000_0073;
/// SynIC control.
pub const HV_X64_MSR_SCONTROL: u32 = 0x4000_0080;
/// SynIC version (read-only).
pub const HV_X64_MSR_SVERSION: u32 = 0x4000_0081;
/// SynIC event flags page.
pub const HV_X64_MSR_SIEFP: u32 = 0x4000_0082;
/// SynIC message page.
pub const HV_X64_MSR_SIMP: u32 = 0x4000_0083;
/// SynIC end of message.
pub const HV_X64_MSR_EOM: u32 = 0x4000_0084;
/// First synthetic interrupt source; SINTx is `HV_X64_MSR_SINT0 + x`.
pub const HV_X64_MSR_SINT0: u32 = 0x4000_0090;
/// Synthetic interrupt source 1.
pub const HV_X64_MSR_SINT1: u32 = 0x4000_0091;
/// Synthetic interrupt source 2.
pub const HV_X64_MSR_SINT2: u32 = 0x4000_0092;
/// Synthetic interrupt source 3.
pub const HV_X64_MSR_SINT3: u32 = 0x4000_0093;
/// Synthetic interrupt source 4.
pub const HV_X64_MSR_SINT4: u32 = 0x4000_0094;
/// Synthetic interrupt source 5.
pub const HV_X64_MSR_SINT5: u32 = 0x4000_0095;
/// Synthetic interrupt source 6.
pub const HV_X64_MSR_SINT6: u32 = 0x4000_0096;
/// Synthetic interrupt source 7.
pub const HV_X64_MSR_SINT7: u32 = 0x4000_0097;
/// Synthetic interrupt source 8.
pub const HV_X64_MSR_SINT8: u32 = 0x4000_0098;
/// Synthetic interrupt source 9.
pub const HV_X64_MSR_SINT9: u32 = 0x4000_0099;
/// Synthetic interrupt source 10.
pub const HV_X64_MSR_SINT10: u32 = 0x4000_009A;
/// Synthetic interrupt source 11.
pub const HV_X64_MSR_SINT11: u32 = 0x4000_009B;
/// Synthetic interrupt source 12.
pub const HV_X64_MSR_SINT12: u32 = 0x4000_009C;
/// Synthetic interrupt source 13.
pub const HV_X64_MSR_SINT13: u32 = 0x4000_009D;
/// Synthetic interrupt source 14.
pub const HV_X64_MSR_SINT14: u32 = 0x4000_009E;
/// Last synthetic interrupt source.
pub const HV_X64_MSR_SINT15: u32 = 0x4000_009F;
/// Number of SINT MSRs.
pub const HV_SINT_COUNT: usize = 16;
/// Synthetic timer 0 configuration; timer n config is `+ 2n`, count `+ 2n + 1`.
pub const HV_X64_MSR_STIMER0_CONFIG: u32 = 0x4000_00B0;
/// Synthetic timer 0 count.
pub const HV_X64_MSR_STIMER0_COUNT: u32 = 0x4000_00B1;
/// Synthetic timer 1 configuration.
pub const HV_X64_MSR_STIMER1_CONFIG: u32 = 0x4000_00B2;
/// Synthetic timer 1 count.
pub const HV_X64_MSR_STIMER1_COUNT: u32 = 0x4000_00B3;
/// Synthetic timer 2 configuration.
pub const HV_X64_MSR_STIMER2_CONFIG: u32 = 0x4000_00B4;
/// Synthetic timer 2 count.
pub const HV_X64_MSR_STIMER2_COUNT: u32 = 0x4000_00B5;
/// Synthetic timer 3 configuration.
pub const HV_X64_MSR_STIMER3_CONFIG: u32 = 0x4000_00B6;
/// Last synthetic timer MSR (timer 3 count).
pub const HV_X64_MSR_STIMER3_COUNT: u32 = 0x4000_00B7;
/// Guest idle (reading it idles the VP).
pub const HV_X64_MSR_GUEST_IDLE: u32 = 0x4000_00F0;
/// Crash parameter 0; P0..P4 are consecutive.
pub const HV_X64_MSR_CRASH_P0: u32 = 0x4000_0100;
/// Crash parameter 1.
pub const HV_X64_MSR_CRASH_P1: u32 = 0x4000_0101;
/// Crash parameter 2.
pub const HV_X64_MSR_CRASH_P2: u32 = 0x4000_0102;
/// Crash parameter 3.
pub const HV_X64_MSR_CRASH_P3: u32 = 0x4000_0103;
/// Crash parameter 4.
pub const HV_X64_MSR_CRASH_P4: u32 = 0x4000_0104;
/// Number of crash parameter MSRs (`HV_X64_MSR_CRASH_PARAMS`).
pub const HV_CRASH_PARAMS: usize = 5;
/// Crash control.
pub const HV_X64_MSR_CRASH_CTL: u32 = 0x4000_0105;
/// CRASH_CTL bit 63: the guest crashed; P0-P4 say how
/// (`HV_CRASH_CTL_CRASH_NOTIFY`).
pub const HV_CRASH_CTL_CRASH_NOTIFY: u64 = 1 << 63;
/// CRASH_CTL bit 62: P3/P4 name a crash message buffer
/// (`HV_CRASH_CTL_CRASH_NOTIFY_MSG`; not offered here).
pub const HV_CRASH_CTL_CRASH_NOTIFY_MSG: u64 = 1 << 62;
/// Reenlightenment control.
pub const HV_X64_MSR_REENLIGHTENMENT_CONTROL: u32 = 0x4000_0106;
/// TSC emulation control.
pub const HV_X64_MSR_TSC_EMULATION_CONTROL: u32 = 0x4000_0107;
/// TSC emulation status.
pub const HV_X64_MSR_TSC_EMULATION_STATUS: u32 = 0x4000_0108;
/// TSC invariant control: bit 0 makes the TSC invariant to the guest.
pub const HV_X64_MSR_TSC_INVARIANT_CONTROL: u32 = 0x4000_0118;

/// First MSR of the synthetic range (a VMM's MSR filter covers this range).
pub const HV_X64_MSR_RANGE_START: u32 = 0x4000_0000;
/// One past the last synthetic MSR a VMM must trap.
pub const HV_X64_MSR_RANGE_END: u32 = 0x4000_0200;
