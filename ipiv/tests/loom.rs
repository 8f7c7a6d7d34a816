//! loom models of the descriptor and the halt protocol. Run with
//! `RUSTFLAGS="--cfg loom" cargo test -p ipiv --test loom --release`
//! (see README).
#![cfg(loom)]

use loom::thread;
use std::sync::Arc;

use ipiv::{HaltCheck, Notify, PostedInterruptDescriptor, PostedVcpu};

/// Two posters and a concurrent `take`: each vector is taken exactly once,
/// and whatever is left in the PIR afterwards has ON set (no lost
/// notification).
#[test]
fn post_take_exactly_once() {
    loom::model(|| {
        let d = Arc::new(PostedInterruptDescriptor::new());
        let posters: Vec<_> = [0x20u8, 0x90]
            .into_iter()
            .map(|v| {
                let d = Arc::clone(&d);
                thread::spawn(move || d.post_outcome(v))
            })
            .collect();
        let first = d.take();
        let outcomes: Vec<_> = posters.into_iter().map(|p| p.join().unwrap()).collect();
        let on_after = d.outstanding();
        let rest = d.take();
        for v in [0x20u8, 0x90] {
            let times = usize::from(first.contains(v)) + usize::from(rest.contains(v));
            assert_eq!(times, 1, "vector {v:#x} taken {times} times");
        }
        assert!(outcomes.iter().all(|o| o.newly_pending()));
        if !rest.is_empty() {
            assert!(on_after, "vectors left pending without ON");
        }
        // Exactly one post set ON from 0 unless `take` cleared it between.
        assert!(outcomes.iter().any(|o| o.needs_notification()));
    });
}

/// A vCPU halting while a vector is posted either sees the vector or is
/// woken by the poster.
#[test]
fn halting_vcpu_is_never_left_asleep() {
    loom::model(|| {
        let v = Arc::new(PostedVcpu::new(0));
        let poster = {
            let v = Arc::clone(&v);
            thread::spawn(move || v.post(0x40))
        };
        let check = v.run_state().prepare_halt(v.descriptor());
        let notify = poster.join().unwrap();
        if check == HaltCheck::Sleep {
            assert_eq!(
                notify,
                Notify::Wake,
                "slept with 0x40 pending and no wake-up"
            );
        }
        assert!(v.descriptor().take().contains(0x40));
    });
}

/// A vCPU entering the guest while a vector is posted either takes it
/// before entry or is kicked.
#[test]
fn entering_vcpu_takes_or_is_kicked() {
    loom::model(|| {
        let v = Arc::new(PostedVcpu::new(0));
        let poster = {
            let v = Arc::clone(&v);
            thread::spawn(move || v.post(0x40))
        };
        let taken = v.run_state().enter_guest(v.descriptor());
        let notify = poster.join().unwrap();
        if !taken.contains(0x40) {
            assert_eq!(
                notify,
                Notify::Kick,
                "entered without 0x40 and without a kick"
            );
            assert!(v.descriptor().take().contains(0x40));
        }
    });
}

/// Two posters and a vCPU that had suppressed notifications and now halts:
/// if it sleeps, some poster wakes it.
#[test]
fn suppressed_then_halting_vcpu_is_woken() {
    loom::model(|| {
        let v = Arc::new(PostedVcpu::new(0));
        v.descriptor().set_suppress();
        let posters: Vec<_> = [0x30u8, 0x31]
            .into_iter()
            .map(|vector| {
                let v = Arc::clone(&v);
                thread::spawn(move || v.post(vector))
            })
            .collect();
        let check = v.run_state().prepare_halt(v.descriptor());
        let notes: Vec<_> = posters.into_iter().map(|p| p.join().unwrap()).collect();
        if check == HaltCheck::Sleep {
            assert!(
                notes.contains(&Notify::Wake),
                "slept with no wake-up: {notes:?}"
            );
        }
        let taken = v.descriptor().take();
        assert!(taken.contains(0x30) && taken.contains(0x31));
    });
}
