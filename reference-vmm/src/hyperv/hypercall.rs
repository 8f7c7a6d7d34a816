//! The hypercall trap: the hypercall page's port write lands here. The
//! registers come from kvm_run's synced copy; CPL and the hypercall page's
//! state are checked, hv-enlightenments decodes, the VMM executes (PV IPI
//! through the irqchip's send, PV TLB flush through flush requests) and
//! RAX goes back through the dirty-register mask.

use std::sync::atomic::{Ordering, fence};

use hv_enlightenments::hypercall::{
    self, CallCode, HvStatus, Hypercall, HypercallGprs, HypercallMode, HypercallRegs,
    HypercallResult, Refusal, caller_may_call,
};
use kvm_ioctls::SyncReg;
use vm_memory::GuestMemoryMmap;

use super::HyperV;
use crate::error::Error;
use crate::guest::abi;
use crate::guest::scenarios::ex64_control;
use crate::kvm::vcpu::KvmVcpu;
use crate::metrics::{VcpuMetrics, bump, tsc};
use crate::vcpu::{FLUSH_WAIT, Vcpu};

/// #UD vector.
const UD_VECTOR: u8 = 6;
/// CR0.PE: protected mode.
const CR0_PE: u64 = 1;
/// Size of the XMM hypercall input (TLFS 3.7.2): XMM0..XMM5.
const XMM_INPUT_REGS: usize = 6;

/// How the trap ended for the run loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapEnd {
    /// RAX holds the result; the guest goes on after the call.
    Returned,
    /// The call raised #UD, delivered at the next entry (no interrupt may
    /// be injected with it).
    Exception,
}

/// How the hypercall trap raises interrupts on other vCPUs (the irqchip's
/// to do).
pub trait Raise {
    /// A PV IPI of `vector` to `target`; notifications may wait for
    /// [`Raise::ipis_done`].
    fn ipi(&self, target: &Vcpu, vector: u8);
    /// The call's PV IPIs are all sent: carry out what they left.
    fn ipis_done(&self);
    /// A SynIC interrupt of `vector` on `target` (a message or event
    /// landed on one of its SINTs).
    fn sint(&self, target: &Vcpu, vector: u8, auto_eoi: bool);
}

