//! Multiboot v1 test kernels, assembled at run time with iced-x86 (no
//! second toolchain): an ELF32 image the reference VMM boots like GRUB
//! would.
//!
//! What the kernel does (32-bit protected mode, CPL0, short paths: guest
//! CPL0 code may be emulated at microseconds an instruction):
//! 1. saves EAX (the multiboot magic) and EBX (the multiboot info);
//! 2. prints [`BOOT_LINE`] over COM1 (polling LSR bit 5);
//! 3. reads the CPU count from fw_cfg (`FW_CFG_NB_CPUS`);
//! 4. copies its 16-bit AP trampoline to [`TRAMPOLINE`] (below 1 MiB,
//!    page aligned), enables its local APIC (xAPIC MMIO or x2APIC MSRs)
//!    and sends INIT then two STARTUP IPIs (all-excluding-self, or one
//!    per APIC ID 1..n-1);
//! 5. each AP goes from real mode to 32-bit protected mode with the
//!    trampoline's GDT, increments a shared counter and halts;
//! 6. the BSP waits for the counter with a bounded loop (one port write
//!    per iteration, so the bound is long on any host), checks the magic,
//!    reads `mem_upper` and the command line from the multiboot info,
//!    prints the result line and writes its exit code to the
//!    isa-debug-exit port 0xF4.

use iced_x86::code_asm::*;
use iced_x86::{BlockEncoderOptions, IcedError};

/// Where the image is loaded (1 MiB).
pub const LOAD_ADDR: u32 = 0x10_0000;
/// Where the BSP copies the AP trampoline (SIPI vector 0x80).
pub const TRAMPOLINE: u32 = 0x8_0000;
/// The first line the kernel prints.
pub const BOOT_LINE: &str = "mbkernel: boot";
/// Prefix of the result line:
/// `mbkernel: ok cpus=N started=K mem_upper=M cmdline=<...>`.
pub const RESULT_PREFIX: &str = "mbkernel: ok ";
/// Prefix of an error line.
pub const ERROR_PREFIX: &str = "mbkernel: error";
/// Exit code: EAX did not hold the multiboot magic.
pub const EXIT_BAD_MAGIC: u8 = 0x10;
/// Exit code: not every AP started within the bound.
pub const EXIT_AP_TIMEOUT: u8 = 0x11;
/// Exit code: fw_cfg reported no CPUs.
pub const EXIT_NO_CPUS: u8 = 0x12;
/// Exit code of [`Flavor::BadInstruction`] if the instruction ran.
pub const EXIT_RAN_ON: u8 = 0x13;

/// Multiboot v1 header magic.
const MB_MAGIC: u32 = 0x1BAD_B002;
/// Header flags: page-align modules (bit 0), memory information (bit 1).
const MB_FLAGS: u32 = 0x3;
/// What the boot loader leaves in EAX.
const MB_BOOT_MAGIC: u32 = 0x2BAD_B002;
/// Multiboot info flags: mem_lower/mem_upper valid (bit 0), cmdline (bit 2).
const MBI_MEM: u32 = 1 << 0;
const MBI_CMDLINE: u32 = 1 << 2;

/// File offset of the loaded segment.
const SEG_OFFSET: usize = 0x1000;
/// Code starts here (after the multiboot header).
const CODE: u32 = LOAD_ADDR + 0x10;
/// The trampoline's bytes inside the image.
const TRAMP_IMAGE: u32 = LOAD_ADDR + 0x4000;
/// Strings.
const STRINGS: u32 = LOAD_ADDR + 0x5000;
/// Variables (in the zero-filled part of the segment).
const VARS: u32 = LOAD_ADDR + 0x8000;
const V_MAGIC: u32 = VARS;
const V_MBI: u32 = VARS + 4;
const V_CPUS: u32 = VARS + 8;
const V_STARTED: u32 = VARS + 12;
/// Interrupts counted by the [`Flavor::LevelIrq`] handler.
const V_IRQS: u32 = VARS + 16;
/// #GPs counted by the [`Flavor::FrequencyMsrs`] handler.
const V_GPS: u32 = VARS + 20;
/// Where [`Flavor::FrequencyMsrs`] keeps an MSR's value (low, high).
const V_MSR: u32 = VARS + 24;
/// IDTR image (limit, base).
const V_IDTR: u32 = VARS + 0x20;
/// The handler's register save area (eax, ecx, edx, return address).
const V_SAVE: u32 = VARS + 0x30;
/// EFLAGS.IF.
const EFLAGS_IF: u32 = 1 << 9;
/// The IDT of [`Flavor::LevelIrq`] (gates up to [`LEVEL_VECTOR`]).
const IDT_BASE: u32 = VARS + 0x400;
/// The interrupt handler's code (assembled on its own).
const HANDLER: u32 = LOAD_ADDR + 0x4800;
/// The #GP handler of [`Flavor::FrequencyMsrs`].
const GP_HANDLER: u32 = LOAD_ADDR + 0x4C00;
/// #GP.
const GP_VECTOR: u32 = 13;
/// Length of RDMSR (0F 32), which the #GP handler skips.
const RDMSR_LEN: u32 = 2;
/// Hyper-V frequency MSRs (TLFS).
const HV_MSR_TSC_FREQUENCY: u32 = 0x4000_0022;
const HV_MSR_APIC_FREQUENCY: u32 = 0x4000_0023;
/// Vector of the level-triggered COM1 interrupt.
const LEVEL_VECTOR: u32 = 0x40;
/// COM1 IOAPIC pin (ISA IRQ 4).
const COM1_PIN: u32 = 4;
const IOAPIC_SEL: u32 = 0xFEC0_0000;
const IOAPIC_WIN: u32 = 0xFEC0_0010;
/// Redirection entry: level-triggered (bit 15), fixed, physical, unmasked.
const RTE_LEVEL: u32 = 1 << 15;
/// UART interrupt enable register and its THR-empty bit.
const COM1_IER: u16 = COM1 + 1;
/// UART interrupt identification register.
const COM1_IIR: u16 = COM1 + 2;
const IER_THRE: u32 = 1 << 1;
const X2APIC_EOI: u32 = 0x80B;
/// Scratch buffer for decimal numbers (16 bytes).
const V_NUMBUF: u32 = VARS + 0x100;
/// Top of the BSP's stack.
const STACK_TOP: u32 = LOAD_ADDR + 0xA000;
/// Size the segment takes in memory.
const MEM_SIZE: u32 = STACK_TOP - LOAD_ADDR;

