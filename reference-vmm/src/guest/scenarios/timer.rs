//! The periodic APIC timer scenario, each interrupt completed the
//! x2APIC, synthetic or lazy way.

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

/// `count` periodic APIC timer interrupts every `period_ns` on vCPU 0,
/// each completed the `eoi` way.
pub fn timer_eoi(count: u64, period_ns: u32, eoi: EoiMode) -> Result<Program, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    prologue(&mut a, resp)?;
    wrmsr_imm(&mut a, TIMER_DIV, 0xB)?;
    wrmsr_imm(&mut a, LVT_TIMER, (1 << 17) | u64::from(abi::VEC_TIMER))?;
    mark_start(&mut a, count)?;
    wrmsr_imm(&mut a, TIMER_INIT, u64::from(period_ns))?;
    a.mov(r13, count)?;
    halt_until(&mut a, pc::TIMER_COUNT, r13)?;
    mark_end(&mut a)?;
    wrmsr_imm(&mut a, TIMER_INIT, 0)?;
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
