//! Interrupt-core conformance kernels: small multiboot v1 guests, one per
//! [`Case`], that check architectural behaviour of the local APIC, the
//! IOAPIC, NMIs, HLT, CR8, exceptions and the Hyper-V synthetic APIC
//! registers, and report the outcome through the isa-debug-exit port.
//!
//! The harness: a 32-bit multiboot entry that switches to 64-bit mode
//! (identity-mapped low 4 GiB with 2 MiB pages, EFER.LME, CR0.PG), then
//! 64-bit CPL0 code with flat segments of its own GDT. 64-bit mode because
//! hosts that emulate guest CPL0 may not emulate a 32-bit `iretd`, while
//! `iretq` works, and only IRET unblocks NMIs.
//! - every IDT vector has a stub that pushes the vector and enters one
//!   common handler, which counts the vector per vCPU, records the last
//!   vector and, when the interrupted RIP lies inside the handlers (or the
//!   #GP handler's "inside" flag is set), records a nested delivery: all
//!   gates are interrupt gates, so only an NMI may nest. A per-vector hook
//!   then runs: EOI (x2APIC or xAPIC), the Hyper-V EOI MSR, Linux's lazy
//!   EOI (`hv_apic_eoi_write`), a case's own, or for exceptions: record
//!   the fault and skip the faulting instruction when the body armed a
//!   skip length, else fail;
//! - per-vCPU data sits at the bottom of a 16 KiB block whose top is the
//!   stack, so a handler finds its vCPU's data from RSP alone;
//! - the application processor starts by INIT/SIPI through the trampoline
//!   of [`crate::mbkernel`], switches to 64-bit mode like the BSP and runs
//!   the case's AP part;
//! - the result line `conformance: code=<n> r=<8 values> | cpuN fault=..
//!   nested=.. n: <vector>=<count>..` is printed over COM1 and `<n>` is
//!   written to port 0xF4: 0 = pass, otherwise the 1-based index into
//!   [`Kernel::checks`] of the check that failed.
//!
//! Waits that need the vCPU to stay in guest mode are pure `dec; jnz`
//! spins; others exit through a write to port 0x80 each iteration. Every
//! wait is bounded and ends in a failure code of its own. CPL0 guest code
//! may be emulated instruction by instruction (microseconds each), so the
//! paths are short.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};

use crate::mbkernel::{self, Apic, LOAD_ADDR, TRAMPOLINE};

/// Text [`Case::RepOutsbCom1`] writes to COM1 with one `rep outsb`.
pub const REP_OUTSB_TEXT: &str =
    "conformance: rep outsb 0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n";
/// Prefix of the result line.
pub const RESULT_PREFIX: &str = "conformance: code=";
/// Number of values on the result line.
pub const VALUES: usize = 8;
/// Most vCPUs a case uses (per-vCPU data blocks in the image).
pub const MAX_VCPUS: u32 = 2;
/// Value slot of [`Case::Cr8`]: how the interrupt held by CR8 arrived
/// once CR8 was lowered.
pub const CR8_DELIVERY_SLOT: u32 = 4;
/// [`CR8_DELIVERY_SLOT`]: while the guest spun without exits (the CR8
/// write itself reached the APIC).
pub const CR8_DELIVERED_SPINNING: u32 = 1;
/// [`CR8_DELIVERY_SLOT`]: only after a later exit showed the VMM the new
/// CR8 (the CR8 write did not exit).
pub const CR8_DELIVERED_AFTER_EXIT: u32 = 2;
/// Value slot of [`Case::IoapicLevelRemoteIrr`]: the vector's ISR bit as
/// read in its handler (1 when the LAPIC keeps it in service).
pub const ISR_SEEN: u32 = 7;

// Image layout (all inside the one loaded segment).
/// The 32-bit entry code (BSP and AP) starts after the multiboot header.
const CODE: u32 = LOAD_ADDR + 0x10;
/// The 64-bit main code.
const MAIN: u32 = LOAD_ADDR + 0x400;
/// End of the main code.
const MAIN_END: u32 = LOAD_ADDR + 0x8000;
/// IDT stubs, [`STUB_SIZE`] bytes per vector.
const STUBS: u32 = LOAD_ADDR + 0x8000;
const STUB_SIZE: u32 = 16;
/// The common handler and the hooks.
const COMMON: u32 = LOAD_ADDR + 0x9000;
/// End of the interrupt handlers: an interrupted RIP in
/// `[STUBS, HANDLERS_END)` is a nested delivery.
const HANDLERS_END: u32 = LOAD_ADDR + 0xA000;
/// The AP trampoline's bytes, copied to [`TRAMPOLINE`] at run time.
const TRAMP_IMAGE: u32 = LOAD_ADDR + 0xC000;
const TRAMP_SIZE: u32 = 0x40;
const STRINGS: u32 = LOAD_ADDR + 0xC100;
const STRINGS_END: u32 = LOAD_ADDR + 0xD000;
const GDT: u32 = LOAD_ADDR + 0xD000;
const GDTR: u32 = GDT + 0x40;
const IDTR: u32 = GDT + 0x50;
/// Hook address per vector (0: count only).
const HOOKS: u32 = LOAD_ADDR + 0xE800;
const IDT: u32 = LOAD_ADDR + 0xF000;
/// Identity map of the low 4 GiB with 2 MiB pages (PML4, PDPT, 4 PDs).
const PML4: u32 = LOAD_ADDR + 0x1_0000;
const PDPT: u32 = PML4 + 0x1000;
const PD: u32 = PML4 + 0x2000;
const VARS: u32 = LOAD_ADDR + 0x1_6000;
/// Where the Hyper-V hypercall page is placed.
const HCALL_PAGE: u32 = LOAD_ADDR + 0x1_7000;
/// The SynIC message page and the reference TSC page: RAM above the image.
const SIMP_PAGE: u32 = 0x20_0000;
const TSC_PAGE: u32 = 0x20_1000;
const SIEFP_PAGE: u32 = 0x20_2000;
const SIMP_PAGE_AP: u32 = 0x20_3000;
const SIEFP_PAGE_AP: u32 = 0x20_4000;
/// HvPostMessage input (8-byte aligned, within one page).
const POST_INPUT: u32 = 0x20_5000;
/// Per-vCPU blocks, aligned to their size.
const PERCPU: u32 = LOAD_ADDR + 0x1_8000;
const PERCPU_SIZE: u32 = 0x4000;
const IMAGE_END: u32 = PERCPU + MAX_VCPUS * PERCPU_SIZE;

// Global variables.
/// APs that finished start-up.
const V_READY: u32 = VARS;
/// AP index allocator.
const V_APS: u32 = VARS + 4;
const V_CODE: u32 = VARS + 8;
/// Handshake flags of [`Case::GpNotInterrupted`]'s AP.
const V_GO: u32 = VARS + 0xC;
const V_STOP: u32 = VARS + 0x10;
const V_STOPPED: u32 = VARS + 0x14;
/// The values of the result line.
const V_R: u32 = VARS + 0x20;
const V_BUF: u32 = VARS + 0x40;
const V_NUMBUF: u32 = VARS + 0x60;

// Per-vCPU variables (offsets in the block).
/// Deliveries per vector (256 dwords).
const P_COUNT: u32 = 0;
const P_LAST_VEC: u32 = 0x400;
/// Vector | [`FLAGGED`] of a nested delivery.
const P_NESTED: u32 = 0x404;
/// Vector | [`FLAGGED`] of the last exception, its RIP and error code.
const P_FAULT_VEC: u32 = 0x408;
const P_FAULT_EIP: u32 = 0x40C;
const P_FAULT_ERR: u32 = 0x410;
/// Bytes the next exception skips (0: an exception fails the case).
const P_SKIP: u32 = 0x414;
/// Set while the #GP hook of [`Case::GpNotInterrupted`] runs.
const P_INSIDE: u32 = 0x418;
/// AP progress counters.
const P_AFTER: u32 = 0x41C;
const P_AFTER2: u32 = 0x420;
/// Lazy EOIs taken (apic_assist bit 0 found set).
const P_LAZY: u32 = 0x424;
const P_SPIN: u32 = 0x428;
const P_ARMED: u32 = 0x42C;
/// Where the next exception resumes (0: [`P_SKIP`] applies); 8 bytes.
const P_RESUME: u32 = 0x430;
/// The vCPU's VP assist page.
const P_ASSIST: u32 = 0x1000;
/// Marks a recorded vector (so that vector 0 is not "nothing").
const FLAGGED: u32 = 0x100;

/// Interrupt-handler frame after the common handler's four pushes:
/// vector, error code, RIP (then CS, RFLAGS, RSP, SS), 8 bytes each.
const F_VECTOR: u32 = 32;
const F_ERROR: u32 = 40;
const F_RIP: u32 = 48;
/// The same seen from a hook (one return address more).
const HOOK_FRAME: u32 = 8;

/// GDT selectors (the trampoline's GDT has the same first two).
const SEL_CODE32: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_CODE64: u16 = 0x18;
const GDT_ENTRIES: [u64; 4] = [
    0,
    0x00CF_9A00_0000_FFFF,
    0x00CF_9200_0000_FFFF,
    0x00AF_9A00_0000_FFFF,
];
/// Present 64-bit interrupt gate, DPL 0.
const GATE_INTERRUPT: u32 = 0x8E00;
/// Vectors whose exceptions push an error code (SDM Vol. 3 6.13).
const ERROR_CODE_VECTORS: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];
const NMI: u32 = 2;
const UD: u32 = 6;
const GP: u32 = 13;
/// First vector that is not an exception.
const FIRST_IRQ: u32 = 32;
/// Page-table entry bits: present, writable, 2 MiB page.
const PTE_PRESENT_RW: u64 = 0x3;
const PTE_LARGE: u64 = 0x80;
const LARGE_PAGE: u64 = 2 << 20;
const PD_PAGES: u32 = 4;

// Control registers and EFER (SDM Vol. 3 2.5, 9.8.5).
const CR4_PAE: u32 = 1 << 5;
const CR0_PG: u32 = 1 << 31;
const MSR_EFER: u32 = 0xC000_0080;
const EFER_LME: u32 = 1 << 8;

// Ports.
const COM1: u16 = 0x3F8;
const COM1_LSR: u16 = COM1 + 5;
/// LSR bit 5: transmit holding register empty.
const LSR_THRE: u32 = 1 << 5;
const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
/// fw_cfg item 0: the signature "QEMU".
const FW_CFG_SIGNATURE: u32 = 0;
const DEBUG_EXIT: u32 = 0xF4;
/// A port nothing claims: a write is a bare exit, used as a delay.
const DELAY_PORT: u32 = 0x80;
/// pc-testdev: port 0x2000 + n drives IOAPIC input n.
const TESTDEV_IRQ: u32 = 0x2000;

// IOAPIC (82093AA 3.2.4).
const IOREGSEL: u32 = 0xFEC0_0000;
const IOWIN: u32 = 0xFEC0_0010;
const IOAPIC_REDTBL: u32 = 0x10;
const RTE_REMOTE_IRR: u32 = 1 << 14;
const RTE_LEVEL: u32 = 1 << 15;
const RTE_MASKED: u32 = 1 << 16;

// Local APIC (SDM Vol. 3 11.4, 11.12): xAPIC offsets; the x2APIC MSR is
// 0x800 + offset / 16.
const MSR_APIC_BASE: u32 = 0x1B;
const APIC_BASE_EN: u32 = 1 << 11;
const APIC_BASE_EXTD: u32 = 1 << 10;
const XAPIC_BASE: u32 = 0xFEE0_0000;
const X2APIC_MSR_BASE: u32 = 0x800;
const APIC_ID: u32 = 0x20;
const APIC_VERSION: u32 = 0x30;
const APIC_TPR: u32 = 0x80;
/// Arbitration priority: xAPIC only.
const APIC_APR: u32 = 0x90;
const APIC_EOI: u32 = 0xB0;
const APIC_LDR: u32 = 0xD0;
/// Destination format: xAPIC only.
const APIC_DFR: u32 = 0xE0;
const APIC_SVR: u32 = 0xF0;
/// ISR bits 31:0 (the next 7 registers hold bits 255:32).
const APIC_ISR: u32 = 0x100;
const APIC_ESR: u32 = 0x280;
const APIC_ICR: u32 = 0x300;
const APIC_ICR_HIGH: u32 = 0x310;
const APIC_LVT_TIMER: u32 = 0x320;
const APIC_LVT_LINT1: u32 = 0x360;
/// LVT delivery mode NMI (bits 10:8 = 100b) and the mask bit.
const LVT_DELIVERY_NMI: u32 = 0x400;
const LVT_MASK: u32 = 1 << 16;
/// Settles [`Case::Lint1Nmi`] waits after masking LINT1.
const LINT1_SETTLES: u32 = 20;
/// IOAPIC redirection entry delivery mode NMI (bits 10:8 = 100b).
const RTE_DELIVERY_NMI: u32 = 0x400;
/// pc-testdev line of [`Case::IoapicNmi`].
const PIN_NMI: u32 = 9;
/// HvCallFlushVirtualAddressSpace (TLFS), a simple (memory-input) call.
const HVCALL_FLUSH_VA_SPACE: u32 = 0x0002;
/// Its 24-byte input (8-byte aligned, inside one page).
const FLUSH_INPUT: u32 = V_BUF;
/// The flushed vCPU's TPR in [`Case::PortInUnderFlush`]: class 0 (blocks
/// nothing), with bits 3:0 that a CR8 rewrite would lose.
const FLUSH_TPR: u32 = 0x0A;
/// PV flushes [`Case::PortInUnderFlush`] sends.
const IN_FLUSHES: u32 = 300;
/// The Hyper-V TPR [`Case::SyntheticXapic`] writes.
const SYNTHETIC_TPR: u32 = 0x20;
const APIC_TMICT: u32 = 0x380;
const APIC_TMCCT: u32 = 0x390;
const APIC_TDCR: u32 = 0x3E0;
/// SELF IPI: x2APIC only, write-only.
const APIC_SELF_IPI: u32 = 0x3F0;
/// SVR: software enable, spurious vector 0xFF.
const SVR_ENABLE: u32 = 0x1FF;
/// ICR delivery modes and flags.
const ICR_NMI: u32 = 0x400;
const ICR_INIT: u32 = 0x500;
const ICR_STARTUP: u32 = 0x600;
const ICR_LEVEL_ASSERT: u32 = 1 << 14;
const ICR_TRIGGER_LEVEL: u32 = 1 << 15;
const ICR_SELF: u32 = 0b01 << 18;
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;
/// STARTUP vector: the trampoline's page number.
const TRAMPOLINE_PAGE: u32 = TRAMPOLINE >> 12;
/// xAPIC ICR: the destination is in bits 31:24 of the high half.
const XAPIC_DEST_SHIFT: u32 = 24;
/// LVT timer mode TSC-deadline (bits 18:17 = 10b).
const LVT_TSC_DEADLINE: u32 = 0b10 << 17;
/// TDCR: divide by 1, by 128.
const TDCR_DIV1: u32 = 0xB;
const TDCR_DIV128: u32 = 0xA;
const MSR_TSC_DEADLINE: u32 = 0x6E0;
/// CPUID.1:ECX.TSC_DEADLINE (bit 24), CPUID.1:EDX.APIC (bit 9).
const CPUID1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const CPUID1_EDX_APIC: u32 = 1 << 9;