/// Trampoline layout: code at 0, GDT at 0x20, GDTR at 0x38.
const T_GDT: u16 = 0x20;
const T_GDTR: u16 = 0x38;
const T_SIZE: usize = 0x40;
/// Selectors of the trampoline's GDT.
const SEL_CODE: u16 = 0x08;
const SEL_DATA: u16 = 0x10;

const COM1: u16 = 0x3F8;
const COM1_LSR: u16 = COM1 + 5;
/// LSR bit 5: transmit holding register empty.
const LSR_THRE: u8 = 1 << 5;
const FW_CFG_SELECTOR: u16 = 0x510;
const FW_CFG_DATA: u16 = 0x511;
/// fw_cfg item: number of CPUs (u16, little endian).
const FW_CFG_NB_CPUS: u16 = 0x05;
const DEBUG_EXIT: u16 = 0xF4;
/// Hyper-V synthetic MSRs (TLFS).
const HV_MSR_GUEST_OS_ID: u32 = 0x4000_0000;
const HV_MSR_HYPERCALL: u32 = 0x4000_0001;
/// A non-zero guest OS ID (high half: an open-source OS type).
const GUEST_OS_ID_HIGH: u32 = 0x8100_0000;
/// Where the hypercall page goes (free space in the segment).
const HYPERCALL_PAGE: u32 = LOAD_ADDR + 0x7000;
/// HvCallNotifyLongSpinWait.
const HVCALL_NOTIFY_LONG_SPIN_WAIT: u32 = 0x0008;
/// A code no Hyper-V version defines.
const HVCALL_UNKNOWN: u32 = 0x7FFF;
/// Control word: fast call.
const HV_HYPERCALL_FAST: u32 = 1 << 16;
/// ACPI PM1a control register (the FADT's).
const PM1A_CNT: u16 = 0x604;
/// PM1a_CNT: SLP_EN (bit 13) with SLP_TYP 5 (bits 12:10), the DSDT's \\_S5.
const PM1_SLP_S5: u16 = (1 << 13) | (5 << 10);
/// Reset control register.
const RESET_PORT: u16 = 0xCF9;
/// Reset control: RST_CPU (bit 2) with SYS_RST (bit 1).
const RESET_CPU: u16 = 0x6;
/// A port nothing claims: a write is a bare exit, used as a delay.
const DELAY_PORT: u16 = 0x80;
/// Bound of the BSP's wait for the APs, in delay-port writes.
const AP_WAIT_ITERATIONS: u32 = 1_000_000;

const MSR_APIC_BASE: u32 = 0x1B;
/// IA32_APIC_BASE: global enable (bit 11) and x2APIC mode (bit 10).
const APIC_BASE_EN_EXTD: u32 = (1 << 11) | (1 << 10);
const X2APIC_SVR: u32 = 0x80F;
const X2APIC_ICR: u32 = 0x830;
const XAPIC_BASE: u32 = 0xFEE0_0000;
const XAPIC_SVR: u32 = XAPIC_BASE + 0xF0;
const XAPIC_ICR_LOW: u32 = XAPIC_BASE + 0x300;
const XAPIC_ICR_HIGH: u32 = XAPIC_BASE + 0x310;
/// SVR: APIC software enable, spurious vector 0xFF.
const SVR_ENABLE: u32 = 0x1FF;
/// ICR: INIT, level assert (SDM Vol. 3 10.6.1).
const ICR_INIT: u32 = 0x4500;
/// ICR: STARTUP, level assert; the vector is the start page.
const ICR_STARTUP: u32 = 0x4600;
/// ICR destination shorthand "all excluding self".
const ICR_ALL_BUT_SELF: u32 = 0b11 << 18;

/// How the BSP drives its local APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apic {
    /// xAPIC registers through MMIO at 0xFEE00000.
    Xapic,
    /// x2APIC registers through MSRs.
    X2apic,
}

/// How the BSP addresses the INIT and STARTUP IPIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Destination shorthand "all excluding self".
    AllButSelf,
    /// One IPI per APIC ID 1..n-1.
    EachApicId,
}

