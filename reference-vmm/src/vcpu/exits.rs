//! Serving one exit of the vCPU run loop ([`crate::vcpu::Runner`]): MSR
//! exits (the kernel-irqchip bridge or the userspace APIC and Hyper-V
//! state), MMIO and port I/O through the vCPU's buses
//! ([`crate::vcpu::io`]: its xAPIC page and trap ports, then the VM's
//! devices; port I/O element by element, string I/O included), the traps
//! those accesses latched (hypercall, panic, report), and internal errors.
//! The exit data is read from `kvm_run` ([`crate::kvm::exit_data`]).

use kvm_bindings::kvm_regs;

use crate::error::Error;
use crate::hyperv::msr::{msr_read, msr_write};
use crate::kvm::exit_data;
use crate::kvm::msr::MSR_APIC_BASE;
use crate::metrics::ExitClass;
use crate::vcpu::io::Trap;
use crate::vcpu::{Runner, kvm_err};

/// `kvm_run.internal.suberror` of an instruction emulation failure.
const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

impl Runner<'_> {
    /// Answers the pending KVM_EXIT_X86_RDMSR/WRMSR: `error` injects #GP,
    /// `data` is what a RDMSR returns.
    pub(crate) fn complete_msr_exit(&mut self, error: bool, data: u64) {
        if error {
            self.note_exception();
        }
        exit_data::complete_msr(&mut self.fd, error, data);
    }

    /// Serves an MSR exit: the kernel-irqchip bridge ([`crate::irqchip::kernel`]) or
    /// the userspace APIC and Hyper-V state ([`crate::hyperv::msr`]).
    pub(crate) fn msr(&mut self, write: bool) -> Result<(), Error> {
        let (index, data) = exit_data::msr(&mut self.fd);
        let (m, me) = (self.m, self.me);
        match (m.kernel.is_some(), write) {
            (true, false) => {
                let v = self.kernel_rdmsr(index)?;
                self.complete_msr_exit(v.is_none(), v.unwrap_or(0));
            }
            (true, true) => {
                let ok = self.kernel_wrmsr(index, data)?;
                self.complete_msr_exit(!ok, data);
            }
            (false, false) => {
                let v = msr_read(m, me, index);
                self.complete_msr_exit(v.is_none(), v.unwrap_or(0));
            }
            (false, true) => {
                let ok = msr_write(m, me, index, data);
                self.complete_msr_exit(!ok, data);
                if ok && index == MSR_APIC_BASE {
                    self.io.follow_apic_base();
                    self.mirror_apic_base()?;
                }
            }
        }
        Ok(())
    }

    /// Userspace irqchip: tells KVM the APIC base the guest set, so that
    /// KVM's runtime CPUID update makes CPUID.1:EDX.APIC follow
    /// IA32_APIC_BASE.EN (x86.c `__kvm_apic_set_base` ->
    /// `kvm_update_cpuid_runtime`). A host-initiated write passes the MSR
    /// filter; KVM keeps the value even without an in-kernel APIC.
    pub(crate) fn mirror_apic_base(&mut self) -> Result<(), Error> {
        let base = self.me.lock().apic.apic_base();
        self.complete_pending_exit()?;
        if !self.set_msr(MSR_APIC_BASE, base)? {
            log::warn!(
                "vCPU {}: KVM refused IA32_APIC_BASE = {base:#x}",
                self.me.index
            );
        }
        Ok(())
    }

    /// Describes a `KVM_EXIT_INTERNAL_ERROR` (an emulation failure names
    /// the instruction).
    pub(crate) fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
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
            crate::kvm::fault::describe_instruction(&self.fd, &self.m.mem, &data)
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
    pub(crate) fn mmio(&mut self) -> bool {
        let (addr, write, data) = exit_data::mmio(&mut self.fd);
        if write {
            self.io.mmio_write(&self.m.io, addr, data);
        } else {
            self.io.mmio_read(&self.m.io, addr, data);
        }
        let Some(Trap::Report(code)) = self.io.take_trap() else {
            return true;
        };
        let regs = self.fd.sync_regs().regs;
        self.m.report(self.me.index, code, regs.rdi, regs.rsi);
        false
    }

    /// Serves a port I/O exit element by element (string I/O moves
    /// `count` elements of `size` bytes; devices see each access at the
    /// size the guest used), then the trap a port latched.
    pub(crate) fn pio(&mut self) -> Result<ExitClass, Error> {
        let Some((io, data)) = exit_data::pio(&mut self.fd) else {
            return Err(Error::Guest {
                vcpu: self.me.index,
                reason: "KVM_EXIT_IO with an unexpected data layout".into(),
                rip: self.rip(),
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
                self.hypercall()?;
                Ok(ExitClass::Hypercall)
            }
            Some(Trap::Panic) => {
                let regs = self.regs()?;
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

    pub(crate) fn regs(&self) -> Result<kvm_regs, Error> {
        self.fd
            .get_regs()
            .map_err(kvm_err(self.me.index, "KVM_GET_REGS"))
    }
}
