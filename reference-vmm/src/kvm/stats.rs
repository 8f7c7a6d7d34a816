//! KVM's binary statistics (`KVM_GET_STATS_FD`, Documentation/virt/kvm/
//! api.rst 4.133): a header, an id string, one descriptor per statistic
//! and a data block of `u64` values. Used in the kernel-irqchip mode, where
//! APIC exits and in-kernel halts never reach the VMM, to read what KVM
//! itself counted per vCPU.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;

use kvm_ioctls::VcpuFd;
use serde::Serialize;

vmm_sys_util::ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);

/// The KVM statistics the VMM reports (those this KVM has; the others are
/// left out). `exits` counts every VM exit, including the ones KVM
/// handles itself.
pub const REPORTED: [&str; 13] = [
    "exits",
    "halt_exits",
    "halt_wakeup",
    "halt_successful_poll",
    "irq_exits",
    "irq_injections",
    "irq_window_exits",
    "req_event",
    "signal_exits",
    "io_exits",
    "mmio_exits",
    "request_irq_exits",
    "nmi_injections",
];

/// Size of `struct kvm_stats_header` (six `u32`).
const HEADER_SIZE: usize = 24;
/// Size of a descriptor before its name: flags u32, exponent s16, size
/// u16, offset u32, bucket_size u32.
const DESC_FIXED: usize = 16;
/// Upper bound on the descriptor block the parser accepts (KVM's is a few
/// KiB; a larger one means a corrupt header).
const MAX_DESC_BLOCK: usize = 1 << 20;

/// Errors reading KVM statistics.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ioctl failed (the host has no binary statistics).
    #[error("KVM_GET_STATS_FD: {0}")]
    Ioctl(std::io::Error),
    /// Reading the fd failed.
    #[error("reading KVM statistics: {0}")]
    Read(std::io::Error),
    /// The header or a descriptor is out of bounds.
    #[error("malformed KVM statistics: {0}")]
    Malformed(&'static str),
}

/// Where one statistic's first value sits in the data block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// Statistic name.
    pub name: String,
    /// Byte offset of its first `u64` from the start of the data block.
    pub offset: u32,
    /// Number of `u64` values (1 for counters).
    pub size: u16,
}

/// The layout of a stats fd: descriptors and where the data starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Byte offset of the data block in the file.
    pub data_offset: u32,
    /// Every descriptor.
    pub descriptors: Vec<Descriptor>,
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// The header's `(name_size, num_desc, desc_offset, data_offset)`.
pub fn parse_header(b: &[u8]) -> Result<(u32, u32, u32, u32), Error> {
    if b.len() < HEADER_SIZE {
        return Err(Error::Malformed("short header"));
    }
    let field = |i: usize| u32_at(b, 4 * i).ok_or(Error::Malformed("short header"));
    Ok((field(1)?, field(2)?, field(4)?, field(5)?))
}

/// Parses the descriptor block (`num_desc` descriptors, each
/// `16 + name_size` bytes, names NUL-terminated).
pub fn parse_descriptors(
    block: &[u8],
    name_size: u32,
    num_desc: u32,
) -> Result<Vec<Descriptor>, Error> {
    let stride = DESC_FIXED + name_size as usize;
    let mut out = Vec::with_capacity(num_desc.min(1024) as usize);
    for i in 0..num_desc as usize {
        let base = i
            .checked_mul(stride)
            .ok_or(Error::Malformed("descriptor offset"))?;
        let end = base
            .checked_add(stride)
            .ok_or(Error::Malformed("descriptor offset"))?;
        let d = block
            .get(base..end)
            .ok_or(Error::Malformed("descriptor past the block"))?;
        let size = u16_at(d, 6).ok_or(Error::Malformed("descriptor"))?;
        let offset = u32_at(d, 8).ok_or(Error::Malformed("descriptor"))?;
        let raw = &d[DESC_FIXED..];
        let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
        let name = String::from_utf8_lossy(&raw[..end]).into_owned();
        out.push(Descriptor { name, offset, size });
    }
    Ok(out)
}

