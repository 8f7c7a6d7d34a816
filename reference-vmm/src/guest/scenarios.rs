//! Named scenarios of the built-in guest. vCPU 0 drives; the others
//! respond from their interrupt handlers (halted most of the time, so that
//! hundreds of vCPUs cost little on a small host). Each scenario checks
//! its own result in guest memory and reports through the report address.

use hv_enlightenments::hypercall::{
    EncodeOptions, EncodedCall, FlushFlags, FlushRequest, GvaRange, HV_PAGE_SIZE,
    Targets as EncTargets, encode_flush, encode_send_ipi,
};
use hv_enlightenments::msr::HV_X64_MSR_ICR;
use iced_x86::code_asm::*;

use super::abi::{self, eoi_mode, percpu as pc, shared};
use super::asm::{Error, assemble};
use super::kernel::{
    HV_FAST, HVCALL_SEND_IPI, X2APIC_ICR, XAPIC_ICR_HIGH_OFFSET, XAPIC_ICR_LOW_OFFSET,
};
use super::user::*;
use crate::boot::{PTE_P, PTE_U, PTE_W};
use crate::layout::{
    PERCPU_BASE, PERCPU_SIZE, PERCPU_VARS, PT_TEST, TLB_PAGE_A, TLB_PAGE_B, TLB_TEST_VA, USER_CODE,
    XAPIC_MMIO, percpu,
};
use crate::vm::Program;
use hv_enlightenments::hypercall::{CallCode, Control};

/// Failure codes reported by scenarios.
pub mod failure {
    /// A target received a different number of interrupts than sent
    /// (detail: vCPU).
    pub const WRONG_COUNT: u64 = 1;
    /// A privileged operation failed (detail: bit 63 | vector).
    pub const PRIV_FAULT: u64 = 2;
    /// A hypercall returned an error status (detail: RAX).
    pub const HC_STATUS: u64 = 3;
    /// A stale translation was seen after a flush (detail: vCPU).
    pub const STALE: u64 = 4;
    /// A hostile-guest case got the wrong answer (detail: case << 32 |
    /// low 32 bits of what it got).
    pub const HOSTILE_CASE: u64 = 5;
}

/// Markers stored in the two TLB test pages.
pub const MARKER_A: u64 = 0xA0A0_A0A0_A0A0_A0A0;
/// Marker of page B.
pub const MARKER_B: u64 = 0xB0B0_B0B0_B0B0_B0B0;

/// How IPIs are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpiMode {
    /// One x2APIC ICR write per target.
    Native,
    /// HvCallSendSyntheticClusterIpi, fast (targets below VP 64).
    PvFast,
    /// HvCallSendSyntheticClusterIpiEx with a sparse VP set in memory.
    PvEx,
    /// One xAPIC ICR write (MMIO, straight from CPL3) per target; the
    /// APIC stays in xAPIC mode (at most 255 vCPUs).
    Xapic,
    /// One HV_X64_MSR_ICR write per target with the APIC in xAPIC mode
    /// (destination in bits 63:56), lazy EOI: what Linux does in xAPIC
    /// mode when APIC_ACCESS_RECOMMENDED is set.
    SyntheticIcr,
}

impl IpiMode {
    /// Whether the mode uses the Hyper-V hypercalls.
    pub fn pv(self) -> bool {
        matches!(self, IpiMode::PvFast | IpiMode::PvEx)
    }

    /// Whether the mode needs the Hyper-V enlightenments.
    pub fn enlightened(self) -> bool {
        matches!(
            self,
            IpiMode::PvFast | IpiMode::PvEx | IpiMode::SyntheticIcr
        )
    }

    /// The guest-kernel settings for this mode: IPI_MODE, EOI_MODE and
    /// XAPIC (interrupt handlers complete lazily when enlightened, as a
    /// Linux guest does with APIC_ACCESS_RECOMMENDED).
    fn kernel_settings(self) -> Vec<(u64, u64)> {
        let (ipi, eoi, xapic) = match self {
            IpiMode::Native => (0, eoi_mode::X2APIC, 0),
            IpiMode::PvFast | IpiMode::PvEx => (1, eoi_mode::LAZY, 0),
            IpiMode::Xapic => (2, eoi_mode::XAPIC, 1),
            IpiMode::SyntheticIcr => (3, eoi_mode::LAZY, 1),
        };
        vec![
            (shared::IPI_MODE, ipi),
            (shared::EOI_MODE, eoi),
            (shared::XAPIC, xapic),
        ]
    }
}