/// What the kernel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Starts the APs and reports (see the module docs).
    Smp {
        /// APIC access.
        apic: Apic,
        /// IPI addressing.
        target: Target,
        /// Written to port 0xF4 at the end.
        exit_code: u8,
    },
    /// As [`Flavor::Smp`] with exit code 0, but once every AP has started
    /// and halted, INIT resets them and a new SIPI starts them again: the
    /// result line's `started` counts both rounds (2 * (n - 1)).
    Restart {
        /// APIC access.
        apic: Apic,
        /// IPI addressing.
        target: Target,
    },
    /// Prints [`BOOT_LINE`], then runs `int3` at CPL0 with no IDT: KVM's
    /// instruction emulator cannot run it where CPL0 is emulated, and
    /// elsewhere it ends in a triple fault. Either must be a clear error.
    BadInstruction,
    /// Prints [`BOOT_LINE`], then halts with interrupts off for good: only
    /// the VMM's timeout ends the run.
    Hang,
    /// Prints [`BOOT_LINE`], then powers off through ACPI PM1a_CNT
    /// (SLP_TYP 5 of \\_S5 with SLP_EN).
    PowerOff,
    /// Prints [`BOOT_LINE`], then resets through port 0xCF9.
    Reset,
    /// Enables the Hyper-V hypercall page the way Linux does (GUEST_OS_ID,
    /// then HYPERCALL), makes two fast hypercalls with the 32-bit ABI
    /// (control in EDX:EAX, result in EDX:EAX): NotifyLongSpinWait (not
    /// granted: spinlock retries "never") and an unknown code, prints
    /// [`HYPERCALL_PREFIX`] with both statuses and exits with code 0.
    Hypercall,
    /// Routes COM1's IOAPIC pin level-triggered to an x2APIC vector whose
    /// handler counts and EOIs, makes COM1 interrupt twice (THRE interrupt,
    /// two bytes written), prints [`LEVEL_PREFIX`] with the count and exits
    /// with code 0. The second interrupt only arrives if the EOI of the
    /// first reached the IOAPIC (remote IRR cleared).
    LevelIrq,
    /// Installs a #GP handler that counts the fault and skips the faulting
    /// RDMSR, reads HV_X64_MSR_TSC_FREQUENCY and HV_X64_MSR_APIC_FREQUENCY,
    /// prints [`FREQ_PREFIX`] with each MSR's fault count and value and
    /// exits with code 0 (see [`parse_freq`]).
    FrequencyMsrs,
}

/// Prefix of the [`Flavor::FrequencyMsrs`] result line:
/// `mbkernel: freq tsc=<faults> <high> <low> apic=<faults> <high> <low>`.
pub const FREQ_PREFIX: &str = "mbkernel: freq tsc=";

/// Prefix of the [`Flavor::LevelIrq`] result line: `mbkernel: level irqs=N`.
pub const LEVEL_PREFIX: &str = "mbkernel: level irqs=";

/// Prefix of the [`Flavor::Hypercall`] result line:
/// `mbkernel: hypercall status=<spin wait> <unknown code>`.
pub const HYPERCALL_PREFIX: &str = "mbkernel: hypercall status=";

fn strings() -> (Vec<u8>, [u32; 13]) {
    let items: [&[u8]; 13] = [
        b"mbkernel: boot\n\0",
        b"mbkernel: ok cpus=\0",
        b" started=\0",
        b" mem_upper=\0",
        b" cmdline=\0",
        b"\n\0",
        b"mbkernel: error: not every AP started, started=\0",
        b"mbkernel: error: bad multiboot magic\n\0",
        b"mbkernel: hypercall status=\0",
        b" \0",
        b"\nmbkernel: level irqs=\0",
        b"mbkernel: freq tsc=\0",
        b" apic=\0",
    ];
    let mut blob = Vec::new();
    let mut at = [0u32; 13];
    for (i, s) in items.iter().enumerate() {
        at[i] = STRINGS + blob.len() as u32;
        blob.extend_from_slice(s);
    }
    (blob, at)
}
const S_BOOT: usize = 0;
const S_OK: usize = 1;
const S_STARTED: usize = 2;
const S_MEM: usize = 3;
const S_CMDLINE: usize = 4;
const S_NL: usize = 5;
const S_AP_ERR: usize = 6;
const S_MAGIC_ERR: usize = 7;
const S_HC: usize = 8;
const S_SPACE: usize = 9;
const S_LEVEL: usize = 10;
const S_FREQ: usize = 11;
const S_APIC: usize = 12;

/// The 16-bit trampoline, run from [`TRAMPOLINE`] with CS.base =
/// TRAMPOLINE, IP = 0: load its GDT, set CR0.PE, far-jump to `ap32`.
pub(crate) fn trampoline(ap32: u32) -> Vec<u8> {
    let mut t = vec![
        0xFA, // cli
        0x8C, 0xC8, // mov ax, cs
        0x8E, 0xD8, // mov ds, ax
        0x66, 0x0F, 0x01, 0x16, // o32 lgdt [disp16]
    ];
    t.extend_from_slice(&T_GDTR.to_le_bytes());
    t.extend_from_slice(&[
        0x0F, 0x20, 0xC0, // mov eax, cr0
        0x0C, 0x01, // or al, 1
        0x0F, 0x22, 0xC0, // mov cr0, eax
        0x66, 0xEA, // o32 jmp far ptr16:32
    ]);
    t.extend_from_slice(&ap32.to_le_bytes());
    t.extend_from_slice(&SEL_CODE.to_le_bytes());
    assert!(
        t.len() <= usize::from(T_GDT),
        "trampoline code overlaps its GDT"
    );
    t.resize(usize::from(T_GDT), 0x90);
    for d in [0u64, 0x00CF_9A00_0000_FFFF, 0x00CF_9200_0000_FFFF] {
        t.extend_from_slice(&d.to_le_bytes());
    }
    t.resize(usize::from(T_GDTR), 0);
    t.extend_from_slice(&(3u16 * 8 - 1).to_le_bytes());
    t.extend_from_slice(&(TRAMPOLINE + u32::from(T_GDT)).to_le_bytes());
    t.resize(T_SIZE, 0);
    t
}