// Hyper-V synthetic MSRs (TLFS 7.5).
const HV_GUEST_OS_ID: u32 = 0x4000_0000;
const HV_HYPERCALL: u32 = 0x4000_0001;
const HV_EOI: u32 = 0x4000_0070;
const HV_ICR: u32 = 0x4000_0071;
const HV_TPR: u32 = 0x4000_0072;
const HV_VP_ASSIST_PAGE: u32 = 0x4000_0073;
const HV_VP_RUNTIME: u32 = 0x4000_0010;
const HV_TIME_REF_COUNT: u32 = 0x4000_0020;
const HV_REFERENCE_TSC: u32 = 0x4000_0021;
const HV_SCONTROL: u32 = 0x4000_0080;
const HV_SIEFP: u32 = 0x4000_0082;
const HV_SIMP: u32 = 0x4000_0083;
const HV_EOM: u32 = 0x4000_0084;
const HV_SINT0: u32 = 0x4000_0090;
const HV_STIMER0_CONFIG: u32 = 0x4000_00B0;
const HV_STIMER0_COUNT: u32 = 0x4000_00B1;
const HV_CRASH_P0: u32 = 0x4000_0100;
const HV_CRASH_CTL: u32 = 0x4000_0105;
/// CRASH_CTL.CRASH_NOTIFY (bit 63), as the high half of the write.
const HV_CRASH_NOTIFY_HIGH: u32 = 1 << 31;
/// What [`Case::CrashMsrs`] writes to CRASH_P0-P4.
pub const CRASH_PARAMS: [u32; 5] = [0xC0DE, 0x11, 0x22, 0x33, 0x44];
/// CPUID 0x40000003 EBX: AccessPostMessages, AccessSignalEvents; EDX:
/// GuestCrashMsrsAvailable.
const HV_POST_MESSAGES: u32 = 1 << 4;
const HV_SIGNAL_EVENTS: u32 = 1 << 5;
const HV_GUEST_CRASH_MSRS: u32 = 1 << 10;
/// Hypercall codes and the fast bit of the control word.
const HVCALL_POST_MESSAGE: u32 = 0x5C;
const HVCALL_SIGNAL_EVENT: u32 = 0x5D;
const HV_CONTROL_FAST: u32 = 1 << 16;
/// [`Case::SynicMessages`]: the connection the BSP posts to (the AP's
/// SINT 3, port id = connection id), the one the AP signals (the BSP's
/// SINT 3, event flags 0..64, port id = connection id), and one nobody
/// registered.
pub const SYNIC_MSG_CONNECTION: u32 = 0x10;
pub const SYNIC_EVENT_CONNECTION: u32 = 0x11;
const SYNIC_NO_CONNECTION: u32 = 0x99;
/// The SINT both vCPUs use, the event flag, the message type and payload.
pub const SYNIC_SINT: u32 = 3;
const SYNIC_FLAG: u32 = 5;
const SYNIC_MSG_TYPE: u32 = 1;
const SYNIC_PING: u64 = 0x474E_4950_2121_2121;
/// Bytes of one SINT's event flags (2048 bits).
const HV_EVENT_FLAGS_SIZE: u32 = 256;
/// CPUID 0x40000003: privileges (EAX) and features (EDX).
const HV_CPUID_FEATURES: u32 = 0x4000_0003;
/// EAX: HV_MSR_SYNIC_AVAILABLE, HV_MSR_SYNTIMER_AVAILABLE,
/// HV_MSR_REFERENCE_TSC_AVAILABLE; EDX: HV_STIMER_DIRECT_MODE_AVAILABLE.
const HV_VP_RUNTIME_AVAILABLE: u32 = 1;
const HV_SYNIC_AVAILABLE: u32 = 1 << 2;
const HV_SYNTIMER_AVAILABLE: u32 = 1 << 3;
const HV_REFERENCE_TSC_AVAILABLE: u32 = 1 << 9;
const HV_STIMER_DIRECT_MODE: u32 = 1 << 19;
/// STIMERx_CONFIG bits (`union hv_stimer_config`).
const STIMER_ENABLE: u32 = 1;
const STIMER_PERIODIC: u32 = 1 << 1;
const STIMER_VECTOR_SHIFT: u32 = 4;
const STIMER_DIRECT: u32 = 1 << 12;
const STIMER_SINTX_SHIFT: u32 = 16;
/// The SINT the message-mode timer uses.
const STIMER_SINT: u32 = 2;
/// One-shot delay and period, 100 ns units (1 ms, 2 ms).
const STIMER_DELAY: i32 = 10_000;
const STIMER_PERIOD: u32 = 20_000;
/// Settles that span several periods.
const STIMER_SETTLES: u32 = 10;
/// One second of reference time (100 ns units).
const REF_TIME_1S: i32 = 10_000_000;
/// A SynIC message slot, its payload offset (`struct hv_message`), and
/// HVMSG_TIMER_EXPIRED.
const HV_MESSAGE_SIZE: u32 = 256;
const MSG_PAYLOAD: u32 = 16;
const HVMSG_TIMER_EXPIRED: u32 = 0x8000_0010;
/// An MSR of the Hyper-V range that no TLFS version defines.
const HV_UNDEFINED: u32 = 0x4000_00FF;
/// GUEST_OS_ID high half: an open-source OS.
const GUEST_OS_ID_HIGH: u32 = 0x8100_0000;
/// Enable bit of HYPERCALL and VP_ASSIST_PAGE.
const HV_PAGE_ENABLE: u32 = 1;
/// A page GPA far outside any RAM a case gets.
const GPA_OUTSIDE_RAM: u32 = 0xFFFF_F000;
/// The first byte of the hypercall stub: `out imm8, al`.
const OPCODE_OUT_IMM8: u32 = 0xE6;
/// Length of `rdmsr` and `wrmsr`.
const MSR_INSN_LEN: u32 = 2;

// Bounds.
/// Delay-port iterations of a wait (each one an exit).
const WAIT_EXITS: u32 = 200_000;
/// Delay-port iterations that let a wrong extra delivery happen.
const SETTLE_EXITS: u32 = 300;
/// Iterations of a pure-spin wait (no exits).
const WAIT_SPIN: u32 = 100_000;
/// Iterations the #GP hook spins with IF=0.
const GP_HOOK_SPIN: u32 = 50;
/// Faulting RDMSRs of [`Case::GpNotInterrupted`] while the AP sends IPIs.
const GP_RACE_ROUNDS: u32 = 300;
/// [`Case::LazyEoiNoStarve`]: APIC timer count (bus cycles, 10 us) and the
/// TSC cycles the high vector's handler spins, far longer (about 20 ms at
/// 2.3 GHz) so that the timer fires while it is in service.
const LAZY_TIMER_COUNT: u32 = 10_000;
const LAZY_HANDLER_TSC: i32 = 50_000_000;
/// Far in the future: an initial count (divide by 128), TSC high half.
const FAR_TMICT: u32 = 0x7FFF_FFFF;
const FAR_TSC_HIGH: u32 = 0x100;
/// [`Case::Cr8`]: a CR8 value, a TPR value (class 5, sub-class 0xA) and
/// the class the held interrupt is blocked at.
const CR8_PROBE: u32 = 3;
const TPR_PROBE: u32 = 0x5A;
const CR8_CLASS: u32 = 5;
/// TPR class 15: blocks every fixed interrupt.
const TPR_BLOCK_ALL: u32 = 0xF0;
/// TPR[7:4] is CR8 (SDM Vol. 3 11.8.6.1).
const TPR_CLASS_SHIFT: u32 = 4;

// Vectors the cases use.
const VEC_EDGE: u32 = 0x50;
const VEC_LEVEL: u32 = 0x51;
const VEC_STIMER: u32 = 0x60;
const VEC_SINT: u32 = 0x61;
const VEC_AEOI: u32 = 0x62;
/// SINTx bits: masked (16), AutoEOI (17).
const SINT_MASKED: u32 = 1 << 16;
const SINT_AUTO_EOI: u32 = 1 << 17;
const VEC_LEVEL_HELD: u32 = 0x52;
const VEC_MASKED: u32 = 0x53;
const VEC_COALESCE: u32 = 0x54;
const VEC_CR8: u32 = 0x55;
const VEC_LEVEL_LAZY: u32 = 0x58;
const VEC_LOW: u32 = 0x50;
const VEC_HIGH: u32 = 0x90;
const VEC_HLT: u32 = 0x60;
const VEC_HLT2: u32 = 0x61;
const VEC_GP_PENDING: u32 = 0x70;
const VEC_GP_RACE: u32 = 0x71;
const VEC_TIMER: u32 = 0x80;
/// A vector that, if a refused write were taken, would only pend (IF=0).
const VEC_HARMLESS: u32 = 0x31;
/// Vectors 0-15 are illegal in an IPI (SDM Vol. 3 11.5.3, ESR bits 5/6).
const VEC_ILLEGAL: u32 = 3;
// pc-testdev lines (IOAPIC pins) the cases use.
const PIN_EDGE: u32 = 10;
const PIN_LEVEL: u32 = 11;
const PIN_LEVEL_HELD: u32 = 12;
const PIN_MASKED: u32 = 13;
const PIN_COALESCE: u32 = 14;
const PIN_LEVEL_LAZY: u32 = 15;

/// What a conformance kernel checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// A pc-testdev line through an edge IOAPIC entry: one interrupt per
    /// rising edge, none for a write that keeps the line high.
    IoapicEdge,
    /// A level entry whose handler does not EOI: Remote IRR is set while
    /// in service, no re-delivery meanwhile, cleared by the EOI, nothing
    /// more with the line low. Value [`ISR_SEEN`]: the ISR bit in the
    /// handler.
    IoapicLevelRemoteIrr,
    /// A level line still asserted at each EOI is delivered again, until
    /// the handler (third time) lowers it.
    IoapicLevelStillAsserted,
    /// A level line asserted while its entry is masked is delivered when
    /// the entry is unmasked. Value [`ISR_SEEN`]: the ISR bit in the
    /// handler.
    IoapicMaskedLevel,
    /// Two rising edges before the first is serviced (IF=0) coalesce into
    /// one interrupt in IRR.
    IoapicEdgesCoalesce,
    /// `rep insb` of fw_cfg's signature item reads "QEMU".
    RepInsbFwCfg,
    /// One `rep outsb` of [`REP_OUTSB_TEXT`] to COM1.
    RepOutsbCom1,
    /// NMIs by ICR (delivery mode NMI): to the sender's own APIC ID and to
    /// the other vCPU, which sits in `cli; hlt` and must wake; twice each.
    /// Value 0: the AP's wakes from HLT (NMI-less ones are reported, not
    /// failed).
    Nmi(Apic),
    /// The AP halts with `cli; hlt` and a self-IPI pending: it must stay
    /// halted (the BSP waits, then NMIs it awake); then `sti; hlt` with
    /// an interrupt pending wakes at once.
    CliHlt,
    /// A STARTUP IPI to the AP halted in `cli; hlt` (not waiting for SIPI):
    /// the SDM (Vol. 3 11.6.1) has it ignored; KVM wakes the vCPU
    /// (`kvm_vcpu_has_events` counts the pending SIPI). Value 0: the AP's
    /// wakes, compared between the irqchips; it must not restart.
    StraySipi,
    /// In 64-bit mode: CR8 and TPR mirror each other (CR8 = TPR bits 7:4),
    /// TPR bits 3:0 survive a CR8 read, an interrupt of class <= CR8 is
    /// held and delivered once CR8 is lowered (value
    /// [`CR8_DELIVERY_SLOT`] says whether it took another exit).
    Cr8,
    /// A #GP from RDMSR of an undefined Hyper-V MSR, taken while a fixed
    /// interrupt is (or becomes) pending with IF=1, is not interrupted by
    /// it and the interrupt is not lost: after a TPR lowering, in an STI
    /// shadow, after a Hyper-V TPR lowering and while the AP sends IPIs.
    GpNotInterrupted,
    /// Re-arms the APIC timer far in the future `iterations` times: the
    /// x2APIC initial count, or with `deadline` IA32_TSC_DEADLINE (skipped
    /// with value 1 = 0 when CPUID lacks TSC-deadline).
    TimerRearm {
        /// TSC-deadline mode instead of one-shot.
        deadline: bool,
        /// Re-arms.
        iterations: u32,
    },
    /// Calling the hypercall page after it was disabled raises #UD at the
    /// page's `out` instruction.
    HypercallUd,
    /// Enabling HYPERCALL or VP_ASSIST_PAGE at a GPA outside RAM raises #GP
    /// and leaves the MSR unchanged.
    HvPageOutsideRam,
    /// An INIT level de-assert IPI to a running AP is ignored.
    InitDeassert(Apic),
    /// CPUID.1:EDX.APIC follows IA32_APIC_BASE.EN.
    CpuidApicBit,
    /// The Hyper-V EOI, ICR and TPR MSRs with reserved bits set raise #GP.
    SyntheticMsrReserved,
    /// The Hyper-V EOI, ICR and TPR MSRs raise #GP with the APIC
    /// hardware-disabled.
    SyntheticMsrApicDisabled,
    /// A high-vector handler that ends with Linux's lazy EOI, during which
    /// the APIC timer pends a lower vector: the lower vector must arrive
    /// while the guest spins without exits. Values: 0 apic_assist at the
    /// handler's entry, 1 the lower vector's count in the handler, 2 lazy
    /// EOIs taken, 3 apic_assist just before the EOI decision.
    LazyEoiNoStarve,
    /// Values both irqchips must agree on: value 0 the APIC version, 1 the
    /// ESR after an illegal-vector self-IPI, 2 a mask of the x2APIC MSR
    /// accesses that raised #GP (xAPIC: x2APIC MSRs in xAPIC mode).
    Agreement(Apic),
    /// A level IOAPIC interrupt completed by lazy EOI still reaches the
    /// IOAPIC: the still-asserted line is delivered again. Value 0: lazy
    /// EOIs taken; 2: apic_assist as found at entry, OR-ed (0: never
    /// armed, the lazy path was not exercised).
    LevelLazyEoi,
    /// The AP reads fw_cfg's signature with single `in` instructions in a
    /// loop while the BSP sends it PV TLB flushes
    /// (HvCallFlushVirtualAddressSpace): every byte must come in order,
    /// each `in` executed once, and the AP's TPR (with bits 3:0 set) must
    /// survive the flushes. Values: 0 AP rounds, 1 bytes out of order,
    /// 2 flushes sent, 3 the AP's TPR at the end.
    PortInUnderFlush,
    /// An IOAPIC entry with delivery mode NMI: raising its pc-testdev line
    /// delivers an NMI (through an MSI).
    IoapicNmi,
    /// LVT LINT1 in NMI mode: the NMI pin the test raises
    /// (`Machine::external_nmi`) after [`LINT1_READY`] delivers an NMI;
    /// after [`LINT1_MASKED`], with the LVT masked, a second one is
    /// dropped; after [`LINT1_APIC_DISABLED`] (IA32_APIC_BASE.EN = 0) a
    /// third is an NMI again.
    Lint1Nmi,
    /// The reference TSC page (HV_X64_MSR_REFERENCE_TSC): when CPUID
    /// publishes it (value 0 = 1; else skipped with 0), the page's
    /// sequence is valid and its scale/offset applied to the guest's own
    /// TSC give the same time as TIME_REF_COUNT read right after (value
    /// 2: the MSR's lead, 100 ns units).
    ReferenceTscPage,
    /// Synthetic timer 0 in direct mode (published: value 0 = 1): a
    /// one-shot expiry raises its vector once, a periodic timer keeps
    /// raising it, and disabling it stops it.
    StimerDirect,
    /// Synthetic timer 0 in message mode on SINT 2 (published: value 0 =
    /// 1): the expiry writes HVMSG_TIMER_EXPIRED with the timer index and
    /// the expiration time into the message page and raises SINT 2's
    /// vector; EOM after freeing the slot. Value 1: the expiration time
    /// written (low half); 2: VP_RUNTIME (low half, non-zero).
    StimerMessage,
    /// SynIC messages and events between two vCPUs (published: value 0 =
    /// 1), on connections the test registers with the VMM
    /// ([`SYNIC_MSG_CONNECTION`] to the AP's SINT 3,
    /// [`SYNIC_EVENT_CONNECTION`] to the BSP's SINT 3): the BSP posts a
    /// message (HvPostMessage), the AP finds it in its message page, frees
    /// the slot, EOMs and signals event flag 5 (fast HvSignalEvent), which
    /// the BSP finds set in its event flags page. Value 1: the status of a
    /// post to an unknown connection; 2: of a second signal of the same
    /// flag (still set: no interrupt).
    SynicMessages,
    /// AutoEOI on SINT 2 (published SynIC and timers: value 0 = 1): two
    /// message-mode timer expiries arrive on SINT 2's vector, which the
    /// guest never EOIs, and it is not left in service (ISR clear) either
    /// time; then SINT 2 is masked. Value 1: deliveries. Value
    /// [`ISR_SEEN`]: the ISR bit of an ordinary self-IPI as its handler
    /// saw it first (0: this LAPIC keeps no ISR bit, so "not left in
    /// service" proves nothing about it).
    AutoEoi,
    /// Crash MSRs: CRASH_P0-P4 then CRASH_CTL.CRASH_NOTIFY; the VMM ends
    /// the run with the guest's crash report. Reaching the end is a
    /// failure unless the MSRs are not published (value 0 = 0).
    CrashMsrs,
    /// xAPIC mode: writes of the Hyper-V TPR and EOI MSRs. Values: 0 the
    /// TPR write faulted (1), 1 the MMIO TPR after it, 2 the EOI write
    /// faulted (1). The userspace irqchip serves them; the kernel irqchip
    /// refuses them with #GP (it cannot change an xAPIC-mode in-kernel
    /// APIC without losing interrupts).
    SyntheticXapic,
    /// xAPIC mode: fixed physical IPIs, sent through HV_X64_MSR_ICR,
    /// follow the destination's APIC ID. Two to the BSP's own ID arrive
    /// (the second, where the VMM keeps one, from the sender's cache of
    /// its last destination); after the BSP writes a new xAPIC ID one to
    /// the old ID reaches nobody and one to the new ID arrives; with the
    /// ID written back, the new one reaches nobody and the old ID works
    /// again (through the xAPIC page's ICR).
    IpiFollowsApicId,
}

/// Console line [`Case::Lint1Nmi`] prints when it waits for the first
/// NMI on LINT1.
pub const LINT1_READY: &str = "conformance: LINT1 ready";
/// Console line [`Case::Lint1Nmi`] prints once LINT1 is masked.
pub const LINT1_MASKED: &str = "conformance: LINT1 masked";
/// Console line [`Case::Lint1Nmi`] prints once the APIC is disabled.
pub const LINT1_APIC_DISABLED: &str = "conformance: APIC disabled";

impl Case {
    /// vCPUs the case needs.
    pub fn vcpus(self) -> u32 {
        match self {
            Case::Nmi(_)
            | Case::PortInUnderFlush
            | Case::CliHlt
            | Case::StraySipi
            | Case::GpNotInterrupted
            | Case::InitDeassert(_)
            | Case::SynicMessages => 2,
            _ => 1,
        }
    }

    /// The APIC mode the case runs in.
    pub fn apic(self) -> Apic {
        match self {
            Case::Nmi(a) | Case::InitDeassert(a) | Case::Agreement(a) => a,
            Case::CpuidApicBit
            | Case::SyntheticMsrReserved
            | Case::SyntheticMsrApicDisabled
            | Case::SyntheticXapic
            | Case::IpiFollowsApicId => Apic::Xapic,
            _ => Apic::X2apic,
        }
    }
}

/// An assembled case.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The multiboot ELF32 image.
    pub image: Vec<u8>,
    /// What each failure code means: code `n` is `checks[n - 1]`.
    pub checks: Vec<&'static str>,
}

impl Kernel {
    /// The check a failure code names (`None` for 0 or an unknown code).
    pub fn check(&self, code: u32) -> Option<&'static str> {
        self.checks.get(code.checked_sub(1)? as usize).copied()
    }
}

/// A parsed result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// 0 = pass, else a failure code.
    pub code: u32,
    /// The case's values.
    pub values: [u32; VALUES],
    /// The whole line.
    pub line: String,
}

/// Finds and parses the result line in console output.
pub fn parse(console: &str) -> Option<Outcome> {
    let line = console
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .find(|l| l.starts_with(RESULT_PREFIX))?;
    let rest = line.strip_prefix(RESULT_PREFIX)?;
    let (code, rest) = rest.split_once(" r=")?;
    let mut values = [0u32; VALUES];
    let mut it = rest.split_whitespace();
    for v in &mut values {
        *v = u32::from_str_radix(it.next()?, 16).ok()?;
    }
    Some(Outcome {
        code: code.parse().ok()?,
        values,
        line: line.to_string(),
    })
}

/// Assembles the kernel of `case`.
pub fn build(case: Case) -> Result<Kernel, String> {
    Builder::new(case).map_err(|e| e.to_string())?.finish()
}

