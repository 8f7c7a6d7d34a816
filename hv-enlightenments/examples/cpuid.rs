//! Prints the Hyper-V CPUID leaves and the policy's decisions.
//!
//! ```sh
//! cargo run -p hv-enlightenments --example cpuid -- --vcpus 8 [--irqchip user|kernel] [--apicv] [--tsc-stable]
//! ```
//!
//! `--apicv` describes a host with APICv enabled; since APICv needs an
//! in-kernel local APIC, it implies `--irqchip kernel` unless `--irqchip`
//! says otherwise.

use std::process::ExitCode;

use hv_enlightenments::accel::{CpuVendor, HostApicAccel, IrqchipMode};
use hv_enlightenments::cpuid::CpuidBuilder;

const USAGE: &str =
    "usage: cpuid --vcpus N [--irqchip user|kernel] [--apicv] [--tsc-stable] [--max-vp-index N]";

struct Args {
    vcpus: u32,
    irqchip: Option<IrqchipMode>,
    apicv: bool,
    tsc_stable: bool,
    max_vp_index: Option<u32>,
}

fn parse(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut args = Args {
        vcpus: 0,
        irqchip: None,
        apicv: false,
        tsc_stable: false,
        max_vp_index: None,
    };
    let mut vcpus = None;
    while let Some(arg) = it.next() {
        let mut number = |name: &str| -> Result<u32, String> {
            let v = it.next().ok_or(format!("{name} needs a value"))?;
            v.parse().map_err(|e| format!("{name} {v}: {e}"))
        };
        match arg.as_str() {
            "--vcpus" => vcpus = Some(number("--vcpus")?),
            "--max-vp-index" => args.max_vp_index = Some(number("--max-vp-index")?),
            "--irqchip" => {
                args.irqchip = Some(match it.next().as_deref() {
                    Some("user") => IrqchipMode::User,
                    Some("kernel") => IrqchipMode::Kernel,
                    other => {
                        return Err(format!("--irqchip: expected user or kernel, got {other:?}"));
                    }
                })
            }
            "--apicv" => args.apicv = true,
            "--tsc-stable" => args.tsc_stable = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    args.vcpus = vcpus.ok_or("--vcpus is required")?;
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            // `--help` asks for the usage: print it on stdout, succeed.
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e}");
            eprintln!("{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    let host = if args.apicv {
        HostApicAccel {
            vendor: CpuVendor::Intel,
            apicv: Some(true),
            ipiv: Some(true),
            ..HostApicAccel::NONE
        }
    } else {
        HostApicAccel::NONE
    };
    let irqchip = args.irqchip.unwrap_or(if args.apicv {
        IrqchipMode::Kernel
    } else {
        IrqchipMode::User
    });
    let mut builder = CpuidBuilder::new(args.vcpus)
        .host(host)
        .irqchip(irqchip)
        .tsc_stable(args.tsc_stable);
    if let Some(max) = args.max_vp_index {
        builder = builder.max_vp_index(max);
    }
    let plan = match builder.build() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let irqchip_name = match irqchip {
        IrqchipMode::User => "user",
        IrqchipMode::Kernel => "kernel",
    };
    println!(
        "# {} vCPUs, irqchip {irqchip_name}, host APICv {}, TSC {}",
        args.vcpus,
        if args.apicv { "on" } else { "off" },
        if args.tsc_stable {
            "stable"
        } else {
            "not stable"
        },
    );
    println!("\n## Leaves\n{}", plan.cpuid);
    println!("## Decisions\n{}", plan.decisions);
    ExitCode::SUCCESS
}