/// `esi` = NUL-terminated string: print it over COM1. Clobbers eax, ebx,
/// edx, esi.
pub(crate) fn emit_puts(a: &mut CodeAssembler, puts: &mut CodeLabel) -> Result<(), IcedError> {
    let mut wait = a.create_label();
    let mut done = a.create_label();
    a.set_label(puts)?;
    let next = *puts;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.mov(bl, al)?;
    a.mov(dx, COM1_LSR as u32)?;
    a.set_label(&mut wait)?;
    a.in_(al, dx)?;
    a.test(al, LSR_THRE as u32)?;
    a.jz(wait)?;
    a.mov(al, bl)?;
    a.mov(dx, COM1 as u32)?;
    a.out(dx, al)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    a.ret()?;
    Ok(())
}

/// `eax` = number: print it in decimal. Clobbers eax, ebx, ecx, edx, esi,
/// edi.
fn emit_putdec(
    a: &mut CodeAssembler,
    putdec: &mut CodeLabel,
    puts: CodeLabel,
) -> Result<(), IcedError> {
    let mut digit = a.create_label();
    a.set_label(putdec)?;
    a.mov(edi, V_NUMBUF + 15)?;
    a.mov(byte_ptr(edi), 0)?;
    a.mov(ecx, 10)?;
    a.set_label(&mut digit)?;
    a.xor(edx, edx)?;
    a.div(ecx)?;
    a.add(dl, b'0' as u32)?;
    a.dec(edi)?;
    a.mov(byte_ptr(edi), dl)?;
    a.test(eax, eax)?;
    a.jnz(digit)?;
    a.mov(esi, edi)?;
    a.jmp(puts)?;
    Ok(())
}

/// Sends one ICR command `low` (edx = destination APIC ID). Clobbers eax,
/// ecx, edx.
fn emit_icr(a: &mut CodeAssembler, apic: Apic, low: u32) -> Result<(), IcedError> {
    match apic {
        Apic::X2apic => {
            a.mov(ecx, X2APIC_ICR)?;
            a.mov(eax, low)?;
            a.wrmsr()?;
        }
        Apic::Xapic => {
            a.shl(edx, 24)?;
            a.mov(dword_ptr(XAPIC_ICR_HIGH), edx)?;
            a.mov(dword_ptr(XAPIC_ICR_LOW), low)?;
        }
    }
    Ok(())
}

/// Writes `code` to the debug-exit port, then halts for good.
/// Loads an IDT at `IDT_BASE` whose last gate, `vector`, is a 32-bit
/// interrupt gate to `handler` in the current code segment.
fn emit_idt_gate(a: &mut CodeAssembler, vector: u32, handler: u32) -> Result<(), IcedError> {
    a.mov(ax, cs)?;
    a.movzx(eax, ax)?;
    a.shl(eax, 16)?;
    a.or(eax, handler & 0xFFFF)?;
    a.mov(dword_ptr(IDT_BASE + vector * 8), eax)?;
    a.mov(
        dword_ptr(IDT_BASE + vector * 8 + 4),
        (handler & 0xFFFF_0000) | 0x8E00,
    )?;
    a.mov(word_ptr(V_IDTR), (vector + 1) * 8 - 1)?;
    a.mov(dword_ptr(V_IDTR + 2), IDT_BASE)?;
    a.lidt(ptr(V_IDTR))?;
    Ok(())
}

fn emit_exit(a: &mut CodeAssembler, code: u8) -> Result<(), IcedError> {
    let mut halt = a.create_label();
    a.mov(eax, u32::from(code))?;
    a.out(DEBUG_EXIT as u32, eax)?;
    a.set_label(&mut halt)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(halt)?;
    Ok(())
}

