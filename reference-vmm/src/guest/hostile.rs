//! The hostile-guest program: vCPU 0 makes malformed hypercalls and MSR
//! accesses one after another and checks each answer (a TLFS status, or the
//! exception vector) in guest memory, then reports DONE with the number of
//! cases. A wrong answer reports the case and what came back.

use hv_enlightenments::msr::*;
use iced_x86::code_asm::*;

use super::abi::{self, percpu as pc};
use super::asm::{Error, assemble};
use super::kernel::HV_FAST;
use super::scenarios::failure;
use super::user::*;
use crate::guest::Program;
use crate::guest::layout::{HYPERCALL_PAGE, USER_CODE};
use hv_enlightenments::hypercall::{CallCode, HvStatus};

/// Input pages of the cases (inside the user code area, after the code).
pub const INPUT_BASE: u64 = USER_CODE + 0x2000;
/// A guest-physical address that is not RAM (inside the identity map).
pub const NOT_RAM: u64 = 0x3FFF_F000;
/// What a #GP looks like in RAX after a system call.
pub const GP: u64 = (1 << 63) | 13;
/// What a #UD looks like in RAX after a system call.
pub const UD: u64 = (1 << 63) | 6;

/// What a case does.
#[derive(Debug, Clone)]
pub enum Action {
    /// A hypercall at CPL0; `input` is written at the case's input page
    /// and `rdx` is relative to it when `rdx_in_page` is set.
    Hypercall {
        /// Control word.
        control: u64,
        /// RDX (absolute, or an offset into the input page).
        rdx: u64,
        /// Whether `rdx` is an offset into the case's input page.
        rdx_in_page: bool,
        /// R8.
        r8: u64,
        /// Words placed at the input page.
        input: Vec<u64>,
    },
    /// A fast hypercall whose input continues in XMM0 (low, high).
    HypercallXmm {
        /// Control word.
        control: u64,
        /// RDX.
        rdx: u64,
        /// R8.
        r8: u64,
        /// XMM0 low and high quadwords.
        xmm0: (u64, u64),
    },
    /// `wrmsr` at CPL0.
    Wrmsr(u32, u64),
    /// `rdmsr` at CPL0.
    Rdmsr(u32),
    /// A call of the hypercall page from CPL3.
    UserHypercall,
}

/// One case and the RAX it must produce. For [`Action::UserHypercall`]
/// `expect` is the exception vector (#UD from the VMM; hosts that refuse
/// CPL3 port I/O before the VMM sees it raise #GP, which is also accepted).
#[derive(Debug, Clone)]
pub struct Case {
    /// Name for reports.
    pub name: &'static str,
    /// What to do.
    pub action: Action,
    /// Expected RAX (status | reps << 32, or bit 63 | vector).
    pub expect: u64,
}

fn hc(control: u64, in_rdx: u64, in_r8: u64) -> Action {
    Action::Hypercall {
        control,
        rdx: in_rdx,
        rdx_in_page: false,
        r8: in_r8,
        input: vec![],
    }
}

fn hc_mem(control: u64, offset: u64, input: Vec<u64>) -> Action {
    Action::Hypercall {
        control,
        rdx: offset,
        rdx_in_page: true,
        r8: 0,
        input,
    }
}

fn st(s: HvStatus) -> u64 {
    u64::from(s.0)
}

