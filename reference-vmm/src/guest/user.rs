//! Building blocks of the CPL3 scenario code.

use iced_x86::IcedError;
use iced_x86::code_asm::*;

use super::abi::{self, percpu as pc, shared};

/// `gs:[off]` as a qword.
pub fn pcpu(off: u64) -> AsmMemoryOperand {
    qword_ptr(off).gs()
}

/// System call `nr` (arguments already in RDI, RSI, RDX; clobbers RCX,
/// RDX, R8, R9).
pub fn sys(a: &mut CodeAssembler, nr: u32) -> Result<(), IcedError> {
    a.mov(eax, nr)?;
    a.int3()
}

/// wrmsr(msr, value in `val`) through the kernel.
pub fn wrmsr(a: &mut CodeAssembler, msr: u32, val: AsmRegister64) -> Result<(), IcedError> {
    if val != rsi {
        a.mov(rsi, val)?;
    }
    a.mov(edi, msr)?;
    sys(a, abi::SYS_WRMSR)
}

/// wrmsr(msr, imm) through the kernel.
pub fn wrmsr_imm(a: &mut CodeAssembler, msr: u32, val: u64) -> Result<(), IcedError> {
    a.mov(rsi, val)?;
    wrmsr(a, msr, rsi)
}

/// Reports `code` with RDI/RSI as they are.
pub fn report(a: &mut CodeAssembler, code: u32) -> Result<(), IcedError> {
    a.mov(eax, code)?;
    a.mov(dword_ptr(abi::REPORT_MMIO), eax)
}

/// RSI = the guest TSC (`rdtsc` at CPL3; clobbers RAX, RDX).
fn tsc_to_rsi(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.rdtsc()?;
    a.shl(rdx, 32)?;
    a.or(rax, rdx)?;
    a.mov(rsi, rax)
}

/// MARK_START for `ops` operations, with the guest TSC in RSI (clobbers
/// RAX, RDX, RSI, RDI).
pub fn mark_start(a: &mut CodeAssembler, ops: u64) -> Result<(), IcedError> {
    a.mov(rdi, ops)?;
    tsc_to_rsi(a)?;
    report(a, abi::REPORT_MARK_START)
}

/// MARK_END, with the guest TSC in RSI (clobbers RAX, RDX, RSI, RDI).
pub fn mark_end(a: &mut CodeAssembler) -> Result<(), IcedError> {
    a.xor(edi, edi)?;
    tsc_to_rsi(a)?;
    report(a, abi::REPORT_MARK_END)
}

/// MARK_END whose operation count is the per-vCPU variable at offset
/// `var` as the VMM reads it at the report ([`abi::MARK_END_COUNTED`]),
/// with the guest TSC in RSI (clobbers RAX, RDX, RSI, RDI).
pub fn mark_end_counted(a: &mut CodeAssembler, var: u64) -> Result<(), IcedError> {
    a.mov(rdi, abi::MARK_END_COUNTED | var)?;
    tsc_to_rsi(a)?;
    report(a, abi::REPORT_MARK_END)
}

/// Reports failure `code` with detail in `detail` and stops (DONE never
/// returns: the VMM ends the run).
pub fn fail(a: &mut CodeAssembler, code: u32, detail: AsmRegister64) -> Result<(), IcedError> {
    if detail != rsi {
        a.mov(rsi, detail)?;
    }
    a.mov(edi, code)?;
    report(a, abi::REPORT_DONE)?;
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.pause()?;
    a.jmp(l)
}

/// Reports success with detail `detail`.
pub fn done(a: &mut CodeAssembler, detail: AsmRegister64) -> Result<(), IcedError> {
    if detail != rsi {
        a.mov(rsi, detail)?;
    }
    a.xor(edi, edi)?;
    report(a, abi::REPORT_DONE)?;
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.pause()?;
    a.jmp(l)
}

/// Halts (through the kernel) until the per-vCPU qword at offset `var`
/// is at least `target` (clobbers RDI, RSI besides what [`sys`] does).
///
/// The kernel re-checks the variable with interrupts off before it halts
/// ([`abi::SYS_HALT_UNTIL`]): an interrupt handled at CPL3 between the
/// check here and the system call would otherwise leave the vCPU halted
/// with nothing left to wake it.
pub fn halt_until(a: &mut CodeAssembler, var: u64, target: AsmRegister64) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut top)?;
    a.cmp(pcpu(var), target)?;
    a.jae(out)?;
    a.mov(rdi, var)?;
    a.mov(rsi, target)?;
    sys(a, abi::SYS_HALT_UNTIL)?;
    a.jmp(top)?;
    a.set_label(&mut out)?;
    Ok(())
}

/// Spins (CPL3, natively) until the qword at absolute `addr` is at least
/// `target`.
pub fn spin_until(
    a: &mut CodeAssembler,
    addr: u64,
    target: AsmRegister64,
) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut out = a.create_label();
    a.set_label(&mut top)?;
    a.cmp(qword_ptr(addr), target)?;
    a.jae(out)?;
    a.pause()?;
    a.jmp(top)?;
    a.set_label(&mut out)?;
    Ok(())
}

/// The common start: vCPU 0 waits until every other vCPU is ready and
/// falls through; the others count themselves ready and jump to
/// `responder`.
pub fn prologue(a: &mut CodeAssembler, responder: CodeLabel) -> Result<(), IcedError> {
    let mut driver = a.create_label();
    a.cmp(pcpu(pc::CPU), 0)?;
    a.je(driver)?;
    a.lock().inc(qword_ptr(shared::READY))?;
    a.jmp(responder)?;
    a.set_label(&mut driver)?;
    a.mov(rbx, qword_ptr(shared::VCPUS))?;
    a.dec(rbx)?;
    spin_until(a, shared::READY, rbx)
}

/// A responder that halts forever; its interrupt handlers do the work.
pub fn idle_responder(a: &mut CodeAssembler, label: &mut CodeLabel) -> Result<(), IcedError> {
    a.set_label(label)?;
    sys(a, abi::SYS_HALT)?;
    a.jmp(*label)
}
