//! ACPI tables for an x86 PC without firmware: RSDP (revision 2) at
//! 0xE0000, then FACS, DSDT (\_S5 only), FADT, MADT and XSDT, all below
//! 1 MiB. Built with the rust-vmm `acpi_tables` crate; the MADT is written
//! here because the crate cannot set its flags nor has an x2APIC entry.

use acpi_tables::Aml;
use acpi_tables::aml::{Name, Package, Path};
use acpi_tables::facs::FACS;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::exit_port::{
    PM_TMR_LEN, PM_TMR_PORT, PM1A_CNT_LEN, PM1A_CNT_PORT, PM1A_EVT_LEN, PM1A_EVT_PORT, RESET_PORT,
    RESET_VALUE, S5_SLP_TYP,
};
use super::ioapic::IOAPIC_BASE;

/// First byte of the tables; the RSDP is here (the BIOS area the OS scans).
pub const ACPI_START: u64 = 0xE0000;
/// End (exclusive) of the area the tables may use.
pub const ACPI_END: u64 = 0x10_0000;
/// Local APIC MMIO address in the MADT.
pub const LAPIC_BASE: u32 = 0xFEE0_0000;
/// SCI interrupt (ISA IRQ 9, level, active high).
pub const SCI_IRQ: u16 = 9;
/// APIC IDs up to this one get a Processor Local APIC entry; higher ones
/// an x2APIC entry (255 is the xAPIC broadcast ID).
pub const MAX_XAPIC_ID: u32 = 254;
/// Most vCPUs whose tables fit in [`ACPI_START`]..[`ACPI_END`] (the MADT
/// takes 16 bytes per vCPU past the first 255).
pub const MAX_ACPI_VCPUS: u32 = 8280;

const OEM_ID: [u8; 6] = *b"RVMM  ";
const OEM_TABLE_ID: [u8; 8] = *b"RVMMPLAT";
const OEM_REVISION: u32 = 1;

// MADT (ACPI 6.5, 5.2.12).
const MADT_REVISION: u8 = 5;
const MADT_PCAT_COMPAT: u32 = 1 << 0;
const MADT_LOCAL_APIC: u8 = 0;
const MADT_IO_APIC: u8 = 1;
const MADT_INT_SRC_OVERRIDE: u8 = 2;
const MADT_LOCAL_X2APIC: u8 = 9;
const MADT_CPU_ENABLED: u32 = 1 << 0;
// MPS INTI flags: polarity active high (01), trigger level (11 << 2).
const MPS_INTI_ACTIVE_HIGH_LEVEL: u16 = 0x1 | 0x3 << 2;
const MPS_INTI_CONFORMING: u16 = 0;
/// IOAPIC ID in the MADT (QEMU's `ACPI_BUILD_IOAPIC_ID` is 0 too; it is
/// also the IOAPIC's reset ID).
const IOAPIC_ID: u8 = 0;

// FADT IA-PC boot architecture flags (ACPI 6.5, 5.2.9.3): no VGA, no CMOS
// RTC.
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// Table sizes and alignment.
const SDT_HEADER_LEN: usize = 36;
const FACS_ALIGN: u64 = 64;
const TABLE_ALIGN: u64 = 16;

/// What the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiConfig {
    /// vCPUs; vCPU `i` has APIC ID `i` and ACPI processor UID `i`.
    pub vcpus: u32,
}

/// Errors building or writing the tables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A VM has at least one vCPU.
    #[error("no vCPUs")]
    NoCpus,
    /// The tables for this many vCPUs do not fit below 1 MiB.
    #[error("ACPI tables for {vcpus} vCPUs need {need:#x} bytes, {room:#x} are available")]
    DoesNotFit {
        /// vCPUs asked for.
        vcpus: u32,
        /// Bytes needed from [`ACPI_START`].
        need: u64,
        /// Bytes available.
        room: u64,
    },
    /// Guest memory does not cover the table area.
    #[error("writing ACPI tables to guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

fn align(addr: u64, to: u64) -> u64 {
    addr.div_ceil(to) * to
}

fn aml_bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

fn io_gas(port: u16, len: u8) -> GAS {
    let access = match len {
        1 => AccessSize::ByteAccess,
        2 => AccessSize::WordAccess,
        _ => AccessSize::DwordAccess,
    };
    GAS::new(AddressSpace::SystemIo, len * 8, 0, access, u64::from(port))
}