/// The hypercall trap of vCPU `me` (`kvm`: its fd, with the exit's
/// registers synced in `kvm_run`): CPL and enable checks, the checks
/// against the published CPUID (KVM_CAP_HYPERV_ENFORCE_CPUID), decode,
/// execute (interrupts through `raise`), result in RAX.
pub fn serve(
    kvm: &mut KvmVcpu,
    hv: &HyperV,
    mem: &GuestMemoryMmap,
    vcpus: &[Vcpu],
    me: &Vcpu,
    raise: &impl Raise,
) -> Result<TrapEnd, Error> {
    let metrics = &me.metrics;
    bump(&metrics.hypercalls);
    let sync = kvm.fd_mut().sync_regs();
    let (regs, sregs) = (sync.regs, sync.sregs);
    // KVM kvm_hv_hypercall: a Hyper-V hypercall in real mode, at CPL != 0
    // (virtual-8086 mode included: its SS.DPL is 3), or while the
    // hypercall page is off, raises #UD.
    if !caller_may_call(sregs.cr0 & CR0_PE != 0, sregs.ss.dpl) || !hv.hypercalls_enabled() {
        bump(&metrics.hypercalls_ud);
        raise_ud(kvm)?;
        return Ok(TrapEnd::Exception);
    }
    // KVM kvm_hv_hypercall: 64-bit mode (EFER.LMA and CS.L) uses RCX,
    // RDX, R8; otherwise control, input and output come in register pairs
    // and the result goes back in EDX:EAX.
    let mode = if crate::kvm::in_64bit_mode(&sregs) {
        HypercallMode::Bits64
    } else {
        HypercallMode::Bits32
    };
    let mut hregs = HypercallGprs::from(&regs).hypercall_regs(mode);
    // KVM kvm_hv_hypercall: the call's privilege, reserved control bits
    // and XMM input (#UD when not published) before its input is read.
    let refused = match hv.hypercall_access().check(hregs.control()) {
        Ok(()) => None,
        Err(Refusal::InjectUd) => {
            bump(&metrics.hypercalls_ud);
            raise_ud(kvm)?;
            return Ok(TrapEnd::Exception);
        }
        Err(Refusal::Status(status)) => Some(status),
    };
    if refused.is_none() && hregs.control().uses_xmm_input() {
        bump(&metrics.hc_xmm_input);
        let fpu = kvm.fd().get_fpu().map_err(kvm.err("KVM_GET_FPU"))?;
        for (d, s) in hregs
            .xmm
            .iter_mut()
            .zip(fpu.xmm.iter().take(XMM_INPUT_REGS))
        {
            *d = u128::from_le_bytes(*s);
        }
    }
    let code = hregs.control().call_code();
    let call_start = tsc();
    let result = match (refused, hypercall::decode(&hregs, mem)) {
        (Some(status), _) => HypercallResult::from(status),
        (None, Ok(call)) => {
            let r = dispatch(vcpus, metrics, &call, |t, v| raise.ipi(t, v));
            raise.ipis_done();
            r?
        }
        // The SynIC's calls have their own decoder.
        (None, Err(HvStatus::INVALID_HYPERCALL_CODE))
            if code == CallCode::POST_MESSAGE || code == CallCode::SIGNAL_EVENT =>
        {
            bump(&metrics.hc_synic);
            HypercallResult::from(match hv_enlightenments::synic::decode_synic(&hregs, mem) {
                Ok(call) => hv.synic_call(&call, vcpus, mem, |t, v, a| raise.sint(t, v, a)),
                Err(status) => status,
            })
        }
        (None, Err(status)) => HypercallResult::from(status),
    };
    metrics
        .hc_call_cycles
        .fetch_add(tsc().wrapping_sub(call_start), Ordering::Relaxed);
    metrics.count_status(result.status.0);
    // Only RAX (EDX:EAX in 32-bit mode) changes; KVM loads the synced
    // registers before it completes the port write (and moves RIP past
    // it).
    let out = &mut kvm.fd_mut().sync_regs_mut().regs;
    mode.result_regs(result.encode())
        .apply(&mut out.rax, &mut out.rdx);
    kvm.fd_mut().set_sync_dirty_reg(SyncReg::Register);
    Ok(TrapEnd::Returned)
}

/// The bench's probe ([`abi::PROBE_PORT`]): `hypercall-ex64`'s call, with
/// its input at [`abi::shared::HC_INPUT`] in `mem`, decoded and carried out
/// as [`serve`] does, but with no trap around it (no registers, checks or
/// answer): its TSC cycles go to `me`'s `probe_cycles`. The call is a
/// flush, so it sends no IPI. Input that does not decode is timed all the
/// same.
pub fn probe(mem: &GuestMemoryMmap, vcpus: &[Vcpu], me: &Vcpu) -> Result<(), Error> {
    let regs = HypercallRegs {
        rcx: ex64_control(),
        rdx: abi::shared::HC_INPUT,
        ..HypercallRegs::default()
    };
    let start = tsc();
    if let Ok(call) = hypercall::decode(&regs, mem) {
        dispatch(vcpus, &me.metrics, &call, |_, _| {})?;
    }
    let metrics = &me.metrics;
    bump(&metrics.probes);
    metrics
        .probe_cycles
        .fetch_add(tsc().wrapping_sub(start), Ordering::Relaxed);
    Ok(())
}

/// Raises #UD at the trapping instruction, as the hypercall instruction
/// itself would fault: the port write is completed first, after which RIP
/// is past it whichever way KVM ran it (its fast PIO path exits with RIP
/// at the instruction and skips it on completion, its instruction
/// emulator has moved RIP already), RIP is moved back by the
/// instruction's length, and the exception is queued.
fn raise_ud(kvm: &mut KvmVcpu) -> Result<(), Error> {
    kvm.complete_pending_exit()?;
    let mut regs = kvm.regs()?;
    regs.rip = regs
        .rip
        .wrapping_sub(abi::HYPERCALL_TRAP.instruction_len() as u64);
    kvm.fd().set_regs(&regs).map_err(kvm.err("KVM_SET_REGS"))?;
    let mut ev = kvm
        .fd()
        .get_vcpu_events()
        .map_err(kvm.err("KVM_GET_VCPU_EVENTS"))?;
    ev.exception.injected = 1;
    ev.exception.nr = UD_VECTOR;
    ev.exception.has_error_code = 0;
    kvm.fd()
        .set_vcpu_events(&ev)
        .map_err(kvm.err("KVM_SET_VCPU_EVENTS"))?;
    kvm.drop_synced_regs();
    Ok(())
}

