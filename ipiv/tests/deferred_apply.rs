//! Inhibit requests raised on vCPU exit paths, applied at safe points,
//! in a VMM-shaped loop where applying an activation change must take the
//! guest-memory lock for writing (as KVM drops the APIC-access memslot and
//! waits for SRCU readers). With requests only queued on the exit path
//! and applied where no read-side guard can exist, the run completes.
#![cfg(not(loom))]

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::Duration;

use hv_enlightenments::accel::{CpuVendor, HostApicAccel, IrqchipMode};
use ipiv::inhibit::{SINT_AUTO_EOI, SINT_MASKED};
use ipiv::{InhibitConfig, InhibitEvent, InhibitManager, InhibitReason, InhibitRequests, VcpuGate};

const VCPUS: u32 = 4;
const ROUNDS: u64 = 2000;

/// Guest memory: per vCPU, the SINT value the guest "wrote".
struct GuestMemory {
    sint_values: Vec<u64>,
    /// Bumped by each memory-map update (write lock held).
    map_generation: u64,
}

fn avic_host() -> HostApicAccel {
    HostApicAccel {
        vendor: CpuVendor::Amd,
        apicv: Some(false),
        ipiv: Some(false),
        avic: Some(true),
        force_avic: Some(false),
        cpu_avic: Some(true),
        cpu_x2avic: Some(true),
    }
}

#[test]
fn exit_path_requests_apply_at_safe_points_without_deadlock() {
    let memory = Arc::new(RwLock::new(GuestMemory {
        sint_values: vec![SINT_MASKED; VCPUS as usize],
        map_generation: 0,
    }));
    let requests = Arc::new(InhibitRequests::with_capacity(64));
    let manager = Arc::new(Mutex::new(InhibitManager::new(InhibitConfig {
        host: avic_host(),
        irqchip: IrqchipMode::Kernel,
        pit_reinject: false,
        sev: false,
    })));
    let flips = Arc::new(AtomicU64::new(0));
    let (tx, rx) = mpsc::channel();

    for vcpu in 0..VCPUS {
        let (memory, requests, manager, flips, tx) = (
            Arc::clone(&memory),
            Arc::clone(&requests),
            Arc::clone(&manager),
            Arc::clone(&flips),
            tx.clone(),
        );
        thread::spawn(move || {
            let mut gate = VcpuGate::for_this_thread().expect("one gate per vCPU thread");
            for round in 0..ROUNDS {
                // The guest writes its SINT0: AutoEOI on odd rounds.
                let value = if round % 2 == 1 {
                    SINT_AUTO_EOI | 0x50
                } else {
                    SINT_MASKED
                };
                memory.write().unwrap().sint_values[vcpu as usize] = value;

                // Exit path: the MSR write is handled with guest memory
                // read-locked; the inhibit change is only requested.
                let ticket = {
                    let mem = gate.read_side(|| memory.read().unwrap());
                    let value = mem.sint_values[vcpu as usize];
                    requests.request(vcpu, InhibitEvent::SintWrite { sint: 0, value })
                };

                // Top of the loop: a safe point. Apply, and on an
                // activation change update the memory map (write lock).
                let at = gate.safe_point();
                let update = manager.lock().unwrap().apply_pending(&requests, &at);
                if update.activation_changed() {
                    memory.write().unwrap().map_generation += 1;
                    flips.fetch_add(1, SeqCst);
                }
                assert!(manager.lock().unwrap().is_applied(ticket));
            }
            // Leave AutoEOI off so the final state is known.
            requests.request(
                vcpu,
                InhibitEvent::SintWrite {
                    sint: 0,
                    value: SINT_MASKED,
                },
            );
            let at = gate.safe_point();
            manager.lock().unwrap().apply_pending(&requests, &at);
            tx.send(vcpu).unwrap();
        });
    }
    drop(tx);
    for _ in 0..VCPUS {
        rx.recv_timeout(Duration::from_secs(60))
            .expect("a vCPU thread is stuck: deadlock");
    }
    let m = manager.lock().unwrap();
    assert_eq!(m.auto_eoi_vcpus(), 0);
    assert!(!m.active().contains(InhibitReason::Hyperv));
    assert!(m.apicv_allowed());
    assert!(requests.is_empty());
    let flips = flips.load(SeqCst);
    assert!(flips >= 2, "HYPERV never toggled ({flips})");
    assert_eq!(memory.read().unwrap().map_generation, flips);
}
