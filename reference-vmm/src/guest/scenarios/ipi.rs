//! IPI scenarios: ping-pong, broadcast, and the lost-wakeup case of a
//! halt.

use hv_enlightenments::hypercall::{HV_PAGE_SIZE, Targets as EncTargets, encode_send_ipi};
use hv_enlightenments::msr::HV_X64_MSR_ICR;
use iced_x86::code_asm::*;

use super::emit::{
    check_counts, check_rax_zero, emit_encoded, encode_options, ex_control, finish, vpset, words_at,
};
use super::failure;
use super::mode::IpiMode;
use crate::guest::Program;
use crate::guest::abi::{self, percpu as pc, shared};
use crate::guest::asm::Error;
use crate::guest::kernel::{
    HV_FAST, HVCALL_SEND_IPI, X2APIC_ICR, XAPIC_ICR_HIGH_OFFSET, XAPIC_ICR_LOW_OFFSET,
};
use crate::guest::layout::XAPIC_MMIO;
use crate::guest::user::*;
use hv_enlightenments::hypercall::CallCode;

/// Sends `vector` to the vCPU in `target` (a register other than RAX,
/// RCX, RDX, RSI, RDI, R8-R11) by x2APIC ICR or fast PV IPI.
pub(super) fn send_one(
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

/// Targets of a broadcast: every vCPU but the driver, or the driver
/// itself on a 1-vCPU VM.
fn broadcast_targets(vcpus: u64) -> Vec<u64> {
    if vcpus == 1 {
        vec![0]
    } else {
        (1..vcpus).collect()
    }
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
