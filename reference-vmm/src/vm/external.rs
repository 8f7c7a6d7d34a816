//! A VM for external guests: a kernel image loaded from a file (multiboot
//! v1, Linux `vmlinux` through its PVH entry, or a bzImage) on the PC
//! platform devices (IOAPIC, COM1, fw_cfg, exit and power ports, ACPI
//! tables), with the same KVM, CPUID, MSR-filter and Hyper-V setup as the
//! built-in guests.
//!
//! The boot vCPU starts where the loader says; the others wait for INIT
//! and STARTUP IPIs (in the userspace-irqchip mode the VMM runs that
//! protocol, see [`crate::irqchip::user::mp`]; in the kernel mode KVM does). The run ends
//! when the guest stops the machine (isa-debug-exit, ACPI power off,
//! reset), when the console shows an awaited text, when a vCPU fails (an
//! instruction KVM cannot emulate is named with its bytes), or at the
//! timeout.
//!
//! ```no_run
//! use std::time::Duration;
//! use hv_enlightenments::accel::IrqchipMode;
//! use reference_vmm::platform::console::Console;
//! use reference_vmm::vm::{ExternalConfig, GuestExit, Vm};
//!
//! let vm = Vm::new_external(ExternalConfig {
//!     vcpus: 2,
//!     mem_size: 256 << 20,
//!     irqchip: IrqchipMode::User,
//!     hyperv: true,
//!     kernel: "kernel.elf".into(),
//!     cmdline: "console=ttyS0".into(),
//!     initrd: None,
//!     modules: Vec::new(),
//!     timeout: Duration::from_secs(60),
//!     console: Console::new(true),
//!     until: None,
//! })?;
//! let report = vm.boot()?;
//! if let GuestExit::DebugExit(status) = report.exit {
//!     println!("guest exit code {}", status >> 1);
//! }
//! # Ok::<(), reference_vmm::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use hv_enlightenments::accel::IrqchipMode;
use vm_device::device_manager::IoManager;

use crate::error::Error;
use crate::irqchip::ApStart;
use crate::kvm::vcpu::{KvmVcpu, kvm_err};
use crate::loader::{self, KernelKind, LoadOptions};
use crate::metrics::VmMetrics;
use crate::platform::console::Console;
use crate::platform::lines::{StopReason, VmStop};
use crate::platform::msi::MsiSink;
use crate::platform::{Platform, PlatformConfig};
use crate::vm::{Common, FlushMethod, GuestExit, Machine, MachineOptions, Vm, VmConfig};

/// What a guest reset (port 0xCF9, the keyboard controller's reset line,
/// HV_X64_MSR_RESET) does in [`Vm::boot_external`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnReset {
    /// The run ends with [`GuestExit::Reset`].
    Exit,
    /// The VM is built again from the same files (fresh RAM: a cold
    /// reset) and booted within what is left of the timeout, at most
    /// [`MAX_RESTARTS`] times in a row.
    Restart,
    /// The run ends with [`Error::GuestReset`].
    Fail,
}

/// Restarts [`OnReset::Restart`] allows before it gives up.
pub const MAX_RESTARTS: u32 = 16;

/// Most RAM an external guest gets: one region at 0 below the 32-bit
/// MMIO hole (IOAPIC at 0xFEC00000, local APIC at 0xFEE00000).
pub const MAX_MEM: u64 = 3 << 30;
/// How often an `until` watcher re-checks whether the run ended.
const UNTIL_SLICE: Duration = Duration::from_millis(100);

/// How an external guest is booted.
#[derive(Debug, Clone)]
pub struct ExternalConfig {
    /// Number of vCPUs (vCPU 0 boots, the others wait for INIT/SIPI).
    pub vcpus: u32,
    /// RAM in bytes (at GPA 0, at most [`MAX_MEM`]).
    pub mem_size: u64,
    /// Where the local APICs live.
    pub irqchip: IrqchipMode,
    /// Publish and serve the Hyper-V enlightenments.
    pub hyperv: bool,
    /// The kernel image.
    pub kernel: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Initial ramdisk (Linux).
    pub initrd: Option<PathBuf>,
    /// Multiboot modules and their strings.
    pub modules: Vec<(PathBuf, String)>,
    /// Bound on the whole run.
    pub timeout: Duration,
    /// Where COM1 output goes (and is kept).
    pub console: Console,
    /// Stop successfully once the console shows this text.
    pub until: Option<String>,
}

