//! The contract between the VMM and the built-in guest kernel: ports,
//! vectors, system calls and the offsets of per-vCPU and shared variables.

use hv_enlightenments::hypercall::HypercallTrap;

use crate::guest::layout::SHARED;

/// How the hypercall page traps to the VMM: `out 0xE0, al; ret`
/// (hv-enlightenments builds the page).
pub const HYPERCALL_TRAP: HypercallTrap = HypercallTrap::PortIo { port: 0xE0 };
/// The port the hypercall page writes.
pub const HYPERCALL_PORT: u16 = 0xE0;
/// Scenario reports: a 32-bit write of one of the `REPORT_*` codes to this
/// guest-physical MMIO address (identity-mapped, outside RAM), RDI/RSI
/// arguments. MMIO rather than a port so that it works from CPL3 without
/// any I/O permission.
pub const REPORT_MMIO: u64 = 0x3000_0000;
/// A port no device claims, open to CPL3 through the TSS I/O bitmap: a
/// byte write there is a bare port I/O exit round trip.
pub const NULL_PORT: u16 = 0xE3;
/// The guest kernel's fatal-exception path, a byte write: AL = vector,
/// RDX = RIP, RSI = error code.
pub const PANIC_PORT: u16 = 0xE2;
/// The bench's probe, a byte write from CPL0 (closed to CPL3 in the TSS
/// I/O bitmap): the VMM decodes and carries out the 64-bank
/// FlushVirtualAddressSpaceEx whose input is at [`shared::HC_INPUT`],
/// right after the exit and timed on its own, with no hypercall trap
/// around it and nothing answered. The call is the VMM's
/// (`hypercall-ex64`'s control word), not the guest's: a write can at most
/// ask for TLB flushes of the VPs that input names.
pub const PROBE_PORT: u16 = 0xE1;

/// Report: the scenario finished; RDI = 0 on success, else a failure code,
/// RSI = detail.
pub const REPORT_DONE: u32 = 0;
/// Report: the measured phase starts (RDI = operations it will run).
pub const REPORT_MARK_START: u32 = 1;
/// Report: the measured phase ends. RDI = 0, or [`MARK_END_COUNTED`] |
/// the offset of a per-vCPU variable of the reporting vCPU whose value at
/// this exit is the number of operations the phase ran (it replaces the
/// MARK_START count: a periodic timer may tick again between the guest's
/// last check and this report, and the VMM reads the count at the exit,
/// where no handler can run in between).
pub const REPORT_MARK_END: u32 = 2;
/// MARK_END's RDI flag: the low bits name a counted per-vCPU variable.
pub const MARK_END_COUNTED: u64 = 1 << 63;
/// Report: a value for the VMM's log (RDI = tag, RSI = value).
pub const REPORT_VALUE: u32 = 3;

/// The system call gate: `int3` (#BP, a DPL3 trap gate). Neither SYSCALL
/// nor `int 0x80` reach CPL0 on hosts that emulate guest CPL0 (PVM: SYSCALL
/// keeps the user CS, `int n` raises #UD), while exceptions from CPL3 are
/// delivered through the IDT as they should be.
pub const VEC_SYSCALL: u8 = 3;

/// System call: write MSR RDI with RSI. Returns 0, or bit 63 | vector.
pub const SYS_WRMSR: u32 = 0;
/// System call: read MSR RDI. Returns the value, or bit 63 | vector.
pub const SYS_RDMSR: u32 = 1;
/// System call: hypercall with control RDI, input RSI, output RDX.
pub const SYS_HYPERCALL: u32 = 2;
/// System call: `sti; hlt; cli` (returns after one interrupt).
pub const SYS_HALT: u32 = 3;
/// System call: halt unless the per-vCPU variable at offset RDI already
/// holds at least RSI (returns at once then, else after one interrupt).
/// The kernel compares with interrupts off and halts with `sti; hlt`, so
/// an interrupt that bumps the variable after a caller's own check cannot
/// slip in before the halt and leave it asleep.
pub const SYS_HALT_UNTIL: u32 = 6;
/// System call: `invlpg [RDI]`.
pub const SYS_INVLPG: u32 = 4;
/// System call: `call RDI` at CPL0 (for probing what the host can run
/// there); returns RAX of the callee.
pub const SYS_CALL0: u32 = 5;

/// Vector of the IPI used by ping, broadcast and shootdown requests.
pub const VEC_IPI: u8 = 0xF0;
/// Vector of the ping-pong reply.
pub const VEC_PONG: u8 = 0xF1;
/// Vector of the native TLB shootdown IPI.
pub const VEC_FLUSH: u8 = 0xF2;
/// Vector that only wakes a vCPU.
pub const VEC_WAKE: u8 = 0xF3;
/// Vector of the local APIC timer.
pub const VEC_TIMER: u8 = 0xEC;

/// Per-vCPU variables, addressed through GS (`gs:[offset]`).
pub mod percpu {
    /// This vCPU's index.
    pub const CPU: u64 = 0;
    /// VP index read from HV_X64_MSR_VP_INDEX.
    pub const VP_INDEX: u64 = 8;
    /// Address to resume at after the next exception (0: fatal).
    pub const FIXUP: u64 = 16;
    /// Vector of the last exception.
    pub const LAST_VEC: u64 = 24;
    /// Number of exceptions taken.
    pub const FAULTS: u64 = 32;
    /// Number of VEC_IPI interrupts received.
    pub const IPI_COUNT: u64 = 40;
    /// Number of timer interrupts received.
    pub const TIMER_COUNT: u64 = 48;
    /// Number of VEC_FLUSH interrupts received.
    pub const FLUSH_COUNT: u64 = 56;
    /// Last value read through the TLB test window.
    pub const SEEN_VAL: u64 = 64;
    /// Generation under which SEEN_VAL was read.
    pub const SEEN_GEN: u64 = 72;
    /// Linear address of this block.
    pub const SELF: u64 = 80;
    /// Guest-physical address of the VP assist page.
    pub const ASSIST: u64 = 88;
    /// Top of the user stack.
    pub const USTACK: u64 = 96;
    /// Number of VEC_PONG interrupts received.
    pub const PONG_COUNT: u64 = 104;
    /// Number of VEC_WAKE interrupts received.
    pub const WAKE_COUNT: u64 = 112;
    /// RSP at system call entry (restored when a call faults).
    pub const SYS_RSP: u64 = 120;
    /// Interrupts the EOI routine completed lazily (it found and cleared
    /// `apic_assist` bit 0 instead of writing the EOI MSR).
    pub const LAZY_EOIS: u64 = 128;
    /// Size of the block.
    pub const SIZE: u64 = 136;
}

