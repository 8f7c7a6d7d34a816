//! Port I/O and MMIO buses: devices registered on address ranges.

use std::collections::BTreeMap;
use std::sync::Arc;

/// A device on a bus. `offset` is relative to the start of its range.
pub trait BusDevice: Send + Sync {
    /// A read of `data.len()` bytes.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A write.
    fn write(&self, offset: u64, data: &[u8]);
}

/// Ranges that overlap an existing one cannot be inserted.
#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
pub struct Overlap {
    /// Base.
    pub base: u64,
    /// Length.
    pub len: u64,
}

/// A bus: non-overlapping `[base, base + len)` ranges.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: BTreeMap<u64, (u64, Arc<dyn BusDevice>)>,
}

impl Bus {
    /// Registers `dev` on `[base, base + len)`.
    pub fn insert(&mut self, base: u64, len: u64, dev: Arc<dyn BusDevice>) -> Result<(), Overlap> {
        let end = base.checked_add(len).ok_or(Overlap { base, len })?;
        let clash = self
            .ranges
            .range(..end)
            .next_back()
            .is_some_and(|(&b, &(l, _))| b + l > base);
        if len == 0 || clash {
            return Err(Overlap { base, len });
        }
        self.ranges.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Arc<dyn BusDevice>)> {
        let (&b, (l, d)) = self.ranges.range(..=addr).next_back()?;
        (addr - b < *l).then_some((addr - b, d))
    }

    /// Dispatches a read; `false` when nothing is there (the caller
    /// returns all-ones).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, d)) => {
                d.read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; `false` when nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, d)) => {
                d.write(off, data);
                true
            }
            None => false,
        }
    }
}