/// How a hook is chosen for a vector.
#[derive(Clone, Copy)]
enum Hook {
    Eoi,
    Custom(CodeLabel),
}

/// How a wait lets time pass.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// One delay-port exit per iteration.
    Exits,
    /// Pure spin: the vCPU stays in guest mode.
    Spin,
}

/// Address of a per-vCPU variable.
const fn pc(cpu: u32, off: u32) -> u32 {
    PERCPU + cpu * PERCPU_SIZE + off
}

/// Address of vCPU `cpu`'s delivery count of `vector`.
const fn count(cpu: u32, vector: u32) -> u32 {
    pc(cpu, P_COUNT + vector * 4)
}

/// Address of result value `i`.
const fn val(i: u32) -> u32 {
    V_R + 4 * i
}

struct Builder {
    case: Case,
    apic: Apic,
    /// Main code at [`MAIN`].
    a: CodeAssembler,
    /// Common handler and hooks at [`COMMON`].
    h: CodeAssembler,
    checks: Vec<&'static str>,
    fails: Vec<(CodeLabel, u32)>,
    hooks: Vec<(u32, Hook)>,
    strings: Vec<u8>,
    report: CodeLabel,
    pass: CodeLabel,
    puts: CodeLabel,
    putc: CodeLabel,
    putdec: CodeLabel,
    puthexn: CodeLabel,
    ap64: CodeLabel,
    ap_body: Option<CodeLabel>,
    hook_eoi: CodeLabel,
    hook_lazy: CodeLabel,
    hook_fault: CodeLabel,
    common: CodeLabel,
    /// Failure code of an unexpected exception.
    unexpected: u32,
}

impl Builder {
    fn new(case: Case) -> Result<Self, IcedError> {
        let mut a = CodeAssembler::new(64)?;
        let mut h = CodeAssembler::new(64)?;
        let mut b = Builder {
            case,
            apic: case.apic(),
            report: a.create_label(),
            pass: a.create_label(),
            puts: a.create_label(),
            putc: a.create_label(),
            putdec: a.create_label(),
            puthexn: a.create_label(),
            ap64: a.create_label(),
            ap_body: None,
            hook_eoi: h.create_label(),
            hook_lazy: h.create_label(),
            hook_fault: h.create_label(),
            common: h.create_label(),
            a,
            h,
            checks: Vec::new(),
            fails: Vec::new(),
            hooks: Vec::new(),
            strings: Vec::new(),
            unexpected: 0,
        };
        b.unexpected = b.code("an unexpected exception (see fault=)");
        b.main()?;
        Ok(b)
    }

    /// Registers a check; returns its failure code.
    fn code(&mut self, what: &'static str) -> u32 {
        self.checks.push(what);
        self.checks.len() as u32
    }

    /// A label in the main code that fails with `what`.
    fn fail(&mut self, what: &'static str) -> CodeLabel {
        let l = self.a.create_label();
        let code = self.code(what);
        self.fails.push((l, code));
        l
    }

    /// Adds a NUL-terminated string; returns its address.
    fn string(&mut self, s: &str) -> u32 {
        let at = STRINGS + self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        at
    }

    fn hook(&mut self, vector: u32, hook: Hook) {
        self.hooks.push((vector, hook));
    }

    // ---- main-code helpers -------------------------------------------

    fn puts(&mut self, s: &str) -> Result<(), IcedError> {
        let at = self.string(s);
        self.a.mov(esi, at)?;
        self.a.call(self.puts)
    }

    fn wrmsr(&mut self, msr: u32, low: u32, high: u32) -> Result<(), IcedError> {
        self.a.mov(ecx, msr)?;
        self.a.mov(eax, low)?;
        self.a.mov(edx, high)?;
        self.a.wrmsr()
    }

    fn rdmsr(&mut self, msr: u32) -> Result<(), IcedError> {
        self.a.mov(ecx, msr)?;
        self.a.rdmsr()
    }

    fn apic_write(&mut self, off: u32, value: u32) -> Result<(), IcedError> {
        match self.apic {
            Apic::X2apic => self.wrmsr(X2APIC_MSR_BASE + off / 16, value, 0),
            Apic::Xapic => mmio_write(&mut self.a, XAPIC_BASE + off, value),
        }
    }

    /// Reads an APIC register into EAX.
    fn apic_read(&mut self, off: u32) -> Result<(), IcedError> {
        match self.apic {
            Apic::X2apic => self.rdmsr(X2APIC_MSR_BASE + off / 16),
            Apic::Xapic => mmio_read(&mut self.a, XAPIC_BASE + off),
        }
    }

    /// Sends the IPI `low` to APIC ID `dest`.
    fn icr(&mut self, dest: u32, low: u32) -> Result<(), IcedError> {
        match self.apic {
            Apic::X2apic => self.wrmsr(X2APIC_MSR_BASE + APIC_ICR / 16, low, dest),
            Apic::Xapic => {
                mmio_write(
                    &mut self.a,
                    XAPIC_BASE + APIC_ICR_HIGH,
                    dest << XAPIC_DEST_SHIFT,
                )?;
                mmio_write(&mut self.a, XAPIC_BASE + APIC_ICR, low)
            }
        }
    }

    /// Local APIC on in the case's mode (this vCPU).
    fn apic_on(&mut self) -> Result<(), IcedError> {
        if self.apic == Apic::X2apic {
            self.rdmsr(MSR_APIC_BASE)?;
            self.a.or(eax, APIC_BASE_EN | APIC_BASE_EXTD)?;
            self.a.wrmsr()?;
        }
        self.apic_write(APIC_SVR, SVR_ENABLE)
    }

    /// Waits until the dword at `at` reaches `want` (else fails with
    /// `missing`), lets time pass with exits, and fails with `extra` if it
    /// went past it.
    fn wait_exactly(
        &mut self,
        at: u32,
        want: u32,
        missing: &'static str,
        extra: &'static str,
    ) -> Result<(), IcedError> {
        self.wait(at, want, Wait::Exits, missing)?;
        self.settle()?;
        self.expect_eq(at, want, extra)
    }

    /// Waits until the dword at `at` is at least `want`, else fails.
    fn wait(&mut self, at: u32, want: u32, how: Wait, what: &'static str) -> Result<(), IcedError> {
        let fail = self.fail(what);
        self.wait_or(at, want, how, fail)
    }

    fn wait_or(&mut self, at: u32, want: u32, how: Wait, fail: CodeLabel) -> Result<(), IcedError> {
        let a = &mut self.a;
        let mut again = a.create_label();
        let mut ok = a.create_label();
        a.mov(
            ecx,
            if how == Wait::Exits {
                WAIT_EXITS
            } else {
                WAIT_SPIN
            },
        )?;
        a.set_label(&mut again)?;
        a.cmp(dword_ptr(at), want)?;
        a.jae(ok)?;
        if how == Wait::Exits {
            a.out(DELAY_PORT, al)?;
        }
        a.dec(ecx)?;
        a.jnz(again)?;
        a.jmp(fail)?;
        a.set_label(&mut ok)?;
        Ok(())
    }

    /// Waits until the dword at `at` exceeds value `slot`, else fails.
    fn wait_above(&mut self, at: u32, slot: u32, what: &'static str) -> Result<(), IcedError> {
        let fail = self.fail(what);
        let a = &mut self.a;
        let mut again = a.create_label();
        let mut ok = a.create_label();
        a.mov(ecx, WAIT_EXITS)?;
        a.set_label(&mut again)?;
        a.mov(eax, dword_ptr(val(slot)))?;
        a.cmp(dword_ptr(at), eax)?;
        a.ja(ok)?;
        a.out(DELAY_PORT, al)?;
        a.dec(ecx)?;
        a.jnz(again)?;
        a.jmp(fail)?;
        a.set_label(&mut ok)?;
        Ok(())
    }

    /// Lets time pass with exits (for a wrong extra delivery to show).
    fn settle(&mut self) -> Result<(), IcedError> {
        let a = &mut self.a;
        let mut again = a.create_label();
        a.mov(ecx, SETTLE_EXITS)?;
        a.set_label(&mut again)?;
        a.out(DELAY_PORT, al)?;
        a.dec(ecx)?;
        a.jnz(again)
    }

    fn expect_eq(&mut self, at: u32, want: u32, what: &'static str) -> Result<(), IcedError> {
        let fail = self.fail(what);
        self.a.cmp(dword_ptr(at), want)?;
        self.a.jne(fail)
    }

    /// Stores EAX as result value `slot`.
    fn save(&mut self, slot: u32) -> Result<(), IcedError> {
        self.a.mov(dword_ptr(val(slot)), eax)
    }

    /// Arms a skip of `len` bytes for the next exception of the BSP and
    /// clears its fault record.
    fn arm_skip(&mut self, len: u32) -> Result<(), IcedError> {
        self.a.mov(dword_ptr(pc(0, P_FAULT_VEC)), 0)?;
        self.a.mov(dword_ptr(pc(0, P_SKIP)), len)
    }

    /// After an armed instruction: disarm, and fail unless it raised
    /// `vector`.
    fn expect_fault(&mut self, vector: u32, what: &'static str) -> Result<(), IcedError> {
        let fail = self.fail(what);
        self.a.mov(dword_ptr(pc(0, P_SKIP)), 0)?;
        self.a
            .cmp(dword_ptr(pc(0, P_FAULT_VEC)), vector | FLAGGED)?;
        self.a.jne(fail)
    }

    /// `wrmsr` that must raise #GP.
    fn wrmsr_gp(
        &mut self,
        msr: u32,
        low: u32,
        high: u32,
        what: &'static str,
    ) -> Result<(), IcedError> {
        self.arm_skip(MSR_INSN_LEN)?;
        self.wrmsr(msr, low, high)?;
        self.expect_fault(GP, what)
    }

    /// Runs one MSR access and sets `bit` of value 2 if it raised #GP.
    fn gp_bit(&mut self, bit: u32, msr: u32, write: Option<(u32, u32)>) -> Result<(), IcedError> {
        self.arm_skip(MSR_INSN_LEN)?;
        match write {
            Some((low, high)) => self.wrmsr(msr, low, high)?,
            None => self.rdmsr(msr)?,
        }
        let a = &mut self.a;
        let mut no = a.create_label();
        a.mov(dword_ptr(pc(0, P_SKIP)), 0)?;
        a.cmp(dword_ptr(pc(0, P_FAULT_VEC)), GP | FLAGGED)?;
        a.jne(no)?;
        a.or(dword_ptr(val(2)), 1u32 << bit)?;
        a.set_label(&mut no)?;
        Ok(())
    }

    /// Writes redirection entry `pin`: destination APIC ID 0, `low`.
    fn rte(&mut self, pin: u32, low: u32) -> Result<(), IcedError> {
        let a = &mut self.a;
        mmio_write(a, IOREGSEL, IOAPIC_REDTBL + 2 * pin + 1)?;
        mmio_write(a, IOWIN, 0)?;
        mmio_write(a, IOREGSEL, IOAPIC_REDTBL + 2 * pin)?;
        mmio_write(a, IOWIN, low)
    }

    /// Reads the low half of redirection entry `pin` into EAX.
    fn rte_low(&mut self, pin: u32) -> Result<(), IcedError> {
        mmio_write(&mut self.a, IOREGSEL, IOAPIC_REDTBL + 2 * pin)?;
        mmio_read(&mut self.a, IOWIN)
    }

    /// Drives pc-testdev line `pin`.
    fn line(a: &mut CodeAssembler, pin: u32, level: bool) -> Result<(), IcedError> {
        a.mov(dx, TESTDEV_IRQ + pin)?;
        a.mov(al, u32::from(level))?;
        a.out(dx, al)
    }

    fn cpuid1(&mut self) -> Result<(), IcedError> {
        self.a.mov(eax, 1)?;
        self.a.cpuid()
    }

