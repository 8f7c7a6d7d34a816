//! The SynIC round trip: vCPU 0 posts a message (HvPostMessage) to vCPU
//! 1's SINT 3; vCPU 1's handler frees the slot and answers with an event
//! (fast HvSignalEvent) on vCPU 0's SINT 3, whose handler clears the flag
//! and counts. The connections are the VMM's ([`connections`]).

use hv_enlightenments::hypercall::CallCode;
use hv_enlightenments::msr::{
    HV_X64_MSR_SCONTROL as SCONTROL, HV_X64_MSR_SIEFP as SIEFP, HV_X64_MSR_SIMP as SIMP,
    HV_X64_MSR_SINT0 as SINT0,
};
use hv_enlightenments::synic::{
    Connection, HV_EVENT_FLAGS_BYTES_PER_SINT, HV_MESSAGE_SIZE, PortKind, PortTarget,
};
use iced_x86::code_asm::*;

use super::emit::{check_counts, check_rax_zero, finish};
use super::failure;
use crate::guest::Program;
use crate::guest::abi::{self, eoi_mode, percpu as pc, shared};
use crate::guest::asm::Error;
use crate::guest::user::*;

/// The connection vCPU 0 posts to (vCPU 1's SINT 3) and the one vCPU 1
/// signals (vCPU 0's SINT 3, flag 0).
pub const MESSAGE_CONNECTION: u32 = 0x100;
pub const EVENT_CONNECTION: u32 = 0x101;
/// The SINT both use.
pub const SINT: u8 = 3;
/// HvCallPostMessage (slow: its input is in memory).
const HVCALL_POST_MESSAGE: u64 = CallCode::POST_MESSAGE.0 as u64;
/// Bytes of one SINT's event flags.
const EVENT_FLAGS_PER_SINT: u64 = HV_EVENT_FLAGS_BYTES_PER_SINT as u64;
/// The message: type 1, 8 bytes of payload.
const MESSAGE_TYPE: u64 = 1;
const PAYLOAD: u64 = 0x474E_4950_4349_4E59;

/// The connections a VM running [`synic_pingpong`] needs.
pub fn connections() -> [(u32, Connection); 2] {
    [
        (
            MESSAGE_CONNECTION,
            Connection {
                port_id: MESSAGE_CONNECTION,
                kind: PortKind::Message,
                target: PortTarget::Vp {
                    vp_index: 1,
                    sint: SINT,
                },
            },
        ),
        (
            EVENT_CONNECTION,
            Connection {
                port_id: EVENT_CONNECTION,
                kind: PortKind::Event {
                    base_flag: 0,
                    flag_count: 1,
                },
                target: PortTarget::Vp {
                    vp_index: 0,
                    sint: SINT,
                },
            },
        ),
    ]
}

/// `iters` message/event round trips between vCPU 0 and vCPU 1 (needs 2
/// vCPUs or more; the others idle).
pub fn synic_pingpong(iters: u64) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    let mut driver = a.create_label();
    let sint = SINT0 + u32::from(SINT);
    // Every vCPU sets up its SynIC before it counts itself ready: vCPU 1
    // its message page and SINT 3 on VEC_IPI (its reply path), vCPU 0
    // its event flags page and SINT 3 on VEC_PONG.
    a.cmp(pcpu(pc::CPU), 0)?;
    a.je(driver)?;
    let mut ready = a.create_label();
    a.cmp(pcpu(pc::CPU), 1)?;
    a.jne(ready)?;
    wrmsr_imm(&mut a, SIMP, shared::SYNIC_RESPONDER_PAGE | 1)?;
    wrmsr_imm(&mut a, sint, u64::from(abi::VEC_IPI))?;
    wrmsr_imm(&mut a, SCONTROL, 1)?;
    a.set_label(&mut ready)?;
    a.lock().inc(qword_ptr(shared::READY))?;
    a.jmp(resp)?;

    a.set_label(&mut driver)?;
    wrmsr_imm(&mut a, SIEFP, shared::SYNIC_EVENT_PAGE | 1)?;
    wrmsr_imm(&mut a, sint, u64::from(abi::VEC_PONG))?;
    wrmsr_imm(&mut a, SCONTROL, 1)?;
    a.mov(rbx, qword_ptr(shared::VCPUS))?;
    a.dec(rbx)?;
    spin_until(&mut a, shared::READY, rbx)?;
    mark_start(&mut a, iters)?;
    a.mov(r13, 1u64)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.mov(rdi, HVCALL_POST_MESSAGE)?;
    a.mov(rsi, shared::HC_INPUT)?;
    a.xor(edx, edx)?;
    sys(&mut a, abi::SYS_HYPERCALL)?;
    check_rax_zero(&mut a, failure::HC_STATUS)?;
    halt_until(&mut a, pc::PONG_COUNT, r13)?;
    a.inc(r13)?;
    a.cmp(r13, iters as i32)?;
    a.jbe(top)?;
    mark_end(&mut a)?;
    check_counts(&mut a, &[1], pc::IPI_COUNT, iters)?;
    check_counts(&mut a, &[0], pc::PONG_COUNT, iters)?;
    done(&mut a, r13)?;
    idle_responder(&mut a, &mut resp)?;

    let slot = shared::SYNIC_RESPONDER_PAGE + u64::from(SINT) * HV_MESSAGE_SIZE as u64;
    let flags = shared::SYNIC_EVENT_PAGE + u64::from(SINT) * EVENT_FLAGS_PER_SINT;
    finish(
        a,
        vec![
            // HV_INPUT_POST_MESSAGE: connection id, reserved; type, size;
            // the payload.
            (shared::HC_INPUT, u64::from(MESSAGE_CONNECTION)),
            (shared::HC_INPUT + 8, MESSAGE_TYPE | (8 << 32)),
            (shared::HC_INPUT + 16, PAYLOAD),
            (shared::SYNIC_PING_SLOT, slot),
            (shared::SYNIC_EVENT_INPUT, u64::from(EVENT_CONNECTION)),
            (shared::SYNIC_EVENT_FLAGS, flags),
            (shared::EOI_MODE, eoi_mode::LAZY),
        ],
    )
}
