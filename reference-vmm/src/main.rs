//! Reference VMM: runs guests on KVM with the Hyper-V enlightenments served
//! in userspace.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use hv_enlightenments::accel::IrqchipMode;
use reference_vmm::platform::console::Console;
use reference_vmm::scenario::{self, RunOptions, Scenario};
use reference_vmm::vm::FlushMethod;
use reference_vmm::vm::{ExternalConfig, GuestExit, Vm};
use reference_vmm::{bench, demo, probe};

#[derive(Parser)]
#[command(
    version,
    about = "Reference VMM on KVM with userspace Hyper-V enlightenments"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Irqchip {
    /// Local APIC in the VMM (userspace).
    User,
    /// KVM's in-kernel local APIC.
    Kernel,
}

#[derive(Clone, Copy, ValueEnum)]
enum Flush {
    /// Reset the vCPU's MMU context (IA32_EFER.NXE toggled and restored).
    MmuReset,
    /// Leave guest mode only (no flush): for experiments.
    KickOnly,
}

#[derive(Subcommand)]
enum Command {
    /// Run every scenario with the enlightenments off and on and print one
    /// side-by-side table.
    Demo {
        /// Number of vCPUs.
        #[arg(long, default_value_t = 8, value_parser = vcpu_count())]
        vcpus: u32,
        /// Also write every figure as JSON to this file.
        #[arg(long)]
        metrics_json: Option<PathBuf>,
        /// Bound on each scenario run, in seconds.
        #[arg(long, default_value_t = 120, value_parser = at_least_one::<u64>)]
        timeout: u64,
        /// Where the local APICs live.
        #[arg(long, value_enum, default_value_t = Irqchip::User)]
        irqchip: Irqchip,
    },
    /// Run one scenario and print its counters.
    Run {
        /// Scenario name (see `reference-vmm list`).
        scenario: String,
        /// Number of vCPUs.
        #[arg(long, default_value_t = 2, value_parser = vcpu_count())]
        vcpus: u32,
        /// How the VMM flushes a vCPU's TLB.
        #[arg(long, value_enum, default_value_t = Flush::MmuReset)]
        flush: Flush,
        /// Also write the counters as JSON to this file.
        #[arg(long)]
        metrics_json: Option<PathBuf>,
        /// Bound on the run, in seconds.
        #[arg(long, default_value_t = 120, value_parser = at_least_one::<u64>)]
        timeout: u64,
        /// Where the local APICs live.
        #[arg(long, value_enum, default_value_t = Irqchip::User)]
        irqchip: Irqchip,
        /// User irqchip: poll for up to this many nanoseconds before a
        /// halted vCPU sleeps, adapting per vCPU as KVM's halt polling
        /// does (0: never poll). KVM's default.
        #[arg(long, default_value_t = 200_000)]
        halt_poll_ns: u64,
    },
    /// Benchmark every operation with the enlightenments off and on, user
    /// and kernel irqchip, interleaved and repeated; write a markdown
    /// table, JSON and a scaling plot.
    Bench {
        /// Operations (pingpong, broadcast, shootdown, timer,
        /// synthetic-eoi, synic, stimer, null-hypercall, ex64); all when
        /// not given.
        #[arg(long = "scenario", value_name = "NAME", num_args = 1..)]
        scenarios: Vec<String>,
        /// vCPU counts for every operation, comma-separated (each
        /// operation's defaults when not given: 1,2,8,64,256,1024 for
        /// broadcast and shootdown).
        #[arg(long, value_delimiter = ',', value_parser = vcpu_count())]
        vcpus: Option<Vec<u32>>,
        /// Irqchip modes, comma-separated.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Irqchip::User, Irqchip::Kernel])]
        irqchip: Vec<Irqchip>,
        /// Repetitions of every run.
        #[arg(long, default_value_t = 5, value_parser = at_least_one::<u32>)]
        reps: u32,
        /// Operations per run, for every scenario.
        #[arg(long, value_parser = at_least_one::<u64>)]
        ops: Option<u64>,
        /// A tenth of the operations per run (for tests).
        #[arg(long)]
        quick: bool,
        /// Directory for bench.md, bench.json and scaling.svg.
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Also write the JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Bound on each run, in seconds (the largest default run takes
        /// about 10 s on a 2-core host).
        #[arg(long, default_value_t = 60, value_parser = at_least_one::<u64>)]
        timeout: u64,
    },
    /// List the scenarios.
    List,
    /// Print the Hyper-V CPUID leaves the guest gets.
    Cpuid {
        /// Number of vCPUs.
        #[arg(long, default_value_t = 1, value_parser = vcpu_count())]
        vcpus: u32,
        /// Irqchip mode the leaves are for.
        #[arg(long, value_enum, default_value_t = Irqchip::User)]
        irqchip: Irqchip,
    },
    /// Print what the host's KVM offers.
    Probe,
    /// Boot an external kernel (multiboot v1, Linux vmlinux through PVH,
    /// or bzImage); its serial output goes to stdout. Exit code: the
    /// guest's isa-debug-exit code (status >> 1), 0 on power off, reset or
    /// `--until` match, 1 with a message on a failure or timeout.
    Boot(BootArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// What `boot` does when the guest resets the machine (port 0xCF9, the
/// keyboard controller's reset line, HV_X64_MSR_RESET).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnReset {
    /// End the run with exit code 0 ("guest stopped: Reset").
    Exit,
    /// Boot again from the same files with fresh RAM, as a cold reset,
    /// within the same `--timeout`; at most 16 times in a row.
    Restart,
    /// End the run with an error (exit code 1).
    Fail,
}

impl From<OnReset> for reference_vmm::vm::OnReset {
    fn from(o: OnReset) -> Self {
        match o {
            OnReset::Exit => Self::Exit,
            OnReset::Restart => Self::Restart,
            OnReset::Fail => Self::Fail,
        }
    }
}

#[derive(clap::Args)]
struct BootArgs {
    /// Kernel image.
    #[arg(long)]
    kernel: PathBuf,
    /// Kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    /// Initial ramdisk (Linux).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Multiboot module: FILE or FILE,STRING (repeatable).
    #[arg(long = "module")]
    modules: Vec<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = vcpu_count())]
    vcpus: u32,
    /// RAM in MiB (1 to 3072: below the 32-bit PCI hole).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=MAX_MEM_MIB))]
    mem: u64,
    /// Where the local APICs live.
    #[arg(long, value_enum, default_value_t = Irqchip::User)]
    irqchip: Irqchip,
    /// Publish and serve the Hyper-V enlightenments.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    hyperv: OnOff,
    /// Bound on the run, in seconds.
    #[arg(long, default_value_t = 300, value_parser = at_least_one::<u64>)]
    timeout: u64,
    /// Stop successfully once the serial console shows this text (at the
    /// end of its line).
    #[arg(long)]
    until: Option<String>,
    /// What a guest reset does.
    #[arg(long, value_enum, default_value_t = OnReset::Exit)]
    on_reset: OnReset,
}

