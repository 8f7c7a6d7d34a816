//! QEMU's fw_cfg, legacy port I/O interface only (QEMU
//! `docs/specs/fw_cfg.rst`): a 16-bit selector at port 0x510 and an 8-bit
//! data port at 0x511. No DMA interface.

use std::sync::{Mutex, MutexGuard};

use vm_device::DevicePio;
use vm_device::bus::{PioAddress, PioAddressOffset};

/// Selector port; the data port is the next one.
pub const FW_CFG_PORT: u16 = 0x510;
/// Ports used: selector (2 bytes wide) and data.
pub const FW_CFG_LEN: u16 = 2;

const SELECTOR_OFFSET: u16 = 0;
const DATA_OFFSET: u16 = 1;

/// "QEMU" signature item.
pub const FW_CFG_SIGNATURE: u16 = 0x0000;
/// Feature bitmap item.
pub const FW_CFG_ID: u16 = 0x0001;
/// RAM size item (u64 LE).
pub const FW_CFG_RAM_SIZE: u16 = 0x0003;
/// Number of CPUs item (u16 LE).
pub const FW_CFG_NB_CPUS: u16 = 0x0005;
/// Maximum number of CPUs item (u16 LE).
pub const FW_CFG_MAX_CPUS: u16 = 0x000F;
/// File directory item.
pub const FW_CFG_FILE_DIR: u16 = 0x0019;
/// Selector of the first file.
pub const FW_CFG_FILE_FIRST: u16 = 0x0020;
/// Files at most (QEMU's default `FW_CFG_FILE_SLOTS`).
pub const FW_CFG_MAX_FILES: usize = 32;
/// Longest file name in bytes (the directory holds 56 with the NUL).
pub const FW_CFG_MAX_NAME: usize = 55;

/// ID bit 0: the traditional (port I/O) interface.
const FW_CFG_ID_TRADITIONAL: u32 = 1 << 0;
/// Size of a directory entry: size, select, reserved, name[56].
const FILE_ENTRY_SIZE: usize = 64;

/// Errors adding a file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// The name is empty or longer than [`FW_CFG_MAX_NAME`] bytes.
    #[error("fw_cfg file name must be 1 to 55 bytes long: {0:?}")]
    BadName(String),
    /// A file with this name exists.
    #[error("fw_cfg file {0:?} exists")]
    Duplicate(String),
    /// [`FW_CFG_MAX_FILES`] files exist.
    #[error("fw_cfg holds at most {FW_CFG_MAX_FILES} files")]
    TooManyFiles,
    /// A file's size must fit the directory's u32.
    #[error("fw_cfg file {0:?} is larger than 4 GiB")]
    TooLarge(String),
}

struct File {
    name: String,
    data: Vec<u8>,
}

struct State {
    selector: u16,
    offset: usize,
    files: Vec<File>,
    /// The item currently selected (built on selection).
    current: Vec<u8>,
}

/// The fw_cfg device.
pub struct FwCfg {
    ram_size: u64,
    cpus: u16,
    state: Mutex<State>,
}

