//! A VM: KVM VM and vCPU fds, guest memory, the shared machine state the
//! vCPU threads work on, and a bounded run that reports what it waited
//! for.

mod create;
pub mod external;

pub use crate::machine::{FlushMethod, GuestExit, Machine, Measured, RunReport};
pub(crate) use create::{Common, MachineOptions};

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VmFd};
use vm_device::device_manager::IoManager;
use vm_memory::{Bytes, GuestAddress};

use crate::error::Error;
pub use crate::guest::Program;
use crate::guest::abi::{self, percpu as pc};
use crate::guest::boot;
use crate::guest::kernel;
use crate::guest::layout;
use crate::irqchip::ApStart;
use crate::kvm::vcpu::KvmVcpu;
use crate::metrics::VmMetrics;
use crate::runner::Runner;
use crate::runner::io::VcpuIo;
use crate::vcpu::Vcpu;
pub use crate::vm::external::{BootReport, ExternalConfig, MAX_RESTARTS, OnReset};
use hv_enlightenments::accel::IrqchipMode;
use hv_enlightenments::cpuid::CpuidPlan;
use lapic::Clock;

// IA32_TSC_DEADLINE and IA32_APIC_BASE are filtered in the
// userspace-irqchip mode so that guest accesses exit to the userspace
// APIC instead of reaching KVM (see `create::enable_user_msrs`).
pub use crate::kvm::msr::{MSR_APIC_BASE, MSR_TSC_DEADLINE};

/// Stack size of a vCPU thread.
const VCPU_STACK: usize = 256 * 1024;

/// How a VM is built.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Number of vCPUs (1..=KVM_CAP_MAX_VCPUS).
    pub vcpus: u32,
    /// Publish and serve the Hyper-V enlightenments.
    pub hyperv: bool,
    /// Bound on the whole run.
    pub timeout: Duration,
    /// How a vCPU's guest TLB is flushed on request.
    pub flush: FlushMethod,
    /// Where the local APICs live: the VMM (`User`) or KVM (`Kernel`, a
    /// split irqchip; see [`crate::irqchip::kernel`]).
    pub irqchip: IrqchipMode,
}

/// A VM ready to run one program.
pub struct Vm {
    pub(crate) config: VmConfig,
    pub(crate) _kvm: Kvm,
    pub(crate) _fd: Arc<VmFd>,
    pub(crate) vcpu_fds: Vec<KvmVcpu>,
    pub(crate) machine: Arc<Machine>,
    pub(crate) entry: u64,
    /// Platform devices and loader facts of an external guest.
    pub(crate) external: Option<Box<crate::vm::external::External>>,
}

fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Kvm { op, err }
}

fn mem_err(e: impl std::fmt::Display) -> Error {
    Error::Memory(e.to_string())
}

impl Vm {
    /// Creates the VM, its memory and vCPUs and loads the guest kernel.
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        let size = layout::memory_size(u64::from(config.vcpus)).max(4 << 20);
        let mut c = Common::open(config.vcpus, config.hyperv, size, config.irqchip)?;
        let mem = &c.mem.clone();
        let k = kernel::build()?;
        mem.write_slice(&k.code, GuestAddress(layout::KERNEL_CODE))
            .map_err(mem_err)?;
        boot::write_page_tables(mem).map_err(mem_err)?;
        boot::write_idt(mem, &k.idt, &[abi::VEC_SYSCALL]).map_err(mem_err)?;
        mem.write_obj(0xA0A0_A0A0_A0A0_A0A0u64, GuestAddress(layout::TLB_PAGE_A))
            .map_err(mem_err)?;
        mem.write_obj(0xB0B0_B0B0_B0B0_B0B0u64, GuestAddress(layout::TLB_PAGE_B))
            .map_err(mem_err)?;
        mem.write_obj(
            u64::from(config.hyperv),
            GuestAddress(abi::shared::HV_ENABLED),
        )
        .map_err(mem_err)?;
        mem.write_obj(u64::from(config.vcpus), GuestAddress(abi::shared::VCPUS))
            .map_err(mem_err)?;
        mem.write_obj(
            u64::from(config.hyperv && c.plan.lazy_eoi()),
            GuestAddress(abi::shared::APIC_ACCESS_HINT),
        )
        .map_err(mem_err)?;