/// How interrupts are completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EoiMode {
    /// x2APIC EOI MSR.
    X2apic,
    /// HV_X64_MSR_EOI.
    Synthetic,
    /// Lazy EOI through the VP assist page.
    Lazy,
}

/// How a TLB shootdown is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushMode {
    /// `invlpg` locally and a flush IPI to every other vCPU.
    Native,
    /// HvCallFlushVirtualAddressList(Ex) for every other vCPU.
    Pv,
    /// Change the PTE and do not flush at all (to observe staleness).
    None,
}

fn var(cpu: u64, off: u64) -> u64 {
    percpu(cpu) + PERCPU_VARS + off
}

/// `rax` = address of vCPU `idx`'s variable `off`.
fn var_addr(
    a: &mut CodeAssembler,
    idx: AsmRegister64,
    off: u64,
) -> Result<(), iced_x86::IcedError> {
    a.mov(rax, idx)?;
    a.shl(rax, PERCPU_SIZE.trailing_zeros())?;
    a.mov(r9, PERCPU_BASE + PERCPU_VARS + off)?;
    a.add(rax, r9)
}

/// Fails with PRIV_FAULT unless RAX is 0.
fn check_rax_zero(a: &mut CodeAssembler, code: u64) -> Result<(), iced_x86::IcedError> {
    let mut ok = a.create_label();
    a.test(rax, rax)?;
    a.jz(ok)?;
    a.mov(rsi, rax)?;
    a.mov(rdi, code)?;
    report(a, abi::REPORT_DONE)?;
    a.set_label(&mut ok)?;
    a.nop()
}

/// Sends `vector` to the vCPU in `target` (a register other than RAX,
/// RCX, RDX, RSI, RDI, R8-R11) by x2APIC ICR or fast PV IPI.
fn send_one(
    a: &mut CodeAssembler,
    mode: IpiMode,
    target: AsmRegister64,
    vector: u8,
) -> Result<(), iced_x86::IcedError> {
    match mode {
        IpiMode::Native => {
            a.mov(rsi, target)?;
            a.shl(rsi, 32)?;
            a.or(rsi, i32::from(vector))?;
            a.mov(edi, X2APIC_ICR)?;
            sys(a, abi::SYS_WRMSR)?;
            check_rax_zero(a, failure::PRIV_FAULT)
        }
        IpiMode::PvFast | IpiMode::PvEx => {
            a.mov(rdi, HVCALL_SEND_IPI | HV_FAST)?;
            a.mov(esi, u32::from(vector))?;
            a.xor(edx, edx)?;
            a.bts(rdx, target)?;
            sys(a, abi::SYS_HYPERCALL)?;
            check_rax_zero(a, failure::HC_STATUS)
        }
        IpiMode::SyntheticIcr => {
            a.mov(rsi, target)?;
            a.shl(rsi, 56)?;
            a.or(rsi, i32::from(vector))?;
            a.mov(edi, HV_X64_MSR_ICR)?;
            sys(a, abi::SYS_WRMSR)?;
            check_rax_zero(a, failure::PRIV_FAULT)
        }
        IpiMode::Xapic => {
            a.mov(rcx, XAPIC_MMIO)?;
            a.mov(rax, target)?;
            a.shl(eax, 24)?;
            a.mov(dword_ptr(rcx + XAPIC_ICR_HIGH_OFFSET), eax)?;
            a.mov(dword_ptr(rcx + XAPIC_ICR_LOW_OFFSET), u32::from(vector))
        }
    }
}

/// What the built-in guest tells the encoder it may use: the leaves this
/// VMM publishes (XMM input; Ex forms once a VP index is 64 or more).
fn encode_options(vcpus: u64) -> EncodeOptions {
    EncodeOptions {
        ex_processor_masks: vcpus > 64,
        xmm_input: true,
    }
}