fn code(flavor: Flavor, s: &[u32; 13]) -> Result<(Vec<u8>, u32), IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let mut puts = a.create_label();
    let mut putdec = a.create_label();
    let mut ap32 = a.create_label();
    a.cli()?;
    a.mov(esp, STACK_TOP)?;
    a.mov(dword_ptr(V_MAGIC), eax)?;
    a.mov(dword_ptr(V_MBI), ebx)?;
    a.cld()?;
    a.mov(esi, s[S_BOOT])?;
    a.call(puts)?;

    match flavor {
        Flavor::BadInstruction => {
            a.int3()?;
            emit_exit(&mut a, EXIT_RAN_ON)?;
        }
        Flavor::PowerOff | Flavor::Reset => {
            let (port, value) = match flavor {
                Flavor::PowerOff => (PM1A_CNT, PM1_SLP_S5),
                _ => (RESET_PORT, RESET_CPU),
            };
            a.mov(dx, u32::from(port))?;
            a.mov(ax, u32::from(value))?;
            if port == RESET_PORT {
                a.out(dx, al)?;
            } else {
                a.out(dx, ax)?;
            }
            emit_exit(&mut a, EXIT_RAN_ON)?;
        }
        Flavor::Hypercall => {
            // Linux hyperv_init: GUEST_OS_ID first, then the page.
            a.mov(ecx, HV_MSR_GUEST_OS_ID)?;
            a.mov(eax, 1)?;
            a.mov(edx, GUEST_OS_ID_HIGH)?;
            a.wrmsr()?;
            a.mov(ecx, HV_MSR_HYPERCALL)?;
            a.mov(eax, HYPERCALL_PAGE | 1)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
            a.mov(esi, s[S_HC])?;
            a.call(puts)?;
            for code in [HVCALL_NOTIFY_LONG_SPIN_WAIT, HVCALL_UNKNOWN] {
                a.xor(edx, edx)?;
                a.mov(eax, code | HV_HYPERCALL_FAST)?;
                a.xor(ebx, ebx)?;
                a.mov(ecx, 1)?;
                a.xor(edi, edi)?;
                a.xor(esi, esi)?;
                a.mov(ebp, HYPERCALL_PAGE)?;
                a.call(ebp)?;
                a.movzx(eax, ax)?;
                a.call(putdec)?;
                a.mov(esi, s[S_SPACE])?;
                a.call(puts)?;
            }
            a.mov(esi, s[S_NL])?;
            a.call(puts)?;
            emit_exit(&mut a, 0)?;
        }
        Flavor::LevelIrq => {
            // x2APIC on.
            a.mov(ecx, MSR_APIC_BASE)?;
            a.rdmsr()?;
            a.or(eax, APIC_BASE_EN_EXTD)?;
            a.wrmsr()?;
            a.mov(ecx, X2APIC_SVR)?;
            a.mov(eax, SVR_ENABLE)?;
            a.xor(edx, edx)?;
            a.wrmsr()?;
            // IDT gate for the vector: 32-bit interrupt gate, this CS.
            emit_idt_gate(&mut a, LEVEL_VECTOR, HANDLER)?;
            // IOAPIC: pin 4 -> vector, level-triggered, APIC ID 0.
            a.mov(dword_ptr(IOAPIC_SEL), 0x10 + 2 * COM1_PIN + 1)?;
            a.mov(dword_ptr(IOAPIC_WIN), 0)?;
            a.mov(dword_ptr(IOAPIC_SEL), 0x10 + 2 * COM1_PIN)?;
            a.mov(dword_ptr(IOAPIC_WIN), LEVEL_VECTOR | RTE_LEVEL)?;
            // COM1 interrupts on THR empty; two bytes, two interrupts.
            a.mov(dx, u32::from(COM1_IER))?;
            a.mov(al, IER_THRE)?;
            a.out(dx, al)?;
            for (byte, want) in [(b'a', 1u32), (b'b', 2)] {
                let mut wait = a.create_label();
                let mut got = a.create_label();
                a.mov(dx, u32::from(COM1))?;
                a.mov(al, u32::from(byte))?;
                a.out(dx, al)?;
                a.mov(ecx, AP_WAIT_ITERATIONS / 10)?;
                a.set_label(&mut wait)?;
                a.cmp(dword_ptr(V_IRQS), want)?;
                a.jae(got)?;
                // Interrupts on around one exit per iteration.
                a.sti()?;
                a.out(DELAY_PORT as u32, al)?;
                a.cli()?;
                a.dec(ecx)?;
                a.jnz(wait)?;
                a.set_label(&mut got)?;
            }
            a.mov(dx, u32::from(COM1_IER))?;
            a.xor(al, al)?;
            a.out(dx, al)?;
            a.mov(esi, s[S_LEVEL])?;
            a.call(puts)?;
            a.mov(eax, dword_ptr(V_IRQS))?;
            a.call(putdec)?;
            a.mov(esi, s[S_NL])?;
            a.call(puts)?;
            emit_exit(&mut a, 0)?;
        }
        Flavor::FrequencyMsrs => {
            // IDT gate 13: 32-bit interrupt gate to the #GP handler.
            emit_idt_gate(&mut a, GP_VECTOR, GP_HANDLER)?;
            for (i, msr) in [HV_MSR_TSC_FREQUENCY, HV_MSR_APIC_FREQUENCY]
                .into_iter()
                .enumerate()
            {
                a.mov(dword_ptr(V_GPS), 0)?;
                a.mov(ecx, msr)?;
                a.xor(eax, eax)?;
                a.xor(edx, edx)?;
                a.rdmsr()?;
                a.mov(dword_ptr(V_MSR), eax)?;
                a.mov(dword_ptr(V_MSR + 4), edx)?;
                a.mov(esi, s[if i == 0 { S_FREQ } else { S_APIC }])?;
                a.call(puts)?;
                a.mov(eax, dword_ptr(V_GPS))?;
                a.call(putdec)?;
                a.mov(esi, s[S_SPACE])?;
                a.call(puts)?;
                a.mov(eax, dword_ptr(V_MSR + 4))?;
                a.call(putdec)?;
                a.mov(esi, s[S_SPACE])?;
                a.call(puts)?;
                a.mov(eax, dword_ptr(V_MSR))?;
                a.call(putdec)?;
            }
            a.mov(esi, s[S_NL])?;
            a.call(puts)?;
            emit_exit(&mut a, 0)?;
        }
        Flavor::Hang => {
            let mut halt = a.create_label();
            a.set_label(&mut halt)?;
            a.cli()?;
            a.hlt()?;
            a.jmp(halt)?;
        }
        Flavor::Smp { .. } | Flavor::Restart { .. } => {
            let (apic, target, exit_code, rounds) = match flavor {
                Flavor::Smp {
                    apic,
                    target,
                    exit_code,
                } => (apic, target, exit_code, 1),
                Flavor::Restart { apic, target } => (apic, target, 0, 2),
                _ => unreachable!("matched above"),
            };
            let mut fail_magic = a.create_label();
            let mut fail_ap = a.create_label();
            let mut fail_cpus = a.create_label();
            // fw_cfg: CPU count.
            a.mov(dx, FW_CFG_SELECTOR as u32)?;
            a.mov(ax, FW_CFG_NB_CPUS as u32)?;
            a.out(dx, ax)?;
            a.mov(dx, FW_CFG_DATA as u32)?;
            a.in_(al, dx)?;
            a.movzx(ecx, al)?;
            a.in_(al, dx)?;
            a.movzx(eax, al)?;
            a.shl(eax, 8)?;
            a.or(eax, ecx)?;
            a.mov(dword_ptr(V_CPUS), eax)?;
            a.test(eax, eax)?;
            a.jz(fail_cpus)?;
            // The trampoline to low memory.
            a.mov(esi, TRAMP_IMAGE)?;
            a.mov(edi, TRAMPOLINE)?;
            a.mov(ecx, T_SIZE as u32)?;
            a.rep().movsb()?;
            // Local APIC on.
            match apic {
                Apic::X2apic => {
                    a.mov(ecx, MSR_APIC_BASE)?;
                    a.rdmsr()?;
                    a.or(eax, APIC_BASE_EN_EXTD)?;
                    a.wrmsr()?;
                    a.mov(ecx, X2APIC_SVR)?;
                    a.mov(eax, SVR_ENABLE)?;
                    a.xor(edx, edx)?;
                    a.wrmsr()?;
                }
                Apic::Xapic => a.mov(dword_ptr(XAPIC_SVR), SVR_ENABLE)?,
            }
            // INIT, then STARTUP twice (SDM Vol. 3 8.4.4.1); for a restart,
            // again once the APs have halted.
            let vector = TRAMPOLINE >> 12;
            let mut all_up = a.create_label();
            a.cmp(dword_ptr(V_CPUS), 1)?;
            a.jbe(all_up)?;
            for round in 1..=rounds {
                for icr in [ICR_INIT, ICR_STARTUP | vector, ICR_STARTUP | vector] {
                    match target {
                        Target::AllButSelf => {
                            a.xor(edx, edx)?;
                            emit_icr(&mut a, apic, icr | ICR_ALL_BUT_SELF)?;
                        }
                        Target::EachApicId => {
                            let mut each = a.create_label();
                            a.mov(ebp, 1)?;
                            a.set_label(&mut each)?;
                            a.mov(edx, ebp)?;
                            emit_icr(&mut a, apic, icr)?;
                            a.inc(ebp)?;
                            a.cmp(ebp, dword_ptr(V_CPUS))?;
                            a.jb(each)?;
                        }
                    }
                }
                // Bounded wait for every AP (counted `round` times).
                let mut wait = a.create_label();
                let mut done = a.create_label();
                a.mov(ebp, dword_ptr(V_CPUS))?;
                a.dec(ebp)?;
                a.imul_3(ebp, ebp, round)?;
                a.mov(ecx, AP_WAIT_ITERATIONS)?;
                a.set_label(&mut wait)?;
                a.cmp(dword_ptr(V_STARTED), ebp)?;
                a.jae(done)?;
                a.out(DELAY_PORT as u32, al)?;
                a.dec(ecx)?;
                a.jnz(wait)?;
                a.jmp(fail_ap)?;
                a.set_label(&mut done)?;
                a.nop()?;
            }
            a.set_label(&mut all_up)?;
            // The boot loader's facts.
            a.cmp(dword_ptr(V_MAGIC), MB_BOOT_MAGIC)?;
            a.jne(fail_magic)?;
            a.mov(esi, s[S_OK])?;
            a.call(puts)?;
            a.mov(eax, dword_ptr(V_CPUS))?;
            a.call(putdec)?;
            a.mov(esi, s[S_STARTED])?;
            a.call(puts)?;
            a.mov(eax, dword_ptr(V_STARTED))?;
            a.call(putdec)?;
            let mut no_mem = a.create_label();
            let mut no_cmdline = a.create_label();
            a.mov(esi, s[S_MEM])?;
            a.call(puts)?;
            a.mov(ebp, dword_ptr(V_MBI))?;
            a.xor(eax, eax)?;
            a.test(dword_ptr(ebp), MBI_MEM)?;
            a.jz(no_mem)?;
            a.mov(eax, dword_ptr(ebp + 8))?;
            a.set_label(&mut no_mem)?;
            a.call(putdec)?;
            a.mov(esi, s[S_CMDLINE])?;
            a.call(puts)?;
            a.mov(ebp, dword_ptr(V_MBI))?;
            a.test(dword_ptr(ebp), MBI_CMDLINE)?;
            a.jz(no_cmdline)?;
            a.mov(esi, dword_ptr(ebp + 16))?;
            a.call(puts)?;
            a.set_label(&mut no_cmdline)?;
            a.mov(esi, s[S_NL])?;
            a.call(puts)?;
            emit_exit(&mut a, exit_code)?;

            a.set_label(&mut fail_ap)?;
            a.mov(esi, s[S_AP_ERR])?;
            a.call(puts)?;
            a.mov(eax, dword_ptr(V_STARTED))?;
            a.call(putdec)?;
            a.mov(esi, s[S_NL])?;
            a.call(puts)?;
            emit_exit(&mut a, EXIT_AP_TIMEOUT)?;
            a.set_label(&mut fail_magic)?;
            a.mov(esi, s[S_MAGIC_ERR])?;
            a.call(puts)?;
            emit_exit(&mut a, EXIT_BAD_MAGIC)?;
            a.set_label(&mut fail_cpus)?;
            emit_exit(&mut a, EXIT_NO_CPUS)?;

            // AP: from the trampoline's far jump, flat 32-bit.
            let mut halt = a.create_label();
            a.set_label(&mut ap32)?;
            a.mov(ax, SEL_DATA as u32)?;
            a.mov(ds, ax)?;
            a.mov(es, ax)?;
            a.mov(ss, ax)?;
            a.lock().inc(dword_ptr(V_STARTED))?;
            a.set_label(&mut halt)?;
            a.cli()?;
            a.hlt()?;
            a.jmp(halt)?;
        }
    }
    emit_puts(&mut a, &mut puts)?;
    emit_putdec(&mut a, &mut putdec, puts)?;

    let r = a.assemble_options(
        u64::from(CODE),
        BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS,
    )?;
    let ap = r.label_ip(&ap32).unwrap_or(0) as u32;
    Ok((r.inner.code_buffer, ap))
}

