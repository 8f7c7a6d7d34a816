//! Counted loops: one operation per iteration between the marks (a CPL3
//! instruction, a system call, a bare MMIO or port I/O exit, a null or a
//! 64-bank hypercall).

use iced_x86::code_asm::*;

use super::emit::{check_rax_zero, counted_loop, counted_loop_with, ex_control, vpset, words_at};
use super::failure;
use crate::guest::Program;
use crate::guest::abi::{self, shared};
use crate::guest::asm::Error;
use crate::guest::kernel::{HV_FAST, HVCALL_SEND_IPI};
use crate::guest::user::*;
use hv_enlightenments::hypercall::CallCode;

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

/// `iters` CPL3 byte writes to [`abi::NULL_PORT`] between the marks: one
/// port I/O exit round trip each (no instruction decoding needed).
pub fn pio_exit_loop(iters: u64) -> Result<Program, Error> {
    counted_loop(iters, |a| a.out(u32::from(abi::NULL_PORT), al))
}

/// `iters` null system calls (CPL3 -> CPL0 -> CPL3) between the marks:
/// the cost of the (possibly emulated) CPL0 path.
pub fn syscall_loop(iters: u64) -> Result<Program, Error> {
    counted_loop(iters, |a| {
        a.mov(eax, 99)?;
        a.int3()
    })
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
    let mut w = vec![crate::guest::layout::PML4, 0, 0, valid];
    w.extend(&banks);
    (ex64_control(), w)
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
    counted_loop_with(iters, ex64_data(&w), ex64_settle(vcpus), move |a| {
        a.mov(rdi, control)?;
        a.mov(rsi, shared::HC_INPUT)?;
        a.xor(edx, edx)?;
        sys(a, abi::SYS_HYPERCALL)?;
        check_rax_zero(a, failure::HC_STATUS)
    })
}

/// `iters` writes to [`abi::PROBE_PORT`] between the marks, made the way
/// [`ex64_flush`] makes its hypercalls (a system call, then a CPL0 call of
/// `out PROBE_PORT, al; ret` as of the hypercall page's `out 0xE0, al;
/// ret`), with that call's input in place and its vCPUs as settled: the
/// VMM decodes and carries out the call right after each exit. Its cost
/// there is what the same code costs in the exits a hypercall takes (the
/// caches and predictors as the host's exit path and its emulation of the
/// guest's CPL0 path leave them), without the trap's own work.
pub fn ex64_probe(vcpus: u64, iters: u64) -> Result<Program, Error> {
    let (_, w) = ex64_input();
    counted_loop_with(iters, ex64_data(&w), ex64_settle(vcpus), |a| {
        let mut probe = a.create_label();
        let mut after = a.create_label();
        a.lea(rdi, ptr(probe))?;
        sys(a, abi::SYS_CALL0)?;
        a.jmp(after)?;
        a.set_label(&mut probe)?;
        a.out(u32::from(abi::PROBE_PORT), al)?;
        a.ret()?;
        a.set_label(&mut after)
    })
}

/// The control word of [`ex64_flush`]'s call (64 banks).
pub fn ex64_control() -> u64 {
    ex_control(CallCode::FLUSH_VIRTUAL_ADDRESS_SPACE_EX, ex64_vps().len())
}

/// [`ex64_flush`]'s input words, placed at [`shared::HC_INPUT`].
fn ex64_data(words: &[u64]) -> Vec<(u64, u64)> {
    words_at(shared::HC_INPUT, words)
}

/// [`ex64_flush`]'s settling loop before the marks: about 0.2 ms per vCPU
/// at 2-3 GHz.
fn ex64_settle(vcpus: u64) -> u64 {
    if vcpus > 8 { vcpus * 500_000 } else { 0 }
}