fn dsdt() -> Vec<u8> {
    let mut dsdt = Sdt::new(*b"DSDT", SDT_HEADER_LEN as u32, 2, OEM_ID, OEM_TABLE_ID, 1);
    let typ = S5_SLP_TYP as u8;
    // \_S5: {PM1a SLP_TYP, PM1b SLP_TYP, reserved, reserved}.
    Name::new(
        Path::new("_S5_"),
        &Package::new(vec![&typ, &typ, &0u8, &0u8]),
    )
    .to_aml_bytes(&mut dsdt);
    dsdt.update_checksum();
    dsdt.as_slice().to_vec()
}

fn fadt(facs: u64, dsdt: u64) -> Vec<u8> {
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .firmware_ctrl_64(facs)
        .dsdt_64(dsdt)
        .flag(Flags::Wbinvd)
        .flag(Flags::ProcC1)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .flag(Flags::ResetRegSup);
    f.sci_int = SCI_IRQ.into();
    f.pm1a_evt_blk = u32::from(PM1A_EVT_PORT).into();
    f.pm1a_cnt_blk = u32::from(PM1A_CNT_PORT).into();
    f.pm_tmr_blk = u32::from(PM_TMR_PORT).into();
    f.pm1_evt_len = PM1A_EVT_LEN;
    f.pm1_cnt_len = PM1A_CNT_LEN;
    f.pm_tmr_len = PM_TMR_LEN;
    f.x_pm1a_evt_blk = io_gas(PM1A_EVT_PORT, PM1A_EVT_LEN);
    f.x_pm1a_cnt_blk = io_gas(PM1A_CNT_PORT, PM1A_CNT_LEN);
    f.x_pm_tmr_blk = io_gas(PM_TMR_PORT, PM_TMR_LEN);
    f.reset_reg = io_gas(RESET_PORT, 1);
    f.reset_value = RESET_VALUE;
    f.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    aml_bytes(&f.finalize())
}