/// Assembles the kernel: a multiboot v1 ELF32 image.
pub fn build(flavor: Flavor) -> Result<Vec<u8>, String> {
    let (blob, at) = strings();
    let (code, ap32) = code(flavor, &at).map_err(|e| e.to_string())?;
    let tramp = trampoline(ap32);
    let mut seg = Vec::new();
    seg.extend_from_slice(&MB_MAGIC.to_le_bytes());
    seg.extend_from_slice(&MB_FLAGS.to_le_bytes());
    seg.extend_from_slice(
        &0u32
            .wrapping_sub(MB_MAGIC.wrapping_add(MB_FLAGS))
            .to_le_bytes(),
    );
    seg.resize((CODE - LOAD_ADDR) as usize, 0);
    seg.extend_from_slice(&code);
    if seg.len() > (TRAMP_IMAGE - LOAD_ADDR) as usize {
        return Err(format!(
            "test kernel code of {} bytes too large",
            code.len()
        ));
    }
    seg.resize((TRAMP_IMAGE - LOAD_ADDR) as usize, 0);
    seg.extend_from_slice(&tramp);
    seg.resize((HANDLER - LOAD_ADDR) as usize, 0);
    seg.extend_from_slice(&handler().map_err(|e| e.to_string())?);
    if seg.len() > (GP_HANDLER - LOAD_ADDR) as usize {
        return Err("interrupt handler too large".into());
    }
    seg.resize((GP_HANDLER - LOAD_ADDR) as usize, 0);
    seg.extend_from_slice(&gp_handler().map_err(|e| e.to_string())?);
    if seg.len() > (STRINGS - LOAD_ADDR) as usize {
        return Err("#GP handler too large".into());
    }
    seg.resize((STRINGS - LOAD_ADDR) as usize, 0);
    seg.extend_from_slice(&blob);
    Ok(elf32(&seg, CODE))
}