    /// Enables the VP assist page of the BSP (after a guest OS ID).
    fn vp_assist_on(&mut self) -> Result<(), IcedError> {
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_VP_ASSIST_PAGE, pc(0, P_ASSIST) | HV_PAGE_ENABLE, 0)
    }

    // ---- the kernel ---------------------------------------------------

    fn main(&mut self) -> Result<(), IcedError> {
        self.a.mov(esp, pc(0, PERCPU_SIZE))?;
        self.a.lidt(ptr(IDTR))?;
        self.a.cld()?;
        let name = format!("conformance: {:?}\n", self.case);
        self.puts(&name)?;
        self.apic_on()?;
        let vcpus = self.case.vcpus();
        if vcpus > 1 {
            self.start_aps(vcpus)?;
        }
        self.body()?;
        self.a.jmp(self.pass)?;
        self.tail(vcpus)
    }

    fn start_aps(&mut self, vcpus: u32) -> Result<(), IcedError> {
        self.a.mov(esi, TRAMP_IMAGE)?;
        self.a.mov(edi, TRAMPOLINE)?;
        self.a.mov(ecx, TRAMP_SIZE)?;
        self.a.rep().movsb()?;
        // INIT, then one STARTUP: a second one (SDM Vol. 3 9.4.4.1) may
        // reach an AP that already runs and halts, and wakes it in both
        // irqchips ([`Case::StraySipi`]).
        self.icr(0, ICR_INIT | ICR_LEVEL_ASSERT | ICR_ALL_BUT_SELF)?;
        self.icr(0, ICR_STARTUP | TRAMPOLINE_PAGE | ICR_ALL_BUT_SELF)?;
        self.wait(V_READY, vcpus - 1, Wait::Exits, "the APs did not start")
    }

    /// Pass (after the checks every case shares), the report, the
    /// failure exits, the print routines and the AP entry.
    fn tail(&mut self, vcpus: u32) -> Result<(), IcedError> {
        self.a.set_label(&mut self.pass)?;
        for cpu in 0..vcpus {
            self.expect_eq(
                pc(cpu, P_NESTED),
                0,
                "a handler was interrupted by a maskable interrupt (see nested=)",
            )?;
        }
        self.a.xor(eax, eax)?;
        self.a.set_label(&mut self.report)?;
        self.a.cli()?;
        self.a.mov(dword_ptr(V_CODE), eax)?;
        self.puts(RESULT_PREFIX)?;
        self.a.mov(eax, dword_ptr(V_CODE))?;
        self.a.call(self.putdec)?;
        self.puts(" r=")?;
        for i in 0..VALUES as u32 {
            self.a.mov(eax, dword_ptr(val(i)))?;
            self.a.mov(ecx, 8)?;
            self.a.call(self.puthexn)?;
            self.a.mov(al, u32::from(b' '))?;
            self.a.call(self.putc)?;
        }
        for cpu in 0..vcpus {
            self.puts(&format!("| cpu{cpu} fault="))?;
            self.hex3(pc(cpu, P_FAULT_VEC))?;
            self.a.mov(al, u32::from(b'@'))?;
            self.a.call(self.putc)?;
            self.a.mov(eax, dword_ptr(pc(cpu, P_FAULT_EIP)))?;
            self.a.mov(ecx, 8)?;
            self.a.call(self.puthexn)?;
            self.puts(" nested=")?;
            self.hex3(pc(cpu, P_NESTED))?;
            self.puts(" n:")?;
            let a = &mut self.a;
            let mut each = a.create_label();
            let mut next = a.create_label();
            a.xor(edi, edi)?;
            a.set_label(&mut each)?;
            a.mov(eax, dword_ptr(rdi * 4 + count(cpu, 0)))?;
            a.test(eax, eax)?;
            a.jz(next)?;
            a.push(rax)?;
            a.mov(al, u32::from(b' '))?;
            a.call(self.putc)?;
            a.mov(eax, edi)?;
            a.shl(eax, 24)?;
            a.mov(ecx, 2)?;
            a.call(self.puthexn)?;
            a.mov(al, u32::from(b'='))?;
            a.call(self.putc)?;
            a.pop(rax)?;
            a.call(self.putdec)?;
            a.set_label(&mut next)?;
            a.inc(edi)?;
            a.cmp(edi, 256)?;
            a.jb(each)?;
            self.a.mov(al, u32::from(b' '))?;
            self.a.call(self.putc)?;
        }
        self.a.mov(al, u32::from(b'\n'))?;
        self.a.call(self.putc)?;
        self.a.mov(eax, dword_ptr(V_CODE))?;
        self.a.out(DEBUG_EXIT, eax)?;
        self.halt_forever()?;

        for (mut l, code) in std::mem::take(&mut self.fails) {
            self.a.set_label(&mut l)?;
            self.a.mov(eax, code)?;
            self.a.jmp(self.report)?;
        }
        self.print_routines()?;
        self.ap_entry()
    }

    fn halt_forever(&mut self) -> Result<(), IcedError> {
        let mut halt = self.a.create_label();
        self.a.set_label(&mut halt)?;
        self.a.cli()?;
        self.a.hlt()?;
        self.a.jmp(halt)
    }

    /// Prints the low 12 bits of the dword at `at` as 3 hex digits.
    fn hex3(&mut self, at: u32) -> Result<(), IcedError> {
        self.a.mov(eax, dword_ptr(at))?;
        self.a.shl(eax, 20)?;
        self.a.mov(ecx, 3)?;
        self.a.call(self.puthexn)
    }

    fn print_routines(&mut self) -> Result<(), IcedError> {
        let hex = self.string("0123456789abcdef");
        mbkernel::emit_puts(&mut self.a, &mut self.puts)?;
        let a = &mut self.a;
        // putc: AL; clobbers EAX, EBX, EDX.
        let mut wait = a.create_label();
        a.set_label(&mut self.putc)?;
        a.mov(bl, al)?;
        a.mov(dx, u32::from(COM1_LSR))?;
        a.set_label(&mut wait)?;
        a.in_(al, dx)?;
        a.test(al, LSR_THRE)?;
        a.jz(wait)?;
        a.mov(al, bl)?;
        a.mov(dx, u32::from(COM1))?;
        a.out(dx, al)?;
        a.ret()?;
        // puthexn: the top ECX nibbles of EAX; clobbers EAX-EDX.
        a.set_label(&mut self.puthexn)?;
        let digit = self.puthexn;
        a.rol(eax, 4)?;
        a.push(rax)?;
        a.and(eax, 0xF)?;
        a.mov(al, byte_ptr(rax + hex))?;
        a.call(self.putc)?;
        a.pop(rax)?;
        a.dec(ecx)?;
        a.jnz(digit)?;
        a.ret()?;
        // putdec: EAX in decimal; clobbers EAX-EDX, ESI.
        let mut dec = a.create_label();
        a.set_label(&mut self.putdec)?;
        a.mov(esi, V_NUMBUF + 15)?;
        a.mov(byte_ptr(esi), 0)?;
        a.mov(ecx, 10)?;
        a.set_label(&mut dec)?;
        a.xor(edx, edx)?;
        a.div(ecx)?;
        a.add(dl, u32::from(b'0'))?;
        a.dec(esi)?;
        a.mov(byte_ptr(esi), dl)?;
        a.test(eax, eax)?;
        a.jnz(dec)?;
        a.jmp(self.puts)
    }

    /// AP in 64-bit mode (from [`entry32`]): takes an index, its block's
    /// stack, the IDT and its APIC, then runs the case's AP part
    /// (default: idle with interrupts on).
    fn ap_entry(&mut self) -> Result<(), IcedError> {
        let mut park = self.a.create_label();
        let a = &mut self.a;
        a.set_label(&mut self.ap64)?;
        a.mov(eax, 1)?;
        a.lock().xadd(dword_ptr(V_APS), eax)?;
        a.inc(eax)?;
        a.cmp(eax, MAX_VCPUS)?;
        a.jae(park)?;
        a.shl(eax, PERCPU_SIZE.trailing_zeros())?;
        a.add(eax, PERCPU + PERCPU_SIZE)?;
        a.mov(esp, eax)?;
        a.lidt(ptr(IDTR))?;
        self.apic_on()?;
        self.a.lock().inc(dword_ptr(V_READY))?;
        match self.ap_body {
            Some(l) => self.a.jmp(l)?,
            None => {
                let mut idle = self.a.create_label();
                self.a.set_label(&mut idle)?;
                self.a.sti()?;
                self.a.hlt()?;
                self.a.jmp(idle)?;
            }
        }
        self.a.set_label(&mut park)?;
        self.a.cli()?;
        self.halt_forever()
    }

    // ---- the handlers ---------------------------------------------------

    /// The common handler and the shared hooks (in `h`).
    fn handlers(&mut self, report: u64) -> Result<(), IcedError> {
        let apic = self.apic;
        let unexpected = self.unexpected;
        let h = &mut self.h;
        let mut hook = h.create_label();
        let mut done = h.create_label();
        let mut nested = h.create_label();
        h.set_label(&mut self.common)?;
        h.push(rax)?;
        h.push(rcx)?;
        h.push(rdx)?;
        h.push(rbx)?;
        h.mov(rbx, rsp)?;
        h.and(rbx, !(PERCPU_SIZE as i32 - 1))?;
        h.mov(ecx, dword_ptr(rsp + F_VECTOR))?;
        h.inc(dword_ptr(rbx + rcx * 4 + P_COUNT))?;
        h.mov(dword_ptr(rbx + P_LAST_VEC), ecx)?;
        h.cmp(ecx, NMI)?;
        h.je(hook)?;
        h.cmp(dword_ptr(rbx + P_INSIDE), 0)?;
        h.jne(nested)?;
        h.mov(rax, qword_ptr(rsp + F_RIP))?;
        h.cmp(rax, STUBS as i32)?;
        h.jb(hook)?;
        h.cmp(rax, HANDLERS_END as i32)?;
        h.jae(hook)?;
        h.set_label(&mut nested)?;
        h.lea(eax, ptr(rcx + FLAGGED))?;
        h.mov(dword_ptr(rbx + P_NESTED), eax)?;
        h.set_label(&mut hook)?;
        h.mov(eax, dword_ptr(rcx * 4 + HOOKS))?;
        h.test(eax, eax)?;
        h.jz(done)?;
        h.call(rax)?;
        h.set_label(&mut done)?;
        h.pop(rbx)?;
        h.pop(rdx)?;
        h.pop(rcx)?;
        h.pop(rax)?;
        h.add(rsp, 16)?;
        h.iretq()?;

        // Hooks: RBX = the vCPU's block, ECX = vector; may clobber RAX,
        // RCX, RDX.
        h.set_label(&mut self.hook_eoi)?;
        match apic {
            Apic::X2apic => {
                h.mov(ecx, X2APIC_MSR_BASE + APIC_EOI / 16)?;
                h.xor(eax, eax)?;
                h.xor(edx, edx)?;
                h.wrmsr()?;
            }
            Apic::Xapic => mmio_write(h, XAPIC_BASE + APIC_EOI, 0)?,
        }
        h.ret()?;
        // Linux hv_apic_eoi_write: no EOI when apic_assist bit 0 was set.
        let mut eoi = h.create_label();
        h.set_label(&mut self.hook_lazy)?;
        h.xor(eax, eax)?;
        h.xchg(dword_ptr(rbx + P_ASSIST), eax)?;
        h.test(al, 1)?;
        h.jz(eoi)?;
        h.inc(dword_ptr(rbx + P_LAZY))?;
        h.ret()?;
        h.set_label(&mut eoi)?;
        h.mov(ecx, HV_EOI)?;
        h.xor(eax, eax)?;
        h.xor(edx, edx)?;
        h.wrmsr()?;
        h.ret()?;
        // Exceptions: record; skip the armed length, or fail.
        let mut fatal = h.create_label();
        h.set_label(&mut self.hook_fault)?;
        h.lea(eax, ptr(rcx + FLAGGED))?;
        h.mov(dword_ptr(rbx + P_FAULT_VEC), eax)?;
        h.mov(eax, dword_ptr(rsp + HOOK_FRAME + F_RIP))?;
        h.mov(dword_ptr(rbx + P_FAULT_EIP), eax)?;
        h.mov(eax, dword_ptr(rsp + HOOK_FRAME + F_ERROR))?;
        h.mov(dword_ptr(rbx + P_FAULT_ERR), eax)?;
        let mut skip = h.create_label();
        h.mov(rax, qword_ptr(rbx + P_RESUME))?;
        h.test(rax, rax)?;
        h.jz(skip)?;
        h.mov(qword_ptr(rsp + HOOK_FRAME + F_RIP), rax)?;
        h.mov(qword_ptr(rbx + P_RESUME), 0)?;
        h.ret()?;
        h.set_label(&mut skip)?;
        h.mov(eax, dword_ptr(rbx + P_SKIP))?;
        h.test(eax, eax)?;
        h.jz(fatal)?;
        h.add(qword_ptr(rsp + HOOK_FRAME + F_RIP), rax)?;
        h.mov(dword_ptr(rbx + P_SKIP), 0)?;
        h.ret()?;
        h.set_label(&mut fatal)?;
        h.mov(eax, unexpected)?;
        h.jmp(report)
    }

    // ---- the cases ------------------------------------------------------

    fn body(&mut self) -> Result<(), IcedError> {
        match self.case {
            Case::IoapicEdge => self.ioapic_edge(),
            Case::IoapicLevelRemoteIrr => self.ioapic_level_remote_irr(),
            Case::IoapicLevelStillAsserted => self.ioapic_level_still_asserted(),
            Case::IoapicMaskedLevel => self.ioapic_masked_level(),
            Case::IoapicEdgesCoalesce => self.ioapic_edges_coalesce(),
            Case::RepInsbFwCfg => self.rep_insb(),
            Case::RepOutsbCom1 => self.rep_outsb(),
            Case::Nmi(_) => self.nmi(),
            Case::CliHlt => self.cli_hlt(),
            Case::StraySipi => self.stray_sipi(),
            Case::Cr8 => self.cr8(),
            Case::GpNotInterrupted => self.gp_not_interrupted(),
            Case::TimerRearm {
                deadline,
                iterations,
            } => self.timer_rearm(deadline, iterations),
            Case::HypercallUd => self.hypercall_ud(),
            Case::HvPageOutsideRam => self.hv_page_outside_ram(),
            Case::InitDeassert(_) => self.init_deassert(),
            Case::CpuidApicBit => self.cpuid_apic_bit(),
            Case::SyntheticMsrReserved => self.synthetic_reserved(),
            Case::SyntheticMsrApicDisabled => self.synthetic_apic_disabled(),
            Case::LazyEoiNoStarve => self.lazy_eoi_no_starve(),
            Case::Agreement(_) => self.agreement(),
            Case::LevelLazyEoi => self.level_lazy_eoi(),
            Case::PortInUnderFlush => self.port_in_under_flush(),
            Case::IoapicNmi => self.ioapic_nmi(),
            Case::Lint1Nmi => self.lint1_nmi(),
            Case::SyntheticXapic => self.synthetic_xapic(),
            Case::IpiFollowsApicId => self.ipi_follows_apic_id(),
            Case::ReferenceTscPage => self.reference_tsc_page(),
            Case::StimerDirect => self.stimer_direct(),
            Case::StimerMessage => self.stimer_message(),
            Case::SynicMessages => self.synic_messages(),
            Case::CrashMsrs => self.crash_msrs(),
            Case::AutoEoi => self.auto_eoi(),
        }
    }

    fn auto_eoi(&mut self) -> Result<(), IcedError> {
        let mut skip = self.a.create_label();
        // Does this LAPIC keep an ordinary vector in service?
        let eoi = self.hook_eoi;
        let mut probe = self.h.create_label();
        self.h.set_label(&mut probe)?;
        self.record_isr(VEC_EDGE)?;
        self.h.jmp(eoi)?;
        self.hook(VEC_EDGE, Hook::Custom(probe));
        self.a.sti()?;
        self.wrmsr(X2APIC_MSR_BASE + APIC_ICR / 16, VEC_EDGE | ICR_SELF, 0)?;
        self.wait(
            count(0, VEC_EDGE),
            1,
            Wait::Exits,
            "AutoEOI: the probe self-IPI never arrived",
        )?;
        self.hv_features_or(HV_SYNIC_AVAILABLE | HV_SYNTIMER_AVAILABLE, 0, skip)?;
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_SIMP, SIMP_PAGE | HV_PAGE_ENABLE, 0)?;
        self.wrmsr(HV_SINT0 + STIMER_SINT, VEC_AEOI | SINT_AUTO_EOI, 0)?;
        self.wrmsr(HV_SCONTROL, 1, 0)?;
        self.a.sti()?;
        let slot = SIMP_PAGE + STIMER_SINT * HV_MESSAGE_SIZE;
        let isr = X2APIC_MSR_BASE + (APIC_ISR + VEC_AEOI / 32 * 0x10) / 16;
        for (round, (missing, in_service)) in [
            (
                "AutoEOI: the first expiry never arrived",
                "AutoEOI: the first delivery was left in service (ISR set)",
            ),
            (
                "AutoEOI: the second expiry never arrived (the first stuck in service?)",
                "AutoEOI: the second delivery was left in service (ISR set)",
            ),
        ]
        .into_iter()
        .enumerate()
        {
            self.time_ref_count()?;
            self.a.add(rax, STIMER_DELAY)?;
            self.a.mov(rdx, rax)?;
            self.a.shr(rdx, 32)?;
            self.a.mov(ecx, HV_STIMER0_COUNT)?;
            self.a.wrmsr()?;
            self.wrmsr(
                HV_STIMER0_CONFIG,
                STIMER_ENABLE | (STIMER_SINT << STIMER_SINTX_SHIFT),
                0,
            )?;
            self.wait(count(0, VEC_AEOI), round as u32 + 1, Wait::Exits, missing)?;
            self.a.mov(dword_ptr(slot), 0)?;
            self.wrmsr(HV_EOM, 0, 0)?;
            self.settle()?;
            self.rdmsr(isr)?;
            let f = self.fail(in_service);
            self.a.test(eax, 1 << (VEC_AEOI % 32))?;
            self.a.jnz(f)?;
        }
        self.a.mov(eax, dword_ptr(count(0, VEC_AEOI)))?;
        self.save(1)?;
        self.wrmsr(HV_SINT0 + STIMER_SINT, SINT_MASKED, 0)?;
        self.settle()?;
        self.a.set_label(&mut skip)?;
        Ok(())
    }

    /// CPUID 0x40000003 EBX (the partition privileges' high half) into
    /// EBX.
    fn hv_privileges_high(&mut self) -> Result<(), IcedError> {
        self.a.mov(eax, HV_CPUID_FEATURES)?;
        self.a.xor(ecx, ecx)?;
        self.a.cpuid()
    }

    /// A SynIC with SINT 3 on [`VEC_SINT`] and the message page at `simp`
    /// or the event flags page at `siefp`, for this vCPU.
    fn synic_on(&mut self, simp: u32, siefp: u32) -> Result<(), IcedError> {
        self.wrmsr(HV_SIMP, simp | HV_PAGE_ENABLE, 0)?;
        self.wrmsr(HV_SIEFP, siefp | HV_PAGE_ENABLE, 0)?;
        self.wrmsr(HV_SINT0 + SYNIC_SINT, VEC_SINT, 0)?;
        self.wrmsr(HV_SCONTROL, 1, 0)
    }

    /// Calls the hypercall page with RCX = `control`, RDX = `input`.
    fn hypercall(&mut self, control: u32, input: u64) -> Result<(), IcedError> {
        self.a.mov(ecx, control)?;
        self.a.mov(rdx, input)?;
        self.a.xor(r8d, r8d)?;
        self.a.mov(ebp, HCALL_PAGE)?;
        self.a.call(rbp)
    }

    fn synic_messages(&mut self) -> Result<(), IcedError> {
        let mut skip = self.a.create_label();
        self.hv_features_or(HV_SYNIC_AVAILABLE, 0, skip)?;
        self.hv_privileges_high()?;
        self.a.and(ebx, HV_POST_MESSAGES | HV_SIGNAL_EVENTS)?;
        self.a.cmp(ebx, HV_POST_MESSAGES | HV_SIGNAL_EVENTS)?;
        let mut unpublished = self.a.create_label();
        self.a.jne(unpublished)?;
        self.hook(VEC_SINT, Hook::Eoi);
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_HYPERCALL, HCALL_PAGE | HV_PAGE_ENABLE, 0)?;
        self.synic_on(SIMP_PAGE, SIEFP_PAGE)?;
        self.a.sti()?;
        self.wait(
            pc(1, P_SPIN),
            1,
            Wait::Exits,
            "synic: the AP never set up its SynIC",
        )?;
        // HV_INPUT_POST_MESSAGE: connection id, reserved, type, size,
        // payload.
        let a = &mut self.a;
        a.mov(eax, SYNIC_MSG_CONNECTION)?;
        a.mov(qword_ptr(POST_INPUT), rax)?;
        a.mov(rax, (8u64 << 32) | u64::from(SYNIC_MSG_TYPE))?;
        a.mov(qword_ptr(POST_INPUT + 8), rax)?;
        a.mov(rax, SYNIC_PING)?;
        a.mov(qword_ptr(POST_INPUT + 16), rax)?;
        self.hypercall(HVCALL_POST_MESSAGE, u64::from(POST_INPUT))?;
        let f = self.fail("synic: HvPostMessage did not return HV_STATUS_SUCCESS");
        self.a.test(ax, ax)?;
        self.a.jnz(f)?;
        self.wait(
            count(0, VEC_SINT),
            1,
            Wait::Exits,
            "synic: the AP's event never raised the BSP's SINT 3",
        )?;
        let f = self.fail("synic: event flag 5 of SINT 3 is not set in the event flags page");
        self.a.test(
            byte_ptr(SIEFP_PAGE + SYNIC_SINT * HV_EVENT_FLAGS_SIZE),
            1 << SYNIC_FLAG,
        )?;
        self.a.jz(f)?;
        self.expect_eq(
            pc(1, P_AFTER),
            0,
            "synic: the AP's message had the wrong type, payload or port",
        )?;
        self.expect_eq(
            pc(1, P_AFTER2),
            0,
            "synic: HvSignalEvent did not return HV_STATUS_SUCCESS",
        )?;
        // Unknown connection; a flag still set raises nothing new.
        self.a.mov(dword_ptr(POST_INPUT), SYNIC_NO_CONNECTION)?;
        self.hypercall(HVCALL_POST_MESSAGE, u64::from(POST_INPUT))?;
        self.a.movzx(eax, ax)?;
        self.save(1)?;
        self.hypercall(
            HVCALL_SIGNAL_EVENT | HV_CONTROL_FAST,
            u64::from(SYNIC_EVENT_CONNECTION) | (u64::from(SYNIC_FLAG) << 32),
        )?;
        self.a.movzx(eax, ax)?;
        self.save(2)?;
        self.settle()?;
        self.expect_eq(
            count(0, VEC_SINT),
            1,
            "synic: a flag already set raised SINT 3 again",
        )?;
        self.a.jmp(skip)?;
        self.a.set_label(&mut unpublished)?;
        self.a.mov(dword_ptr(val(0)), 0)?;
        self.a.set_label(&mut skip)?;
        self.a.jmp(self.pass)?;

        // AP: its own SynIC; wait for the message, check it, free the slot,
        // EOM, signal the BSP.
        let mut ap = self.a.create_label();
        self.a.set_label(&mut ap)?;
        self.synic_on(SIMP_PAGE_AP, SIEFP_PAGE_AP)?;
        let a = &mut self.a;
        a.sti()?;
        a.lock().inc(dword_ptr(pc(1, P_SPIN)))?;
        let mut wait = a.create_label();
        let mut got = a.create_label();
        a.set_label(&mut wait)?;
        a.cmp(dword_ptr(count(1, VEC_SINT)), 0)?;
        a.jne(got)?;
        a.hlt()?;
        a.jmp(wait)?;
        a.set_label(&mut got)?;
        let slot = SIMP_PAGE_AP + SYNIC_SINT * HV_MESSAGE_SIZE;
        let mut bad = a.create_label();
        let mut checked = a.create_label();
        a.cmp(dword_ptr(slot), SYNIC_MSG_TYPE)?;
        a.jne(bad)?;
        a.cmp(byte_ptr(slot + 4), 8)?;
        a.jne(bad)?;
        a.cmp(dword_ptr(slot + 8), SYNIC_MSG_CONNECTION)?;
        a.jne(bad)?;
        a.mov(rax, SYNIC_PING)?;
        a.cmp(qword_ptr(slot + MSG_PAYLOAD), rax)?;
        a.jne(bad)?;
        a.jmp(checked)?;
        a.set_label(&mut bad)?;
        a.mov(dword_ptr(pc(1, P_AFTER)), 1)?;
        a.set_label(&mut checked)?;
        a.mov(dword_ptr(slot), 0)?;
        self.wrmsr(HV_EOM, 0, 0)?;
        self.hypercall(
            HVCALL_SIGNAL_EVENT | HV_CONTROL_FAST,
            u64::from(SYNIC_EVENT_CONNECTION) | (u64::from(SYNIC_FLAG) << 32),
        )?;
        let a = &mut self.a;
        a.movzx(eax, ax)?;
        a.mov(dword_ptr(pc(1, P_AFTER2)), eax)?;
        let mut halt = a.create_label();
        a.set_label(&mut halt)?;
        a.hlt()?;
        a.jmp(halt)?;
        self.ap_body = Some(ap);
        Ok(())
    }

    fn crash_msrs(&mut self) -> Result<(), IcedError> {
        let mut skip = self.a.create_label();
        self.hv_features_or(0, HV_GUEST_CRASH_MSRS, skip)?;
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        for (i, v) in CRASH_PARAMS.iter().enumerate() {
            self.wrmsr(HV_CRASH_P0 + i as u32, *v, 0)?;
        }
        self.wrmsr(HV_CRASH_CTL, 0, HV_CRASH_NOTIFY_HIGH)?;
        self.settle()?;
        let f = self.fail("crash: CRASH_CTL.CRASH_NOTIFY did not end the run");
        self.a.jmp(f)?;
        self.a.set_label(&mut skip)?;
        Ok(())
    }

    /// Skips the rest of the case (value 0 stays 0) unless CPUID
    /// 0x40000003 has every bit of `eax_bits` in EAX and `edx_bits` in EDX.
    fn hv_features_or(
        &mut self,
        eax_bits: u32,
        edx_bits: u32,
        skip: CodeLabel,
    ) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.mov(eax, HV_CPUID_FEATURES)?;
        a.xor(ecx, ecx)?;
        a.cpuid()?;
        a.and(eax, eax_bits)?;
        a.cmp(eax, eax_bits)?;
        a.jne(skip)?;
        a.and(edx, edx_bits)?;
        a.cmp(edx, edx_bits)?;
        a.jne(skip)?;
        a.mov(dword_ptr(val(0)), 1)
    }

    /// RDMSR TIME_REF_COUNT into RAX.
    fn time_ref_count(&mut self) -> Result<(), IcedError> {
        self.rdmsr(HV_TIME_REF_COUNT)?;
        self.a.shl(rdx, 32)?;
        self.a.or(rax, rdx)
    }

    fn reference_tsc_page(&mut self) -> Result<(), IcedError> {
        let mut skip = self.a.create_label();
        self.hv_features_or(HV_REFERENCE_TSC_AVAILABLE, 0, skip)?;
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_REFERENCE_TSC, TSC_PAGE | HV_PAGE_ENABLE, 0)?;
        self.a.mov(eax, dword_ptr(TSC_PAGE))?;
        self.save(1)?;
        let bad_seq = self.fail("reference TSC page: sequence 0 (invalid) after enabling it");
        self.a.test(eax, eax)?;
        self.a.jz(bad_seq)?;
        // Linux hv_read_tsc_page_tsc: ((tsc * scale) >> 64) + offset.
        let a = &mut self.a;
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mul(qword_ptr(TSC_PAGE + 8))?;
        a.add(rdx, qword_ptr(TSC_PAGE + 16))?;
        a.mov(r8, rdx)?;
        self.time_ref_count()?;
        let behind = self.fail("reference TSC page: ahead of TIME_REF_COUNT read after it");
        let far = self.fail("reference TSC page: more than 1 s behind TIME_REF_COUNT");
        let a = &mut self.a;
        a.sub(rax, r8)?;
        a.jb(behind)?;
        a.cmp(rax, REF_TIME_1S)?;
        a.ja(far)?;
        self.save(2)?;
        self.a.set_label(&mut skip)?;
        Ok(())
    }

    fn stimer_direct(&mut self) -> Result<(), IcedError> {
        let mut skip = self.a.create_label();
        self.hv_features_or(HV_SYNTIMER_AVAILABLE, HV_STIMER_DIRECT_MODE, skip)?;
        self.hook(VEC_STIMER, Hook::Eoi);
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_SCONTROL, 1, 0)?;
        self.a.sti()?;
        let direct = STIMER_ENABLE | STIMER_DIRECT | (VEC_STIMER << STIMER_VECTOR_SHIFT);
        // One-shot: COUNT is the absolute expiry.
        self.time_ref_count()?;
        self.a.add(rax, STIMER_DELAY)?;
        self.a.mov(rdx, rax)?;
        self.a.shr(rdx, 32)?;
        self.a.mov(ecx, HV_STIMER0_COUNT)?;
        self.a.wrmsr()?;
        self.wrmsr(HV_STIMER0_CONFIG, direct, 0)?;
        self.wait_exactly(
            count(0, VEC_STIMER),
            1,
            "stimer direct: the one-shot expiry never raised its vector",
            "stimer direct: the one-shot expiry raised its vector more than once",
        )?;
        // Periodic: COUNT is the period.
        self.wrmsr(HV_STIMER0_COUNT, STIMER_PERIOD, 0)?;
        self.wrmsr(HV_STIMER0_CONFIG, direct | STIMER_PERIODIC, 0)?;
        self.wait(
            count(0, VEC_STIMER),
            4,
            Wait::Exits,
            "stimer direct: the periodic timer stopped raising its vector",
        )?;
        self.wrmsr(HV_STIMER0_CONFIG, 0, 0)?;
        self.a.mov(eax, dword_ptr(count(0, VEC_STIMER)))?;
        self.save(1)?;
        for _ in 0..STIMER_SETTLES {
            self.settle()?;
        }
        let f = self.fail("stimer direct: the disabled periodic timer kept firing");
        self.a.mov(eax, dword_ptr(count(0, VEC_STIMER)))?;
        self.a.cmp(eax, dword_ptr(val(1)))?;
        self.a.jne(f)?;
        self.a.set_label(&mut skip)?;
        Ok(())
    }

    fn stimer_message(&mut self) -> Result<(), IcedError> {
        let mut skip = self.a.create_label();
        self.hv_features_or(
            HV_VP_RUNTIME_AVAILABLE | HV_SYNIC_AVAILABLE | HV_SYNTIMER_AVAILABLE,
            0,
            skip,
        )?;
        self.hook(VEC_SINT, Hook::Eoi);
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_SIMP, SIMP_PAGE | HV_PAGE_ENABLE, 0)?;
        self.wrmsr(HV_SINT0 + STIMER_SINT, VEC_SINT, 0)?;
        self.wrmsr(HV_SCONTROL, 1, 0)?;
        self.a.sti()?;
        self.time_ref_count()?;
        self.a.add(rax, STIMER_DELAY)?;
        self.a.mov(qword_ptr(V_BUF), rax)?;
        self.save(1)?;
        self.a.mov(rdx, rax)?;
        self.a.shr(rdx, 32)?;
        self.a.mov(ecx, HV_STIMER0_COUNT)?;
        self.a.wrmsr()?;
        self.wrmsr(
            HV_STIMER0_CONFIG,
            STIMER_ENABLE | (STIMER_SINT << STIMER_SINTX_SHIFT),
            0,
        )?;
        self.wait_exactly(
            count(0, VEC_SINT),
            1,
            "stimer message: the expiry never raised SINT 2's vector",
            "stimer message: one expiry raised SINT 2's vector more than once",
        )?;
        let slot = SIMP_PAGE + STIMER_SINT * HV_MESSAGE_SIZE;
        self.expect_eq(
            slot,
            HVMSG_TIMER_EXPIRED,
            "stimer message: SINT 2's slot holds no HVMSG_TIMER_EXPIRED",
        )?;
        self.expect_eq(
            slot + MSG_PAYLOAD,
            0,
            "stimer message: the message names another timer than 0",
        )?;
        let f = self.fail("stimer message: expiration time is not the COUNT written");
        self.a.mov(rax, qword_ptr(slot + MSG_PAYLOAD + 8))?;
        self.a.cmp(rax, qword_ptr(V_BUF))?;
        self.a.jne(f)?;
        let f = self.fail("stimer message: delivered before its expiration time");
        self.a.cmp(qword_ptr(slot + MSG_PAYLOAD + 16), rax)?;
        self.a.jb(f)?;
        // Free the slot, then EOM (TLFS: the guest's end of message).
        self.a.mov(dword_ptr(slot), 0)?;
        self.wrmsr(HV_EOM, 0, 0)?;
        self.rdmsr(HV_VP_RUNTIME)?;
        self.save(2)?;
        self.a.set_label(&mut skip)?;
        Ok(())
    }

    fn port_in_under_flush(&mut self) -> Result<(), IcedError> {
        // Flush input (TLFS HvCallFlushVirtualAddressSpace): address
        // space, flags, processor mask = VP 1.
        self.a.mov(qword_ptr(FLUSH_INPUT), 0)?;
        self.a.mov(qword_ptr(FLUSH_INPUT + 8), 0)?;
        self.a.mov(qword_ptr(FLUSH_INPUT + 16), 1 << 1)?;
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_HYPERCALL, HCALL_PAGE | HV_PAGE_ENABLE, 0)?;
        self.wait(pc(1, P_SPIN), 1, Wait::Exits, "in: the AP never read")?;
        let f_status = self.fail("in: a PV flush hypercall did not return HV_STATUS_SUCCESS");
        let mut again = self.a.create_label();
        self.a.mov(dword_ptr(val(2)), 0)?;
        self.a.set_label(&mut again)?;
        self.a.mov(ecx, HVCALL_FLUSH_VA_SPACE)?;
        self.a.mov(edx, FLUSH_INPUT)?;
        self.a.xor(r8d, r8d)?;
        self.a.mov(ebp, HCALL_PAGE)?;
        self.a.call(rbp)?;
        self.a.test(ax, ax)?;
        self.a.jnz(f_status)?;
        self.a.inc(dword_ptr(val(2)))?;
        self.a.cmp(dword_ptr(val(2)), IN_FLUSHES)?;
        self.a.jb(again)?;
        self.a.mov(dword_ptr(V_STOP), 1)?;
        self.wait(V_STOPPED, 1, Wait::Exits, "in: the AP did not stop")?;
        self.a.mov(eax, dword_ptr(pc(1, P_SPIN)))?;
        self.save(0)?;
        self.a.mov(eax, dword_ptr(pc(1, P_AFTER)))?;
        self.save(1)?;
        self.a.mov(eax, dword_ptr(pc(1, P_AFTER2)))?;
        self.save(3)?;
        self.expect_eq(
            pc(1, P_AFTER),
            0,
            "in: a fw_cfg byte came out of order (an `in` ran twice or not at all)",
        )?;
        self.expect_eq(
            pc(1, P_AFTER2),
            FLUSH_TPR,
            "in: the flushed vCPU's TPR changed (bits 3:0 lost?)",
        )?;
        self.a.jmp(self.pass)?;

        // AP: select the signature, read its 4 bytes one `in` at a time,
        // count the bytes out of order; until the BSP says stop.
        let mut ap = self.a.create_label();
        let mut round = self.a.create_label();
        let mut stop = self.a.create_label();
        let tpr = X2APIC_MSR_BASE + APIC_TPR / 16;
        self.a.set_label(&mut ap)?;
        self.wrmsr(tpr, FLUSH_TPR, 0)?;
        let a = &mut self.a;
        a.set_label(&mut round)?;
        a.cmp(dword_ptr(V_STOP), 0)?;
        a.jne(stop)?;
        a.mov(dx, u32::from(FW_CFG_SELECTOR))?;
        a.mov(eax, FW_CFG_SIGNATURE)?;
        a.out(dx, ax)?;
        a.mov(dx, u32::from(FW_CFG_DATA))?;
        for b in *b"QEMU" {
            let mut ok = a.create_label();
            a.in_(al, dx)?;
            a.cmp(al, u32::from(b))?;
            a.je(ok)?;
            a.lock().inc(dword_ptr(pc(1, P_AFTER)))?;
            a.set_label(&mut ok)?;
        }
        a.lock().inc(dword_ptr(pc(1, P_SPIN)))?;
        a.jmp(round)?;
        a.set_label(&mut stop)?;
        a.mov(ecx, tpr)?;
        a.rdmsr()?;
        a.mov(dword_ptr(pc(1, P_AFTER2)), eax)?;
        a.mov(dword_ptr(V_STOPPED), 1)?;
        a.cli()?;
        let mut halt = a.create_label();
        a.set_label(&mut halt)?;
        a.hlt()?;
        a.jmp(halt)?;
        self.ap_body = Some(ap);
        Ok(())
    }

    fn ioapic_nmi(&mut self) -> Result<(), IcedError> {
        self.rte(PIN_NMI, RTE_DELIVERY_NMI)?;
        Self::line(&mut self.a, PIN_NMI, true)?;
        self.wait(
            count(0, NMI),
            1,
            Wait::Exits,
            "ioapic nmi: an IOAPIC entry in NMI mode delivered no NMI",
        )?;
        Self::line(&mut self.a, PIN_NMI, false)?;
        self.settle()?;
        self.expect_eq(
            count(0, NMI),
            1,
            "ioapic nmi: more than one NMI for one edge",
        )
    }

    fn lint1_nmi(&mut self) -> Result<(), IcedError> {
        self.apic_write(APIC_LVT_LINT1, LVT_DELIVERY_NMI)?;
        self.puts(&format!("{LINT1_READY}\n"))?;
        self.wait(
            count(0, NMI),
            1,
            Wait::Exits,
            "lint1: the NMI pin with LVT LINT1 in NMI mode delivered no NMI",
        )?;
        self.apic_write(APIC_LVT_LINT1, LVT_DELIVERY_NMI | LVT_MASK)?;
        self.puts(&format!("{LINT1_MASKED}\n"))?;
        // The test raises the pin at once; the settle gives it ample time.
        for _ in 0..LINT1_SETTLES {
            self.settle()?;
        }
        self.expect_eq(
            count(0, NMI),
            1,
            "lint1: the NMI pin delivered an NMI with LVT LINT1 masked",
        )?;
        // APIC hardware-disabled: LINT1 is the processor's NMI pin itself
        // (SDM 10.4.3), whatever the LVT said.
        self.rdmsr(MSR_APIC_BASE)?;
        self.a.and(eax, !(APIC_BASE_EN | APIC_BASE_EXTD))?;
        self.a.wrmsr()?;
        self.puts(&format!("{LINT1_APIC_DISABLED}\n"))?;
        self.wait(
            count(0, NMI),
            2,
            Wait::Exits,
            "lint1: the NMI pin delivered no NMI with the APIC disabled",
        )
    }

    fn synthetic_xapic(&mut self) -> Result<(), IcedError> {
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        for (slot, msr, value) in [(0, HV_TPR, SYNTHETIC_TPR), (2, HV_EOI, 0)] {
            let mut no = self.a.create_label();
            self.arm_skip(MSR_INSN_LEN)?;
            self.wrmsr(msr, value, 0)?;
            self.a.mov(dword_ptr(pc(0, P_SKIP)), 0)?;
            self.a.mov(dword_ptr(val(slot)), 0)?;
            self.a.cmp(dword_ptr(pc(0, P_FAULT_VEC)), GP | FLAGGED)?;
            self.a.jne(no)?;
            self.a.mov(dword_ptr(val(slot)), 1)?;
            self.a.set_label(&mut no)?;
            if slot == 0 {
                self.apic_read(APIC_TPR)?;
                self.save(1)?;
            }
        }
        Ok(())
    }

    fn ipi_follows_apic_id(&mut self) -> Result<(), IcedError> {
        const MOVED: u32 = 5;
        let fixed = VEC_EDGE | ICR_LEVEL_ASSERT;
        // Through HV_X64_MSR_ICR (xAPIC layout: the destination in bits
        // 63:56), an MSR exit like an x2APIC ICR write.
        let send = |b: &mut Self, dest: u32| b.wrmsr(HV_ICR, fixed, dest << XAPIC_DEST_SHIFT);
        self.hook(VEC_EDGE, Hook::Eoi);
        self.a.sti()?;
        let at = count(0, VEC_EDGE);
        send(self, 0)?;
        self.wait(
            at,
            1,
            Wait::Exits,
            "apic id: an IPI to the BSP's ID never arrived",
        )?;
        send(self, 0)?;
        self.wait(
            at,
            2,
            Wait::Exits,
            "apic id: a second IPI to the BSP's ID never arrived",
        )?;
        self.apic_write(APIC_ID, MOVED << XAPIC_DEST_SHIFT)?;
        send(self, 0)?;
        self.settle()?;
        self.expect_eq(
            at,
            2,
            "apic id: an IPI to the old ID arrived after the ID changed",
        )?;
        send(self, MOVED)?;
        self.wait(
            at,
            3,
            Wait::Exits,
            "apic id: an IPI to the new ID never arrived",
        )?;
        self.apic_write(APIC_ID, 0)?;
        send(self, MOVED)?;
        self.settle()?;
        self.expect_eq(
            at,
            3,
            "apic id: an IPI to the new ID arrived after it was given back",
        )?;
        // The xAPIC page's ICR as well.
        self.icr(0, fixed)?;
        self.wait_exactly(
            at,
            4,
            "apic id: an IPI to the ID written back never arrived",
            "apic id: an extra IPI arrived",
        )
    }

    /// A hook that lowers pc-testdev line `pin` once vector `vector` was
    /// counted `times`, then continues with `then`; with `isr` it first
    /// records the vector's ISR bit ([`Self::record_isr`]).
    fn hook_lower_line(
        &mut self,
        vector: u32,
        pin: u32,
        times: u32,
        isr: bool,
        then: CodeLabel,
    ) -> Result<(), IcedError> {
        let mut l = self.h.create_label();
        let mut keep = self.h.create_label();
        self.h.set_label(&mut l)?;
        if isr {
            self.record_isr(vector)?;
        }
        self.h.cmp(dword_ptr(rbx + P_COUNT + vector * 4), times)?;
        self.h.jb(keep)?;
        Self::line(&mut self.h, pin, false)?;
        self.h.set_label(&mut keep)?;
        self.h.jmp(then)?;
        self.hook(vector, Hook::Custom(l));
        Ok(())
    }

    fn ioapic_edge(&mut self) -> Result<(), IcedError> {
        let (pin, v) = (PIN_EDGE, VEC_EDGE);
        self.hook(v, Hook::Eoi);
        self.rte(pin, v)?;
        self.a.sti()?;
        Self::line(&mut self.a, pin, true)?;
        self.wait_exactly(
            count(0, v),
            1,
            "edge: a rising edge on an unmasked edge entry was not delivered",
            "edge: one rising edge was delivered more than once",
        )?;
        Self::line(&mut self.a, pin, true)?;
        self.settle()?;
        self.expect_eq(
            count(0, v),
            1,
            "edge: writing 1 to a line already high (no edge) delivered again",
        )?;
        Self::line(&mut self.a, pin, false)?;
        Self::line(&mut self.a, pin, true)?;
        self.wait_exactly(
            count(0, v),
            2,
            "edge: the second rising edge was not delivered",
            "edge: the second rising edge was delivered more than once",
        )?;
        Self::line(&mut self.a, pin, false)
    }

    fn ioapic_level_remote_irr(&mut self) -> Result<(), IcedError> {
        let (pin, v) = (PIN_LEVEL, VEC_LEVEL);
        // The hook records the vector's ISR bit (value 7) and does not EOI:
        // the vector stays in service until the body's EOI.
        let mut l = self.h.create_label();
        self.h.set_label(&mut l)?;
        self.record_isr(v)?;
        self.h.ret()?;
        self.hook(v, Hook::Custom(l));
        self.rte(pin, v | RTE_LEVEL)?;
        self.a.sti()?;
        Self::line(&mut self.a, pin, true)?;
        self.wait(
            count(0, v),
            1,
            Wait::Exits,
            "level: an asserted line on an unmasked level entry was not delivered",
        )?;
        self.rte_low(pin)?;
        self.save(0)?;
        let f = self.fail("level: Remote IRR clear while the vector is in service");
        self.a.test(eax, RTE_REMOTE_IRR)?;
        self.a.jz(f)?;
        Self::line(&mut self.a, pin, false)?;
        Self::line(&mut self.a, pin, true)?;
        self.settle()?;
        self.expect_eq(
            count(0, v),
            1,
            "level: delivered again while Remote IRR was set",
        )?;
        Self::line(&mut self.a, pin, false)?;
        self.apic_write(APIC_EOI, 0)?;
        self.rte_low(pin)?;
        self.save(1)?;
        let f = self.fail("level: Remote IRR still set after the EOI");
        self.a.test(eax, RTE_REMOTE_IRR)?;
        self.a.jnz(f)?;
        self.settle()?;
        self.expect_eq(
            count(0, v),
            1,
            "level: delivered after the EOI though the line was low",
        )
    }

    fn ioapic_level_still_asserted(&mut self) -> Result<(), IcedError> {
        let (pin, v) = (PIN_LEVEL_HELD, VEC_LEVEL_HELD);
        let eoi = self.hook_eoi;
        self.hook_lower_line(v, pin, 3, false, eoi)?;
        self.rte(pin, v | RTE_LEVEL)?;
        self.a.sti()?;
        Self::line(&mut self.a, pin, true)?;
        self.wait_exactly(
            count(0, v),
            3,
            "level: a line still asserted at the EOI was not delivered again",
            "level: delivered again after the handler lowered the line",
        )
    }

    /// Handler code: stores vector `v`'s ISR bit, as the handler sees it,
    /// in value [`ISR_SEEN`]. Clobbers eax, ecx, edx.
    fn record_isr(&mut self, v: u32) -> Result<(), IcedError> {
        self.h.mov(ecx, X2APIC_MSR_BASE + APIC_ISR / 16 + v / 32)?;
        self.h.rdmsr()?;
        self.h.shr(eax, v % 32)?;
        self.h.and(eax, 1)?;
        self.h.mov(dword_ptr(val(ISR_SEEN)), eax)
    }

    fn ioapic_masked_level(&mut self) -> Result<(), IcedError> {
        let (pin, v) = (PIN_MASKED, VEC_MASKED);
        let eoi = self.hook_eoi;
        // Records the vector's ISR bit (value [`ISR_SEEN`]).
        self.hook_lower_line(v, pin, 1, true, eoi)?;
        self.rte(pin, v | RTE_LEVEL | RTE_MASKED)?;
        self.a.sti()?;
        Self::line(&mut self.a, pin, true)?;
        self.settle()?;
        self.expect_eq(count(0, v), 0, "masked: a masked level entry delivered")?;
        self.rte(pin, v | RTE_LEVEL)?;
        self.wait_exactly(
            count(0, v),
            1,
            "masked: unmasking a level entry whose line is asserted did not deliver it",
            "masked: delivered more than once after the unmask",
        )
    }

    fn ioapic_edges_coalesce(&mut self) -> Result<(), IcedError> {
        let (pin, v) = (PIN_COALESCE, VEC_COALESCE);
        self.hook(v, Hook::Eoi);
        self.rte(pin, v)?;
        // IF=0 from the start.
        for level in [true, false, true, false] {
            Self::line(&mut self.a, pin, level)?;
        }
        self.settle()?;
        self.expect_eq(count(0, v), 0, "coalesce: delivered with IF=0")?;
        self.a.sti()?;
        self.wait_exactly(
            count(0, v),
            1,
            "coalesce: not delivered after STI",
            "coalesce: two edges raised before the first was serviced were delivered twice",
        )
    }

    fn rep_insb(&mut self) -> Result<(), IcedError> {
        let a = &mut self.a;
        a.mov(dx, u32::from(FW_CFG_SELECTOR))?;
        a.mov(eax, FW_CFG_SIGNATURE)?;
        a.out(dx, ax)?;
        a.mov(dx, u32::from(FW_CFG_DATA))?;
        a.mov(edi, V_BUF)?;
        a.mov(ecx, 4)?;
        a.rep().insb()?;
        a.mov(eax, dword_ptr(V_BUF))?;
        a.mov(dword_ptr(val(0)), eax)?;
        a.mov(dword_ptr(val(1)), ecx)?;
        a.mov(dword_ptr(val(2)), edi)?;
        let f = self.fail("rep insb: ECX is not 0 after the string instruction");
        self.a.test(ecx, ecx)?;
        self.a.jnz(f)?;
        let f = self.fail("rep insb: EDI did not advance by 4");
        self.a.cmp(edi, V_BUF + 4)?;
        self.a.jne(f)?;
        self.expect_eq(
            V_BUF,
            u32::from_le_bytes(*b"QEMU"),
            "rep insb of fw_cfg item 0 did not read \"QEMU\"",
        )
    }

    fn rep_outsb(&mut self) -> Result<(), IcedError> {
        let text = self.string(REP_OUTSB_TEXT);
        let len = REP_OUTSB_TEXT.len() as u32;
        let a = &mut self.a;
        a.mov(esi, text)?;
        a.mov(ecx, len)?;
        a.mov(dx, u32::from(COM1))?;
        a.rep().outsb()?;
        a.mov(dword_ptr(val(0)), ecx)?;
        a.mov(dword_ptr(val(1)), esi)?;
        let f = self.fail("rep outsb: ECX is not 0 after the string instruction");
        self.a.test(ecx, ecx)?;
        self.a.jnz(f)?;
        let f = self.fail("rep outsb: ESI did not advance by the length");
        self.a.cmp(esi, text + len)?;
        self.a.jne(f)
    }

    /// The AP part of [`Case::Nmi`]: `cli; hlt` forever, counting wakes.
    fn nmi(&mut self) -> Result<(), IcedError> {
        self.icr(0, ICR_NMI)?;
        self.wait(
            count(0, NMI),
            1,
            Wait::Exits,
            "NMI: an NMI to the sender's own APIC ID was not delivered",
        )?;
        self.wait(pc(1, P_ARMED), 1, Wait::Exits, "NMI: the AP never halted")?;
        self.settle()?;
        self.icr(1, ICR_NMI)?;
        self.wait(
            count(1, NMI),
            1,
            Wait::Exits,
            "NMI: an NMI to the other vCPU was not delivered",
        )?;
        self.wait(
            pc(1, P_AFTER2),
            1,
            Wait::Exits,
            "NMI: an NMI did not wake the other vCPU from cli;hlt",
        )?;
        self.icr(1, ICR_NMI)?;
        self.wait(
            count(1, NMI),
            2,
            Wait::Exits,
            "NMI: a second NMI to the other vCPU was not delivered (NMIs still blocked after IRET?)",
        )?;
        self.icr(0, ICR_NMI)?;
        self.wait(
            count(0, NMI),
            2,
            Wait::Exits,
            "NMI: a second self NMI was not delivered",
        )?;
        self.a.mov(eax, dword_ptr(pc(1, P_AFTER)))?;
        self.save(0)?;
        self.a.jmp(self.pass)?;

        // AP: `cli; hlt` for good; counts wakes (value 0 reports them: a
        // wake with no NMI is allowed by no spec, but the CliHlt case is
        // the one that checks HLT) and wakes after an NMI.
        self.ap_cli_hlt(true)
    }

    /// The AP's body of the cases that keep it in `cli; hlt` for good:
    /// P_ARMED = 1 before the first halt, P_AFTER counts wakes and, with
    /// `count_nmi_wakes`, P_AFTER2 counts those after an NMI arrived.
    fn ap_cli_hlt(&mut self, count_nmi_wakes: bool) -> Result<(), IcedError> {
        let mut ap = self.a.create_label();
        let mut halt = self.a.create_label();
        self.a.set_label(&mut ap)?;
        self.a.cli()?;
        self.a.mov(dword_ptr(pc(1, P_ARMED)), 1)?;
        self.a.set_label(&mut halt)?;
        self.a.hlt()?;
        self.a.lock().inc(dword_ptr(pc(1, P_AFTER)))?;
        if count_nmi_wakes {
            self.a.cmp(dword_ptr(count(1, NMI)), 0)?;
            self.a.je(halt)?;
            self.a.lock().inc(dword_ptr(pc(1, P_AFTER2)))?;
        }
        self.a.jmp(halt)?;
        self.ap_body = Some(ap);
        Ok(())
    }

    fn cli_hlt(&mut self) -> Result<(), IcedError> {
        self.hook(VEC_HLT, Hook::Eoi);
        self.hook(VEC_HLT2, Hook::Eoi);
        self.wait(
            pc(1, P_ARMED),
            1,
            Wait::Exits,
            "cli;hlt: the AP never got to HLT",
        )?;
        self.settle()?;
        self.settle()?;
        self.expect_eq(
            pc(1, P_AFTER),
            0,
            "cli;hlt: the vCPU left HLT with IF=0 for a pending maskable interrupt",
        )?;
        self.expect_eq(
            count(1, VEC_HLT),
            0,
            "cli;hlt: a maskable interrupt was delivered with IF=0",
        )?;
        self.icr(1, ICR_NMI)?;
        self.wait(
            pc(1, P_AFTER),
            1,
            Wait::Exits,
            "cli;hlt: an NMI did not wake the halted vCPU",
        )?;
        self.wait(
            pc(1, P_AFTER2),
            1,
            Wait::Exits,
            "sti;hlt: HLT with an interrupt pending did not wake",
        )?;
        self.wait_exactly(
            count(1, VEC_HLT),
            1,
            "cli;hlt: the interrupt pending since before the NMI was never delivered after STI",
            "cli;hlt: the pending interrupt was delivered more than once",
        )?;
        self.expect_eq(
            count(1, VEC_HLT2),
            1,
            "sti;hlt: the pending interrupt was not delivered once",
        )?;
        self.a.jmp(self.pass)?;

        let mut ap = self.a.create_label();
        self.a.set_label(&mut ap)?;
        self.a.cli()?;
        self.icr(0, ICR_SELF | VEC_HLT)?;
        self.a.mov(dword_ptr(pc(1, P_ARMED)), 1)?;
        self.a.hlt()?;
        self.a.lock().inc(dword_ptr(pc(1, P_AFTER)))?;
        self.icr(0, ICR_SELF | VEC_HLT2)?;
        self.a.sti()?;
        self.a.hlt()?;
        self.a.lock().inc(dword_ptr(pc(1, P_AFTER2)))?;
        // Interrupts stay on: whatever is still pending arrives.
        let mut idle = self.a.create_label();
        self.a.set_label(&mut idle)?;
        self.a.hlt()?;
        self.a.jmp(idle)?;
        self.ap_body = Some(ap);
        Ok(())
    }

    fn stray_sipi(&mut self) -> Result<(), IcedError> {
        self.wait(
            pc(1, P_ARMED),
            1,
            Wait::Exits,
            "sipi: the AP never got to HLT",
        )?;
        self.settle()?;
        self.expect_eq(pc(1, P_AFTER), 0, "sipi: the AP left cli;hlt on its own")?;
        self.icr(1, ICR_STARTUP | TRAMPOLINE_PAGE)?;
        self.settle()?;
        self.a.mov(eax, dword_ptr(pc(1, P_AFTER)))?;
        self.save(0)?;
        self.expect_eq(V_APS, 1, "sipi: a STARTUP IPI restarted the running AP")?;
        self.a.jmp(self.pass)?;
        self.ap_cli_hlt(false)
    }

    /// CR8 and the x2APIC TPR (SDM Vol. 3 11.8.6.1: CR8[3:0] = TPR[7:4]).
    fn cr8(&mut self) -> Result<(), IcedError> {
        let tpr = X2APIC_MSR_BASE + APIC_TPR / 16;
        let f_cr8_tpr = self.fail("CR8 = 3 did not read back as TPR 0x30");
        let f_tpr_cr8 = self.fail("TPR = 0x5A did not read back as CR8 = 5");
        let f_low = self.fail("TPR bits 3:0 did not survive a CR8 read");
        let f_never = self.fail("after CR8 was lowered the held interrupt never arrived");
        let f_follow = self.fail("TPR did not follow CR8 = 4");
        self.hook(VEC_CR8, Hook::Eoi);
        self.a.mov(eax, CR8_PROBE)?;
        self.a.mov(cr8, rax)?;
        self.rdmsr(tpr)?;
        self.save(0)?;
        self.a.cmp(eax, CR8_PROBE << TPR_CLASS_SHIFT)?;
        self.a.jne(f_cr8_tpr)?;
        self.wrmsr(tpr, TPR_PROBE, 0)?;
        self.a.mov(rax, cr8)?;
        self.save(1)?;
        self.a.cmp(eax, TPR_PROBE >> TPR_CLASS_SHIFT)?;
        self.a.jne(f_tpr_cr8)?;
        self.rdmsr(tpr)?;
        self.save(2)?;
        self.a.cmp(eax, TPR_PROBE)?;
        self.a.jne(f_low)?;
        // Held while CR8 = its class; exits give the VMM every chance.
        self.a.mov(eax, CR8_CLASS)?;
        self.a.mov(cr8, rax)?;
        self.a.sti()?;
        self.icr(0, VEC_CR8)?;
        self.settle()?;
        self.expect_eq(
            count(0, VEC_CR8),
            0,
            "an interrupt of priority class 5 was delivered with CR8 = 5",
        )?;
        // Lowered: delivered while spinning ([`CR8_DELIVERED_SPINNING`]),
        // or only once the VMM saw the new CR8 at a later exit
        // ([`CR8_DELIVERED_AFTER_EXIT`]): the test decides which it needs.
        self.a.mov(eax, CR8_CLASS - 1)?;
        self.a.mov(cr8, rax)?;
        let mut spun = self.a.create_label();
        let mut arrived = self.a.create_label();
        self.wait_or(count(0, VEC_CR8), 1, Wait::Spin, spun)?;
        self.a.mov(eax, CR8_DELIVERED_SPINNING)?;
        self.a.jmp(arrived)?;
        self.a.set_label(&mut spun)?;
        self.wait_or(count(0, VEC_CR8), 1, Wait::Exits, f_never)?;
        self.a.mov(eax, CR8_DELIVERED_AFTER_EXIT)?;
        self.a.set_label(&mut arrived)?;
        self.save(CR8_DELIVERY_SLOT)?;
        self.rdmsr(tpr)?;
        self.save(3)?;
        self.a.cmp(eax, (CR8_CLASS - 1) << TPR_CLASS_SHIFT)?;
        self.a.jne(f_follow)?;
        self.a.xor(eax, eax)?;
        self.a.mov(cr8, rax)?;
        self.a.jmp(self.pass)
    }

    fn gp_not_interrupted(&mut self) -> Result<(), IcedError> {
        let tpr = X2APIC_MSR_BASE + APIC_TPR / 16;
        let fault = self.hook_fault;
        self.hook(VEC_GP_PENDING, Hook::Eoi);
        self.hook(VEC_GP_RACE, Hook::Eoi);
        // #GP hook: "inside" flag around a spin with IF=0.
        let mut gp = self.h.create_label();
        let mut spin = self.h.create_label();
        self.h.set_label(&mut gp)?;
        self.h.mov(dword_ptr(rbx + P_INSIDE), 1)?;
        self.h.mov(ecx, GP_HOOK_SPIN)?;
        self.h.set_label(&mut spin)?;
        self.h.dec(ecx)?;
        self.h.jnz(spin)?;
        self.h.mov(dword_ptr(rbx + P_INSIDE), 0)?;
        self.h.mov(ecx, GP)?;
        self.h.jmp(fault)?;
        self.hook(GP, Hook::Custom(gp));

        // (a) Pending behind TPR, TPR lowered, then the faulting RDMSR.
        self.wrmsr(tpr, TPR_BLOCK_ALL, 0)?;
        self.a.sti()?;
        self.icr(0, VEC_GP_PENDING)?;
        self.settle()?;
        self.expect_eq(
            count(0, VEC_GP_PENDING),
            0,
            "gp: an interrupt below TPR was delivered",
        )?;
        self.arm_skip(MSR_INSN_LEN)?;
        self.wrmsr(tpr, 0, 0)?;
        self.rdmsr(HV_UNDEFINED)?;
        self.expect_fault(
            GP,
            "gp: RDMSR of an undefined Hyper-V MSR did not raise #GP",
        )?;
        self.wait(
            count(0, VEC_GP_PENDING),
            1,
            Wait::Exits,
            "gp (TPR lowered before the #GP): the pending interrupt was lost",
        )?;
        // (b) Pending with IF=0; the RDMSR in STI's shadow.
        self.a.cli()?;
        self.icr(0, VEC_GP_PENDING)?;
        self.arm_skip(MSR_INSN_LEN)?;
        self.a.mov(ecx, HV_UNDEFINED)?;
        self.a.sti()?;
        self.a.rdmsr()?;
        self.expect_fault(GP, "gp: RDMSR in the STI shadow did not raise #GP")?;
        self.wait(
            count(0, VEC_GP_PENDING),
            2,
            Wait::Exits,
            "gp (#GP in the STI shadow): the pending interrupt was lost",
        )?;
        // (c) As (a) through the Hyper-V TPR MSR.
        self.wrmsr(HV_TPR, TPR_BLOCK_ALL, 0)?;
        self.icr(0, VEC_GP_PENDING)?;
        self.settle()?;
        self.expect_eq(
            count(0, VEC_GP_PENDING),
            2,
            "gp: an interrupt below the Hyper-V TPR was delivered",
        )?;
        self.arm_skip(MSR_INSN_LEN)?;
        self.wrmsr(HV_TPR, 0, 0)?;
        self.rdmsr(HV_UNDEFINED)?;
        self.expect_fault(
            GP,
            "gp: RDMSR after the Hyper-V TPR write did not raise #GP",
        )?;
        self.wait(
            count(0, VEC_GP_PENDING),
            3,
            Wait::Exits,
            "gp (Hyper-V TPR lowered before the #GP): the pending interrupt was lost",
        )?;
        // (d) Faulting RDMSRs while the AP sends IPIs.
        self.a.mov(dword_ptr(V_GO), 1)?;
        let mut again = self.a.create_label();
        self.a.mov(esi, GP_RACE_ROUNDS)?;
        self.a.set_label(&mut again)?;
        self.a.mov(dword_ptr(pc(0, P_SKIP)), MSR_INSN_LEN)?;
        self.rdmsr(HV_UNDEFINED)?;
        self.a.dec(esi)?;
        self.a.jnz(again)?;
        self.a.mov(dword_ptr(pc(0, P_SKIP)), 0)?;
        self.a.mov(dword_ptr(V_STOP), 1)?;
        self.wait(V_STOPPED, 1, Wait::Exits, "gp: the AP did not stop sending")?;
        self.settle()?;
        self.a.mov(eax, dword_ptr(count(0, VEC_GP_RACE)))?;
        self.save(1)?;
        self.icr(0, VEC_GP_RACE)?;
        self.wait_above(
            count(0, VEC_GP_RACE),
            1,
            "gp (IPIs during #GPs): the vector is no longer delivered: an interrupt was lost in a #GP delivery",
        )?;
        self.a.mov(eax, dword_ptr(count(0, GP)))?;
        self.save(0)?;
        self.expect_eq(count(0, GP), 3 + GP_RACE_ROUNDS, "gp: a #GP was lost")?;
        self.a.jmp(self.pass)?;

        // AP: IPIs to the BSP from GO to STOP.
        let mut ap = self.a.create_label();
        let mut send = self.a.create_label();
        let mut done = self.a.create_label();
        self.a.set_label(&mut ap)?;
        let wait_go = ap;
        self.a.out(DELAY_PORT, al)?;
        self.a.cmp(dword_ptr(V_GO), 0)?;
        self.a.je(wait_go)?;
        self.a.set_label(&mut send)?;
        self.a.cmp(dword_ptr(V_STOP), 0)?;
        self.a.jne(done)?;
        self.icr(0, VEC_GP_RACE)?;
        self.a.jmp(send)?;
        self.a.set_label(&mut done)?;
        self.a.mov(dword_ptr(V_STOPPED), 1)?;
        self.halt_forever()?;
        self.ap_body = Some(ap);
        Ok(())
    }

    fn timer_rearm(&mut self, deadline: bool, iterations: u32) -> Result<(), IcedError> {
        let mut skip = self.a.create_label();
        self.hook(VEC_TIMER, Hook::Eoi);
        self.a.mov(dword_ptr(val(0)), iterations)?;
        if deadline {
            self.cpuid1()?;
            self.a.mov(dword_ptr(val(1)), ecx)?;
            self.a.test(ecx, CPUID1_ECX_TSC_DEADLINE)?;
            self.a.jz(skip)?;
            self.apic_write(APIC_LVT_TIMER, VEC_TIMER | LVT_TSC_DEADLINE)?;
        } else {
            self.apic_write(APIC_LVT_TIMER, VEC_TIMER)?;
            self.apic_write(APIC_TDCR, TDCR_DIV128)?;
        }
        self.a.sti()?;
        let mut again = self.a.create_label();
        self.a.mov(esi, iterations)?;
        self.a.set_label(&mut again)?;
        if deadline {
            self.a.rdtsc()?;
            self.a.add(edx, FAR_TSC_HIGH)?;
            self.a.mov(ecx, MSR_TSC_DEADLINE)?;
            self.a.wrmsr()?;
        } else {
            self.wrmsr(X2APIC_MSR_BASE + APIC_TMICT / 16, FAR_TMICT, 0)?;
        }
        self.a.dec(esi)?;
        self.a.jnz(again)?;
        if deadline {
            self.wrmsr(MSR_TSC_DEADLINE, 0, 0)?;
        } else {
            self.apic_write(APIC_TMICT, 0)?;
        }
        self.a.mov(dword_ptr(val(2)), iterations)?;
        self.a.set_label(&mut skip)?;
        self.expect_eq(
            count(0, VEC_TIMER),
            0,
            "timer: fired though always re-armed far in the future",
        )
    }

    fn hypercall_ud(&mut self) -> Result<(), IcedError> {
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        self.wrmsr(HV_HYPERCALL, HCALL_PAGE | HV_PAGE_ENABLE, 0)?;
        self.a.mov(eax, dword_ptr(HCALL_PAGE))?;
        self.save(0)?;
        self.wrmsr(HV_HYPERCALL, HCALL_PAGE, 0)?;
        self.a.mov(eax, dword_ptr(HCALL_PAGE))?;
        self.save(1)?;
        let f = self.fail("hypercall: the page no longer starts with `out imm8, al` once disabled");
        self.a.cmp(byte_ptr(HCALL_PAGE), OPCODE_OUT_IMM8)?;
        self.a.jne(f)?;
        // The #UD resumes past the call, whatever RIP it reports; a stub
        // that runs returns there too.
        let mut resume = self.a.create_label();
        let mut ran = self.a.create_label();
        self.a.mov(dword_ptr(pc(0, P_FAULT_VEC)), 0)?;
        self.a.lea(rax, ptr(resume))?;
        self.a.mov(qword_ptr(pc(0, P_RESUME)), rax)?;
        self.a.xor(eax, eax)?;
        self.a.xor(edx, edx)?;
        self.a.mov(ebp, HCALL_PAGE)?;
        self.a.call(rbp)?;
        self.a.jmp(ran)?;
        self.a.set_label(&mut resume)?;
        // The return address of the call the #UD interrupted.
        self.a.add(rsp, 8)?;
        self.a.set_label(&mut ran)?;
        self.a.mov(qword_ptr(pc(0, P_RESUME)), 0)?;
        self.a.mov(eax, dword_ptr(pc(0, P_FAULT_VEC)))?;
        self.save(2)?;
        self.a.mov(eax, dword_ptr(pc(0, P_FAULT_EIP)))?;
        self.save(3)?;
        self.expect_eq(
            pc(0, P_FAULT_VEC),
            UD | FLAGGED,
            "hypercall: calling the disabled hypercall page did not raise #UD",
        )?;
        self.expect_eq(
            pc(0, P_FAULT_EIP),
            HCALL_PAGE,
            "hypercall: #UD was not reported at the stub's `out` instruction",
        )
    }

    fn hv_page_outside_ram(&mut self) -> Result<(), IcedError> {
        self.wrmsr(HV_GUEST_OS_ID, 1, GUEST_OS_ID_HIGH)?;
        for (i, msr, what_gp, what_kept) in [
            (
                0,
                HV_HYPERCALL,
                "HYPERCALL enabled at a GPA outside RAM did not raise #GP",
                "HYPERCALL changed by the refused write",
            ),
            (
                2,
                HV_VP_ASSIST_PAGE,
                "VP_ASSIST_PAGE enabled at a GPA outside RAM did not raise #GP",
                "VP_ASSIST_PAGE changed by the refused write",
            ),
        ] {
            self.wrmsr_gp(msr, GPA_OUTSIDE_RAM | HV_PAGE_ENABLE, 0, what_gp)?;
            self.rdmsr(msr)?;
            self.save(i)?;
            self.a.mov(dword_ptr(val(i + 1)), edx)?;
            let f = self.fail(what_kept);
            self.a.or(eax, edx)?;
            self.a.jnz(f)?;
        }
        Ok(())
    }

    fn init_deassert(&mut self) -> Result<(), IcedError> {
        self.wait(pc(1, P_SPIN), 1, Wait::Exits, "init: the AP never ran")?;
        self.icr(1, ICR_INIT | ICR_TRIGGER_LEVEL)?;
        self.settle()?;
        self.a.mov(eax, dword_ptr(pc(1, P_SPIN)))?;
        self.save(0)?;
        self.wait_above(
            pc(1, P_SPIN),
            0,
            "init: the AP stopped running after an INIT level de-assert",
        )?;
        self.expect_eq(V_APS, 1, "init: the AP started again")?;
        // The same through the Hyper-V ICR MSR (xAPIC layout: destination
        // in bits 63:56), which the kernel irqchip turns into an MSI.
        self.wrmsr(
            HV_ICR,
            ICR_INIT | ICR_TRIGGER_LEVEL,
            match self.apic {
                Apic::Xapic => 1 << XAPIC_DEST_SHIFT,
                Apic::X2apic => 1,
            },
        )?;
        self.settle()?;
        self.a.mov(eax, dword_ptr(pc(1, P_SPIN)))?;
        self.save(1)?;
        self.wait_above(
            pc(1, P_SPIN),
            1,
            "init: the AP stopped running after a Hyper-V ICR INIT level de-assert",
        )?;
        self.expect_eq(V_APS, 1, "init: the AP started again after the Hyper-V ICR")?;
        self.a.jmp(self.pass)?;

        let mut ap = self.a.create_label();
        let mut spin = self.a.create_label();
        self.a.set_label(&mut ap)?;
        self.a.cli()?;
        self.a.set_label(&mut spin)?;
        self.a.lock().inc(dword_ptr(pc(1, P_SPIN)))?;
        self.a.jmp(spin)?;
        self.ap_body = Some(ap);
        Ok(())
    }

    fn cpuid_apic_bit(&mut self) -> Result<(), IcedError> {
        let f_on = self.fail("cpuid: CPUID.1:EDX.APIC is 0 with the APIC enabled");
        let f_off =
            self.fail("cpuid: CPUID.1:EDX.APIC still 1 after IA32_APIC_BASE.EN was cleared");
        let f_back = self.fail("cpuid: CPUID.1:EDX.APIC not 1 again after EN was set again");
        self.cpuid1()?;
        self.a.mov(dword_ptr(val(0)), edx)?;
        self.a.test(edx, CPUID1_EDX_APIC)?;
        self.a.jz(f_on)?;
        self.rdmsr(MSR_APIC_BASE)?;
        self.a.mov(dword_ptr(V_BUF), eax)?;
        self.a.mov(dword_ptr(V_BUF + 4), edx)?;
        self.a.and(eax, !(APIC_BASE_EN | APIC_BASE_EXTD))?;
        self.a.wrmsr()?;
        self.cpuid1()?;
        self.a.mov(dword_ptr(val(1)), edx)?;
        self.a.test(edx, CPUID1_EDX_APIC)?;
        self.a.jnz(f_off)?;
        self.a.mov(ecx, MSR_APIC_BASE)?;
        self.a.mov(eax, dword_ptr(V_BUF))?;
        self.a.mov(edx, dword_ptr(V_BUF + 4))?;
        self.a.wrmsr()?;
        self.cpuid1()?;
        self.a.mov(dword_ptr(val(2)), edx)?;
        self.a.test(edx, CPUID1_EDX_APIC)?;
        self.a.jz(f_back)
    }

    fn synthetic_reserved(&mut self) -> Result<(), IcedError> {
        self.wrmsr_gp(
            HV_TPR,
            0x100,
            0,
            "HV_X64_MSR_TPR = 0x100 (bits 63:8 reserved) did not raise #GP",
        )?;
        self.wrmsr_gp(
            HV_TPR,
            0,
            1,
            "HV_X64_MSR_TPR with bit 32 set did not raise #GP",
        )?;
        self.wrmsr_gp(
            HV_EOI,
            0,
            1,
            "HV_X64_MSR_EOI with bit 32 set did not raise #GP",
        )?;
        self.wrmsr_gp(
            HV_ICR,
            (1 << 20) | VEC_HARMLESS,
            0,
            "HV_X64_MSR_ICR with reserved bit 20 set did not raise #GP",
        )?;
        self.rdmsr(HV_TPR)?;
        self.save(0)?;
        self.expect_eq(val(0), 0, "HV_X64_MSR_TPR changed by a refused write")
    }

    fn synthetic_apic_disabled(&mut self) -> Result<(), IcedError> {
        self.rdmsr(MSR_APIC_BASE)?;
        self.a.mov(dword_ptr(V_BUF), eax)?;
        self.a.mov(dword_ptr(V_BUF + 4), edx)?;
        self.a.and(eax, !(APIC_BASE_EN | APIC_BASE_EXTD))?;
        self.a.wrmsr()?;
        self.wrmsr_gp(
            HV_EOI,
            0,
            0,
            "HV_X64_MSR_EOI with the APIC disabled did not raise #GP",
        )?;
        self.wrmsr_gp(
            HV_TPR,
            0,
            0,
            "HV_X64_MSR_TPR write with the APIC disabled did not raise #GP",
        )?;
        self.wrmsr_gp(
            HV_ICR,
            VEC_HARMLESS,
            0,
            "HV_X64_MSR_ICR with the APIC disabled did not raise #GP",
        )?;
        self.arm_skip(MSR_INSN_LEN)?;
        self.rdmsr(HV_TPR)?;
        self.expect_fault(
            GP,
            "HV_X64_MSR_TPR read with the APIC disabled did not raise #GP",
        )?;
        self.a.mov(ecx, MSR_APIC_BASE)?;
        self.a.mov(eax, dword_ptr(V_BUF))?;
        self.a.mov(edx, dword_ptr(V_BUF + 4))?;
        self.a.wrmsr()
    }

    fn lazy_eoi_no_starve(&mut self) -> Result<(), IcedError> {
        let lazy = self.hook_lazy;
        self.hook(VEC_LOW, Hook::Eoi);
        // High vector: arm the timer (lower vector), spin until it pends,
        // then Linux's lazy EOI.
        let mut high = self.h.create_label();
        let mut spin = self.h.create_label();
        let h = &mut self.h;
        h.set_label(&mut high)?;
        h.mov(eax, dword_ptr(rbx + P_ASSIST))?;
        h.mov(dword_ptr(val(0)), eax)?;
        h.mov(ecx, X2APIC_MSR_BASE + APIC_TMICT / 16)?;
        h.mov(eax, LAZY_TIMER_COUNT)?;
        h.xor(edx, edx)?;
        h.wrmsr()?;
        // Spin on the TSC (no exit), long enough on any host for the
        // timer to fire while this vector is in service.
        h.push(rsi)?;
        h.rdtsc()?;
        h.shl(rdx, 32)?;
        h.or(rax, rdx)?;
        h.mov(rsi, rax)?;
        h.set_label(&mut spin)?;
        h.rdtsc()?;
        h.shl(rdx, 32)?;
        h.or(rax, rdx)?;
        h.sub(rax, rsi)?;
        h.cmp(rax, LAZY_HANDLER_TSC)?;
        h.jb(spin)?;
        h.pop(rsi)?;
        h.mov(eax, dword_ptr(rbx + P_COUNT + VEC_LOW * 4))?;
        h.mov(dword_ptr(val(1)), eax)?;
        h.mov(eax, dword_ptr(rbx + P_ASSIST))?;
        h.mov(dword_ptr(val(3)), eax)?;
        h.jmp(lazy)?;
        self.hook(VEC_HIGH, Hook::Custom(high));

        self.vp_assist_on()?;
        self.apic_write(APIC_LVT_TIMER, VEC_LOW)?;
        self.apic_write(APIC_TDCR, TDCR_DIV1)?;
        self.a.sti()?;
        self.icr(0, VEC_HIGH)?;
        self.wait(
            count(0, VEC_HIGH),
            1,
            Wait::Exits,
            "lazy EOI: the high vector was not delivered",
        )?;
        self.expect_eq(
            val(1),
            0,
            "lazy EOI: the lower vector was delivered while the higher one was in service",
        )?;
        let late = self.fail(
            "lazy EOI: the lower vector arrived only after a later exit: starved while the guest ran",
        );
        let never = self.fail("lazy EOI: the lower vector never arrived");
        let mut spun = self.a.create_label();
        self.wait_or(count(0, VEC_LOW), 1, Wait::Spin, spun)?;
        let mut ok = self.a.create_label();
        self.a.jmp(ok)?;
        self.a.set_label(&mut spun)?;
        self.a.mov(eax, dword_ptr(pc(0, P_LAZY)))?;
        self.save(2)?;
        self.wait_or(count(0, VEC_LOW), 1, Wait::Exits, never)?;
        self.a.jmp(late)?;
        self.a.set_label(&mut ok)?;
        self.a.mov(eax, dword_ptr(pc(0, P_LAZY)))?;
        self.save(2)
    }

    fn agreement(&mut self) -> Result<(), IcedError> {
        self.apic_read(APIC_VERSION)?;
        self.save(0)?;
        self.apic_write(APIC_ESR, 0)?;
        self.icr(0, VEC_ILLEGAL)?;
        self.apic_write(APIC_ESR, 0)?;
        self.apic_read(APIC_ESR)?;
        self.save(1)?;
        for (bit, probe) in gp_probes(self.apic).iter().enumerate() {
            self.gp_bit(bit as u32, probe.msr, probe.write)?;
        }
        if self.apic == Apic::X2apic {
            self.apic_write(APIC_TPR, 0)?;
        }
        Ok(())
    }

    fn level_lazy_eoi(&mut self) -> Result<(), IcedError> {
        let (pin, v) = (PIN_LEVEL_LAZY, VEC_LEVEL_LAZY);
        let lazy = self.hook_lazy;
        // Value 2 collects apic_assist at each entry: 0 means lazy EOI was
        // never armed and the lazy path not exercised.
        let mut record = self.h.create_label();
        self.h.set_label(&mut record)?;
        self.h.mov(eax, dword_ptr(rbx + P_ASSIST))?;
        self.h.or(dword_ptr(val(2)), eax)?;
        self.h.jmp(lazy)?;
        self.hook_lower_line(v, pin, 2, false, record)?;
        self.vp_assist_on()?;
        self.rte(pin, v | RTE_LEVEL)?;
        self.a.sti()?;
        Self::line(&mut self.a, pin, true)?;
        self.wait_exactly(count(0, v), 2, "level + lazy EOI: the still-asserted line was not delivered again (Remote IRR not cleared)", "level + lazy EOI: delivered again after the line was lowered")?;
        self.rte_low(pin)?;
        self.save(1)?;
        self.a.mov(eax, dword_ptr(pc(0, P_LAZY)))?;
        self.save(0)?;
        let f = self.fail("level + lazy EOI: Remote IRR still set after the last EOI");
        self.a.test(dword_ptr(val(1)), RTE_REMOTE_IRR)?;
        self.a.jnz(f)
    }

    // ---- assembly and the image -------------------------------------------

    fn finish(mut self) -> Result<Kernel, String> {
        let e = |e: IcedError| e.to_string();
        let main = self
            .a
            .assemble_options(
                u64::from(MAIN),
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .map_err(e)?;
        let report = main.label_ip(&self.report).map_err(e)?;
        let ap64 = main.label_ip(&self.ap64).map_err(e)? as u32;
        let code = main.inner.code_buffer;
        check_fits("main code", MAIN, code.len(), MAIN_END)?;
        let (entry, ap32) = entry32(ap64).map_err(e)?;
        check_fits("32-bit entry", CODE, entry.len(), MAIN)?;

        self.handlers(report).map_err(e)?;
        let h = self
            .h
            .assemble_options(
                u64::from(COMMON),
                BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
            )
            .map_err(e)?;
        let common = h.label_ip(&self.common).map_err(e)? as u32;
        let mut hooks = [0u32; 256];
        let fault = h.label_ip(&self.hook_fault).map_err(e)? as u32;
        for v in (0..FIRST_IRQ).filter(|&v| v != NMI) {
            hooks[v as usize] = fault;
        }
        for (v, hook) in &self.hooks {
            let l = match hook {
                Hook::Eoi => self.hook_eoi,
                Hook::Custom(l) => *l,
            };
            hooks[*v as usize] = h.label_ip(&l).map_err(e)? as u32;
        }
        let handlers = h.inner.code_buffer;
        check_fits("handlers", COMMON, handlers.len(), HANDLERS_END)?;
        let strings = std::mem::take(&mut self.strings);
        check_fits("strings", STRINGS, strings.len(), STRINGS_END)?;

        let mut seg = vec![0u8; (IMAGE_END - LOAD_ADDR) as usize];
        let mut put = |at: u32, bytes: &[u8]| {
            let o = (at - LOAD_ADDR) as usize;
            seg[o..o + bytes.len()].copy_from_slice(bytes);
        };
        put(LOAD_ADDR, &multiboot_header());
        put(CODE, &entry);
        put(MAIN, &code);
        for v in 0..256u32 {
            let stub = STUBS + v * STUB_SIZE;
            put(stub, &stub_bytes(v, stub, common));
            put(IDT + v * 16, &gate(stub));
        }
        put(COMMON, &handlers);
        put(TRAMP_IMAGE, &mbkernel::trampoline(ap32));
        put(STRINGS, &strings);
        for (i, d) in GDT_ENTRIES.iter().enumerate() {
            put(GDT + 8 * i as u32, &d.to_le_bytes());
        }
        put(GDTR, &descriptor_table(GDT_ENTRIES.len() as u32 * 8, GDT));
        put(IDTR, &descriptor_table(256 * 16, IDT));
        for (v, hook) in hooks.iter().enumerate() {
            put(HOOKS + 4 * v as u32, &hook.to_le_bytes());
        }
        put(PML4, &(u64::from(PDPT) | PTE_PRESENT_RW).to_le_bytes());
        for i in 0..PD_PAGES {
            let pd = PD + i * 0x1000;
            put(
                PDPT + 8 * i,
                &(u64::from(pd) | PTE_PRESENT_RW).to_le_bytes(),
            );
            for e in 0..512u32 {
                let gpa = (u64::from(i) * 512 + u64::from(e)) * LARGE_PAGE;
                put(
                    pd + 8 * e,
                    &(gpa | PTE_PRESENT_RW | PTE_LARGE).to_le_bytes(),
                );
            }
        }
        Ok(Kernel {
            image: mbkernel::elf32(&seg, CODE),
            checks: self.checks,
        })
    }
}