/// A vCPU's statistics fd with its parsed layout.
#[derive(Debug)]
pub struct StatsReader {
    file: File,
    wanted: Vec<(&'static str, u64)>,
}

impl StatsReader {
    /// Opens the vCPU's statistics fd and finds the [`REPORTED`] ones.
    pub fn open(vcpu: &VcpuFd) -> Result<Self, Error> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd
        // or -1; the vCPU fd is valid for the call.
        let fd = unsafe { vmm_sys_util::ioctl::ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            return Err(Error::Ioctl(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut h = [0u8; HEADER_SIZE];
        file.read_exact_at(&mut h, 0).map_err(Error::Read)?;
        let (name_size, num_desc, desc_offset, data_offset) = parse_header(&h)?;
        let len = (DESC_FIXED + name_size as usize)
            .checked_mul(num_desc as usize)
            .filter(|&l| l <= MAX_DESC_BLOCK)
            .ok_or(Error::Malformed("descriptor block too large"))?;
        let mut block = vec![0u8; len];
        file.read_exact_at(&mut block, u64::from(desc_offset))
            .map_err(Error::Read)?;
        let layout = Layout {
            data_offset,
            descriptors: parse_descriptors(&block, name_size, num_desc)?,
        };
        Ok(Self {
            file,
            wanted: layout.offsets(&REPORTED),
        })
    }

    /// Reads the current values of the statistics found.
    pub fn read(&self) -> KvmCounters {
        let mut out = KvmCounters::default();
        for &(name, off) in &self.wanted {
            let mut b = [0u8; 8];
            if self.file.read_exact_at(&mut b, off).is_ok() {
                out.0.insert(name, u64::from_le_bytes(b));
            }
        }
        out
    }
}

impl Layout {
    /// File offsets of the first value of each of `names` present.
    pub fn offsets(&self, names: &[&'static str]) -> Vec<(&'static str, u64)> {
        names
            .iter()
            .filter_map(|n| {
                self.descriptors
                    .iter()
                    .find(|d| d.name == *n && d.size >= 1)
                    .map(|d| (*n, u64::from(self.data_offset) + u64::from(d.offset)))
            })
            .collect()
    }
}

/// Named KVM counters (one vCPU, or a sum).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct KvmCounters(pub BTreeMap<&'static str, u64>);

impl KvmCounters {
    /// Adds `o` name by name.
    pub fn add(&mut self, o: &Self) {
        for (k, v) in &o.0 {
            *self.0.entry(k).or_insert(0) += v;
        }
    }

    /// `self - earlier`, name by name (saturating).
    pub fn since(&self, earlier: &Self) -> Self {
        Self(
            self.0
                .iter()
                .map(|(k, v)| (*k, v.saturating_sub(earlier.get(k).unwrap_or(0))))
                .collect(),
        )
    }

    /// One counter, if KVM has it.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.0.get(name).copied()
    }
}

/// KVM's counters of every vCPU.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KvmVmCounters {
    /// Sum over all vCPUs.
    pub total: KvmCounters,
    /// Per vCPU.
    pub vcpus: Vec<KvmCounters>,
}

impl KvmVmCounters {
    /// Builds the totals from per-vCPU readings.
    pub fn from_vcpus(vcpus: Vec<KvmCounters>) -> Self {
        let mut total = KvmCounters::default();
        for v in &vcpus {
            total.add(v);
        }
        Self { total, vcpus }
    }

    /// Difference against an earlier reading.
    pub fn since(&self, earlier: &Self) -> Self {
        Self::from_vcpus(
            self.vcpus
                .iter()
                .zip(&earlier.vcpus)
                .map(|(a, b)| a.since(b))
                .collect(),
        )
    }

