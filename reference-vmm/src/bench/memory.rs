//! The VMM's resident memory per vCPU while a VM runs.
//!
//! A thread beside the run samples `/proc/self/status` (RssAnon, and
//! RssFile + RssShmem) and, in the same sample, how much of the guest RAM
//! is resident (`mincore` over the guest memory mapping, found in
//! `/proc/self/maps` by its size; counted whole when it cannot be told
//! apart from a neighbour). Guest RAM is an anonymous mapping, so
//! it is in RssAnon: the VMM's own anonymous memory is RssAnon less the
//! resident guest RAM, and its growth over what was resident before the
//! VM was created, at the sample where it peaks, divided by the vCPUs, is
//! the figure per vCPU. KVM's per-vCPU kernel memory is not in RSS; the
//! `kvm_run` page each vCPU maps is, as RssFile/RssShmem, and is reported
//! apart. Memory the allocator kept from an earlier run (freed heap,
//! cached thread stacks) is in the baseline, so after a larger run the
//! figure can be low by that much divided by the vCPUs.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;

use crate::guest::layout;

/// How often the sampler looks.
const PERIOD: Duration = Duration::from_millis(50);
/// Samples between two searches of `/proc/self/maps` for the guest RAM
/// (a search reads a line per mapping, two per vCPU thread).
const SEARCH_EVERY: u32 = 4;
/// Guest RAM of the smallest VM (`Vm::new`'s floor).
const MIN_GUEST_RAM: u64 = 4 << 20;
/// Bytes per KiB.
const KIB: u64 = 1024;

/// The RSS counters of `/proc/self/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// RssAnon: anonymous pages (heap, thread stacks, guest RAM).
    pub anon: u64,
    /// RssFile + RssShmem: file and shared pages (binary, libraries,
    /// the vCPUs' `kvm_run` pages).
    pub shared: u64,
}

impl Rss {
    /// The counters now; `None` when `/proc/self/status` cannot be read.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        Self::parse(&status)
    }

    /// The counters of a `/proc/<pid>/status` text.
    pub fn parse(status: &str) -> Option<Self> {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.get(name.len()..)?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some(Self {
            anon: field("RssAnon:")?,
            shared: field("RssFile:")? + field("RssShmem:").unwrap_or(0),
        })
    }
}

/// The VMM's memory during one run, per vCPU.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct VmmMemory {
    /// Anonymous memory of the VMM (guest RAM left out) grown over the
    /// baseline, KiB per vCPU, at the sample where it peaked.
    pub anon_kib_per_vcpu: f64,
    /// RssFile + RssShmem grown over the baseline, KiB per vCPU (mostly
    /// the `kvm_run` pages, which are KVM's).
    pub shared_kib_per_vcpu: f64,
    /// Resident guest RAM at that sample, KiB.
    pub guest_resident_kib: f64,
    /// Whether the resident guest RAM was measured (`mincore`) rather
    /// than taken as the whole guest RAM.
    pub guest_measured: bool,
    /// Samples taken.
    pub samples: u32,
}

/// Guest RAM of a built-in guest on `vcpus` vCPUs, as `Vm::new` sizes it.
pub fn guest_ram_bytes(vcpus: u32) -> u64 {
    layout::memory_size(u64::from(vcpus)).max(MIN_GUEST_RAM)
}

/// Samples the process's memory until [`Sampler::finish`].
pub struct Sampler {
    stop: Sender<()>,
    thread: JoinHandle<Peak>,
    baseline: Rss,
    vcpus: u32,
}

/// The sample with the most VMM anonymous memory.
#[derive(Debug, Default, Clone, Copy)]
struct Peak {
    /// RssAnon less resident guest RAM, KiB.
    vmm_anon: u64,
    /// RssFile + RssShmem at the same sample, KiB.
    shared: u64,
    /// Resident guest RAM at the same sample, KiB.
    guest: u64,
    /// Whether `guest` was measured (else it is the whole guest RAM).
    measured: bool,
    samples: u32,
}