        let io_ports = [abi::HYPERCALL_PORT, abi::NULL_PORT];
        let mut vcpu_fds = Vec::with_capacity(config.vcpus as usize);
        for i in 0..config.vcpus {
            let vi = u64::from(i);
            boot::write_gdt_tss(mem, vi, &io_ports).map_err(mem_err)?;
            let vars = layout::percpu(vi) + layout::PERCPU_VARS;
            for (off, v) in [
                (pc::CPU, vi),
                (pc::SELF, vars),
                (pc::ASSIST, layout::percpu(vi) + layout::PERCPU_ASSIST),
                (pc::USTACK, layout::percpu(vi) + layout::PERCPU_USTACK_TOP),
            ] {
                mem.write_obj(v, GuestAddress(vars + off))
                    .map_err(mem_err)?;
            }
            let vfd = c.create_vcpu(i)?;
            let verr = |op| move |err| Error::VcpuKvm { vcpu: i, op, err };
            let sregs = vfd.get_sregs().map_err(verr("KVM_GET_SREGS"))?;
            vfd.set_sregs(&boot::long_mode_sregs(sregs, vi))
                .map_err(verr("KVM_SET_SREGS"))?;
            vfd.set_regs(&boot::entry_regs(vi, k.entry, u64::from(config.vcpus)))
                .map_err(verr("KVM_SET_REGS"))?;
            vcpu_fds.push(KvmVcpu::new(vfd, i, c.sync_regs));
        }
        let machine = c.machine(MachineOptions {
            flush: config.flush,
            io: IoManager::new(),
            external: false,
            // Every built-in vCPU starts at the kernel entry.
            ap_start: ApStart::AtEntry,
            eoi_hook: None,
        })?;
        Common::start_vcpus(&machine, &vcpu_fds)?;
        Ok(Self {
            config,
            _kvm: c.kvm,
            _fd: c.fd,
            vcpu_fds,
            machine,
            entry: k.entry,
            external: None,
        })
    }

    /// The shared machine state (for inspection after a run).
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The Hyper-V CPUID plan the vCPUs got (`None`: Hyper-V off); see
    /// [`Machine::cpuid_plan`].
    pub fn cpuid_plan(&self) -> Option<&CpuidPlan> {
        self.machine.cpuid_plan()
    }

    /// The guest kernel's entry point.
    pub fn entry(&self) -> u64 {
        self.entry
    }

    /// Loads `program`, runs every vCPU on its own thread until the guest
    /// reports DONE, a vCPU fails, or the timeout expires.
    pub fn run(mut self, program: &Program) -> Result<RunReport, Error> {
        let m = Arc::clone(&self.machine);
        if program.user_code.len() as u64 > layout::USER_CODE_SIZE {
            return Err(Error::Memory(format!(
                "guest program of {} bytes does not fit the {} bytes at {:#x}",
                program.user_code.len(),
                layout::USER_CODE_SIZE,
                layout::USER_CODE
            )));
        }
        m.mem
            .write_slice(&program.user_code, GuestAddress(layout::USER_CODE))
            .map_err(mem_err)?;
        for &(a, v) in &program.shared {
            m.mem.write_obj(v, GuestAddress(a)).map_err(mem_err)?;
        }
        let (result, wall) = self.run_threads("the guest's DONE report");
        let detail = result?;
        let metrics = m.metrics();
        let marks = std::mem::take(&mut *m.marks.lock().unwrap_or_else(|e| e.into_inner()));
        let measured = match (marks.start, marks.end) {
            (Some((t0, m0, ops)), Some((t1, m1, who))) => {
                // The MARK_END exit itself is not part of the measurement.
                let mut d = m1.since(&m0);
                if let Some(v) = d.vcpus.get_mut(who as usize) {
                    v.exits = v.exits.saturating_sub(1);
                    v.exit_mmio = v.exit_mmio.saturating_sub(1);
                }
                let metrics = VmMetrics::from_vcpus(d.vcpus);
                let cycles = marks.guest_tsc.1.saturating_sub(marks.guest_tsc.0);
                let (kvm, guest_lazy_eois) = match (marks.kstart, marks.kend) {
                    (Some((k0, l0)), Some((k1, l1))) => (
                        k0.zip(k1).map(|(k0, k1)| k1.since(&k0)),
                        l1.saturating_sub(l0),
                    ),
                    _ => (None, 0),
                };
                // The report exits are not profiled: nothing to take out.
                let profile = match (marks.pstart, marks.pend) {
                    (Some(p0), Some(p1)) => p1.since(&p0),
                    _ => Default::default(),
                };
                Some(Measured {
                    ops: marks.counted_ops.unwrap_or(ops),
                    elapsed: t1.saturating_duration_since(t0),
                    metrics,
                    guest_elapsed: Duration::from_nanos(m.clock.cycles_to_ns(cycles as f64) as u64),
                    tsc_khz: m.clock.tsc_khz(),
                    kvm,
                    guest_lazy_eois,
                    profile,
                })
            }
            _ => None,
        };
        let (changes, history) = m.apicv.changes();
        let history = history
            .iter()
            .map(|c| format!("vCPU {}: {:?} -> {:?}", c.vcpu, c.before, c.after))
            .collect();
        Ok(RunReport {
            detail,
            measured,
            metrics,
            wall,
            values: marks.values,
            apicv_changes: (changes, history),
        })
    }
}

