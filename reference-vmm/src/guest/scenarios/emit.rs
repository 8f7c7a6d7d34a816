//! Code shared by the scenarios: per-vCPU variables, result checks,
//! hypercalls built by hv-enlightenments' guest-side encoder, sparse VP
//! sets, and the counted loop between the marks.

use hv_enlightenments::hypercall::{CallCode, Control, EncodeOptions, EncodedCall, HV_PAGE_SIZE};
use iced_x86::code_asm::*;

use super::failure;
use crate::guest::Program;
use crate::guest::abi::{self, shared};
use crate::guest::asm::{Error, assemble};
use crate::guest::layout::{PERCPU_BASE, PERCPU_SIZE, PERCPU_VARS, USER_CODE, percpu};
use crate::guest::user::*;

/// The address of vCPU `cpu`'s variable `off`.
pub(super) fn var(cpu: u64, off: u64) -> u64 {
    percpu(cpu) + PERCPU_VARS + off
}

/// `rax` = address of vCPU `idx`'s variable `off`.
pub(super) fn var_addr(
    a: &mut CodeAssembler,
    idx: AsmRegister64,
    off: u64,
) -> Result<(), iced_x86::IcedError> {
    a.mov(rax, idx)?;
    a.shl(rax, PERCPU_SIZE.trailing_zeros())?;
    a.mov(r9, PERCPU_BASE + PERCPU_VARS + off)?;
    a.add(rax, r9)
}

/// Fails with `code` (detail: RAX) unless RAX is 0.
pub(super) fn check_rax_zero(a: &mut CodeAssembler, code: u64) -> Result<(), iced_x86::IcedError> {
    let mut ok = a.create_label();
    a.test(rax, rax)?;
    a.jz(ok)?;
    a.mov(rsi, rax)?;
    a.mov(rdi, code)?;
    report(a, abi::REPORT_DONE)?;
    a.set_label(&mut ok)?;
    a.nop()
}

/// What the built-in guest tells the encoder it may use: the leaves this
/// VMM publishes (XMM input; Ex forms once a VP index is 64 or more).
pub(super) fn encode_options(vcpus: u64) -> EncodeOptions {
    EncodeOptions {
        ex_processor_masks: vcpus > 64,
        xmm_input: true,
    }
}

/// Emits a hypercall built by hv-enlightenments' guest-side encoder: its
/// memory input goes to the shared input page, XMM input into XMM0..,
/// then the system call; expects RAX = `expect`.
pub(super) fn emit_encoded(
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

/// A sparse VP set for `vps`: (valid_bank_mask, banks).
pub(super) fn vpset(vps: &[u64]) -> (u64, Vec<u64>) {
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
pub(super) fn ex_control(code: CallCode, banks: usize) -> u64 {
    Control::new()
        .with_code(code.0)
        .with_variable_header_size(banks as u16)
        .into_bits()
}

/// `words` as shared-memory stores from `base` on.
pub(super) fn words_at(base: u64, words: &[u64]) -> Vec<(u64, u64)> {
    words
        .iter()
        .enumerate()
        .map(|(i, w)| (base + 8 * i as u64, *w))
        .collect()
}

/// Checks that every vCPU in `targets` has `want` in variable `off`.
pub(super) fn check_counts(
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

/// Assembles the driver and responders at USER_CODE, with `shared`
/// stored before start.
pub(super) fn finish(mut a: CodeAssembler, shared: Vec<(u64, u64)>) -> Result<Program, Error> {
    Ok(Program {
        user_code: assemble(&mut a, USER_CODE, &[])?.code,
        shared,
    })
}

/// vCPU 0 runs `body` `iters` times between the marks (RBX counts down),
/// then reports DONE with the final count; the other vCPUs idle.
pub(super) fn counted_loop(
    iters: u64,
    body: impl Fn(&mut CodeAssembler) -> Result<(), iced_x86::IcedError>,
) -> Result<Program, Error> {
    counted_loop_with(iters, vec![], 0, body)
}

/// [`counted_loop`] with shared variables set before start; the driver
/// first spins `settle` TSC cycles at CPL3 (so that the other vCPUs are
/// done halting before the measured phase).
pub(super) fn counted_loop_with(
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
