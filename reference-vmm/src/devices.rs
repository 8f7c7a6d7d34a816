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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Reg(Mutex<Vec<(u64, u8)>>);

    impl BusDevice for Reg {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data[0]));
        }
    }

    #[test]
    fn dispatch_by_range_and_refuse_overlaps() {
        let mut bus = Bus::default();
        let dev = Arc::new(Reg::default());
        bus.insert(0x3F8, 8, dev.clone()).unwrap();
        assert!(
            bus.insert(0x3FF, 1, dev.clone()).is_err(),
            "overlaps the end"
        );
        assert!(
            bus.insert(0x3F0, 9, dev.clone()).is_err(),
            "overlaps the start"
        );
        assert!(bus.insert(0x400, 0, dev.clone()).is_err(), "empty range");
        assert!(bus.insert(u64::MAX, 2, dev.clone()).is_err(), "wraps");
        bus.insert(0x400, 1, dev.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3FA, &mut b));
        assert_eq!(b[0], 2);
        assert!(!bus.read(0x3F7, &mut b), "one below the range");
        assert!(!bus.read(0x401, &mut b), "one past the range");
        assert!(bus.write(0x3FF, &[7]));
        assert_eq!(*dev.0.lock().unwrap(), vec![(7, 7)]);
    }
}