/// Emits a hypercall built by hv-enlightenments' guest-side encoder: its
/// memory input goes to the shared input page, XMM input into XMM0..,
/// then the system call; expects RAX = `expect`.
fn emit_encoded(
    a: &mut CodeAssembler,
    call: &EncodedCall,
    page: &[u8; HV_PAGE_SIZE],
    expect: u64,
    data: &mut Vec<(u64, u64)>,
) -> Result<(), iced_x86::IcedError> {
    for (i, w) in page[..call.input_len].chunks_exact(8).enumerate() {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        data.push((shared::HC_INPUT + 8 * i as u64, u64::from_le_bytes(b)));
    }
    let xmms = [xmm0, xmm1, xmm2, xmm3, xmm4, xmm5];
    for (x, v) in xmms.iter().zip(call.xmm.iter()).take(call.xmm_used) {
        a.mov(rax, *v as u64)?;
        a.movq(*x, rax)?;
        a.mov(rax, (*v >> 64) as u64)?;
        a.movq(xmm7, rax)?;
        a.punpcklqdq(*x, xmm7)?;
    }
    a.mov(rdi, call.rcx())?;
    a.mov(rsi, call.rdx)?;
    a.mov(rdx, call.r8)?;
    sys(a, abi::SYS_HYPERCALL)?;
    let mut ok = a.create_label();
    a.mov(rcx, expect)?;
    a.cmp(rax, rcx)?;
    a.je(ok)?;
    a.mov(rsi, rax)?;
    a.mov(rdi, failure::HC_STATUS)?;
    report(a, abi::REPORT_DONE)?;
    a.set_label(&mut ok)?;
    a.nop()
}

/// Targets of a broadcast: every vCPU but the driver, or the driver
/// itself on a 1-vCPU VM.
fn broadcast_targets(vcpus: u64) -> Vec<u64> {
    if vcpus == 1 {
        vec![0]
    } else {
        (1..vcpus).collect()
    }
}

/// A sparse VP set for `vps`: (valid_bank_mask, banks).
fn vpset(vps: &[u64]) -> (u64, Vec<u64>) {
    let mut banks = [0u64; 64];
    for &v in vps {
        banks[(v / 64) as usize] |= 1 << (v % 64);
    }
    let mut valid = 0u64;
    let mut present = Vec::new();
    for (i, b) in banks.iter().enumerate() {
        if *b != 0 {
            valid |= 1 << i;
            present.push(*b);
        }
    }
    (valid, present)
}

/// The control word (RCX) of an Ex call with its input in memory: the
/// variable header is the VP set's `banks` bank words (TLFS; KVM checks it
/// equals the popcount of the valid-bank mask).
fn ex_control(code: CallCode, banks: usize) -> u64 {
    Control::new()
        .with_code(code.0)
        .with_variable_header_size(banks as u16)
        .into_bits()
}

fn words_at(base: u64, words: &[u64]) -> Vec<(u64, u64)> {
    words
        .iter()
        .enumerate()
        .map(|(i, w)| (base + 8 * i as u64, *w))
        .collect()
}

/// Sends `vector` to every target of [`broadcast_targets`]. PV forms use
/// inputs prepared in `shared` (returned through `data`).
fn send_broadcast(
    a: &mut CodeAssembler,
    mode: IpiMode,
    vcpus: u64,
    vector: u8,
    data: &mut Vec<(u64, u64)>,
) -> Result<(), iced_x86::IcedError> {
    let targets = broadcast_targets(vcpus);
    match mode {
        IpiMode::Native | IpiMode::Xapic | IpiMode::SyntheticIcr => {
            let first = targets[0];
            let last = targets[targets.len() - 1];
            let mut top = a.create_label();
            a.mov(r12, first)?;
            a.set_label(&mut top)?;
            send_one(a, mode, r12, vector)?;
            a.inc(r12)?;
            a.cmp(r12, last as i32)?;
            a.jbe(top)
        }
        IpiMode::PvFast => {
            // The encoder picks the cheapest form (fast RDX/R8 when every
            // target is below VP 64).
            let vps: Vec<u32> = targets.iter().map(|&t| t as u32).collect();
            let mut page = [0u8; HV_PAGE_SIZE];
            match encode_send_ipi(
                EncTargets::new(&vps),
                vector,
                encode_options(vcpus),
                &mut page,
                shared::HC_INPUT,
            ) {
                Ok(call) => emit_encoded(a, &call, &page, 0, data),
                // Nothing the encoder can send: the native path, as Linux.
                Err(_) => send_broadcast(a, IpiMode::Native, vcpus, vector, data),
            }
        }
        IpiMode::PvEx => {
            let (valid, banks) = vpset(&targets);
            let mut w = vec![u64::from(vector), 0, valid];
            w.extend(&banks);
            data.extend(words_at(shared::HC_INPUT, &w));
            a.mov(
                rdi,
                ex_control(CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX, banks.len()),
            )?;
            a.mov(rsi, shared::HC_INPUT)?;
            a.xor(edx, edx)?;
            sys(a, abi::SYS_HYPERCALL)?;
            check_rax_zero(a, failure::HC_STATUS)
        }
    }
}