/// Most vCPUs any command accepts: x2APIC IDs and VP indices above are
/// not served (KVM's own limit, checked before a run, is usually lower).
const MAX_VCPUS: u32 = 4096;
/// Most guest RAM `boot` accepts, in MiB.
const MAX_MEM_MIB: u64 = 3072;

/// `--vcpus`: 1 to [`MAX_VCPUS`].
fn vcpu_count() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_VCPUS))
}

/// A count or duration that must be at least 1 (`--timeout`, `--reps`,
/// `--ops`).
fn at_least_one<T: std::str::FromStr + PartialEq + From<u8>>(s: &str) -> Result<T, String> {
    let v: T = s.parse().map_err(|_| format!("{s} is not a number"))?;
    if v == T::from(0) {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// A usage error found after parsing (exit code 2, as clap's own).
fn usage_error(msg: impl std::fmt::Display) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ValueValidation, msg)
        .exit()
}

/// Checks what the parser cannot before anything runs: the vCPU count
/// against KVM's limit, and that every output path can be written.
fn validate(cmd: &Command) {
    let (vcpus, outputs): (Vec<u32>, Vec<&PathBuf>) = match cmd {
        Command::Demo {
            vcpus,
            metrics_json,
            ..
        } => (vec![*vcpus], metrics_json.iter().collect()),
        Command::Run {
            vcpus,
            metrics_json,
            ..
        } => (vec![*vcpus], metrics_json.iter().collect()),
        Command::Bench {
            vcpus, json, out, ..
        } => {
            if let Err(e) = std::fs::create_dir_all(out) {
                usage_error(format!("--out {}: {e}", out.display()));
            }
            let probe = out.join(".write-test");
            if let Err(e) = std::fs::write(&probe, b"") {
                usage_error(format!("--out {}: {e}", out.display()));
            }
            let _ = std::fs::remove_file(probe);
            (vcpus.clone().unwrap_or_default(), json.iter().collect())
        }
        Command::Boot(a) => {
            let modules = a
                .modules
                .iter()
                .map(|m| m.split_once(',').map_or(m.as_str(), |(f, _)| f));
            let inputs = [Some(a.kernel.as_path()), a.initrd.as_deref()]
                .into_iter()
                .flatten()
                .chain(modules.map(std::path::Path::new));
            for f in inputs {
                if let Err(e) = std::fs::File::open(f) {
                    usage_error(format!("{}: {e}", f.display()));
                }
            }
            (vec![a.vcpus], Vec::new())
        }
        Command::Cpuid { .. } | Command::List | Command::Probe => (Vec::new(), Vec::new()),
    };
    if let Some(&most) = vcpus.iter().max() {
        if let Ok(kvm) = kvm_ioctls::Kvm::new() {
            let max = kvm.get_max_vcpus() as u32;
            if most > max {
                usage_error(format!(
                    "--vcpus {most}: this host's KVM allows at most {max}"
                ));
            }
        }
    }
    for p in outputs {
        let open = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p);
        if let Err(e) = open {
            usage_error(format!("{}: {e}", p.display()));
        }
    }
}