/// The [`Flavor::LevelIrq`] interrupt handler at [`HANDLER`]: count, EOI
/// through the x2APIC EOI register, return.
fn handler() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    a.mov(dword_ptr(V_SAVE), eax)?;
    a.mov(dword_ptr(V_SAVE + 4), ecx)?;
    a.mov(dword_ptr(V_SAVE + 8), edx)?;
    a.inc(dword_ptr(V_IRQS))?;
    // Reading IIR acknowledges the UART's THR-empty interrupt (16550).
    a.mov(dx, u32::from(COM1_IIR))?;
    a.in_(al, dx)?;
    a.mov(ecx, X2APIC_EOI)?;
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.mov(edx, dword_ptr(V_SAVE + 8))?;
    a.mov(ecx, dword_ptr(V_SAVE + 4))?;
    // No `iretd`: hosts that emulate CPL0 may not emulate it. Return by
    // hand with interrupts left off (the interrupted loop turns them on).
    a.pop(eax)?;
    a.mov(dword_ptr(V_SAVE + 12), eax)?;
    a.pop(eax)?;
    a.and(dword_ptr(esp), !EFLAGS_IF)?;
    a.mov(eax, dword_ptr(V_SAVE))?;
    a.popfd()?;
    a.jmp(dword_ptr(V_SAVE + 12))?;
    a.assemble(u64::from(HANDLER))
}

/// The [`Flavor::FrequencyMsrs`] #GP handler at [`GP_HANDLER`]: count the
/// fault and return past the RDMSR that raised it.
fn gp_handler() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    a.mov(dword_ptr(V_SAVE), eax)?;
    a.inc(dword_ptr(V_GPS))?;
    // Frame: error code, EIP, CS, EFLAGS. As in `handler`, no `iretd`.
    a.pop(eax)?;
    a.pop(eax)?;
    a.add(eax, RDMSR_LEN)?;
    a.mov(dword_ptr(V_SAVE + 12), eax)?;
    a.pop(eax)?;
    a.mov(eax, dword_ptr(V_SAVE))?;
    a.popfd()?;
    a.jmp(dword_ptr(V_SAVE + 12))?;
    a.assemble(u64::from(GP_HANDLER))
}

/// One MSR read by [`Flavor::FrequencyMsrs`]: the value, or `None` when it
/// raised #GP.
pub type MsrRead = Option<u64>;

/// Parses the [`Flavor::FrequencyMsrs`] line: `(TSC frequency, APIC
/// frequency)` reads, or `None` without a well-formed line.
pub fn parse_freq(console: &str) -> Option<(MsrRead, MsrRead)> {
    let line = console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(FREQ_PREFIX))?;
    let (tsc, apic) = line.split_once(" apic=")?;
    let read = |f: &str| -> Option<MsrRead> {
        let v: Vec<u64> = f
            .split(' ')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        match v.as_slice() {
            [0, hi, lo] if *hi <= u64::from(u32::MAX) && *lo <= u64::from(u32::MAX) => {
                Some(Some((hi << 32) | lo))
            }
            [1, 0, 0] => Some(None),
            _ => None,
        }
    };
    Some((read(tsc)?, read(apic)?))
}