/// Checks that every vCPU in `targets` has `want` in variable `off`.
fn check_counts(
    a: &mut CodeAssembler,
    targets: &[u64],
    off: u64,
    want: u64,
) -> Result<(), iced_x86::IcedError> {
    let first = targets[0];
    let last = targets[targets.len() - 1];
    let mut top = a.create_label();
    let mut ok = a.create_label();
    a.mov(r12, first)?;
    a.set_label(&mut top)?;
    var_addr(a, r12, off)?;
    a.mov(rcx, want)?;
    a.cmp(qword_ptr(rax), rcx)?;
    a.je(ok)?;
    a.mov(rsi, r12)?;
    a.mov(rdi, failure::WRONG_COUNT)?;
    report(a, abi::REPORT_DONE)?;
    a.set_label(&mut ok)?;
    a.inc(r12)?;
    a.cmp(r12, last as i32)?;
    a.jbe(top)
}

fn finish(mut a: CodeAssembler, shared: Vec<(u64, u64)>) -> Result<Program, Error> {
    Ok(Program {
        user_code: assemble(&mut a, USER_CODE, &[])?.code,
        shared,
    })
}

/// vCPU 0 runs `body` `iters` times between the marks (RBX counts down),
/// then reports DONE with the final count; the other vCPUs idle.
fn counted_loop(
    iters: u64,
    body: impl Fn(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Result<Program, Error> {
    counted_loop_with(iters, vec![], 0, body)
}

/// [`counted_loop`] with shared variables set before start; the driver
/// first spins `settle` TSC cycles at CPL3 (so that the other vCPUs are
/// done halting before the measured phase).
fn counted_loop_with(
    iters: u64,
    data: Vec<(u64, u64)>,
    settle: u64,
    body: impl Fn(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    if settle > 0 {
        let mut wait = a.create_label();
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.mov(rcx, settle)?;
        a.lea(r12, qword_ptr(rax + rcx))?;
        a.set_label(&mut wait)?;
        a.pause()?;
        a.rdtsc()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.cmp(rax, r12)?;
        a.jb(wait)?;
    }
    mark_start(&mut a, iters)?;
    a.mov(rbx, iters)?;
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    body(&mut a)?;
    a.dec(rbx)?;
    a.jnz(l)?;
    mark_end(&mut a)?;
    done(&mut a, rbx)?;
    idle_responder(&mut a, &mut resp)?;
    finish(a, data)
}

/// `iters` null hypercalls between the marks: a fast
/// HvCallSendSyntheticClusterIpi with an empty processor mask (it does
/// nothing and succeeds), made from CPL0 through the hypercall page as the
/// built-in kernel makes every hypercall (CPL3 -> system call -> hypercall
/// page -> VMM).
pub fn null_hypercall(iters: u64) -> Result<Program, Error> {
    counted_loop(iters, |a| {
        a.mov(rdi, HVCALL_SEND_IPI | HV_FAST)?;
        a.mov(esi, u32::from(abi::VEC_IPI))?;
        a.xor(edx, edx)?;
        sys(a, abi::SYS_HYPERCALL)?;
        check_rax_zero(a, failure::HC_STATUS)
    })
}

/// The VP set of [`ex64_flush`]: VP `64 * i + 1` in every bank `i`, so
/// all 64 banks are present (only those naming an existing vCPU flush
/// anything).
pub fn ex64_vps() -> Vec<u64> {
    (0..64).map(|i| 64 * i + 1).collect()
}

/// The control word (RCX) and the memory input (words) of the
/// FlushVirtualAddressSpaceEx call of [`ex64_flush`].
pub fn ex64_input() -> (u64, Vec<u64>) {
    let (valid, banks) = vpset(&ex64_vps());
    // address space, flags, format (sparse 4K), valid bank mask, banks.
    let mut w = vec![crate::layout::PML4, 0, 0, valid];
    w.extend(&banks);
    let control = ex_control(CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX, banks.len());
    (control, w)
}

/// `iters` HvCallFlushVirtualAddressSpaceEx calls with a sparse VP set of
/// 64 banks ([`ex64_vps`]) between the marks, input in memory: the
/// decoding cost of the largest VP set a guest can send. The targets that
/// exist are halted, so the VMM only records a flush for their next entry.
/// With many vCPUs the driver first lets the others halt (each halt is a
/// system call through the host's CPL0 path), so that their start-up does
/// not compete with the measured calls for the host's CPUs.
pub fn ex64_flush(vcpus: u64, iters: u64) -> Result<Program, Error> {
    let (control, w) = ex64_input();
    let data = words_at(shared::HC_INPUT, &w);
    // About 0.2 ms of settling per vCPU at 2-3 GHz.
    let settle = if vcpus > 8 { vcpus * 500_000 } else { 0 };
    counted_loop_with(iters, data, settle, move |a| {
        a.mov(rdi, control)?;
        a.mov(rsi, shared::HC_INPUT)?;
        a.xor(edx, edx)?;
        sys(a, abi::SYS_HYPERCALL)?;
        check_rax_zero(a, failure::HC_STATUS)
    })
}

/// A CPL3 loop of `iters` `dec; jnz` iterations between the marks: shows
/// whether CPL3 guest code runs natively.
pub fn cpl3_loop(iters: u64) -> Result<Program, Error> {
    counted_loop(iters, |_| Ok(()))
}

/// A guest-physical address outside RAM that no device claims: a write
/// there is a bare MMIO exit round trip.
pub const NULL_MMIO: u64 = 0x3000_1000;

/// `iters` CPL3 writes to [`NULL_MMIO`] between the marks: the cost of one
/// exit to the VMM and back (CPL3 runs natively, KVM decodes the write).
pub fn mmio_exit_loop(iters: u64) -> Result<Program, Error> {
    counted_loop(iters, |a| a.mov(dword_ptr(NULL_MMIO), eax))
}

/// A program that never reports: vCPU 0 spins at CPL3 (for the VMM's
/// bounded wait).
pub fn spin_forever() -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    a.nop()?;
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.pause()?;
    a.jmp(l)?;
    idle_responder(&mut a, &mut resp)?;
    finish(a, vec![])
}

/// A program whose vCPU 0 executes `ud2` at CPL3 with no fixup: a fatal
/// guest exception. Returns the program and the address of the `ud2`.
pub fn fault_ud2() -> Result<(Program, u64), Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    let mut at = a.create_label();
    prologue(&mut a, resp)?;
    a.nop()?;
    a.set_label(&mut at)?;
    a.ud2()?;
    idle_responder(&mut a, &mut resp)?;
    let r = assemble(&mut a, USER_CODE, &[at])?;
    let ud2 = r.labels.first().copied().unwrap_or(0);
    Ok((
        Program {
            user_code: r.code,
            shared: vec![],
        },
        ud2,
    ))
}

/// A program whose vCPU 0 runs `lock cmpxchg16b` at CPL0 (through the
/// kernel's SYS_CALL0) and reports DONE if it returns. Hosts that emulate
/// guest CPL0 code may be unable to emulate it: the run must then end with
/// an emulation-failure error instead of hanging.
pub fn cpl0_cmpxchg16b() -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    let mut func = a.create_label();
    prologue(&mut a, resp)?;
    a.lea(rdi, ptr(func))?;
    sys(&mut a, abi::SYS_CALL0)?;
    done(&mut a, rax)?;
    // The callee (runs at CPL0): compare-exchange 16 aligned bytes.
    a.set_label(&mut func)?;
    a.mov(r8, shared::HC_OUTPUT)?;
    a.xor(eax, eax)?;
    a.xor(edx, edx)?;
    a.xor(ebx, ebx)?;
    a.xor(ecx, ecx)?;
    a.lock().cmpxchg16b(xmmword_ptr(r8))?;
    a.xor(eax, eax)?;
    a.ret()?;
    idle_responder(&mut a, &mut resp)?;
    finish(a, vec![])
}

