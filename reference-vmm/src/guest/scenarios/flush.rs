//! The TLB shootdown scenario: native flush IPIs, PV flush hypercalls, or
//! no flush at all.

use hv_enlightenments::hypercall::{
    FlushFlags, FlushRequest, GvaRange, HV_PAGE_SIZE, Targets as EncTargets, encode_flush,
};
use iced_x86::code_asm::*;

use super::emit::{check_counts, emit_encoded, encode_options, finish, var, var_addr};
use super::failure;
use super::ipi::send_one;
use super::mode::{FlushMode, IpiMode};
use crate::guest::Program;
use crate::guest::abi::{self, percpu as pc, shared};
use crate::guest::asm::Error;
use crate::guest::boot::{PTE_P, PTE_U, PTE_W};
use crate::guest::layout::{PT_TEST, TLB_PAGE_A, TLB_PAGE_B, TLB_TEST_VA};
use crate::guest::user::*;

/// Marker stored in TLB test page A.
pub const MARKER_A: u64 = 0xA0A0_A0A0_A0A0_A0A0;
/// Marker of page B.
pub const MARKER_B: u64 = 0xB0B0_B0B0_B0B0_B0B0;

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
                    address_space: crate::guest::layout::PML4,
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
