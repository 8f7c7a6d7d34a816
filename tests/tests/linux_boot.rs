//! A real Linux guest: Debian's cloud kernel (`scripts/fetch-guest-kernel`)
//! booted through its PVH entry with 2 vCPUs must detect Hyper-V, print
//! exactly the privileges, hints and misc features the VMM published to it,
//! and take its APIC timer period from HV_X64_MSR_APIC_FREQUENCY and its TSC
//! frequency from HV_X64_MSR_TSC_FREQUENCY.
//!
//! Where KVM emulates guest CPL0 (see PLATFORM.md) the kernel gets that far
//! in tens of seconds and later dies on an instruction the emulator lacks;
//! the run therefore stops as soon as the lines are seen, and a guest that
//! dies first fails the test with the console tail and the vCPU error.

use std::path::Path;
use std::time::{Duration, Instant};

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::{guest_kernel, kvm_available};
use reference_vmm::platform::console::Console;
use reference_vmm::vm::{ExternalConfig, GuestExit, Vm};

const VCPUS: u32 = 2;
const MEM: u64 = 512 << 20;
const TIMEOUT: Duration = Duration::from_secs(150);
/// The early serial console, no KASLR (nothing to randomise for), no
/// mitigations patching; ACPI stays on so that the MADT is used.
const CMDLINE: &str =
    "console=ttyS0 earlyprintk=serial,ttyS0,115200 nokaslr mitigations=off panic=-1";
const DETECTED: &str = "Hypervisor detected: Microsoft Hyper-V";
const PRIVILEGES: &str = "Hyper-V: privilege flags low ";
/// Printed by `ms_hyperv_init_platform` right after reading
/// HV_X64_MSR_APIC_FREQUENCY: the frequency divided by HZ, in hex.
const LAPIC_FREQUENCY: &str = "Hyper-V: LAPIC Timer Frequency: 0x";
/// The end of `tsc_early_init`'s `tsc: Detected %lu.%03lu MHz processor`,
/// printed soon after the Hyper-V lines.
const TSC_DETECTED: &str = "MHz processor";

/// `CONFIG_HZ` of the fetched kernel, from the `config-*` file
/// `scripts/fetch-guest-kernel` caches beside the vmlinux.
fn kernel_hz(vmlinux: &Path) -> u64 {
    let name = vmlinux
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinux-"))
        .unwrap_or_else(|| panic!("unexpected vmlinux name {}", vmlinux.display()));
    let config = vmlinux.with_file_name(format!("config-{name}"));
    let text =
        std::fs::read_to_string(&config).unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no CONFIG_HZ in {}", config.display()))
}

/// The four values of Linux's
/// `Hyper-V: privilege flags low 0x%x, high 0x%x, hints 0x%x, misc 0x%x`.
fn parse_privileges(console: &str) -> Option<[u32; 4]> {
    let line = console.lines().find_map(|l| {
        let at = l.find(PRIVILEGES)?;
        Some(&l[at + PRIVILEGES.len()..])
    })?;
    let mut out = [0u32; 4];
    let mut it = line.split(", ");
    for (i, name) in ["", "high ", "hints ", "misc "].iter().enumerate() {
        let v = it.next()?.trim().strip_prefix(name)?.strip_prefix("0x")?;
        out[i] = u32::from_str_radix(v, 16).ok()?;
    }
    Some(out)
}