/// `iters` CPL3 byte writes to [`abi::NULL_PORT`] between the marks: one
/// port I/O exit round trip each (no instruction decoding needed).
pub fn pio_exit_loop(iters: u64) -> Result<Program, Error> {
    counted_loop(iters, |a| a.out(u32::from(abi::NULL_PORT), al))
}

/// vCPU 0 reads MSR `msr` through the kernel and reports DONE with what
/// came back (the value, or bit 63 | vector on a fault).
pub fn rdmsr_program(msr: u32) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    a.mov(edi, msr)?;
    sys(&mut a, abi::SYS_RDMSR)?;
    done(&mut a, rax)?;
    idle_responder(&mut a, &mut resp)?;
    finish(a, vec![])
}

/// `iters` null system calls (CPL3 -> CPL0 -> CPL3) between the marks:
/// the cost of the (possibly emulated) CPL0 path.
pub fn syscall_loop(iters: u64) -> Result<Program, Error> {
    counted_loop(iters, |a| {
        a.mov(eax, 99)?;
        a.int3()
    })
}

/// IPI ping-pong between vCPU 0 and vCPU 1 (or vCPU 0 with itself on a
/// 1-vCPU VM), `iters` round trips. Checks both sides' counts.
pub fn ipi_pingpong(vcpus: u64, iters: u64, mode: IpiMode) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    let target = if vcpus > 1 { 1 } else { 0 };
    let pv = mode.pv();
    prologue(&mut a, resp)?;
    mark_start(&mut a, iters)?;
    a.mov(r13, 1u64)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.mov(rbx, target)?;
    // The Ex form is for large sets; a single target uses the fast form.
    send_one(
        &mut a,
        if pv { IpiMode::PvFast } else { mode },
        rbx,
        abi::VEC_IPI,
    )?;
    let wait_on = if vcpus > 1 {
        pc::PONG_COUNT
    } else {
        pc::IPI_COUNT
    };
    halt_until(&mut a, wait_on, r13)?;
    a.inc(r13)?;
    a.cmp(r13, iters as i32)?;
    a.jbe(top)?;
    mark_end(&mut a)?;
    check_counts(&mut a, &[target], pc::IPI_COUNT, iters)?;
    if vcpus > 1 {
        check_counts(&mut a, &[0], pc::PONG_COUNT, iters)?;
    }
    done(&mut a, r13)?;
    idle_responder(&mut a, &mut resp)?;
    let mut settings = mode.kernel_settings();
    settings.push((shared::PONG, 1));
    finish(a, settings)
}