impl FwCfg {
    /// A device reporting `ram_size` bytes of RAM and `cpus` CPUs.
    pub fn new(ram_size: u64, cpus: u16) -> Self {
        Self {
            ram_size,
            cpus,
            state: Mutex::new(State {
                selector: FW_CFG_SIGNATURE,
                offset: 0,
                files: Vec::new(),
                current: b"QEMU".to_vec(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a file; returns its selector.
    pub fn add_file(&self, name: &str, data: Vec<u8>) -> Result<u16, Error> {
        if name.is_empty() || name.len() > FW_CFG_MAX_NAME || name.contains('\0') {
            return Err(Error::BadName(name.to_owned()));
        }
        if u32::try_from(data.len()).is_err() {
            return Err(Error::TooLarge(name.to_owned()));
        }
        let mut s = self.lock();
        if s.files.iter().any(|f| f.name == name) {
            return Err(Error::Duplicate(name.to_owned()));
        }
        if s.files.len() >= FW_CFG_MAX_FILES {
            return Err(Error::TooManyFiles);
        }
        s.files.push(File {
            name: name.to_owned(),
            data,
        });
        Ok(FW_CFG_FILE_FIRST + (s.files.len() - 1) as u16)
    }

    /// The bytes of item `selector` (empty when there is none).
    fn item(&self, s: &State, selector: u16) -> Vec<u8> {
        match selector {
            FW_CFG_SIGNATURE => b"QEMU".to_vec(),
            FW_CFG_ID => FW_CFG_ID_TRADITIONAL.to_le_bytes().to_vec(),
            FW_CFG_RAM_SIZE => self.ram_size.to_le_bytes().to_vec(),
            FW_CFG_NB_CPUS | FW_CFG_MAX_CPUS => self.cpus.to_le_bytes().to_vec(),
            FW_CFG_FILE_DIR => {
                let mut dir = Vec::with_capacity(4 + s.files.len() * FILE_ENTRY_SIZE);
                dir.extend_from_slice(&(s.files.len() as u32).to_be_bytes());
                for (i, f) in s.files.iter().enumerate() {
                    dir.extend_from_slice(&(f.data.len() as u32).to_be_bytes());
                    dir.extend_from_slice(&(FW_CFG_FILE_FIRST + i as u16).to_be_bytes());
                    dir.extend_from_slice(&[0, 0]);
                    let mut name = [0u8; FILE_ENTRY_SIZE - 8];
                    name[..f.name.len()].copy_from_slice(f.name.as_bytes());
                    dir.extend_from_slice(&name);
                }
                dir
            }
            sel => sel
                .checked_sub(FW_CFG_FILE_FIRST)
                .and_then(|i| s.files.get(usize::from(i)))
                .map(|f| f.data.clone())
                .unwrap_or_default(),
        }
    }

    fn select(&self, selector: u16) {
        let mut s = self.lock();
        let item = self.item(&s, selector);
        s.selector = selector;
        s.offset = 0;
        s.current = item;
    }

    /// The selected item.
    pub fn selector(&self) -> u16 {
        self.lock().selector
    }
}

impl DevicePio for FwCfg {
    /// Byte reads of the data port return the next byte of the item (0 past
    /// its end); every other read returns 0.
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
        if offset != DATA_OFFSET || data.len() != 1 {
            return;
        }
        let mut s = self.lock();
        let byte = s.current.get(s.offset).copied().unwrap_or(0);
        if s.offset < s.current.len() {
            s.offset += 1;
        }
        data[0] = byte;
    }

    /// A 16-bit write of the selector port selects an item and rewinds it;
    /// writes to the data port (deprecated by QEMU) and other sizes are
    /// ignored.
    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        if offset != SELECTOR_OFFSET {
            return;
        }
        if let Ok(b) = <[u8; 2]>::try_from(data) {
            self.select(u16::from_le_bytes(b));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn write(f: &FwCfg, offset: u16, data: &[u8]) {
        f.pio_write(PioAddress(FW_CFG_PORT), offset, data);
    }

    fn read(f: &FwCfg, offset: u16, data: &mut [u8]) {
        f.pio_read(PioAddress(FW_CFG_PORT), offset, data);
    }

    fn read_item(f: &FwCfg, sel: u16, len: usize) -> Vec<u8> {
        write(f, SELECTOR_OFFSET, &sel.to_le_bytes());
        (0..len)
            .map(|_| {
                let mut b = [0xFFu8];
                read(f, DATA_OFFSET, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn signature_id_and_numbers() {
        let f = FwCfg::new(512 << 20, 3);
        assert_eq!(read_item(&f, FW_CFG_SIGNATURE, 6), b"QEMU\0\0");
        assert_eq!(read_item(&f, FW_CFG_ID, 4), [1, 0, 0, 0]);
        assert_eq!(read_item(&f, FW_CFG_NB_CPUS, 3), [3, 0, 0]);
        assert_eq!(read_item(&f, FW_CFG_MAX_CPUS, 2), [3, 0]);
        assert_eq!(
            read_item(&f, FW_CFG_RAM_SIZE, 8),
            (512u64 << 20).to_le_bytes()
        );
        assert_eq!(read_item(&f, 0x1234, 2), [0, 0], "unknown selector");
        assert_eq!(read_item(&f, FW_CFG_FILE_FIRST, 2), [0, 0], "no file yet");
        // A byte write does not select.
        write(&f, SELECTOR_OFFSET, &[5]);
        assert_eq!(f.selector(), FW_CFG_FILE_FIRST);
    }

    #[test]
    fn file_directory_and_contents() {
        let f = FwCfg::new(0, 1);
        assert_eq!(f.add_file("etc/a", b"xyz".to_vec()), Ok(0x20));
        assert_eq!(f.add_file("opt/b", vec![7; 300]), Ok(0x21));
        assert!(matches!(
            f.add_file("etc/a", vec![]),
            Err(Error::Duplicate(_))
        ));
        let dir = read_item(&f, FW_CFG_FILE_DIR, 4 + 2 * 64 + 1);
        assert_eq!(dir[..4], [0, 0, 0, 2]);
        assert_eq!(dir[4..8], [0, 0, 0, 3]);
        assert_eq!(dir[8..10], [0, 0x20]);
        assert_eq!(&dir[12..17], b"etc/a");
        assert!(dir[17..68].iter().all(|&b| b == 0));
        assert_eq!(dir[68..72], [0, 0, 1, 44]);
        assert_eq!(dir[72..74], [0, 0x21]);
        assert_eq!(&dir[76..81], b"opt/b");
        assert_eq!(dir[132], 0, "past the end");
        assert_eq!(read_item(&f, 0x20, 4), b"xyz\0");
    }

    #[test]
    fn file_bounds() {
        let f = FwCfg::new(0, 1);
        let long = "n".repeat(FW_CFG_MAX_NAME);
        assert!(f.add_file(&long, vec![]).is_ok());
        let too_long = "n".repeat(FW_CFG_MAX_NAME + 1);
        assert!(matches!(
            f.add_file(&too_long, vec![]),
            Err(Error::BadName(_))
        ));
        assert!(matches!(f.add_file("", vec![]), Err(Error::BadName(_))));
        for i in 1..FW_CFG_MAX_FILES {
            f.add_file(&format!("f{i}"), vec![]).unwrap();
        }
        assert_eq!(f.add_file("one-more", vec![]), Err(Error::TooManyFiles));
    }

    proptest! {
        #[test]
        fn arbitrary_accesses_never_panic(
            ops in prop::collection::vec((0u16..4, 0usize..9, any::<u64>(), any::<bool>()), 0..300)
        ) {
            let f = FwCfg::new(1 << 30, 2);
            f.add_file("etc/x", vec![1, 2, 3]).unwrap();
            for (off, size, val, is_write) in ops {
                if is_write {
                    // Bias selectors toward the defined ones.
                    let v = if val & 1 == 0 { val % 0x24 } else { val };
                    write(&f, off, &v.to_le_bytes()[..size.min(8)]);
                } else {
                    let mut b = vec![0u8; size];
                    read(&f, off, &mut b);
                }
            }
        }
    }
}
