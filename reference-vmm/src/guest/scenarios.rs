//! Named scenarios of the built-in guest. Each one checks its own result
//! in guest memory and reports through the report port.

use iced_x86::code_asm::*;

use super::abi::{self, percpu as pc, shared};
use super::asm::{Error, assemble};
use super::user::*;
use crate::layout::USER_CODE;
use crate::vm::Program;

/// Failure codes reported by scenarios.
pub mod failure {
    /// A target received a different number of interrupts than sent.
    pub const WRONG_COUNT: u32 = 1;
    /// A privileged operation failed (detail: bit 63 | vector).
    pub const PRIV_FAULT: u32 = 2;
    /// A hypercall returned an error status (detail: RAX).
    pub const HC_STATUS: u32 = 3;
    /// A stale translation was seen after a flush (detail: vCPU).
    pub const STALE: u32 = 4;
}

/// A CPL3 loop of `iters` `dec; jnz` iterations between the marks: shows
/// whether CPL3 guest code runs natively.
pub fn cpl3_loop(iters: u64) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    mark_start(&mut a, iters)?;
    a.mov(rcx, iters)?;
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.dec(rcx)?;
    a.jnz(l)?;
    mark_end(&mut a)?;
    done(&mut a, rcx)?;
    idle_responder(&mut a, &mut resp)?;
    Ok(Program {
        user_code: assemble(&mut a, USER_CODE, &[])?.code,
        shared: vec![],
    })
}

/// `iters` null system calls (CPL3 -> CPL0 -> CPL3) between the marks:
/// the cost of the emulated CPL0 path.
pub fn syscall_loop(iters: u64) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    mark_start(&mut a, iters)?;
    a.mov(rbx, iters)?;
    let mut l = a.create_label();
    a.set_label(&mut l)?;
    a.mov(eax, 99)?;
    a.syscall()?;
    a.dec(rbx)?;
    a.jnz(l)?;
    mark_end(&mut a)?;
    done(&mut a, rbx)?;
    idle_responder(&mut a, &mut resp)?;
    let _ = (pc::CPU, shared::READY, abi::SYS_HALT);
    Ok(Program {
        user_code: assemble(&mut a, USER_CODE, &[])?.code,
        shared: vec![],
    })
}