/// The lost-wakeup case of [`halt_until`], made deterministic: vCPU 0
/// sends itself VEC_PONG from the kernel, so the handler bumps PONG_COUNT
/// as the system call returns to CPL3, and only then asks to halt until
/// PONG_COUNT >= 1 (as if its own check had run just before the
/// interrupt). DONE reports PONG_COUNT; the run hangs if the kernel halts
/// without re-checking the count with interrupts off.
pub fn wakeup_before_halt() -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    a.xor(ebx, ebx)?;
    send_one(&mut a, IpiMode::Native, rbx, abi::VEC_PONG)?;
    a.mov(rdi, pc::PONG_COUNT)?;
    a.mov(esi, 1)?;
    sys(&mut a, abi::SYS_HALT_UNTIL)?;
    a.mov(rax, pcpu(pc::PONG_COUNT))?;
    done(&mut a, rax)?;
    idle_responder(&mut a, &mut resp)?;
    finish(a, IpiMode::Native.kernel_settings())
}

/// Broadcast IPI from vCPU 0 to every other vCPU, `iters` times; every
/// target must receive every IPI exactly once.
pub fn broadcast_ipi(vcpus: u64, iters: u64, mode: IpiMode) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    let mut data = Vec::new();
    let targets = broadcast_targets(vcpus);
    prologue(&mut a, resp)?;
    mark_start(&mut a, iters)?;
    a.mov(r13, 1u64)?;
    a.mov(r14, targets.len() as u64)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    send_broadcast(&mut a, mode, vcpus, abi::VEC_IPI, &mut data)?;
    spin_until(&mut a, shared::ACKS, r14)?;
    a.add(r14, targets.len() as i32)?;
    a.inc(r13)?;
    a.cmp(r13, iters as i32)?;
    a.jbe(top)?;
    mark_end(&mut a)?;
    check_counts(&mut a, &targets, pc::IPI_COUNT, iters)?;
    done(&mut a, r13)?;
    idle_responder(&mut a, &mut resp)?;
    data.extend(mode.kernel_settings());
    finish(a, data)
}