/// The cases, in order. They run on vCPU 0, whose VP index is 0.
pub fn cases() -> Vec<Case> {
    let ipi = u64::from(CallCode::SEND_SYNTHETIC_CLUSTER_IPI.0);
    let ipi_ex = u64::from(CallCode::SEND_SYNTHETIC_CLUSTER_IPI_EX.0);
    let list = u64::from(CallCode::FLUSH_VIRTUAL_ADDRESS_LIST.0);
    let v = u64::from(abi::VEC_WAKE);
    let rep = |n: u64| n << 32;
    let rep_start = |n: u64| n << 48;
    let var = |n: u64| n << 17;
    vec![
        Case {
            name: "valid fast IPI to self",
            action: hc(ipi | HV_FAST, v, 1),
            expect: st(HvStatus::SUCCESS),
        },
        Case {
            name: "reserved control bit 27",
            action: hc(ipi | HV_FAST | (1 << 27), v, 1),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "reserved control bit 63",
            action: hc(ipi | HV_FAST | (1 << 63), v, 1),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "unknown call code",
            action: hc(0x99 | HV_FAST, 0, 0),
            expect: st(HvStatus::INVALID_HYPERCALL_CODE),
        },
        Case {
            name: "rep count on a simple call",
            action: hc(ipi | HV_FAST | rep(1), v, 1),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "rep call with rep count 0",
            action: hc_mem(list, 0, vec![0, 0, 1, 0]),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "rep start beyond 0",
            action: hc_mem(list | rep(2) | rep_start(1), 0, vec![0, 0, 1, 0, 0]),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "Ex bank count != popcount(mask)",
            action: hc_mem(ipi_ex | var(2), 0, vec![v, 0, 1, 1]),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "misaligned input GPA",
            action: hc_mem(ipi, 4, vec![0, 0, 0]),
            expect: st(HvStatus::INVALID_ALIGNMENT),
        },
        // hv-enlightenments checks "fits in one page" before alignment and
        // answers INVALID_HYPERCALL_INPUT, as openvmm's hv1_hypercall does.
        Case {
            name: "input straddling a page",
            action: hc_mem(ipi, 0xFF8, vec![]),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "input GPA outside guest memory",
            action: hc(ipi, NOT_RAM, 0),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "VP index out of range (fast mask)",
            action: hc(ipi | HV_FAST, v, 1 << 63),
            expect: st(HvStatus::SUCCESS),
        },
        Case {
            name: "VP index out of range (Ex bank 63)",
            action: hc_mem(ipi_ex | var(1), 0, vec![v, 0, 1 << 63, u64::MAX]),
            expect: st(HvStatus::SUCCESS),
        },
        Case {
            name: "vector below 16",
            action: hc(ipi | HV_FAST, 15, 1),
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "fast XMM Ex IPI to self (bank 0 in XMM0)",
            action: Action::HypercallXmm {
                control: ipi_ex | HV_FAST | var(1),
                rdx: v,
                r8: 0,
                xmm0: (1, 1),
            },
            expect: st(HvStatus::SUCCESS),
        },
        Case {
            name: "fast XMM Ex IPI, bank count beyond the mask",
            action: Action::HypercallXmm {
                control: ipi_ex | HV_FAST | var(2),
                rdx: v,
                r8: 0,
                xmm0: (1, 1),
            },
            expect: st(HvStatus::INVALID_HYPERCALL_INPUT),
        },
        Case {
            name: "hypercall at CPL3",
            action: Action::UserHypercall,
            expect: 6,
        },
        Case {
            name: "write VP_INDEX",
            action: Action::Wrmsr(HV_X64_MSR_VP_INDEX, 5),
            expect: GP,
        },
        Case {
            name: "VP_INDEX reads the VP index",
            action: Action::Rdmsr(HV_X64_MSR_VP_INDEX),
            expect: 0,
        },
        Case {
            name: "reserved bit in VP_ASSIST_PAGE",
            action: Action::Wrmsr(HV_X64_MSR_VP_ASSIST_PAGE, 2),
            expect: GP,
        },
        Case {
            name: "reserved bit in HYPERCALL",
            action: Action::Wrmsr(HV_X64_MSR_HYPERCALL, HYPERCALL_PAGE | 1 | 4),
            expect: GP,
        },
        // The VMM publishes every synthetic MSR it serves, so the MSR
        // privilege matrix is hv-enlightenments' (`msr::allowed`); the
        // hypercall it never grants is NotifyLongSpinWait (spinlock
        // retries 0xFFFFFFFF): KVM's ENFORCE_CPUID answer.
        Case {
            name: "hypercall without privilege: NotifyLongSpinWait",
            action: hc(u64::from(CallCode::NOTIFY_LONG_SPIN_WAIT.0) | HV_FAST, 0, 0),
            expect: st(HvStatus::ACCESS_DENIED),
        },
        Case {
            name: "unknown synthetic MSR",
            action: Action::Rdmsr(0x4000_01FF),
            expect: GP,
        },
        Case {
            name: "GUEST_OS_ID = 0",
            action: Action::Wrmsr(HV_X64_MSR_GUEST_OS_ID, 0),
            expect: 0,
        },
        Case {
            name: "HYPERCALL enable before GUEST_OS_ID (ignored)",
            action: Action::Wrmsr(HV_X64_MSR_HYPERCALL, HYPERCALL_PAGE | 1),
            expect: 0,
        },
        Case {
            name: "HYPERCALL stays disabled",
            action: Action::Rdmsr(HV_X64_MSR_HYPERCALL),
            expect: HYPERCALL_PAGE,
        },
        Case {
            name: "hypercall while disabled",
            action: hc(ipi | HV_FAST, v, 1),
            expect: UD,
        },
        Case {
            name: "GUEST_OS_ID restored",
            action: Action::Wrmsr(HV_X64_MSR_GUEST_OS_ID, abi::GUEST_OS_ID),
            expect: 0,
        },
        Case {
            name: "HYPERCALL re-enabled",
            action: Action::Wrmsr(HV_X64_MSR_HYPERCALL, HYPERCALL_PAGE | 1),
            expect: 0,
        },
        Case {
            name: "valid fast IPI after re-enable",
            action: hc(ipi | HV_FAST, v, 1),
            expect: st(HvStatus::SUCCESS),
        },
    ]
}