/// The value of Linux's `Hyper-V: LAPIC Timer Frequency: %#x` line.
fn parse_lapic_period(console: &str) -> Option<u64> {
    console.lines().find_map(|l| {
        let at = l.find(LAPIC_FREQUENCY)?;
        u64::from_str_radix(l[at + LAPIC_FREQUENCY.len()..].trim(), 16).ok()
    })
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn boot_linux(test: &str, irqchip: IrqchipMode) {
    if !kvm_available(test) {
        return;
    }
    let Some(kernel) = guest_kernel(test) else {
        return;
    };
    let console = Console::default();
    let start = Instant::now();
    // When the first line appears (for the timings printed below).
    let first = {
        let c = console.clone();
        std::thread::spawn(move || {
            c.wait_for("Linux version", TIMEOUT)
                .then(|| start.elapsed())
        })
    };
    let vm = Vm::new_external(ExternalConfig {
        vcpus: VCPUS,
        mem_size: MEM,
        irqchip,
        hyperv: true,
        kernel: kernel.clone(),
        cmdline: CMDLINE.into(),
        initrd: None,
        modules: Vec::new(),
        timeout: TIMEOUT,
        console: console.clone(),
        // Printed after the Hyper-V lines.
        until: Some(TSC_DETECTED.into()),
    })
    .unwrap_or_else(|e| panic!("{test}: VM creation failed: {e}"));
    // What the vCPUs were given, not a recomputation.
    let plan = *vm
        .cpuid_plan()
        .unwrap_or_else(|| panic!("{test}: Hyper-V is on but no plan was published"));
    let r = vm.boot();
    let text = console.contents();
    let report = r.unwrap_or_else(|e| {
        panic!(
            "{test}: the guest stopped before printing the Hyper-V lines: {e}\nconsole tail:\n{}",
            tail(&text, 30)
        )
    });
    let hv_lines = start.elapsed();
    eprintln!(
        "{test}: first console line after {:?}, Hyper-V lines after {hv_lines:?}",
        first.join().ok().flatten()
    );
    assert!(
        matches!(report.exit, GuestExit::ConsoleMatched(_)),
        "{:?}\nconsole tail:\n{}",
        report.exit,
        tail(&text, 30)
    );
    assert!(text.contains(DETECTED), "{}", tail(&text, 30));
    let seen = parse_privileges(&text)
        .unwrap_or_else(|| panic!("unparsable privilege line:\n{}", tail(&text, 30)));

    let leaf = |f: u32| {
        plan.cpuid
            .entries()
            .iter()
            .find(|l| l.function == f)
            .copied()
            .unwrap_or_else(|| panic!("the plan has no leaf {f:#x}"))
    };
    let (features, hints) = (leaf(0x4000_0003), leaf(0x4000_0004));
    let published = [features.eax, features.ebx, hints.eax, features.edx];
    assert_eq!(
        seen, published,
        "Linux saw [low, high, hints, misc] = {seen:#x?}, the VMM published {published:#x?}"
    );

    // Linux registers the Hyper-V clocksource the published time source
    // gives (hv_init_clocksource): the reference TSC page where it is
    // published, else TIME_REF_COUNT (an MSR read per clock read).
    let page = features.eax & (1 << 9) != 0;
    let clocksource = if page {
        "clocksource: hyperv_clocksource_tsc_page"
    } else {
        "clocksource: hyperv_clocksource_msr"
    };
    assert!(
        text.contains(clocksource),
        "{test}: no `{clocksource}` line:\n{}",
        tail(&text, 30)
    );
    eprintln!("{test}: Linux registered {clocksource:?}");

    let f = plan
        .frequencies
        .unwrap_or_else(|| panic!("{test}: no frequency MSRs published"));
    assert_eq!(f.apic_hz, reference_vmm::irqchip::apic_timer_hz(irqchip));
    let period = parse_lapic_period(&text)
        .unwrap_or_else(|| panic!("no LAPIC timer frequency line:\n{}", tail(&text, 30)));
    eprintln!(
        "{test}: TSC {} Hz, APIC {} Hz published; Linux's APIC timer period {period:#x}",
        f.tsc_hz, f.apic_hz
    );
    assert_eq!(
        period,
        f.apic_hz / kernel_hz(&kernel),
        "Linux's APIC timer period must be HV_X64_MSR_APIC_FREQUENCY / HZ"
    );
    // hv_get_tsc_khz(): HV_X64_MSR_TSC_FREQUENCY / 1000, no calibration.
    let khz = f.tsc_hz / 1000;
    let detected = format!(
        "tsc: Detected {}.{:03} MHz processor",
        khz / 1000,
        khz % 1000
    );
    assert!(
        text.contains(&detected),
        "expected {detected:?}:\n{}",
        tail(&text, 30)
    );
}

#[test]
fn parses_the_privilege_line() {
    let c = "[    0.000000] Hyper-V: privilege flags low 0x2e7f, high 0x3b8030, hints 0x64e24, misc 0xbed7b2\n";
    assert_eq!(
        parse_privileges(c),
        Some([0x2e7f, 0x3b8030, 0x64e24, 0xbed7b2])
    );
    assert_eq!(parse_privileges("Hyper-V: privilege flags low 0x1\n"), None);
    assert_eq!(
        parse_lapic_period("[    0.000000] Hyper-V: LAPIC Timer Frequency: 0x3d0900\n"),
        Some(0x3d0900)
    );
    assert_eq!(
        parse_lapic_period("Hyper-V: LAPIC Timer Frequency: \n"),
        None
    );
}

#[test]
fn linux_sees_the_published_hyperv_leaves_user_irqchip() {
    boot_linux(
        "linux_sees_the_published_hyperv_leaves_user_irqchip",
        IrqchipMode::User,
    );
}

#[test]
fn linux_sees_the_published_hyperv_leaves_kernel_irqchip() {
    boot_linux(
        "linux_sees_the_published_hyperv_leaves_kernel_irqchip",
        IrqchipMode::Kernel,
    );
}

/// The same kernel as shipped (a bzImage) is accepted and runs: its 64-bit
/// entry is reached and the guest executes. Where CPL0 is emulated the
/// decompressor prints nothing for minutes, so only "no error other than
/// the timeout" is required here.
#[test]
fn bzimage_is_loaded_and_runs() {
    let test = "bzimage_is_loaded_and_runs";
    if !kvm_available(test) {
        return;
    }
    let Some(vmlinux) = guest_kernel(test) else {
        return;
    };
    let name = vmlinux
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .replacen("vmlinux-", "vmlinuz-", 1);
    let bzimage = vmlinux.with_file_name(name);
    let bytes = std::fs::read(&bzimage).unwrap_or_else(|e| panic!("{}: {e}", bzimage.display()));
    assert_eq!(
        reference_vmm::loader::detect(&bytes).ok(),
        Some(reference_vmm::loader::KernelKind::LinuxBzImage)
    );
    let console = Console::default();
    let r = Vm::new_external(ExternalConfig {
        vcpus: 1,
        mem_size: MEM,
        irqchip: IrqchipMode::User,
        hyperv: true,
        kernel: bzimage,
        cmdline: CMDLINE.into(),
        initrd: None,
        modules: Vec::new(),
        timeout: Duration::from_secs(5),
        console: console.clone(),
        until: Some("Linux version".into()),
    })
    .unwrap_or_else(|e| panic!("the bzImage was refused: {e}"))
    .boot();
    match r {
        Ok(report) => assert!(matches!(report.exit, GuestExit::ConsoleMatched(_))),
        Err(e @ reference_vmm::Error::Timeout { .. }) => {
            let msg = e.to_string();
            // Executing (in or between exits), not halted.
            assert!(!msg.contains("vCPU 0: Halted"), "still executing: {msg}");
        }
        Err(e) => panic!("{e}\nconsole:\n{}", console.contents()),
    }
}