fn madt(vcpus: u32) -> Vec<u8> {
    let mut body = Vec::new();
    for id in 0..vcpus {
        if id <= MAX_XAPIC_ID {
            body.extend_from_slice(&[MADT_LOCAL_APIC, 8, id as u8, id as u8]);
            body.extend_from_slice(&MADT_CPU_ENABLED.to_le_bytes());
        } else {
            body.extend_from_slice(&[MADT_LOCAL_X2APIC, 16, 0, 0]);
            body.extend_from_slice(&id.to_le_bytes());
            body.extend_from_slice(&MADT_CPU_ENABLED.to_le_bytes());
            body.extend_from_slice(&id.to_le_bytes());
        }
    }
    body.extend_from_slice(&[MADT_IO_APIC, 12, IOAPIC_ID, 0]);
    body.extend_from_slice(&(IOAPIC_BASE as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    for (irq, gsi, flags) in [
        (0u8, 2u32, MPS_INTI_CONFORMING),
        (
            SCI_IRQ as u8,
            u32::from(SCI_IRQ),
            MPS_INTI_ACTIVE_HIGH_LEVEL,
        ),
    ] {
        body.extend_from_slice(&[MADT_INT_SRC_OVERRIDE, 10, 0, irq]);
        body.extend_from_slice(&gsi.to_le_bytes());
        body.extend_from_slice(&flags.to_le_bytes());
    }
    let mut madt = Sdt::new(
        *b"APIC",
        SDT_HEADER_LEN as u32 + 8,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(SDT_HEADER_LEN, LAPIC_BASE);
    madt.write_u32(SDT_HEADER_LEN + 4, MADT_PCAT_COMPAT);
    madt.append_slice(&body);
    madt.as_slice().to_vec()
}

/// Builds the tables: `(guest address, bytes)` pieces, the RSDP first at
/// [`ACPI_START`].
pub fn build_tables(cfg: &AcpiConfig) -> Result<Vec<(u64, Vec<u8>)>, Error> {
    if cfg.vcpus == 0 {
        return Err(Error::NoCpus);
    }
    // Each vCPU costs at most 16 bytes: check the size before building.
    let room = ACPI_END - ACPI_START;
    let rough = 0x1000 + 16 * u64::from(cfg.vcpus);
    if rough > 2 * room {
        return Err(Error::DoesNotFit {
            vcpus: cfg.vcpus,
            need: rough,
            room,
        });
    }
    let rsdp_len = Rsdp::len() as u64;
    let facs_at = align(ACPI_START + rsdp_len, FACS_ALIGN);
    let facs = aml_bytes(&FACS::new());
    let dsdt_at = align(facs_at + facs.len() as u64, TABLE_ALIGN);
    let dsdt = dsdt();
    let fadt_at = align(dsdt_at + dsdt.len() as u64, TABLE_ALIGN);
    let fadt = fadt(facs_at, dsdt_at);
    let madt_at = align(fadt_at + fadt.len() as u64, TABLE_ALIGN);
    let madt = madt(cfg.vcpus);
    let xsdt_at = align(madt_at + madt.len() as u64, TABLE_ALIGN);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    let xsdt = aml_bytes(&xsdt);
    let end = xsdt_at + xsdt.len() as u64;
    if end > ACPI_END {
        return Err(Error::DoesNotFit {
            vcpus: cfg.vcpus,
            need: end - ACPI_START,
            room,
        });
    }
    let rsdp = aml_bytes(&Rsdp::new(OEM_ID, xsdt_at));
    Ok(vec![
        (ACPI_START, rsdp),
        (facs_at, facs),
        (dsdt_at, dsdt),
        (fadt_at, fadt),
        (madt_at, madt),
        (xsdt_at, xsdt),
    ])
}

/// Writes the tables into `mem`; returns the RSDP's guest address.
pub fn write_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<u64, Error> {
    let tables = build_tables(cfg)?;
    for (at, bytes) in &tables {
        mem.write_slice(bytes, GuestAddress(*at))?;
    }
    Ok(ACPI_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flat view of the table area.
    struct Area(Vec<u8>);

    impl Area {
        fn new(tables: &[(u64, Vec<u8>)]) -> Self {
            let mut a = vec![0u8; (ACPI_END - ACPI_START) as usize];
            for (at, b) in tables {
                let o = (at - ACPI_START) as usize;
                a[o..o + b.len()].copy_from_slice(b);
            }
            Area(a)
        }
        fn at(&self, gpa: u64, len: usize) -> &[u8] {
            let o = (gpa - ACPI_START) as usize;
            &self.0[o..o + len]
        }
        fn u32(&self, gpa: u64) -> u32 {
            u32::from_le_bytes(self.at(gpa, 4).try_into().unwrap())
        }
        fn u64(&self, gpa: u64) -> u64 {
            u64::from_le_bytes(self.at(gpa, 8).try_into().unwrap())
        }
        /// A table by address: checks its checksum and signature.
        fn table(&self, gpa: u64, sig: &[u8; 4]) -> &[u8] {
            let len = self.u32(gpa + 4) as usize;
            let t = self.at(gpa, len);
            assert_eq!(&t[..4], sig);
            assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(sig));
            t
        }
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, &x| a.wrapping_add(x))
    }

    #[derive(Debug, Default)]
    struct Madt {
        xapic: Vec<(u8, u8)>,
        x2apic: Vec<(u32, u32)>,
        ioapics: Vec<(u8, u32, u32)>,
        overrides: Vec<(u8, u32, u16)>,
    }

    fn parse_madt(t: &[u8]) -> Madt {
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()),
            LAPIC_BASE
        );
        assert_eq!(u32::from_le_bytes(t[40..44].try_into().unwrap()), 1);
        let mut m = Madt::default();
        let mut o = 44;
        while o < t.len() {
            let (ty, len) = (t[o], t[o + 1] as usize);
            let e = &t[o..o + len];
            let u32_at = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().unwrap());
            match ty {
                0 => {
                    assert_eq!(len, 8);
                    assert_eq!(u32_at(4), 1, "enabled");
                    m.xapic.push((e[2], e[3]));
                }
                1 => {
                    assert_eq!(len, 12);
                    m.ioapics.push((e[2], u32_at(4), u32_at(8)));
                }
                2 => {
                    assert_eq!(len, 10);
                    assert_eq!(e[2], 0, "ISA bus");
                    m.overrides
                        .push((e[3], u32_at(4), u16::from_le_bytes([e[8], e[9]])));
                }
                9 => {
                    assert_eq!(len, 16);
                    assert_eq!(u32_at(8), 1, "enabled");
                    m.x2apic.push((u32_at(4), u32_at(12)));
                }
                _ => panic!("unexpected MADT entry type {ty}"),
            }
            o += len;
        }
        assert_eq!(o, t.len(), "entries end at the table's end");
        m
    }

    fn check(vcpus: u32) {
        let tables = build_tables(&AcpiConfig { vcpus }).unwrap();
        let area = Area::new(&tables);
        for (at, _) in &tables {
            assert!(*at >= ACPI_START);
        }
        // RSDP: both checksums, revision 2, XSDT pointer.
        let rsdp = area.at(ACPI_START, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        assert_eq!(rsdp[15], 2);
        let xsdt_at = area.u64(ACPI_START + 24);
        let xsdt = area.table(xsdt_at, b"XSDT");
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = area.table(entries[0], b"FACP");
        let madt = area.table(entries[1], b"APIC");
        // FADT: SCI, PM blocks, reset register, X_DSDT, X_FIRMWARE_CTRL.
        assert_eq!(u16::from_le_bytes([fadt[46], fadt[47]]), 9);
        assert_eq!(u32::from_le_bytes(fadt[56..60].try_into().unwrap()), 0x600);
        assert_eq!(u32::from_le_bytes(fadt[64..68].try_into().unwrap()), 0x604);
        assert_eq!(u32::from_le_bytes(fadt[76..80].try_into().unwrap()), 0x608);
        assert_eq!(&fadt[88..92], &[4, 2, 0, 4]);
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & 1 << 10, 0, "RESET_REG_SUP");
        assert_eq!(fadt[116], 1, "reset register in I/O space");
        assert_eq!(
            u64::from_le_bytes(fadt[120..128].try_into().unwrap()),
            0xCF9
        );
        assert_eq!(fadt[128], 0x06);
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = area.table(x_dsdt, b"DSDT");
        assert!(dsdt.windows(4).any(|w| w == b"_S5_"));
        let facs_at = u64::from_le_bytes(fadt[132..140].try_into().unwrap());
        assert_eq!(facs_at % 64, 0);
        assert_eq!(area.at(facs_at, 4), b"FACS");
        // MADT.
        let m = parse_madt(madt);
        let n_xapic = vcpus.min(MAX_XAPIC_ID + 1);
        assert_eq!(m.xapic.len() as u32, n_xapic);
        for (i, &(uid, id)) in m.xapic.iter().enumerate() {
            assert_eq!((uid as usize, id as usize), (i, i));
        }
        assert_eq!(m.x2apic.len() as u32, vcpus - n_xapic);
        for (i, &(id, uid)) in m.x2apic.iter().enumerate() {
            let want = MAX_XAPIC_ID + 1 + i as u32;
            assert_eq!((id, uid), (want, want));
        }
        assert_eq!(m.ioapics, vec![(0, 0xFEC0_0000, 0)]);
        assert_eq!(m.overrides, vec![(0, 2, 0), (9, 9, 0xD)]);
    }

    #[test]
    fn tables_parse_back_for_many_sizes() {
        for vcpus in [1, 2, 254, 255, 256, 300, 1024] {
            check(vcpus);
        }
    }

    #[test]
    fn the_vcpu_bound_is_where_tables_stop_fitting() {
        assert!(matches!(
            build_tables(&AcpiConfig { vcpus: 0 }),
            Err(Error::NoCpus)
        ));
        let (mut lo, mut hi) = (1024u32, 1 << 20);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if build_tables(&AcpiConfig { vcpus: mid }).is_ok() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        assert_eq!(lo, MAX_ACPI_VCPUS);
        check(lo);
        assert!(matches!(
            build_tables(&AcpiConfig { vcpus: lo + 1 }),
            Err(Error::DoesNotFit { .. })
        ));
        assert!(matches!(
            build_tables(&AcpiConfig { vcpus: u32::MAX }),
            Err(Error::DoesNotFit { .. })
        ));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(
            write_tables(&mem, &AcpiConfig { vcpus: 4 }).unwrap(),
            ACPI_START
        );
        let mut sig = [0u8; 8];
        mem.read_slice(&mut sig, GuestAddress(ACPI_START)).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert!(matches!(
            write_tables(&small, &AcpiConfig { vcpus: 1 }),
            Err(Error::Memory(_))
        ));
    }
}