/// TLB shootdown: vCPU 0 switches the test window between two pages
/// `iters` times and makes the other vCPUs flush it. `running` of them
/// (vCPUs 1..=running) keep reading the window at CPL3; the rest read it
/// once and halt. After each flush every running reader must see the new
/// page; at the end every halted one must too.
pub fn tlb_shootdown(
    vcpus: u64,
    iters: u64,
    running: u64,
    mode: FlushMode,
) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    let mut data = Vec::new();
    let others: Vec<u64> = (1..vcpus).collect();
    let running = running.min(others.len() as u64);
    let flags = PTE_P | PTE_W | PTE_U;
    prologue(&mut a, resp)?;
    // The driver caches the translation too.
    a.mov(rax, TLB_TEST_VA)?;
    a.mov(rax, qword_ptr(rax))?;
    mark_start(&mut a, iters)?;
    a.mov(r13, 1u64)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    // New PTE: page B on odd iterations, A on even ones.
    {
        let mut even = a.create_label();
        let mut set = a.create_label();
        a.test(r13, 1)?;
        a.jz(even)?;
        a.mov(rax, TLB_PAGE_B | flags)?;
        a.jmp(set)?;
        a.set_label(&mut even)?;
        a.mov(rax, TLB_PAGE_A | flags)?;
        a.set_label(&mut set)?;
        a.mov(qword_ptr(PT_TEST), rax)?;
    }
    if mode != FlushMode::None {
        a.mov(rdi, TLB_TEST_VA)?;
        sys(&mut a, abi::SYS_INVLPG)?;
    }
    if !others.is_empty() {
        match mode {
            FlushMode::Native => {
                let mut l = a.create_label();
                a.mov(r12, 1u64)?;
                a.set_label(&mut l)?;
                send_one(&mut a, IpiMode::Native, r12, abi::VEC_FLUSH)?;
                a.inc(r12)?;
                a.cmp(r12, vcpus as i32)?;
                a.jb(l)?;
                a.mov(r14, r13)?;
                a.imul_3(r14, r14, others.len() as i32)?;
                spin_until(&mut a, shared::ACKS, r14)?;
            }
            FlushMode::Pv => {
                // hv-enlightenments' guest-side encoder builds the call the
                // way Linux's hyperv_flush_tlb_multi does: the list form
                // (fast through XMM when it fits), Ex beyond VP 63.
                let vps: Vec<u32> = others.iter().map(|&t| t as u32).collect();
                let ranges = [GvaRange::new(TLB_TEST_VA, 0)];
                let request = FlushRequest {
                    address_space: crate::layout::PML4,
                    flags: FlushFlags::empty(),
                    ranges: &ranges,
                };
                let mut page = [0u8; HV_PAGE_SIZE];
                match encode_flush(
                    EncTargets::new(&vps),
                    request,
                    encode_options(vcpus),
                    &mut page,
                    shared::HC_INPUT,
                ) {
                    Ok(call) => {
                        let reps = u64::from(call.control.rep_count());
                        emit_encoded(&mut a, &call, &page, reps << 32, &mut data)?;
                    }
                    Err(e) => return Err(Error::Encode(e)),
                }
            }
            FlushMode::None => {}
        }
    }
    // Publish the generation and check every running reader.
    a.mov(qword_ptr(shared::GEN), r13)?;
    for r in 1..=running {
        let mut wait = a.create_label();
        let mut ok = a.create_label();
        a.set_label(&mut wait)?;
        a.mov(rax, var(r, pc::SEEN_GEN))?;
        a.cmp(qword_ptr(rax), r13)?;
        a.jae(ok)?;
        a.pause()?;
        a.jmp(wait)?;
        a.set_label(&mut ok)?;
        a.mov(rax, var(r, pc::SEEN_VAL))?;
        a.mov(rax, qword_ptr(rax))?;
        expect_marker(&mut a, r13, r)?;
    }
    a.inc(r13)?;
    a.cmp(r13, iters as i32)?;
    a.jbe(top)?;
    mark_end(&mut a)?;
    a.dec(r13)?;
    // Every halted reader must see the final page once it runs again.
    if running + 1 < vcpus {
        let mut top = a.create_label();
        let mut wait = a.create_label();
        a.mov(rbx, running + 1)?;
        a.set_label(&mut top)?;
        send_one(&mut a, IpiMode::Native, rbx, abi::VEC_WAKE)?;
        var_addr(&mut a, rbx, pc::WAKE_COUNT)?;
        a.mov(r15, rax)?;
        a.set_label(&mut wait)?;
        a.pause()?;
        a.cmp(qword_ptr(r15), 0)?;
        a.je(wait)?;
        var_addr(&mut a, rbx, pc::SEEN_VAL)?;
        a.mov(rax, qword_ptr(rax))?;
        expect_marker_reg(&mut a, r13, rbx)?;
        a.inc(rbx)?;
        a.cmp(rbx, vcpus as i32)?;
        a.jb(top)?;
    }
    if mode == FlushMode::Native && !others.is_empty() {
        check_counts(&mut a, &others, pc::FLUSH_COUNT, iters)?;
    }
    done(&mut a, r13)?;

    // Responders: 1..=running read the window forever; the rest read it
    // once and halt.
    a.set_label(&mut resp)?;
    let mut idle = a.create_label();
    a.cmp(pcpu(pc::CPU), running as i32)?;
    a.ja(idle)?;
    {
        let mut l = a.create_label();
        a.mov(rcx, TLB_TEST_VA)?;
        a.set_label(&mut l)?;
        a.mov(rax, qword_ptr(shared::GEN))?;
        a.mov(rdx, qword_ptr(rcx))?;
        a.mov(pcpu(pc::SEEN_VAL), rdx)?;
        a.mov(pcpu(pc::SEEN_GEN), rax)?;
        a.jmp(l)?;
    }
    a.set_label(&mut idle)?;
    a.mov(rax, TLB_TEST_VA)?;
    a.mov(rax, qword_ptr(rax))?;
    let mut halt = a.create_label();
    idle_responder(&mut a, &mut halt)?;
    finish(a, data)
}