/// The program running `cases` on vCPU 0 (the others idle).
pub fn program() -> Result<Program, Error> {
    let cases = cases();
    let mut a = CodeAssembler::new(64)?;
    let mut resp = a.create_label();
    let mut data = Vec::new();
    prologue(&mut a, resp)?;
    for (i, c) in cases.iter().enumerate() {
        let page = INPUT_BASE + 0x1000 * i as u64;
        let mut ok = a.create_label();
        match &c.action {
            Action::Hypercall {
                control,
                rdx: d,
                rdx_in_page,
                r8: r,
                input,
            } => {
                for (k, w) in input.iter().enumerate() {
                    data.push((page + 8 * k as u64, *w));
                }
                a.mov(rdi, *control)?;
                a.mov(rsi, if *rdx_in_page { page + d } else { *d })?;
                a.mov(rdx, *r)?;
                sys(&mut a, abi::SYS_HYPERCALL)?;
            }
            Action::HypercallXmm {
                control,
                rdx: d,
                r8: r,
                xmm0: (lo, hi),
            } => {
                // XMM registers survive the int3 system call untouched.
                a.mov(rax, *lo)?;
                a.movq(xmm0, rax)?;
                a.mov(rax, *hi)?;
                a.movq(xmm1, rax)?;
                a.punpcklqdq(xmm0, xmm1)?;
                a.mov(rdi, *control)?;
                a.mov(rsi, *d)?;
                a.mov(rdx, *r)?;
                sys(&mut a, abi::SYS_HYPERCALL)?;
            }
            Action::Wrmsr(msr, v) => {
                a.mov(rsi, *v)?;
                a.mov(edi, *msr)?;
                sys(&mut a, abi::SYS_WRMSR)?;
            }
            Action::Rdmsr(msr) => {
                a.mov(edi, *msr)?;
                sys(&mut a, abi::SYS_RDMSR)?;
            }
            Action::UserHypercall => {
                let mut after = a.create_label();
                a.lea(rax, ptr(after))?;
                a.mov(pcpu(pc::FIXUP), rax)?;
                a.mov(r15, rsp)?;
                a.mov(
                    rcx,
                    u64::from(CallCode::SEND_SYNTHETIC_CLUSTER_IPI.0) | HV_FAST,
                )?;
                a.mov(edx, u32::from(abi::VEC_WAKE))?;
                a.mov(r8d, 1)?;
                a.mov(rax, HYPERCALL_PAGE)?;
                a.call(rax)?;
                a.set_label(&mut after)?;
                a.mov(rsp, r15)?;
                a.mov(rax, pcpu(pc::LAST_VEC))?;
                // #GP when the host refuses CPL3 port I/O itself.
                a.cmp(rax, 13)?;
                a.je(ok)?;
            }
        }
        a.mov(rcx, c.expect)?;
        a.cmp(rax, rcx)?;
        a.je(ok)?;
        a.mov(rdi, i as u64)?;
        a.mov(rsi, rax)?;
        report(&mut a, abi::REPORT_VALUE)?;
        a.mov(rsi, i as u64)?;
        a.mov(rdi, failure::HOSTILE_CASE)?;
        report(&mut a, abi::REPORT_DONE)?;
        a.set_label(&mut ok)?;
        // Record what came back for the VMM's log.
        a.mov(rdi, i as u64)?;
        a.mov(rsi, rax)?;
        report(&mut a, abi::REPORT_VALUE)?;
    }
    a.mov(rax, cases.len() as u64)?;
    done(&mut a, rax)?;
    idle_responder(&mut a, &mut resp)?;
    Ok(Program {
        user_code: assemble(&mut a, USER_CODE, &[])?.code,
        shared: data,
    })
}