/// Carries out a decoded hypercall for the vCPU whose counters are
/// `metrics`: PV IPIs go to `send` (target, vector: posted through ipiv,
/// or an MSI with the kernel irqchip), PV flushes become flush requests
/// (targets in guest mode are kicked and waited for; the others flush at
/// their next entry). VP indices naming no vCPU are skipped.
pub fn dispatch(
    vcpus: &[Vcpu],
    metrics: &VcpuMetrics,
    call: &Hypercall,
    send: impl Fn(&Vcpu, u8),
) -> Result<HypercallResult, Error> {
    use hv_enlightenments::hypercall::{MAX_SPARSE_BANKS, VPS_PER_BANK, VpSet};

    /// Calls `each(vp, vcpu)` for every VP of `set` that names a vCPU, in
    /// ascending order, and returns how many. A sparse set is walked a
    /// bank at a time: the bank's vCPUs are bounded once, its VPs are its
    /// word's set bits (`trailing_zeros`), and banks past the last vCPU
    /// are not looked at.
    fn for_each_target<'v>(
        vcpus: &'v [Vcpu],
        set: &VpSet,
        mut each: impl FnMut(u32, &'v Vcpu),
    ) -> u64 {
        if set.is_all() {
            for (vp, t) in (0u32..).zip(vcpus) {
                each(vp, t);
            }
            return vcpus.len() as u64;
        }
        let n = u32::try_from(vcpus.len()).unwrap_or(u32::MAX);
        let mut count = 0;
        for (base, mut word) in set.present_banks(n) {
            // Every bit of `word` is below `n`, so within `bank`.
            let Some(bank) = vcpus.get(base as usize..) else {
                break;
            };
            while word != 0 {
                let bit = word.trailing_zeros();
                word &= word - 1;
                if let Some(t) = bank.get(bit as usize) {
                    each(base + bit, t);
                    count += 1;
                }
            }
        }
        count
    }

    match call {
        // Counters are added once per call: an atomic add per target
        // would be a good part of a many-target call's service time.
        Hypercall::SendIpi(ipi) => {
            bump(&metrics.hc_send_ipi);
            let posted = for_each_target(vcpus, &ipi.targets, |_, t| send(t, ipi.vector));
            metrics.ipis_posted.fetch_add(posted, Ordering::Relaxed);
        }
        Hypercall::Flush(f) => {
            bump(&metrics.hc_flush);
            // Every target is asked, then one fence, then the targets in
            // guest mode are kicked (`Vcpu::ask_flush`): a halted target
            // costs a store and a load, and no lock.
            let requested = for_each_target(vcpus, &f.targets, |_, t| t.ask_flush());
            fence(Ordering::SeqCst);
            // The targets that were in guest mode, to wait for once all
            // are kicked: a bitmap by VP index on the stack (no allocation
            // on the hypercall path), a list for any beyond it.
            let mut kicked = [0u64; MAX_SPARSE_BANKS];
            let mut beyond = Vec::new();
            let mut waits = 0u64;
            for_each_target(vcpus, &f.targets, |vp, t| {
                if t.kick_to_flush() {
                    waits += 1;
                    match kicked.get_mut((vp / VPS_PER_BANK) as usize) {
                        Some(word) => *word |= 1 << (vp % VPS_PER_BANK),
                        None => beyond.push(t),
                    }
                }
            });
            metrics
                .flush_requested
                .fetch_add(requested, Ordering::Relaxed);
            metrics
                .flush_deferred
                .fetch_add(requested - waits, Ordering::Relaxed);
            if waits > 0 {
                for (base, mut word) in (0u32..).step_by(VPS_PER_BANK as usize).zip(kicked) {
                    while word != 0 {
                        let vp = base + word.trailing_zeros();
                        word &= word - 1;
                        if let Some(t) = vcpus.get(vp as usize) {
                            t.wait_flushed(FLUSH_WAIT)?;
                        }
                    }
                }
                for t in beyond {
                    t.wait_flushed(FLUSH_WAIT)?;
                }
            }
        }
        Hypercall::NotifyLongSpinWait { .. } => std::thread::yield_now(),
    }
    Ok(call.completed())
}