impl Sampler {
    /// Takes the baseline (with `malloc_trim` first, so that free heap
    /// from earlier runs is not counted in it) and starts sampling for a
    /// VM of `vcpus` vCPUs. `None` when `/proc/self/status` cannot be read.
    pub fn start(vcpus: u32) -> Option<Self> {
        trim_heap();
        let baseline = Rss::read()?;
        let guest_bytes = guest_ram_bytes(vcpus);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut peak = Peak::default();
                let mut guest: Option<GuestMapping> = None;
                for tick in 0u32.. {
                    if guest.is_none() && tick % SEARCH_EVERY == 0 {
                        guest = GuestMapping::find(guest_bytes);
                    }
                    // Guest RAM whose mapping was not found (merged with a
                    // neighbour, or not mapped yet) counts whole: the
                    // figure can then only be low, by the untouched part.
                    let resident = match &mut guest {
                        Some(g) => g.resident_kib(),
                        None => None,
                    };
                    if resident.is_none() {
                        guest = None;
                    }
                    if let Some(rss) = Rss::read() {
                        let measured = resident.is_some();
                        let resident = resident.unwrap_or(guest_bytes / KIB);
                        let vmm = rss.anon.saturating_sub(resident);
                        peak.samples += 1;
                        if vmm >= peak.vmm_anon {
                            (peak.vmm_anon, peak.shared, peak.guest, peak.measured) =
                                (vmm, rss.shared, resident, measured);
                        }
                    }
                    match stopped.recv_timeout(PERIOD) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                peak
            })
            .ok()?;
        Some(Self {
            stop,
            thread,
            baseline,
            vcpus,
        })
    }

    /// Stops sampling; `None` when no sample was taken.
    pub fn finish(self) -> Option<VmmMemory> {
        let _ = self.stop.send(());
        let peak = self.thread.join().ok()?;
        if peak.samples == 0 {
            return None;
        }
        let n = f64::from(self.vcpus.max(1));
        let per_vcpu = |now: u64, before: u64| now.saturating_sub(before) as f64 / n;
        Some(VmmMemory {
            anon_kib_per_vcpu: per_vcpu(peak.vmm_anon, self.baseline.anon),
            shared_kib_per_vcpu: per_vcpu(peak.shared, self.baseline.shared),
            guest_resident_kib: peak.guest as f64,
            guest_measured: peak.measured,
            samples: peak.samples,
        })
    }
}

/// Returns the allocator's free memory to the system (glibc keeps it in
/// its arenas otherwise).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's
    // own arenas; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The guest RAM mapping: the anonymous mapping of exactly its size.
struct GuestMapping {
    start: usize,
    len: usize,
    /// `mincore`'s result, one byte per page.
    pages: Vec<u8>,
}

impl GuestMapping {
    fn find(bytes: u64) -> Option<Self> {
        let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
        let len = usize::try_from(bytes).ok()?;
        let start = maps.lines().find_map(|line| {
            let mut f = line.split_whitespace();
            let (range, inode) = (f.next()?, f.nth(3)?);
            // Anonymous: no inode and no path.
            if inode != "0" || f.next().is_some() {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (b.checked_sub(a)? == len).then_some(a)
        })?;
        Some(Self {
            start,
            len,
            pages: vec![0; len.div_ceil(page_size())],
        })
    }

    /// Resident KiB of the mapping; `None` once it is unmapped.
    fn resident_kib(&mut self) -> Option<u64> {
        // SAFETY: mincore only reads the page tables of the range and
        // writes one byte per page into `pages`, which holds
        // len / page size (rounded up) bytes. The range need not be
        // mapped any more: mincore then fails with ENOMEM.
        let rc = unsafe {
            libc::mincore(
                self.start as *mut libc::c_void,
                self.len,
                self.pages.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return None;
        }
        let resident = self.pages.iter().filter(|&&p| p & 1 != 0).count() as u64;
        Some(resident * page_size() as u64 / KIB)
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_parse() {
        let s = "Name:\tx\nVmRSS:\t  9000 kB\nRssAnon:\t  5000 kB\nRssFile:\t  3000 kB\n\
                 RssShmem:\t  1000 kB\n";
        assert_eq!(
            Rss::parse(s),
            Some(Rss {
                anon: 5000,
                shared: 4000
            })
        );
        assert_eq!(Rss::parse("Name:\tx\n"), None);
        assert!(Rss::read().is_some());
    }

    #[test]
    fn finds_and_measures_an_anonymous_mapping() {
        // Guest RAM of a 1-vCPU VM, half of it touched.
        let bytes = guest_ram_bytes(1);
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(0),
            bytes as usize,
        )])
        .unwrap();
        use vm_memory::Bytes;
        for gpa in (0..bytes / 2).step_by(4096) {
            mem.write_obj(1u8, vm_memory::GuestAddress(gpa)).unwrap();
        }
        // The kernel may merge the mapping with a neighbour of the same
        // kind (then it is not found, and the sampler counts guest RAM
        // whole); when it is found, half of it is resident.
        if let Some(mut g) = GuestMapping::find(bytes) {
            let kib = g.resident_kib().unwrap();
            assert!(kib >= bytes / 2 / KIB, "{kib} KiB resident");
        }
    }
}