    /// One row per counter: total and the first `max_cols` vCPUs.
    pub fn table(&self, max_cols: usize) -> String {
        use std::fmt::Write;
        let shown = self.vcpus.len().min(max_cols);
        let mut s = String::new();
        let _ = write!(s, "{:<18}{:>10}", "kvm counter", "total");
        for i in 0..shown {
            let _ = write!(s, "{:>8}", format!("vcpu{i}"));
        }
        s.push('\n');
        for (name, total) in &self.total.0 {
            let _ = write!(s, "{name:<18}{total:>10}");
            for v in self.vcpus.iter().take(shown) {
                match v.get(name) {
                    Some(x) => {
                        let _ = write!(s, "{x:>8}");
                    }
                    None => {
                        let _ = write!(s, "{:>8}", "n/a");
                    }
                }
            }
            s.push('\n');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats file as KVM lays it out: header, id, descriptors, data.
    fn synthetic(stats: &[(&str, u16, u64)], name_size: u32) -> Vec<u8> {
        let id_offset = HEADER_SIZE as u32;
        let desc_offset = id_offset + name_size;
        let stride = DESC_FIXED + name_size as usize;
        let data_offset = desc_offset + (stride * stats.len()) as u32;
        let mut b = Vec::new();
        for v in [
            0,
            name_size,
            stats.len() as u32,
            id_offset,
            desc_offset,
            data_offset,
        ] {
            b.extend(v.to_le_bytes());
        }
        let mut id = b"kvm-1234/vcpu-0".to_vec();
        id.resize(name_size as usize, 0);
        b.extend(id);
        let mut data_off = 0u32;
        for (name, size, _) in stats {
            b.extend(0u32.to_le_bytes()); // flags
            b.extend(0i16.to_le_bytes()); // exponent
            b.extend(size.to_le_bytes());
            b.extend(data_off.to_le_bytes());
            b.extend(0u32.to_le_bytes()); // bucket size
            let mut n = name.as_bytes().to_vec();
            n.resize(name_size as usize, 0);
            b.extend(n);
            data_off += 8 * u32::from(*size);
        }
        for (_, size, v) in stats {
            for i in 0..u64::from(*size) {
                b.extend((v + i).to_le_bytes());
            }
        }
        b
    }

    #[test]
    fn parses_a_synthetic_stats_file() {
        let f = synthetic(
            &[
                ("halt_poll_hist", 32, 7),
                ("exits", 1, 42),
                ("irq_exits", 1, 5),
            ],
            48,
        );
        let (name_size, num, desc, data) = parse_header(&f).unwrap();
        assert_eq!((name_size, num), (48, 3));
        let block = &f[desc as usize..data as usize];
        let d = parse_descriptors(block, name_size, num).unwrap();
        assert_eq!(d[1].name, "exits");
        let layout = Layout {
            data_offset: data,
            descriptors: d,
        };
        let offs = layout.offsets(&["exits", "irq_exits", "absent"]);
        assert_eq!(offs.len(), 2);
        let val = |off: u64| {
            let o = off as usize;
            u64::from_le_bytes(f[o..o + 8].try_into().unwrap())
        };
        assert_eq!(val(offs[0].1), 42);
        assert_eq!(val(offs[1].1), 5);
    }

    #[test]
    fn rejects_truncated_input() {
        let f = synthetic(&[("exits", 1, 1)], 32);
        assert!(parse_header(&f[..10]).is_err());
        let (name_size, num, desc, _) = parse_header(&f).unwrap();
        // One byte short of the only descriptor.
        let block = &f[desc as usize..desc as usize + DESC_FIXED + 31];
        assert!(parse_descriptors(block, name_size, num).is_err());
        // More descriptors than the block holds.
        let block = &f[desc as usize..];
        assert!(parse_descriptors(block, name_size, u32::MAX).is_err());
    }

    #[test]
    fn counters_difference() {
        let mut a = KvmCounters::default();
        a.0.insert("exits", 10);
        let mut b = KvmCounters::default();
        b.0.insert("exits", 25);
        b.0.insert("irq_exits", 3);
        let d = b.since(&a);
        assert_eq!(d.get("exits"), Some(15));
        assert_eq!(d.get("irq_exits"), Some(3));
        let vm = KvmVmCounters::from_vcpus(vec![d.clone(), d]);
        assert_eq!(vm.total.get("exits"), Some(30));
        assert!(vm.table(4).contains("irq_exits"));
    }
}