/// What a boot produced.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// How the guest stopped.
    pub exit: GuestExit,
    /// The format the kernel was loaded as.
    pub kind: KernelKind,
    /// Wall time of the run.
    pub wall: Duration,
    /// Counters of the run.
    pub metrics: VmMetrics,
}

/// The parts of a [`Vm`] only external guests have.
pub(crate) struct External {
    platform: Platform,
    kind: KernelKind,
    until: Option<String>,
}

/// The devices' way back into the machine: MSIs to the local APICs, stop
/// requests to the run. Set once the machine exists (the devices must be
/// on its buses before).
#[derive(Default)]
struct MachineLink(OnceLock<Weak<Machine>>);

impl MachineLink {
    fn machine(&self) -> Option<Arc<Machine>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

impl MsiSink for MachineLink {
    fn send_msi(&self, address: u64, data: u32) {
        if let Some(m) = self.machine() {
            m.deliver_msi(address, data);
        }
    }
}

impl VmStop for MachineLink {
    fn stop(&self, reason: StopReason) {
        if let Some(m) = self.machine() {
            m.guest_stopped(match reason {
                StopReason::DebugExit(status) => GuestExit::DebugExit(status),
                StopReason::PowerOff => GuestExit::PowerOff,
                StopReason::Reset => GuestExit::Reset,
            });
        }
    }
}

/// Whether the console's line holding `text` has ended (so that a caller
/// who stops at `text` sees that whole line); waits a little for it.
fn line_complete(console: &Console, text: &str) -> bool {
    for _ in 0..(UNTIL_SLICE.as_millis() / 10) {
        let c = console.contents();
        if c.find(text).is_some_and(|at| c[at..].contains('\n')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| Error::File {
        what,
        path: path.to_path_buf(),
        err,
    })
}

impl Vm {
    /// Creates a VM for an external kernel: RAM, platform devices, ACPI
    /// tables, the kernel and its boot structures, the boot vCPU at the
    /// kernel's entry and the others waiting for INIT/SIPI.
    pub fn new_external(cfg: ExternalConfig) -> Result<Self, Error> {
        if cfg.mem_size > MAX_MEM {
            return Err(Error::Memory(format!(
                "{} MiB of RAM requested, at most {} MiB fit below the 32-bit MMIO hole",
                cfg.mem_size >> 20,
                MAX_MEM >> 20
            )));
        }
        let kernel = read_file("kernel", &cfg.kernel)?;
        // Detect before any KVM work: a file that is no kernel is the
        // most likely mistake and deserves the plainest error.
        loader::detect(&kernel)?;
        let initrd = match &cfg.initrd {
            Some(p) => Some(read_file("initrd", p)?),
            None => None,
        };
        let mut modules = Vec::with_capacity(cfg.modules.len());
        for (p, s) in &cfg.modules {
            modules.push((read_file("module", p)?, s.clone()));
        }

        let mut c = Common::open(cfg.vcpus, cfg.hyperv, cfg.mem_size, cfg.irqchip)?;
        let link = Arc::new(MachineLink::default());
        let platform = Platform::new(PlatformConfig {
            vcpus: cfg.vcpus,
            ram_size: cfg.mem_size,
            msi: link.clone(),
            stop: link.clone(),
            console: cfg.console.clone(),
        });
        let mut io = IoManager::new();
        platform.register(&mut io)?;
        let rsdp = platform.write_acpi(&c.mem)?;
        let setup = loader::load(
            &c.mem,
            &kernel,
            &LoadOptions {
                cmdline: cfg.cmdline.clone(),
                initrd,
                modules,
                rsdp: Some(rsdp),
                ram_size: cfg.mem_size,
            },
        )?;

        let mut vcpu_fds = Vec::with_capacity(cfg.vcpus as usize);
        for i in 0..cfg.vcpus {
            let vfd = c.create_vcpu(i)?;
            if i == 0 {
                let base = vfd.get_sregs().map_err(kvm_err(i, "KVM_GET_SREGS"))?;
                vfd.set_sregs(&setup.entry.sregs(&base))
                    .map_err(kvm_err(i, "KVM_SET_SREGS"))?;
                vfd.set_regs(&setup.entry.regs())
                    .map_err(kvm_err(i, "KVM_SET_REGS"))?;
            }
            vcpu_fds.push(KvmVcpu::new(vfd, i, c.sync_regs));
        }
        let ioapic = platform.ioapic().clone();
        let eoi_ioapic = ioapic.clone();
        let machine = c.machine(MachineOptions {
            flush: FlushMethod::MmuReset,
            io,
            external: true,
            ap_start: ApStart::WaitForSipi,
            eoi_hook: Some(Box::new(move |vector| eoi_ioapic.end_of_interrupt(vector))),
        })?;
        if let Some(listener) = machine.irqchip.route_listener() {
            ioapic.set_route_listener(listener);
        }
        Common::start_vcpus(&machine, &vcpu_fds)?;
        // Cannot fail: the link was created above and set nowhere else.
        let _ = link.0.set(Arc::downgrade(&machine));
        Ok(Self {
            config: VmConfig {
                vcpus: cfg.vcpus,
                hyperv: cfg.hyperv,
                timeout: cfg.timeout,
                flush: FlushMethod::MmuReset,
                irqchip: cfg.irqchip,
            },
            _kvm: c.kvm,
            _fd: c.fd,
            vcpu_fds,
            machine,
            entry: setup.entry.rip,
            external: Some(Box::new(External {
                platform,
                kind: setup.kind,
                until: cfg.until,
            })),
        })
    }

    /// Builds and boots an external guest as [`Vm::new_external`] and
    /// [`Vm::boot`] do, with a guest reset handled as `on_reset` says.
    pub fn boot_external(cfg: ExternalConfig, on_reset: OnReset) -> Result<BootReport, Error> {
        let start = std::time::Instant::now();
        let mut restarts = 0;
        loop {
            // A restart gets what is left of the timeout.
            let timeout = if restarts == 0 {
                cfg.timeout
            } else {
                cfg.timeout
                    .saturating_sub(start.elapsed())
                    .max(Duration::from_millis(1))
            };
            let r = Vm::new_external(ExternalConfig {
                timeout,
                ..cfg.clone()
            })?
            .boot()?;
            match (r.exit == GuestExit::Reset, on_reset) {
                (true, OnReset::Fail) => return Err(Error::GuestReset { restarts }),
                (true, OnReset::Restart) if restarts < MAX_RESTARTS => {
                    restarts += 1;
                    log::info!("guest reset: restarting ({restarts} of at most {MAX_RESTARTS})");
                }
                (true, OnReset::Restart) => return Err(Error::GuestReset { restarts }),
                _ => return Ok(r),
            }
        }
    }

    /// Runs an external guest until it stops the machine, the console
    /// shows the awaited text, a vCPU fails or the timeout expires.
    pub fn boot(mut self) -> Result<BootReport, Error> {
        let Some(ext) = self.external.take() else {
            return Err(Error::Usage("Vm::boot needs a VM made by Vm::new_external"));
        };
        let m = Arc::clone(&self.machine);
        let watcher = match ext.until.clone() {
            Some(text) => {
                let console = ext.platform.console().clone();
                let wm = Arc::clone(&m);
                let t = std::thread::Builder::new()
                    .name("console-until".into())
                    .spawn(move || {
                        while !wm.stopping() {
                            if console.wait_for(&text, UNTIL_SLICE)
                                && line_complete(&console, &text)
                            {
                                wm.guest_stopped(GuestExit::ConsoleMatched(text));
                                break;
                            }
                        }
                    })
                    .map_err(|err| Error::Thread {
                        vcpu: u32::MAX,
                        err,
                    })?;
                Some(t)
            }
            None => None,
        };
        let (result, wall) =
            self.run_threads("the guest to stop the machine (debug exit, power off, reset)");
        if let Some(t) = watcher {
            let _ = t.join();
        }
        result?;
        let exit = m
            .guest_exit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(Error::Usage("the run ended without a stop reason"))?;
        Ok(BootReport {
            exit,
            kind: ext.kind,
            wall,
            metrics: m.metrics(),
        })
    }

    /// The platform devices of an external guest (its console, IOAPIC...).
    pub fn platform(&self) -> Option<&Platform> {
        self.external.as_ref().map(|e| &e.platform)
    }
}