/// Shared variables (absolute addresses).
pub mod shared {
    use super::SHARED;
    /// Non-zero: turn Hyper-V on at start (VP_INDEX, VP_ASSIST_PAGE,
    /// GUEST_OS_ID, HYPERCALL).
    pub const HV_ENABLED: u64 = SHARED;
    /// Number of vCPUs.
    pub const VCPUS: u64 = SHARED + 8;
    /// vCPUs that reached their scenario loop.
    pub const READY: u64 = SHARED + 16;
    /// Acknowledgements counted by interrupt handlers.
    pub const ACKS: u64 = SHARED + 24;
    /// Generation counter published by the driver.
    pub const GEN: u64 = SHARED + 32;
    /// How IPIs are sent from interrupt handlers: 0 x2APIC ICR, 1 PV IPI,
    /// 2 xAPIC ICR through MMIO, 3 HV_X64_MSR_ICR (xAPIC layout).
    pub const IPI_MODE: u64 = SHARED + 40;
    /// How interrupts are completed: 0 x2APIC EOI, 1 synthetic EOI MSR,
    /// 2 lazy EOI (VP assist page) with synthetic EOI fallback, 3 xAPIC
    /// EOI through MMIO, 4 none (AutoEOI SINTs).
    pub const EOI_MODE: u64 = SHARED + 48;
    /// Non-zero: VEC_IPI handlers on vCPUs other than 0 reply with VEC_PONG.
    pub const PONG: u64 = SHARED + 56;
    /// Non-zero: keep the local APIC in xAPIC mode (MMIO) at start.
    pub const XAPIC: u64 = SHARED + 64;
    /// Non-zero: the VMM published HV_X64_APIC_ACCESS_RECOMMENDED. Without
    /// it an xAPIC guest completes interrupts through the MMIO EOI register,
    /// as Linux does (the kernel irqchip serves the synthetic EOI only in
    /// x2APIC mode).
    pub const APIC_ACCESS_HINT: u64 = SHARED + 72;
    /// Non-zero: the address of the SynIC message slot the timer handler
    /// frees (message type 0) before it completes the interrupt, writing
    /// HV_X64_MSR_EOM when the slot's pending flag is set (Linux
    /// `hv_stimer0_isr` path, `vmbus_signal_eom`).
    pub const STIMER_SLOT: u64 = SHARED + 80;
    /// Non-zero: VEC_IPI handlers on vCPUs other than 0 reply to a SynIC
    /// message instead of an IPI: they free the message slot at this
    /// address (EOM when another waits), then signal the event whose
    /// fast HvSignalEvent input is [`SYNIC_EVENT_INPUT`].
    pub const SYNIC_PING_SLOT: u64 = SHARED + 88;
    /// The fast HvSignalEvent input (connection id | flag << 32) of the
    /// reply.
    pub const SYNIC_EVENT_INPUT: u64 = SHARED + 96;
    /// Non-zero: the VEC_PONG handler clears event flag 0 at this address
    /// (a SINT's first event-flags byte) before it counts, so that the
    /// next signal sets it again and raises the interrupt.
    pub const SYNIC_EVENT_FLAGS: u64 = SHARED + 104;
    /// A page-aligned hypercall input page.
    pub const HC_INPUT: u64 = SHARED + 0x1000;
    /// A page-aligned hypercall output page.
    pub const HC_OUTPUT: u64 = SHARED + 0x2000;
    /// vCPU 0's SynIC message page (SIMP).
    pub const SYNIC_MESSAGE_PAGE: u64 = SHARED + 0x3000;
    /// vCPU 0's SynIC event flags page (SIEFP).
    pub const SYNIC_EVENT_PAGE: u64 = SHARED + 0x4000;
    /// The responders' SynIC message page (every responder uses the same:
    /// only one receives messages).
    pub const SYNIC_RESPONDER_PAGE: u64 = SHARED + 0x5000;
}

/// EOI_MODE values.
pub mod eoi_mode {
    /// x2APIC EOI register (MSR 0x80B).
    pub const X2APIC: u64 = 0;
    /// HV_X64_MSR_EOI.
    pub const SYNTHETIC: u64 = 1;
    /// Lazy EOI through the VP assist page, else HV_X64_MSR_EOI (xAPIC
    /// without APIC_ACCESS_RECOMMENDED: the MMIO EOI register).
    pub const LAZY: u64 = 2;
    /// xAPIC EOI register through MMIO.
    pub const XAPIC: u64 = 3;
    /// No EOI: the vector was acknowledged without ISR (AutoEOI).
    pub const NONE: u64 = 4;
}

/// The GUEST_OS_ID the built-in kernel writes (open-source, Linux-like
/// encoding with a non-zero OS type so a VMM that checks it accepts it).
pub const GUEST_OS_ID: u64 = 0x8100_0000_0000_0001;