/// The 32-bit code: the BSP's multiboot entry and the AP's entry from the
/// trampoline (returned second), each loading this GDT, turning on 64-bit
/// mode and jumping to [`MAIN`] or to `ap64`.
fn entry32(ap64: u32) -> Result<(Vec<u8>, u32), IcedError> {
    let mut p = CodeAssembler::new(32)?;
    let mut ap32 = p.create_label();
    // lgdt [GDTR]; jmp 0x08:next, encoded by hand (the far pointer holds
    // the next instruction's address).
    let mut head = vec![0x0F, 0x01, 0x15];
    head.extend_from_slice(&GDTR.to_le_bytes());
    head.push(0xEA);
    let next = CODE + head.len() as u32 + 6;
    head.extend_from_slice(&next.to_le_bytes());
    head.extend_from_slice(&SEL_CODE32.to_le_bytes());
    p.db(&head)?;
    p.cli()?;
    to_long_mode(&mut p, MAIN)?;
    // The trampoline leaves DS with its real-mode base: flat data first
    // (same selector in its GDT), then this GDT.
    p.set_label(&mut ap32)?;
    p.mov(ax, u32::from(SEL_DATA))?;
    p.mov(ds, ax)?;
    p.lgdt(ptr(GDTR))?;
    to_long_mode(&mut p, ap64)?;
    let r = p.assemble_options(
        u64::from(CODE),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let ap32 = r.label_ip(&ap32)? as u32;
    Ok((r.inner.code_buffer, ap32))
}

/// Data segments, PAE paging with [`PML4`], EFER.LME, CR0.PG, then a far
/// jump to 64-bit `target` (SDM Vol. 3 10.8.5).
fn to_long_mode(p: &mut CodeAssembler, target: u32) -> Result<(), IcedError> {
    p.mov(ax, u32::from(SEL_DATA))?;
    for seg in [ds, es, fs, gs, ss] {
        p.mov(seg, ax)?;
    }
    p.mov(eax, cr4)?;
    p.or(eax, CR4_PAE)?;
    p.mov(cr4, eax)?;
    p.mov(eax, PML4)?;
    p.mov(cr3, eax)?;
    p.mov(ecx, MSR_EFER)?;
    p.rdmsr()?;
    p.or(eax, EFER_LME)?;
    p.wrmsr()?;
    p.mov(eax, cr0)?;
    p.or(eax, CR0_PG)?;
    p.mov(cr0, eax)?;
    let mut far = vec![0xEA];
    far.extend_from_slice(&target.to_le_bytes());
    far.extend_from_slice(&SEL_CODE64.to_le_bytes());
    p.db(&far)
}

fn check_fits(what: &str, at: u32, len: usize, end: u32) -> Result<(), String> {
    if at as usize + len > end as usize {
        return Err(format!(
            "conformance kernel: {what} of {len} bytes does not fit below {end:#x}"
        ));
    }
    Ok(())
}

/// Multiboot v1 header: magic, flags (page-align modules, memory info),
/// checksum.
fn multiboot_header() -> Vec<u8> {
    const MB_MAGIC: u32 = 0x1BAD_B002;
    const MB_FLAGS: u32 = 0x3;
    let mut h = Vec::new();
    for w in [
        MB_MAGIC,
        MB_FLAGS,
        0u32.wrapping_sub(MB_MAGIC.wrapping_add(MB_FLAGS)),
    ] {
        h.extend_from_slice(&w.to_le_bytes());
    }
    h
}

/// A stub at `at`: a dummy error code where the CPU pushes none, the
/// vector, `jmp common` (`push imm32` = 68, `jmp rel32` = E9).
fn stub_bytes(vector: u32, at: u32, common: u32) -> Vec<u8> {
    let mut s = Vec::with_capacity(STUB_SIZE as usize);
    if !ERROR_CODE_VECTORS.contains(&(vector as u8)) {
        s.extend_from_slice(&[0x68, 0, 0, 0, 0]);
    }
    s.push(0x68);
    s.extend_from_slice(&vector.to_le_bytes());
    s.push(0xE9);
    let next = at + s.len() as u32 + 4;
    s.extend_from_slice(&common.wrapping_sub(next).to_le_bytes());
    s
}

fn gate(handler: u32) -> [u8; 16] {
    let low = u32::from(SEL_CODE64) << 16 | (handler & 0xFFFF);
    let high = (handler & 0xFFFF_0000) | GATE_INTERRUPT;
    let mut g = [0u8; 16];
    g[..4].copy_from_slice(&low.to_le_bytes());
    g[4..8].copy_from_slice(&high.to_le_bytes());
    g
}

/// A GDTR/IDTR image: limit, then base (8 bytes, enough for both modes).
fn descriptor_table(size: u32, base: u32) -> [u8; 10] {
    let mut d = [0u8; 10];
    d[..2].copy_from_slice(&((size - 1) as u16).to_le_bytes());
    d[2..6].copy_from_slice(&base.to_le_bytes());
    d
}

/// MMIO at or above 2 GiB cannot be a 32-bit displacement in 64-bit
/// mode: the address goes through R8, which no other code uses.
fn mmio_write(a: &mut CodeAssembler, addr: u32, value: u32) -> Result<(), IcedError> {
    a.mov(r8d, addr)?;
    a.mov(dword_ptr(r8), value)
}

/// Reads the MMIO dword at `addr` into EAX (through R8).
fn mmio_read(a: &mut CodeAssembler, addr: u32) -> Result<(), IcedError> {
    a.mov(r8d, addr)?;
    a.mov(eax, dword_ptr(r8))
}

/// One MSR access of [`Case::Agreement`] whose #GP is recorded.
struct Probe {
    name: &'static str,
    msr: u32,
    /// `Some((low, high))` writes, `None` reads.
    write: Option<(u32, u32)>,
}

/// The x2APIC MSR of xAPIC register offset `off` (SDM Vol. 3 11.12.1.2).
const fn x2(off: u32) -> u32 {
    X2APIC_MSR_BASE + off / 16
}

/// The accesses whose #GP the two irqchips must agree on. x2APIC: the
/// reserved-bit, read-only, write-only and nonexistent cases of SDM Vol. 3
/// 11.12.1.2-3 (a write that is taken only pends [`VEC_HARMLESS`] or
/// changes state the case does not use). xAPIC: x2APIC MSRs in xAPIC mode.
const X2APIC_PROBES: [Probe; 18] = [
    Probe {
        name: "TPR = 0x100 (bits 31:8 reserved)",
        msr: x2(APIC_TPR),
        write: Some((0x100, 0)),
    },
    Probe {
        name: "TPR with bit 32 set",
        msr: x2(APIC_TPR),
        write: Some((0, 1)),
    },
    Probe {
        name: "write of the read-only ID",
        msr: x2(APIC_ID),
        write: Some((0, 0)),
    },
    Probe {
        name: "write of the read-only version",
        msr: x2(APIC_VERSION),
        write: Some((0, 0)),
    },
    Probe {
        name: "read of APR (no x2APIC MSR)",
        msr: x2(APIC_APR),
        write: None,
    },
    Probe {
        name: "EOI = 1 (must be 0)",
        msr: x2(APIC_EOI),
        write: Some((1, 0)),
    },
    Probe {
        name: "read of the write-only SELF IPI",
        msr: x2(APIC_SELF_IPI),
        write: None,
    },
    Probe {
        name: "SELF IPI with bit 8 set",
        msr: x2(APIC_SELF_IPI),
        write: Some((0x100 | VEC_HARMLESS, 0)),
    },
    Probe {
        name: "SVR with reserved bit 16",
        msr: x2(APIC_SVR),
        write: Some((SVR_ENABLE | 1 << 16, 0)),
    },
    Probe {
        name: "ESR = 1 (must be 0)",
        msr: x2(APIC_ESR),
        write: Some((1, 0)),
    },
    Probe {
        name: "ICR with reserved bit 20",
        msr: x2(APIC_ICR),
        write: Some((1 << 20 | VEC_HARMLESS, 0)),
    },
    Probe {
        name: "LVT timer with reserved bit 20",
        msr: x2(APIC_LVT_TIMER),
        write: Some((1 << 16 | 1 << 20, 0)),
    },
    Probe {
        name: "read of DFR (no x2APIC MSR)",
        msr: x2(APIC_DFR),
        write: None,
    },
    Probe {
        name: "write of the read-only current count",
        msr: x2(APIC_TMCCT),
        write: Some((0, 0)),
    },
    Probe {
        name: "write of the read-only LDR",
        msr: x2(APIC_LDR),
        write: Some((0, 0)),
    },
    Probe {
        name: "read of ICR high (no x2APIC MSR)",
        msr: x2(APIC_ICR_HIGH),
        write: None,
    },
    Probe {
        name: "TDCR with reserved bit 4",
        msr: x2(APIC_TDCR),
        write: Some((0x10, 0)),
    },
    Probe {
        name: "read of MSR 0x800 (reserved)",
        msr: x2(0),
        write: None,
    },
];
const XAPIC_PROBES: [Probe; 3] = [
    Probe {
        name: "x2APIC version MSR read in xAPIC mode",
        msr: x2(APIC_VERSION),
        write: None,
    },
    Probe {
        name: "x2APIC TPR MSR read in xAPIC mode",
        msr: x2(APIC_TPR),
        write: None,
    },
    Probe {
        name: "x2APIC EOI MSR write in xAPIC mode",
        msr: x2(APIC_EOI),
        write: Some((0, 0)),
    },
];

fn gp_probes(apic: Apic) -> &'static [Probe] {
    match apic {
        Apic::X2apic => &X2APIC_PROBES,
        Apic::Xapic => &XAPIC_PROBES,
    }
}

