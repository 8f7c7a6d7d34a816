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

use hv_enlightenments::msr::stimer::StimerConfigMsr;
use hv_enlightenments::msr::{
    HV_X64_MSR_SCONTROL as SCONTROL, HV_X64_MSR_SIMP as SIMP, HV_X64_MSR_SINT0 as SINT0,
    HV_X64_MSR_STIMER0_CONFIG as STIMER0_CONFIG, HV_X64_MSR_STIMER0_COUNT as STIMER0_COUNT,
    SintMsr,
};

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
    let config = StimerConfigMsr::new()
        .with_enable(true)
        .with_periodic(true)
        .with_direct_mode(true)
        .with_apic_vector(abi::VEC_TIMER)
        .into_bits();
    periodic(count, eoi, |a, phase| match phase {
        Phase::Prepare => wrmsr_imm(a, STIMER0_COUNT, period_100ns),
        Phase::Start => wrmsr_imm(a, STIMER0_CONFIG, config),
        Phase::Stop => wrmsr_imm(a, STIMER0_CONFIG, 0),
    })
}

/// The SINT the message-mode timer uses.
const TIMER_SINT: u32 = 2;
/// Bytes of a SynIC message slot.
const MESSAGE_SLOT: u64 = hv_enlightenments::synic::HV_MESSAGE_SIZE as u64;

/// `count` periodic synthetic timer 0 expiries every `period_100ns` on
/// vCPU 0 in message mode (HVMSG_TIMER_EXPIRED on SINT 2, the timer
/// vector): the handler frees the slot (EOM only when a message waits),
/// then completes the interrupt by lazy EOI, or not at all with
/// `auto_eoi` (SINT 2 with AutoEOI).
pub fn stimer_message(count: u64, period_100ns: u64, auto_eoi: bool) -> Result<Program, Error> {
    let sint = SintMsr::new()
        .with_vector(abi::VEC_TIMER)
        .with_auto_eoi(auto_eoi)
        .into_bits();
    let config = StimerConfigMsr::new()
        .with_enable(true)
        .with_periodic(true)
        .with_sintx(TIMER_SINT as u8)
        .into_bits();
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
            wrmsr_imm(a, SINT0 + TIMER_SINT, SintMsr::RESET.into_bits())
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
    // A late host may let the timer tick again before the mark: the
    // ticks counted at the MARK_END exit are the operations.
    mark_end_counted(&mut a, pc::TIMER_COUNT)?;
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