/// An ELF32 executable with one loadable segment at [`LOAD_ADDR`].
pub(crate) fn elf32(seg: &[u8], entry: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(SEG_OFFSET + seg.len());
    f.extend_from_slice(&[0x7F, b'E', b'L', b'F', 1, 1, 1, 0]);
    f.resize(16, 0);
    let half = |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_le_bytes());
    let word = |f: &mut Vec<u8>, v: u32| f.extend_from_slice(&v.to_le_bytes());
    half(&mut f, 2); // ET_EXEC
    half(&mut f, 3); // EM_386
    word(&mut f, 1); // EV_CURRENT
    word(&mut f, entry);
    word(&mut f, 52); // e_phoff
    word(&mut f, 0); // e_shoff
    word(&mut f, 0); // e_flags
    half(&mut f, 52); // e_ehsize
    half(&mut f, 32); // e_phentsize
    half(&mut f, 1); // e_phnum
    half(&mut f, 40); // e_shentsize
    half(&mut f, 0); // e_shnum
    half(&mut f, 0); // e_shstrndx
    word(&mut f, 1); // PT_LOAD
    word(&mut f, SEG_OFFSET as u32);
    word(&mut f, LOAD_ADDR); // p_vaddr
    word(&mut f, LOAD_ADDR); // p_paddr
    word(&mut f, seg.len() as u32);
    word(&mut f, MEM_SIZE.max(seg.len() as u32));
    word(&mut f, 7); // RWX
    word(&mut f, 0x1000);
    f.resize(SEG_OFFSET, 0);
    f.extend_from_slice(seg);
    f
}

/// The values of a result line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// CPUs fw_cfg reported.
    pub cpus: u32,
    /// APs that incremented the counter.
    pub started: u32,
    /// Multiboot `mem_upper` (KiB above 1 MiB).
    pub mem_upper: u64,
    /// The command line the kernel read.
    pub cmdline: String,
}

/// Finds and parses the result line in console output.
pub fn parse_result(console: &str) -> Option<Report> {
    let line = console
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix(RESULT_PREFIX))?;
    let field = |name: &str| -> Option<&str> {
        let at = line.find(&format!("{name}="))? + name.len() + 1;
        Some(line[at..].split(' ').next().unwrap_or(""))
    };
    let cmd_at = line.find("cmdline=")? + "cmdline=".len();
    Some(Report {
        cpus: field("cpus")?.parse().ok()?,
        started: field("started")?.parse().ok()?,
        mem_upper: field("mem_upper")?.parse().ok()?,
        cmdline: line[cmd_at..].to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_is_a_multiboot_elf32() {
        for flavor in [
            Flavor::Smp {
                apic: Apic::Xapic,
                target: Target::EachApicId,
                exit_code: 0,
            },
            Flavor::Smp {
                apic: Apic::X2apic,
                target: Target::AllButSelf,
                exit_code: 3,
            },
            Flavor::BadInstruction,
            Flavor::Hang,
            Flavor::PowerOff,
            Flavor::Reset,
            Flavor::Hypercall,
            Flavor::LevelIrq,
            Flavor::FrequencyMsrs,
            Flavor::Restart {
                apic: Apic::Xapic,
                target: Target::AllButSelf,
            },
        ] {
            let f = build(flavor).unwrap();
            assert_eq!(&f[..4], b"\x7fELF");
            assert_eq!(f[4], 1, "ELFCLASS32");
            // Multiboot header in the first 8 KiB, 4-byte aligned.
            let at = (0..8192)
                .step_by(4)
                .find(|&o| f[o..o + 4] == MB_MAGIC.to_le_bytes())
                .unwrap();
            let w = |o: usize| u32::from_le_bytes(f[o..o + 4].try_into().unwrap());
            assert_eq!(w(at).wrapping_add(w(at + 4)).wrapping_add(w(at + 8)), 0);
            assert_eq!(w(24), CODE, "entry");
        }
    }

    #[test]
    fn trampoline_jumps_to_the_ap_entry() {
        let t = trampoline(0x0012_3456);
        assert_eq!(t.len(), T_SIZE);
        let jmp = t.windows(2).position(|w| w == [0x66, 0xEA]).unwrap();
        assert_eq!(&t[jmp + 2..jmp + 8], &[0x56, 0x34, 0x12, 0x00, 0x08, 0x00]);
    }

    #[test]
    fn parses_the_result_line() {
        let r = parse_result(
            "mbkernel: boot\nmbkernel: ok cpus=4 started=3 mem_upper=64512 cmdline=a b=c\n",
        )
        .unwrap();
        assert_eq!(
            r,
            Report {
                cpus: 4,
                started: 3,
                mem_upper: 64512,
                cmdline: "a b=c".into()
            }
        );
        assert_eq!(parse_result("mbkernel: boot\n"), None);
    }

    #[test]
    fn parses_the_freq_line() {
        assert_eq!(
            parse_freq("mbkernel: freq tsc=0 0 2300000000 apic=0 1 5\n"),
            Some((Some(2_300_000_000), Some((1 << 32) | 5)))
        );
        assert_eq!(
            parse_freq("mbkernel: freq tsc=1 0 0 apic=1 0 0\n"),
            Some((None, None))
        );
        // A fault that left a value, or two faults, is no valid read.
        assert_eq!(parse_freq("mbkernel: freq tsc=1 0 7 apic=1 0 0\n"), None);
        assert_eq!(parse_freq("mbkernel: freq tsc=2 0 0 apic=1 0 0\n"), None);
        assert_eq!(parse_freq("mbkernel: boot\n"), None);
    }
}
