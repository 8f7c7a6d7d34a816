//! Serving one exit of the vCPU run loop ([`crate::runner::Runner`]): MSR
//! exits (the Hyper-V services first, then the irqchip for the APIC's
//! MSRs and the EOI/ICR/TPR aliases), MMIO and port I/O through the vCPU's
//! buses ([`crate::runner::io`]: its xAPIC page and trap ports, then the
//! VM's devices; port I/O element by element, string I/O included), the
//! traps those accesses latched (hypercall, panic, report), and internal
//! errors. The exit data is read from `kvm_run` ([`crate::kvm::exit_data`]).

use std::cell::RefCell;

use hv_enlightenments::msr::{ApicRegister, HV_X64_MSR_SINT0};
use ipiv::inhibit::InhibitEvent;

use crate::error::Error;
use crate::hyperv::hypercall::{self, TrapEnd};
use crate::hyperv::msr::{self as hvmsr, MsrExit};

use crate::irqchip::fanout::FanOut;
use crate::kvm::exit_data;
use crate::kvm::msr::MSR_APIC_BASE;
use crate::machine::{GuestExit, Machine};
use crate::metrics::{ExitClass, bump};
use crate::runner::Runner;
use crate::runner::io::Trap;
use crate::vcpu::Vcpu;

/// The hypercall trap's interrupts, raised through the irqchip; a PV
/// IPI's notifications are fanned out once the call has posted them all.
/// The fan-out is made at the call's first IPI: most hypercalls send none.
struct MachineRaise<'a>(&'a Machine, RefCell<Option<FanOut>>);

impl hypercall::Raise for MachineRaise<'_> {
    fn ipi(&self, target: &Vcpu, vector: u8) {
        let mut f = self.1.borrow_mut();
        self.0
            .irqchip
            .send_ipi_deferred(target, vector, f.get_or_insert_with(FanOut::default));
    }

    fn ipis_done(&self) {
        if let Some(f) = self.1.take() {
            self.0.fan_out(f);
        }
    }

    fn sint(&self, target: &Vcpu, vector: u8, auto_eoi: bool) {
        self.0.raise_sint(target, vector, auto_eoi);
    }
}

/// `kvm_run.internal.suberror` of an instruction emulation failure.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

