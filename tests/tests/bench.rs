//! A quick `bench` on real KVM: every operation on 2 and 4 vCPUs, two
//! repetitions; the markdown, JSON and PNG are written and the counts
//! that do not depend on the host's speed are what the mechanisms promise.

use std::time::Duration;

use hv_enlightenments::accel::IrqchipMode;
use hv_tests::kvm_available;
use reference_vmm::bench::{self, Config, Op};

fn quick(irqchips: Vec<IrqchipMode>) -> Config {
    Config {
        ops: Op::ALL.to_vec(),
        vcpus: Some(vec![2, 4]),
        irqchips,
        reps: 2,
        ops_override: None,
        quick: true,
        timeout: Duration::from_secs(120),
        command: "reference-vmm bench --quick --reps 2 --vcpus 2,4".into(),
    }
}

#[test]
fn quick_bench_writes_consistent_results() {
    if !kvm_available("quick_bench_writes_consistent_results") {
        return;
    }
    let cfg = quick(vec![IrqchipMode::User, IrqchipMode::Kernel]);
    let r = bench::run(&cfg);
    let failed: Vec<&String> = r
        .problems
        .iter()
        .filter(|p| !p.contains("skipped"))
        .collect();
    assert!(failed.is_empty(), "failed runs: {failed:#?}");

    // Every (operation, vCPUs, side) ran twice under the user irqchip.
    let user: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.irqchip == IrqchipMode::User)
        .collect();
    // ping-pong 2+2, broadcast 2+2, shootdown 2+2, timer 2+2, SynIC round
    // trip 2+2, synthetic timer 2+2, null hypercall 2+2, ex64 2+2 (its
    // probe and the call), synthetic EOI 1+1; times 2 repetitions.
    assert_eq!(user.len(), 2 * (8 * 4 + 2), "{user:#?}");

    // The same runs under the kernel irqchip, where the PV forms still
    // cost the sender one exit to the VMM and KVM's statistics count the
    // in-kernel exits.
    let kernel: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.irqchip == IrqchipMode::Kernel)
        .collect();
    assert_eq!(kernel.len(), user.len(), "{kernel:#?}");
    for s in &kernel {
        if s.scenario.starts_with("broadcast-pv") || s.scenario == "null-hypercall" {
            assert_eq!(s.sender_exits_per_op, 1.0, "{s:?}");
        }
        assert!(s.unobserved.contains(&"wakeups_per_op"), "{s:?}");
    }

    for s in &user {
        let n = f64::from(s.vcpus);
        match s.scenario {
            "broadcast-pv-fast" | "broadcast-pv-ex" => {
                assert_eq!(s.sender_exits_per_op, 1.0, "{s:?}");
                assert_eq!(s.hypercalls_per_op, 1.0, "{s:?}");
            }
            "broadcast-x2apic" => assert_eq!(s.sender_exits_per_op, n - 1.0, "{s:?}"),
            "shootdown-pv" => {
                assert_eq!(s.wakeups_per_op, 0.0, "{s:?}");
                assert_eq!(s.sender_exits_per_op, 1.0, "{s:?}");
            }
            // Each flush IPI notifies its target at most once: the running
            // reader is kicked, a halted one woken, or kicked when the
            // next flush finds it between its acknowledgement and its HLT
            // (or not notified at all while it is out of KVM_RUN). Only
            // the halted readers are ever woken.
            "shootdown-ipi" => {
                assert!(s.wakeups_per_op <= n - 2.0, "{s:?}");
                assert!(s.kicks_per_op + s.wakeups_per_op <= n - 1.0, "{s:?}");
            }
            "timer-lazy-eoi" | "stimer-message-lazy-eoi" => {
                assert!(s.eoi_exits_per_op <= 0.01, "{s:?}")
            }
            // One post there, one signal back (the exits around them move
            // with the host's load, as a ping-pong's do).
            "synic-pingpong" => assert_eq!(s.hypercalls_per_op, 2.0, "{s:?}"),
            "timer-x2apic-eoi" => assert_eq!(s.eoi_exits_per_op, 1.0, "{s:?}"),
            "null-hypercall" | "hypercall-ex64" => {
                assert_eq!(s.sender_exits_per_op, 1.0, "{s:?}");
                assert_eq!(s.hypercalls_per_op, 1.0, "{s:?}");
                assert!(s.hypercall_service_ns > 0.0, "{s:?}");
            }
            "pio-exit-loop" => {
                assert_eq!(s.sender_exits_per_op, 1.0, "{s:?}");
                assert_eq!(s.hypercalls_per_op, 0.0, "{s:?}");
            }
            "hypercall-ex64-probe" => {
                assert_eq!(s.sender_exits_per_op, 1.0, "{s:?}");
                assert_eq!(s.hypercalls_per_op, 0.0, "{s:?}");
                assert!(s.probe_ns > 0.0, "{s:?}");
            }
            _ => {}
        }
        // Times are measured: the guest's TSC moved and the VMM spent
        // time on the exits.
        assert!(s.guest_ns_per_op > 0.0, "{s:?}");
        assert!(s.host_ns_per_op > 0.0, "{s:?}");
        if s.exits_per_op > 0.0 {
            assert!(s.service_ns_per_exit > 0.0, "{s:?}");
        }
    }

    // The VMM CPU / waiting split: the exit loops (one class, at least
    // 100 exits, and never more than 24 exits between two profiled ones)
    // have about one exit in sixteen profiled, and a profiled turn's CPU
    // time never exceeds its wall time (both irqchips).
    for s in &r.samples {
        let class = match s.scenario {
            "pio-exit-loop" | "hypercall-ex64-probe" => "pio",
            "null-hypercall" | "hypercall-ex64" => "hypercall",
            _ => "",
        };
        if !class.is_empty() {
            let c = s
                .by_class
                .iter()
                .find(|c| c.split.class == class)
                .unwrap_or_else(|| panic!("no {class} class in {s:?}"));
            assert!(c.split.sampled > 0, "{class} not profiled: {s:?}");
            assert!(
                c.split.sampled >= c.exits / 64 && c.split.sampled <= c.exits / 4 + 2,
                "{class}: {} of {} exits profiled",
                c.split.sampled,
                c.exits
            );
            assert!(
                c.split.cpu_ns_mean > 0.0 && c.split.cpu_ns_median > 0.0,
                "{c:?}"
            );
        }
        for c in s.by_class.iter().filter(|c| c.split.sampled > 0) {
            assert!(
                c.split.cpu_ns_mean <= c.split.wall_ns_mean,
                "{} in {s:?}",
                c.split.class
            );
            assert!(c.split.wait_ns_mean >= 0.0, "{} in {s:?}", c.split.class);
            // Notifications and ioctls are part of the turn's CPU time.
            assert!(
                c.split.notify_ns_mean <= c.split.cpu_ns_mean
                    && c.split.ioctl_ns_mean <= c.split.cpu_ns_mean,
                "{} in {s:?}",
                c.split.class
            );
            assert!(
                c.split.clock_read_ns_mean > 0.0,
                "{} in {s:?}",
                c.split.class
            );
        }
    }
    // The goals judged on that split are all there; those on the exit
    // loops are measured (the timer runs of a quick bench are too short
    // to be sure an EOI is profiled).
    let goal = |claim: &str| {
        r.goals
            .iter()
            .find(|g| g.claim.contains(claim))
            .unwrap_or_else(|| panic!("no goal {claim:?} in {:#?}", r.goals))
    };
    for claim in [
        "x2APIC ICR MSR exit",
        "x2APIC EOI MSR exit",
        "HV_X64_MSR_EOI MSR exit",
    ] {
        let g = goal(claim);
        assert!(
            !g.measured.contains("not measured") || g.measured.contains("MSR exit of"),
            "{g:?}"
        );
    }
    for claim in [
        "floor: VMM service of a null hypercall",
        "floor: the 64-bank Ex call",
        "floor: notifying another vCPU thread",
        "floor: a user-irqchip IPI round trip",
        "64-bank Ex hypercall",
        "1.2x the kernel irqchip's",
    ] {
        let g = goal(claim);
        assert!(!g.measured.contains("not measured"), "{g:?}");
    }
    assert_eq!(goal("floor:").verdict(), "INFO");
    let flat = r
        .goals
        .iter()
        .find(|g| g.claim.contains("flat in N"))
        .expect("broadcast goal");
    assert!(flat.pass, "{flat:?}");
    let wake = r
        .goals
        .iter()
        .find(|g| g.claim.contains("wakes 0"))
        .expect("shootdown goal");
    assert!(wake.pass, "{wake:?}");

    let dir = std::env::temp_dir().join(format!("hv-bench-test-{}", std::process::id()));
    let extra = dir.join("extra.json");
    std::fs::create_dir_all(&dir).expect("temp dir");
    r.write(&dir, Some(&extra)).expect("writes the results");
    let md = std::fs::read_to_string(dir.join("bench.md")).expect("bench.md");
    assert!(md.contains("## Goals") && md.contains("## Scaling"), "{md}");
    assert!(
        md.contains("## VMM CPU time vs waiting per exit class")
            && md.contains("| null hypercall (off: bare port I/O exit) | 2 | user | off | pio-exit-loop | pio |"),
        "{md}"
    );
    assert!(
        md.contains("| broadcast IPI | 4 | 0 | user | on | broadcast-pv-fast |"),
        "{md}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).expect("json"))
            .expect("valid JSON");
    assert_eq!(
        json["samples"].as_array().map(Vec::len),
        Some(r.samples.len())
    );
    assert_eq!(
        std::fs::read(&extra).expect("--json copy"),
        std::fs::read(dir.join("bench.json")).expect("json")
    );
    let svg = std::fs::read_to_string(dir.join("scaling.svg")).expect("scaling.svg");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("exits / op"));
    let _ = std::fs::remove_dir_all(&dir);
}