/// Fails with STALE (detail `who`) unless RAX holds the marker expected
/// for iteration `iter` (B when odd, A when even). Clobbers RCX, R12.
fn expect_marker(
    a: &mut CodeAssembler,
    iter: AsmRegister64,
    who: u64,
) -> Result<(), iced_x86::IcedError> {
    a.mov(r12, who)?;
    expect_marker_reg(a, iter, r12)
}

/// As [`expect_marker`], with the vCPU in a register. Clobbers RCX.
fn expect_marker_reg(
    a: &mut CodeAssembler,
    iter: AsmRegister64,
    who: AsmRegister64,
) -> Result<(), iced_x86::IcedError> {
    let mut even = a.create_label();
    let mut cmp = a.create_label();
    let mut ok = a.create_label();
    a.test(iter, 1)?;
    a.jz(even)?;
    a.mov(rcx, MARKER_B)?;
    a.jmp(cmp)?;
    a.set_label(&mut even)?;
    a.mov(rcx, MARKER_A)?;
    a.set_label(&mut cmp)?;
    a.cmp(rax, rcx)?;
    a.je(ok)?;
    a.mov(rsi, who)?;
    a.mov(rdi, failure::STALE)?;
    report(a, abi::REPORT_DONE)?;
    a.set_label(&mut ok)?;
    a.nop()
}

/// x2APIC LVT timer register.
const LVT_TIMER: u32 = 0x832;
/// x2APIC initial count register.
const TIMER_INIT: u32 = 0x838;
/// x2APIC divide configuration register.
const TIMER_DIV: u32 = 0x83E;

/// `count` periodic APIC timer interrupts every `period_ns` on vCPU 0,
/// each completed the `eoi` way.
pub fn timer_eoi(count: u64, period_ns: u32, eoi: EoiMode) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    wrmsr_imm(&mut a, TIMER_DIV, 0xB)?;
    wrmsr_imm(&mut a, LVT_TIMER, (1 << 17) | u64::from(abi::VEC_TIMER))?;
    mark_start(&mut a, count)?;
    wrmsr_imm(&mut a, TIMER_INIT, u64::from(period_ns))?;
    a.mov(r13, count)?;
    halt_until(&mut a, pc::TIMER_COUNT, r13)?;
    mark_end(&mut a)?;
    wrmsr_imm(&mut a, TIMER_INIT, 0)?;
    a.mov(rax, pcpu(pc::TIMER_COUNT))?;
    done(&mut a, rax)?;
    idle_responder(&mut a, &mut resp)?;
    let mode = match eoi {
        EoiMode::X2apic => eoi_mode::X2APIC,
        EoiMode::Synthetic => eoi_mode::SYNTHETIC,
        EoiMode::Lazy => eoi_mode::LAZY,
    };
    finish(a, vec![(shared::EOI_MODE, mode)])
}
