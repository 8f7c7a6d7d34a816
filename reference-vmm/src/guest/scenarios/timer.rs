//! The periodic timer scenarios, each interrupt completed the x2APIC,
//! synthetic or lazy way: the APIC timer, and the Hyper-V synthetic timer
//! 0 in direct mode (its expiry raises the same vector).

use iced_x86::code_asm::*;

use super::emit::finish;
use super::mode::EoiMode;
use crate::guest::Program;
use crate::guest::abi::{self, eoi_mode, percpu as pc, shared};
use crate::guest::asm::Error;
use crate::guest::user::*;

/// x2APIC LVT timer register.
const LVT_TIMER: u32 = 0x832;
/// x2APIC initial count register.
const TIMER_INIT: u32 = 0x838;
/// x2APIC divide configuration register.
const TIMER_DIV: u32 = 0x83E;

/// HV_X64_MSR_STIMER0_CONFIG and _COUNT.
const STIMER0_CONFIG: u32 = 0x4000_00B0;
const STIMER0_COUNT: u32 = 0x4000_00B1;
/// STIMER CONFIG: enable, periodic, the vector (bits 11:4), direct mode
/// (`union hv_stimer_config`).
const STIMER_ENABLE: u64 = 1;
const STIMER_PERIODIC: u64 = 1 << 1;
const STIMER_VECTOR_SHIFT: u32 = 4;
const STIMER_DIRECT: u64 = 1 << 12;

/// `count` periodic APIC timer interrupts every `period_ns` on vCPU 0,
/// each completed the `eoi` way.
pub fn timer_eoi(count: u64, period_ns: u32, eoi: EoiMode) -> Result<Program, Error> {
    periodic(count, eoi, |a, phase| match phase {
        Phase::Prepare => {
            wrmsr_imm(a, TIMER_DIV, 0xB)?;
            wrmsr_imm(a, LVT_TIMER, (1 << 17) | u64::from(abi::VEC_TIMER))
        }
        Phase::Start => wrmsr_imm(a, TIMER_INIT, u64::from(period_ns)),
        Phase::Stop => wrmsr_imm(a, TIMER_INIT, 0),
    })
}

/// `count` periodic synthetic timer 0 expiries every `period_100ns`
/// (reference time) on vCPU 0 in direct mode, each completed the `eoi`
/// way.
pub fn stimer_eoi(count: u64, period_100ns: u64, eoi: EoiMode) -> Result<Program, Error> {
    let config = STIMER_ENABLE
        | STIMER_PERIODIC
        | STIMER_DIRECT
        | (u64::from(abi::VEC_TIMER) << STIMER_VECTOR_SHIFT);
    periodic(count, eoi, |a, phase| match phase {
        Phase::Prepare => wrmsr_imm(a, STIMER0_COUNT, period_100ns),
        Phase::Start => wrmsr_imm(a, STIMER0_CONFIG, config),
        Phase::Stop => wrmsr_imm(a, STIMER0_CONFIG, 0),
    })
}

/// SCONTROL, SIMP and SINTx of the SynIC; the SINT the message-mode timer
/// uses; SINTx.AutoEOI (bit 17); STIMER CONFIG's SINT field (bits 19:16).
const SCONTROL: u32 = 0x4000_0080;
const SIMP: u32 = 0x4000_0083;
const SINT0: u32 = 0x4000_0090;
const TIMER_SINT: u32 = 2;
const SINT_AUTO_EOI: u64 = 1 << 17;
const SINT_MASKED: u64 = 1 << 16;
const STIMER_SINTX_SHIFT: u32 = 16;
/// Bytes of a SynIC message slot.
const MESSAGE_SLOT: u64 = 256;

/// `count` periodic synthetic timer 0 expiries every `period_100ns` on
/// vCPU 0 in message mode (HVMSG_TIMER_EXPIRED on SINT 2, the timer
/// vector): the handler frees the slot (EOM only when a message waits),
/// then completes the interrupt by lazy EOI, or not at all with
/// `auto_eoi` (SINT 2 with AutoEOI).
pub fn stimer_message(count: u64, period_100ns: u64, auto_eoi: bool) -> Result<Program, Error> {
    let sint = u64::from(abi::VEC_TIMER) | if auto_eoi { SINT_AUTO_EOI } else { 0 };
    let config = STIMER_ENABLE | STIMER_PERIODIC | (u64::from(TIMER_SINT) << STIMER_SINTX_SHIFT);
    let mut program = periodic(count, EoiMode::Lazy, |a, phase| match phase {
        Phase::Prepare => {
            wrmsr_imm(a, SIMP, shared::SYNIC_MESSAGE_PAGE | 1)?;
            wrmsr_imm(a, SINT0 + TIMER_SINT, sint)?;
            wrmsr_imm(a, SCONTROL, 1)?;
            wrmsr_imm(a, STIMER0_COUNT, period_100ns)
        }
        Phase::Start => wrmsr_imm(a, STIMER0_CONFIG, config),
        // The timer off, then SINT 2 masked: its AutoEOI use ends.
        Phase::Stop => {
            wrmsr_imm(a, STIMER0_CONFIG, 0)?;
            wrmsr_imm(a, SINT0 + TIMER_SINT, SINT_MASKED)
        }
    })?;
    // Written in order: these follow (and override) the EOI mode above.
    let slot = shared::SYNIC_MESSAGE_PAGE + u64::from(TIMER_SINT) * MESSAGE_SLOT;
    program.shared.push((shared::STIMER_SLOT, slot));
    if auto_eoi {
        program.shared.push((shared::EOI_MODE, eoi_mode::NONE));
    }
    Ok(program)
}

/// Where a timer's code goes in the counted loop.
enum Phase {
    /// Before the measured phase.
    Prepare,
    /// At its start: the ticks begin.
    Start,
    /// After it.
    Stop,
}

/// The counted loop of both timers, with `code` for each [`Phase`].
fn periodic(
    count: u64,
    eoi: EoiMode,
    code: impl Fn(&mut CodeAssembler, Phase) -> Result<(), iced_x86::IcedError>,
) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    code(&mut a, Phase::Prepare)?;
    mark_start(&mut a, count)?;
    code(&mut a, Phase::Start)?;
    a.mov(r13, count)?;
    halt_until(&mut a, pc::TIMER_COUNT, r13)?;
    mark_end(&mut a)?;
    code(&mut a, Phase::Stop)?;
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
