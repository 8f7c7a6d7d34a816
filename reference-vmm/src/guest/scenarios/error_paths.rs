//! Programs for the VMM's failure paths (a guest that never reports, a
//! fatal exception, an instruction the host may not emulate) and a single
//! MSR read.

use iced_x86::code_asm::*;

use super::emit::finish;
use crate::guest::Program;
use crate::guest::abi::{self, shared};
use crate::guest::asm::{Error, assemble};
use crate::guest::layout::USER_CODE;
use crate::guest::user::*;

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