fn write_json(path: &PathBuf, v: &impl serde::Serialize) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    std::fs::write(path, s).map_err(|e| format!("{}: {e}", path.display()))
}

impl From<Irqchip> for IrqchipMode {
    fn from(i: Irqchip) -> Self {
        match i {
            Irqchip::User => IrqchipMode::User,
            Irqchip::Kernel => IrqchipMode::Kernel,
        }
    }
}

fn main() -> ExitCode {
    env_logger::init();
    let cli = Cli::parse();
    validate(&cli.command);
    let r = match cli.command {
        Command::Boot(args) => boot(args),
        other => run(other).map(|()| ExitCode::SUCCESS),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn boot(a: BootArgs) -> Result<ExitCode, String> {
    let modules = a
        .modules
        .iter()
        .map(|m| match m.split_once(',') {
            Some((path, string)) => (PathBuf::from(path), string.to_string()),
            None => (PathBuf::from(m), m.clone()),
        })
        .collect();
    let cfg = ExternalConfig {
        vcpus: a.vcpus,
        mem_size: a.mem.saturating_mul(1 << 20),
        irqchip: a.irqchip.into(),
        hyperv: matches!(a.hyperv, OnOff::On),
        kernel: a.kernel,
        cmdline: a.cmdline,
        initrd: a.initrd,
        modules,
        timeout: Duration::from_secs(a.timeout),
        console: Console::new(true),
        until: a.until,
    };
    let r = Vm::boot_external(cfg, a.on_reset.into()).map_err(|e| e.to_string())?;
    let code = match &r.exit {
        GuestExit::DebugExit(status) => {
            eprintln!(
                "guest debug exit: status {status:#x}, code {} ({:?} kernel, {:.1?})",
                status >> 1,
                r.kind,
                r.wall
            );
            // As QEMU's isa-debug-exit: the process exits with status >> 1.
            (status >> 1) as u8
        }
        other => {
            eprintln!(
                "guest stopped: {other:?} ({:?} kernel, {:.1?})",
                r.kind, r.wall
            );
            0
        }
    };
    Ok(ExitCode::from(code))
}

fn run(cmd: Command) -> Result<(), String> {
    match cmd {
        Command::Demo {
            vcpus,
            metrics_json,
            timeout,
            irqchip,
        } => {
            let d = demo::run_with(vcpus, Duration::from_secs(timeout), irqchip.into())
                .map_err(|e| e.to_string())?;
            println!("{}", d.table());
            if let Some(t) = d.kvm_table() {
                println!("{t}");
            }
            let mut ok = true;
            for (claim, got, verdict) in d.verdicts() {
                println!("{} {claim}: {got}", verdict.label());
                ok &= verdict != demo::Verdict::Fail;
            }
            if let Some(p) = metrics_json {
                write_json(&p, &d)?;
            }
            if ok {
                Ok(())
            } else {
                Err("an acceptance figure was missed".into())
            }
        }
        Command::Run {
            scenario: name,
            vcpus,
            flush,
            metrics_json,
            timeout,
            irqchip,
            halt_poll_ns,
        } => {
            let s = Scenario::by_name(&name).ok_or_else(|| format!("unknown scenario {name}"))?;
            let flush = match flush {
                Flush::MmuReset => FlushMethod::MmuReset,
                Flush::KickOnly => FlushMethod::KickOnly,
            };
            let (r, f) = scenario::run(
                s,
                RunOptions {
                    vcpus,
                    timeout: Duration::from_secs(timeout),
                    flush,
                    irqchip: irqchip.into(),
                    halt_poll: Some(Duration::from_nanos(halt_poll_ns)),
                },
            )
            .map_err(|e| e.to_string())?;
            println!(
                "{} ({} irqchip): {} ops in {:?} (run {:?}): {:.2} exits/op ({:.2} by vCPU 0), {:.2} kicks/op, {} wakeups/op, {:.1} us/op",
                f.scenario,
                scenario::irqchip_name(f.irqchip),
                f.ops,
                std::time::Duration::from_nanos((f.ns_per_op * f.ops as f64) as u64),
                r.wall,
                f.exits_per_op,
                f.sender_exits_per_op,
                f.kicks_per_op,
                f.show("wakeups_per_op", f.wakeups_per_op, 2),
                f.ns_per_op / 1000.0
            );
            println!("{}", f.metrics.table(8));
            println!("{}\n", f.profile.table());
            if let Some(k) = &f.kvm {
                println!("{}", k.table(8));
            }
            if let Some(p) = metrics_json {
                write_json(&p, &f)?;
            }
            Ok(())
        }
        Command::Bench {
            scenarios,
            vcpus,
            irqchip,
            reps,
            ops,
            quick,
            out,
            json,
            timeout,
        } => {
            let mut cfg = bench::Config::default_set();
            if !scenarios.is_empty() {
                cfg.ops = scenarios
                    .iter()
                    .map(|n| {
                        bench::Op::by_name(n).ok_or_else(|| {
                            let names: Vec<&str> =
                                bench::Op::ALL.iter().map(|o| o.name()).collect();
                            format!("unknown bench scenario {n} (one of {})", names.join(", "))
                        })
                    })
                    .collect::<Result<_, _>>()?;
            }
            cfg.vcpus = vcpus;
            cfg.irqchips = irqchip.into_iter().map(IrqchipMode::from).collect();
            cfg.reps = reps.max(1);
            cfg.ops_override = ops;
            cfg.quick = quick;
            cfg.timeout = Duration::from_secs(timeout);
            cfg.command = std::env::args()
                .enumerate()
                .map(|(i, a)| {
                    if i == 0 {
                        "reference-vmm".to_string()
                    } else {
                        a
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            let report = bench::run(&cfg);
            report.write(&out, json.as_deref())?;
            for g in &report.goals {
                println!("{} {}: {}", g.verdict(), g.claim, g.measured);
            }
            for p in &report.problems {
                println!("problem: {p}");
            }
            println!(
                "bench: {:.0} s; wrote {}/bench.md, bench.json, scaling.svg",
                report.total_secs,
                out.display()
            );
            if !report.problems.is_empty() {
                Err("some runs failed (see the problems above)".into())
            } else {
                Ok(())
            }
        }
        Command::List => {
            for s in Scenario::ALL {
                println!("{}", s.name());
            }
            println!(
                "{}",
                Scenario::by_name("shootdown-none").map_or("", |s| s.name())
            );
            Ok(())
        }
        Command::Cpuid { vcpus, irqchip } => {
            let mode = IrqchipMode::from(irqchip);
            let apic_hz = reference_vmm::irqchip::apic_timer_hz(mode);
            let r = reference_vmm::kvm::cpuid::report(vcpus, mode, apic_hz);
            print!("{}", r.map_err(|e| e.to_string())?);
            Ok(())
        }
        Command::Boot(args) => boot(args).map(|_| ()),
        Command::Probe => {
            print!("{}", probe::report().map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}