impl Vm {
    /// Runs the APIC timer thread and one thread per vCPU until the run
    /// ends (a `finish`, a vCPU failure or the timeout, which is reported
    /// as waiting for `what`), then stops and joins them all.
    pub(crate) fn run_threads(&mut self, what: &str) -> (Result<u64, Error>, Duration) {
        let m = Arc::clone(&self.machine);
        let start = Instant::now();
        let apic_timer = spawn_timer(&m, "apic-timer", |tm| {
            tm.irqchip
                .run_timers(&tm.vcpus, || tm.stopping(), || tm.clock.now_ns())
        });
        // Synthetic timers: the vCPU's timers run and deliver on this
        // thread when their host deadline passes.
        let stimer = spawn_timer(&m, "hv-stimer", |tm| {
            tm.stimers.run(
                || tm.stopping(),
                || tm.clock.now_ns(),
                |i| tm.vcpus.get(i).and_then(|v| tm.service_stimers(v)),
            )
        });
        // PV IPI notifications (wakes, MSIs) off the sender's path.
        let fan_out = spawn_timer(&m, "pv-fan-out", |tm| {
            tm.fan_out.run(&tm.irqchip, &tm.vcpus, || tm.stopping())
        });
        let mut threads = Vec::new();
        for (i, fd) in self.vcpu_fds.drain(..).enumerate() {
            if m.stopping() {
                break;
            }
            let vm = Arc::clone(&m);
            let t = std::thread::Builder::new()
                .name(format!("vcpu{i}"))
                .stack_size(VCPU_STACK)
                .spawn(move || {
                    // The vCPU's own bus is built on its thread and lives
                    // in its runner (see `vcpu_io` on ownership).
                    let io = match VcpuIo::new(&vm, i) {
                        Ok(io) => io,
                        Err(e) => {
                            vm.finish(Err(e));
                            return;
                        }
                    };
                    let Some(r) = Runner::new(&vm, i, fd, io) else {
                        return;
                    };
                    if let Err(e) = r.run() {
                        vm.finish(Err(e));
                    }
                });
            match t {
                Ok(t) => threads.push(t),
                Err(err) => {
                    m.finish(Err(Error::Thread {
                        vcpu: i as u32,
                        err,
                    }));
                    break;
                }
            }
        }
        // Bounded wait for the end of the run.
        let mut timed_out = false;
        {
            let mut e = m.end.lock().unwrap_or_else(|e| e.into_inner());
            while e.is_none() {
                let left = self.config.timeout.saturating_sub(start.elapsed());
                if left.is_zero() {
                    let mut what = format!("{what}; vCPU states:");
                    describe_vcpus(&m, &mut what, |v| m.irqchip.describe_live(v));
                    *e = Some(Err(Error::Timeout {
                        waited: self.config.timeout,
                        what,
                    }));
                    timed_out = true;
                    break;
                }
                e = m
                    .end_cond
                    .wait_timeout(e, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        m.finish(Ok(0));
        for t in threads {
            let _ = t.join();
        }
        for t in [apic_timer, stimer, fan_out].into_iter().flatten() {
            let _ = t.join();
        }
        let wall = start.elapsed();
        let mut result = m
            .end
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or(Ok(0));
        // Where only a vCPU's own thread could read its state (outside
        // KVM_RUN), it recorded it on the way out.
        if timed_out {
            if let Err(Error::Timeout { what, .. }) = &mut result {
                describe_vcpus(&m, what, |v| {
                    v.lock().exit_snapshot.is_some().then(|| v.describe())
                });
            }
        }
        (result, wall)
    }
}

/// Starts a timer thread running `body` on the machine; a failure to start
/// ends the run.
fn spawn_timer(
    m: &Arc<Machine>,
    name: &str,
    body: impl FnOnce(&Machine) + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    let tm = Arc::clone(m);
    let t = std::thread::Builder::new()
        .name(name.into())
        .stack_size(VCPU_STACK)
        .spawn(move || body(&tm));
    match t {
        Ok(t) => Some(t),
        Err(err) => {
            m.finish(Err(Error::Thread {
                vcpu: u32::MAX,
                err,
            }));
            None
        }
    }
}

/// Appends one line per vCPU (the first 16) that `describe` describes,
/// for a timeout report.
fn describe_vcpus(m: &Machine, what: &mut String, describe: impl Fn(&Vcpu) -> Option<String>) {
    for line in m.vcpus.iter().take(16).filter_map(describe) {
        what.push_str("\n  ");
        what.push_str(&line);
    }
}