/// What bit `n` of [`Case::Agreement`]'s value 2 (the #GP mask) stands for.
pub fn gp_probe_names(apic: Apic) -> Vec<&'static str> {
    gp_probes(apic).iter().map(|p| p.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Case; 31] = [
        Case::IoapicEdge,
        Case::IoapicLevelRemoteIrr,
        Case::IoapicLevelStillAsserted,
        Case::IoapicMaskedLevel,
        Case::IoapicEdgesCoalesce,
        Case::RepInsbFwCfg,
        Case::RepOutsbCom1,
        Case::Nmi(Apic::Xapic),
        Case::Nmi(Apic::X2apic),
        Case::CliHlt,
        Case::StraySipi,
        Case::Cr8,
        Case::GpNotInterrupted,
        Case::TimerRearm {
            deadline: false,
            iterations: 10,
        },
        Case::TimerRearm {
            deadline: true,
            iterations: 10,
        },
        Case::HypercallUd,
        Case::HvPageOutsideRam,
        Case::InitDeassert(Apic::Xapic),
        Case::InitDeassert(Apic::X2apic),
        Case::CpuidApicBit,
        Case::SyntheticMsrReserved,
        Case::SyntheticMsrApicDisabled,
        Case::LazyEoiNoStarve,
        Case::Agreement(Apic::Xapic),
        Case::Agreement(Apic::X2apic),
        Case::LevelLazyEoi,
        Case::PortInUnderFlush,
        Case::IoapicNmi,
        Case::Lint1Nmi,
        Case::SyntheticXapic,
        Case::IpiFollowsApicId,
    ];

    #[test]
    fn every_case_assembles_into_a_multiboot_elf() {
        for case in ALL {
            let k = build(case).unwrap_or_else(|e| panic!("{case:?}: {e}"));
            assert_eq!(&k.image[..4], b"\x7fELF", "{case:?}");
            assert!(!k.checks.is_empty());
            assert_eq!(k.check(1), Some("an unexpected exception (see fault=)"));
            assert_eq!(k.check(0), None);
        }
    }

    #[test]
    fn stubs_fit_and_jump_to_common() {
        for v in [0u32, 8, 13, 0x80, 0xFF] {
            let at = STUBS + v * STUB_SIZE;
            let s = stub_bytes(v, at, COMMON);
            assert!(s.len() <= STUB_SIZE as usize);
            let rel = i32::from_le_bytes(s[s.len() - 4..].try_into().unwrap());
            assert_eq!(
                (at + s.len() as u32).wrapping_add(rel as u32),
                COMMON,
                "vector {v}"
            );
        }
    }

    #[test]
    fn parses_the_result_line() {
        let line = "conformance: code=3 r=00000001 0000005a 0 0 0 0 0 ffffffff | cpu0 fault=000@00000000 nested=000 n: 50=2 ";
        let o = parse(&format!("conformance: IoapicEdge\n{line}\n")).unwrap();
        assert_eq!(o.code, 3);
        assert_eq!(o.values, [1, 0x5A, 0, 0, 0, 0, 0, 0xFFFF_FFFF]);
        assert_eq!(o.line, line);
        assert_eq!(parse("conformance: code=x r=1"), None);
    }
}
