//! The `boot` command as a user runs it: serial output on stdout, the
//! guest's debug-exit code as the process exit code, clear errors with a
//! non-zero code for files that are no kernel and for timeouts.

use std::path::PathBuf;
use std::process::{Command, Output};

use hv_tests::kvm_available;
use hv_tests::mbkernel::{self, Apic, Flavor, Target};

fn kernel(test: &str, flavor: Flavor) -> PathBuf {
    let image = mbkernel::build(flavor).unwrap_or_else(|e| panic!("{e}"));
    let p = std::env::temp_dir().join(format!("boot-cli-{}-{test}.elf", std::process::id()));
    std::fs::write(&p, image).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

fn boot(kernel: &PathBuf, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
        .arg("boot")
        .arg("--kernel")
        .arg(kernel)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running reference-vmm: {e}"));
    let _ = std::fs::remove_file(kernel);
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn exit_code_is_the_guests_debug_exit_code() {
    let test = "exit_code_is_the_guests_debug_exit_code";
    if !kvm_available(test) {
        return;
    }
    let k = kernel(
        test,
        Flavor::Smp {
            apic: Apic::X2apic,
            target: Target::AllButSelf,
            exit_code: 42,
        },
    );
    let out = boot(&k, &["--vcpus", "2", "--mem", "32", "--cmdline", "one two"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(42), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("mbkernel: ok cpus=2 started=1 mem_upper=31744 cmdline=one two"),
        "{stdout}"
    );
}

#[test]
fn kernel_irqchip_and_success() {
    let test = "kernel_irqchip_and_success";
    if !kvm_available(test) {
        return;
    }
    let k = kernel(
        test,
        Flavor::Smp {
            apic: Apic::Xapic,
            target: Target::EachApicId,
            exit_code: 0,
        },
    );
    let out = boot(
        &k,
        &["--vcpus", "4", "--irqchip", "kernel", "--hyperv", "off"],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("cpus=4 started=3"), "{stdout}");
}

#[test]
fn until_stops_once_the_console_shows_the_text() {
    let test = "until_stops_once_the_console_shows_the_text";
    if !kvm_available(test) {
        return;
    }
    let k = kernel(test, Flavor::Hang);
    let out = boot(&k, &["--until", mbkernel::BOOT_LINE, "--timeout", "60"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("ConsoleMatched"), "{stderr}");
    assert!(text(&out.stdout).contains(mbkernel::BOOT_LINE));
}

#[test]
fn timeout_is_an_error() {
    let test = "timeout_is_an_error";
    if !kvm_available(test) {
        return;
    }
    let k = kernel(test, Flavor::Hang);
    let out = boot(&k, &["--timeout", "1", "--vcpus", "2"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: timed out after 1s"), "{stderr}");
    assert!(stderr.contains("vCPU 0: Halted"), "{stderr}");
}

#[test]
fn a_file_that_is_no_kernel_is_an_error() {
    let test = "a_file_that_is_no_kernel_is_an_error";
    let p = std::env::temp_dir().join(format!("boot-cli-{}-{test}.bin", std::process::id()));
    std::fs::write(&p, b"#!/bin/sh\necho not a kernel\n").unwrap_or_else(|e| panic!("{e}"));
    let out = boot(&p, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: loading the kernel: unknown kernel format"),
        "{stderr}"
    );
}

/// Every argument is checked before anything runs: a one-line error and
/// exit code 2, as for any other usage error, and nothing started.
#[test]
fn bad_arguments_are_usage_errors() {
    let missing = std::env::temp_dir().join(format!("boot-cli-{}-missing.elf", std::process::id()));
    let unwritable = "/proc/version/x.json";
    let cases: Vec<Vec<String>> = [
        vec!["demo", "--vcpus", "0"],
        vec!["demo", "--vcpus", "5000"],
        vec!["run", "pingpong-pv", "--timeout", "0"],
        vec!["bench", "--reps", "0"],
        vec!["bench", "--ops", "0"],
        vec!["demo", "--metrics-json", unwritable],
        vec!["boot", "--kernel", "/dev/null", "--mem", "0"],
        vec!["boot", "--kernel", "/dev/null", "--mem", "4096"],
    ]
    .into_iter()
    .map(|v| v.into_iter().map(String::from).collect())
    .chain([vec![
        "boot".to_string(),
        "--kernel".to_string(),
        missing.display().to_string(),
    ]])
    .collect();
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
            .args(&args)
            .output()
            .unwrap_or_else(|e| panic!("running reference-vmm: {e}"));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} ran: {}", text(&out.stdout));
    }
}

/// A demo on one vCPU cannot test the broadcast and shootdown claims: it
/// says SKIPPED with the reason, never FAIL or "0 of 0", and succeeds.
#[test]
fn demo_on_one_vcpu_skips_what_it_cannot_test() {
    let test = "demo_on_one_vcpu_skips_what_it_cannot_test";
    if !kvm_available(test) {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_reference-vmm"))
        .args(["demo", "--vcpus", "1"])
        .output()
        .unwrap_or_else(|e| panic!("running reference-vmm: {e}"));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    let verdicts: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("PASS") || l.starts_with("FAIL") || l.starts_with("SKIPPED"))
        .collect();
    assert_eq!(verdicts.len(), 4, "{stdout}");
    assert!(verdicts[0].starts_with("SKIPPED broadcast"), "{stdout}");
    assert!(verdicts[1].starts_with("PASS lazy EOI"), "{stdout}");
    assert!(
        verdicts[2].starts_with("SKIPPED PV TLB shootdown"),
        "{stdout}"
    );
    assert!(
        verdicts[3].starts_with("PASS the APICv/AVIC inhibit (model) follows AutoEOI use"),
        "{stdout}"
    );
    assert!(!stdout.contains("0 of 0"), "{stdout}");
}

/// `--on-reset`: a guest that resets through port 0xCF9 ends the run
/// (exit), is booted again from the same files (restart, bounded), or
/// fails the run (fail).
#[test]
fn on_reset_exit_restart_or_fail() {
    let test = "on_reset_exit_restart_or_fail";
    if !kvm_available(test) {
        return;
    }
    let boots = |out: &Output| text(&out.stdout).matches(mbkernel::BOOT_LINE).count();

    let out = boot(&kernel(test, Flavor::Reset), &["--mem", "16"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(boots(&out), 1);

    let out = boot(
        &kernel(test, Flavor::Reset),
        &["--mem", "16", "--on-reset", "restart"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(boots(&out), 17, "the first boot and 16 restarts");
    assert!(
        stderr.contains("the guest reset the machine (after 16 restarts)"),
        "{stderr}"
    );

    let out = boot(
        &kernel(test, Flavor::Reset),
        &["--mem", "16", "--on-reset", "fail"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the guest reset the machine (after 0 restarts)"),
        "{stderr}"
    );
}
