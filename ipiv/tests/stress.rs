//! Concurrency stress: producers post random vectors to several vCPUs
//! while each vCPU thread runs the enter / leave / halt protocol. Every
//! newly pending vector must be taken exactly once, and a halted vCPU must
//! never be left asleep with a vector pending and no wake-up sent.
#![cfg(not(loom))]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::thread;
use std::time::{Duration, Instant};

use ipiv::{HaltCheck, Notify, PidTable, PostedVcpu};

const VCPUS: u32 = 4;
const PRODUCERS: usize = 3;
const RUN_FOR: Duration = Duration::from_millis(1500);
/// How long a suspicious sleep may wait for its wake-up before it counts
/// as lost (generous: the machine is shared).
const LOST_AFTER: Duration = Duration::from_secs(5);

struct Counts {
    posted: Vec<AtomicU64>,
    taken: Vec<AtomicU64>,
}

impl Counts {
    fn new() -> Self {
        let n = VCPUS as usize * 256;
        Self {
            posted: (0..n).map(|_| AtomicU64::new(0)).collect(),
            taken: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }
    fn index(vcpu: u32, vector: u8) -> usize {
        vcpu as usize * 256 + usize::from(vector)
    }
}

struct Vcpu {
    pi: Arc<PostedVcpu>,
    thread: std::sync::OnceLock<thread::Thread>,
    kicked: AtomicBool,
    wakes_sent: AtomicU64,
}

fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn every_vector_is_taken_exactly_once() {
    let table = Arc::new(PidTable::new(VCPUS * 2).unwrap());
    let vcpus: Arc<Vec<Vcpu>> = Arc::new(
        (0..VCPUS)
            .map(|i| Vcpu {
                pi: table.register(i * 2).unwrap(),
                thread: std::sync::OnceLock::new(),
                kicked: AtomicBool::new(false),
                wakes_sent: AtomicU64::new(0),
            })
            .collect(),
    );
    let counts = Arc::new(Counts::new());
    let done = Arc::new(AtomicBool::new(false));
    let lost_wakeups = Arc::new(AtomicU64::new(0));
    let notes = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);

    let consumers: Vec<_> = (0..VCPUS)
        .map(|i| {
            let (vcpus, counts, done, lost) = (
                Arc::clone(&vcpus),
                Arc::clone(&counts),
                Arc::clone(&done),
                Arc::clone(&lost_wakeups),
            );
            thread::spawn(move || {
                let me = &vcpus[i as usize];
                me.thread.set(thread::current()).unwrap();
                let (d, r) = (me.pi.descriptor(), me.pi.run_state());
                let count = |p: ipiv::PendingVectors| {
                    for v in p {
                        counts.taken[Counts::index(i, v)].fetch_add(1, Relaxed);
                    }
                };
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(i);
                loop {
                    // "In the guest" for a short while, or until kicked.
                    count(r.enter_guest(d));
                    let spins = xorshift(&mut rng) % 2000;
                    for _ in 0..spins {
                        if me.kicked.swap(false, SeqCst) {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    count(r.leave_guest(d));
                    if done.load(SeqCst) && !d.has_pending() {
                        break;
                    }
                    if xorshift(&mut rng) % 4 != 0 {
                        continue;
                    }
                    // Guest HLT.
                    let sent = me.wakes_sent.load(SeqCst);
                    if r.prepare_halt(d) == HaltCheck::Sleep {
                        let start = Instant::now();
                        thread::park_timeout(Duration::from_millis(500));
                        if start.elapsed() >= Duration::from_millis(500)
                            && d.has_pending()
                            && !done.load(SeqCst)
                        {
                            // Pending with no wake-up yet: a post may still
                            // be between its PIR and ON updates. Wait for
                            // its wake-up; none at all means it was lost.
                            let wait = Instant::now();
                            while me.wakes_sent.load(SeqCst) == sent && wait.elapsed() < LOST_AFTER
                            {
                                thread::sleep(Duration::from_millis(1));
                            }
                            if me.wakes_sent.load(SeqCst) == sent {
                                lost.fetch_add(1, SeqCst);
                            }
                        }
                    }
                    r.set(ipiv::RunState::OutsideGuest);
                }
            })
        })
        .collect();

    // Wait until every consumer published its thread handle.
    while vcpus.iter().any(|v| v.thread.get().is_none()) {
        thread::yield_now();
    }

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let (vcpus, counts, notes) =
                (Arc::clone(&vcpus), Arc::clone(&counts), Arc::clone(&notes));
            thread::spawn(move || {
                let mut rng = 0x2545_f491_4f6c_dd1du64.wrapping_mul(p as u64 + 1);
                let start = Instant::now();
                let mut posts = 0u64;
                while start.elapsed() < RUN_FOR {
                    for _ in 0..256 {
                        let r = xorshift(&mut rng);
                        let target = (r % u64::from(VCPUS)) as u32;
                        let vector = 0x10 + ((r >> 8) % 0xf0) as u8;
                        let v = &vcpus[target as usize];
                        let (outcome, notify) = v.pi.post_outcome(vector);
                        if outcome.newly_pending() {
                            counts.posted[Counts::index(target, vector)].fetch_add(1, Relaxed);
                        }
                        notes[notify as usize].fetch_add(1, Relaxed);
                        match notify {
                            Notify::None => {}
                            Notify::Kick => v.kicked.store(true, SeqCst),
                            Notify::Wake => {
                                v.wakes_sent.fetch_add(1, SeqCst);
                                if let Some(t) = v.thread.get() {
                                    t.unpark();
                                }
                            }
                        }
                        posts += 1;
                    }
                }
                posts
            })
        })
        .collect();

    let posts: u64 = producers.into_iter().map(|p| p.join().unwrap()).sum();
    done.store(true, SeqCst);
    for v in vcpus.iter() {
        if let Some(t) = v.thread.get() {
            t.unpark();
        }
    }
    for c in consumers {
        c.join().unwrap();
    }

    assert_eq!(
        lost_wakeups.load(SeqCst),
        0,
        "a halted vCPU slept on a vector"
    );
    let mut delivered = 0;
    for vcpu in 0..VCPUS {
        for vector in 0..=255u8 {
            let i = Counts::index(vcpu, vector);
            let (p, t) = (counts.posted[i].load(SeqCst), counts.taken[i].load(SeqCst));
            assert_eq!(
                p, t,
                "vCPU {vcpu} vector {vector:#x}: posted {p}, taken {t}"
            );
            delivered += t;
        }
    }
    for v in vcpus.iter() {
        assert!(!v.pi.descriptor().has_pending());
    }
    let [none, kick, wake] = [0, 1, 2].map(|i| notes[i].load(SeqCst));
    println!(
        "{posts} posts, {delivered} newly pending and taken once; \
         notify none {none}, kick {kick}, wake {wake}"
    );
    assert!(delivered > 1000, "too little traffic to mean anything");
    assert!(
        kick > 0 && wake > 0,
        "both notification paths must be exercised"
    );
}