impl Runner<'_> {
    /// Serves an MSR exit: the Hyper-V services, then the irqchip (APIC
    /// MSRs, the EOI/ICR/TPR aliases, the VP assist page's lazy EOI), then
    /// what a synthetic MSR write left to do (timers, EOM, crash, reset).
    pub(super) fn msr(&mut self, write: bool) -> Result<ExitClass, Error> {
        let (index, data) = exit_data::msr(self.kvm.fd_mut());
        let (m, me) = (self.m, self.me);
        hvmsr::count(&me.metrics, index);
        // The x2APIC ICR, or the Hyper-V MSR that aliases it.
        let apic_msr = ApicRegister::aliased_by(index).map_or(index, ApicRegister::x2apic_msr);
        let icr = lapic::regs::x2apic_msr_to_reg(apic_msr) == Some(lapic::regs::ICR_LOW);
        let class = if write && icr {
            bump(&me.metrics.msr_icr_writes);
            ExitClass::Icr
        } else {
            ExitClass::Msr
        };
        let irq = &m.irqchip;
        let mut then = None;
        let result = if write {
            let hv = m.hv.write_without_vp(index).unwrap_or_else(|| {
                let mut s = me.lock();
                m.hv.wrmsr(s.vp.as_mut(), index, data, &m.mem, me.index)
            });
            let ok = match hv {
                MsrExit::Served(v) => v.is_some(),
                MsrExit::Apic(reg) => irq.synthetic_write(&mut self.cx(), index, reg, data)?,
                MsrExit::Other => irq.wrmsr(&mut self.cx(), index, data)?,
                MsrExit::VpAssistPage(gpa) => {
                    irq.vp_assist_page(&mut self.cx(), gpa)?;
                    true
                }
                other => {
                    then = Some(other);
                    true
                }
            };
            if ok && index == MSR_APIC_BASE {
                self.io.follow_apic_base(m, me);
            }
            // KVM `synic_update_vector`: SINT writes feed the inhibit.
            if let Some(sint) = index
                .checked_sub(HV_X64_MSR_SINT0)
                .filter(|&n| ok && n < 16)
            {
                let event = InhibitEvent::SintWrite {
                    sint: sint as u8,
                    value: data,
                };
                m.apicv.request(me.index, event);
            }
            ok.then_some(data)
        } else {
            let hv = m.hv.rdmsr(me.lock().vp.as_ref(), index);
            match hv {
                MsrExit::Served(v) => v,
                MsrExit::Apic(reg) => irq.synthetic_read(&mut self.cx(), index, reg)?,
                MsrExit::Other => irq.rdmsr(&mut self.cx(), index)?,
                _ => Some(0),
            }
        };
        if result.is_none() {
            self.exception_queued = true;
        }
        exit_data::complete_msr(self.kvm.fd_mut(), result.is_none(), result.unwrap_or(0));
        match then {
            Some(MsrExit::Stimers) => {
                m.service_stimers(me);
            }
            Some(MsrExit::EndOfMessage) => {
                for (vector, auto_eoi) in m.hv.end_of_message(me, &m.mem).iter() {
                    m.raise_sint(me, vector, auto_eoi);
                }
                m.service_stimers(me);
            }
            Some(MsrExit::Crashed(params)) => {
                return Err(Error::GuestCrashed {
                    vcpu: me.index,
                    params,
                });
            }
            Some(MsrExit::Reset) => m.guest_stopped(GuestExit::Reset),
            _ => {}
        }
        Ok(class)
    }

    /// Describes a `KVM_EXIT_INTERNAL_ERROR` (an emulation failure names
    /// the instruction).
    pub(super) fn internal_error(&mut self) -> String {
        let run = self.kvm.run_area();
        // SAFETY: exit_reason is KVM_EXIT_INTERNAL_ERROR, so the
        // kernel filled the `internal` member of the union.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let what = match internal.suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "delivery event failure",
            _ => "internal error",
        };
        let n = (internal.ndata as usize).min(internal.data.len());
        let data = internal.data[..n].to_vec();
        let insn = if internal.suberror == KVM_INTERNAL_ERROR_EMULATION {
            crate::kvm::fault::describe_instruction(self.kvm.fd(), &self.m.mem, &data)
        } else {
            String::new()
        };
        format!(
            "KVM_EXIT_INTERNAL_ERROR: {what} (suberror {}, data {data:x?}){insn}",
            internal.suberror,
        )
    }

    /// Serves an MMIO exit on the vCPU's buses. Returns `false` for a
    /// built-in guest's report (not counted as service).
    ///
    /// Out of line: inlined into the run loop by the release build's LTO,
    /// its locals (its own frame is about 10 KiB) made the loop's frame
    /// 13 KiB instead of 8, a frame every vCPU thread touches: about 7 KiB
    /// of RSS per vCPU.
    #[inline(never)]
    pub(super) fn mmio(&mut self) -> bool {
        let (addr, write, data) = exit_data::mmio(self.kvm.fd_mut());
        if write {
            self.io.mmio_write(&self.m.io, addr, data);
        } else {
            self.io.mmio_read(&self.m.io, addr, data);
        }
        let Some(Trap::Report(code)) = self.io.take_trap() else {
            return true;
        };
        let regs = self.kvm.fd_mut().sync_regs().regs;
        self.m.report(self.me.index, code, regs.rdi, regs.rsi);
        false
    }

    /// Serves a port I/O exit element by element (string I/O moves
    /// `count` elements of `size` bytes; devices see each access at the
    /// size the guest used), then the trap a port latched.
    pub(super) fn pio(&mut self) -> Result<ExitClass, Error> {
        let Some((io, data)) = exit_data::pio(self.kvm.fd_mut()) else {
            return Err(Error::Guest {
                vcpu: self.me.index,
                reason: "KVM_EXIT_IO with an unexpected data layout".into(),
                rip: self.kvm.rip(),
            });
        };
        for element in data.chunks_mut(io.size) {
            if io.input {
                self.io.pio_read(&self.m.io, io.port, element);
            } else {
                self.io.pio_write(&self.m.io, io.port, element);
            }
        }
        match self.io.take_trap() {
            Some(Trap::Hypercall) => {
                let m = self.m;
                let end = hypercall::serve(
                    &mut self.kvm,
                    &m.hv,
                    &m.mem,
                    &m.vcpus,
                    self.me,
                    &MachineRaise(m, RefCell::default()),
                )?;
                if end == TrapEnd::Exception {
                    self.exception_queued = true;
                }
                Ok(ExitClass::Hypercall)
            }
            Some(Trap::Probe) => {
                hypercall::probe(&self.m.mem, &self.m.vcpus, self.me)?;
                Ok(ExitClass::Pio)
            }
            Some(Trap::Panic) => {
                let regs = self.kvm.regs()?;
                Err(Error::Guest {
                    vcpu: self.me.index,
                    reason: format!(
                        "guest exception vector {} (error code {:#x})",
                        regs.rax & 0xFF,
                        regs.rsi
                    ),
                    rip: regs.rdx,
                })
            }
            Some(Trap::Report(_)) | None => Ok(ExitClass::Pio),
        }
    }
}
