//! Host probe: what APIC virtualization the host's KVM offers, from the
//! vendor modules' parameters in sysfs and from CPUID. No ioctls.
//!
//! * `kvm_intel`: `enable_apicv`, `enable_ipiv`;
//!   `kvm_amd`: `avic`, `force_avic` (values `Y`/`N`/`1`/`0`).
//! * CPUID 0: vendor. CPUID 0x8000000A EDX bit 13: AVIC, bit 18: x2AVIC
//!   (Linux `X86_FEATURE_AVIC` 15*32+13, `X86_FEATURE_X2AVIC` 15*32+18);
//!   the leaf is meaningful only when CPUID 0x80000001 ECX bit 2 (SVM) is
//!   set (AMD APM vol. 3, "Function 8000_000Ah").
//!
//! A missing parameter file of a loaded module is "unknown" and shown as
//! such. A module that is not loaded while KVM is loaded is a fact: KVM
//! registers exactly one vendor backend, and APICv and AVIC live only in
//! `kvm_intel` and `kvm_amd`. With `kvm` loaded and neither of them (a
//! PVM host runs `kvm_pvm`), the host has no hardware APIC virtualization.

use core::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use hv_enlightenments::accel::{CpuVendor, HostApicAccel};

/// CPUID leaf 0: highest standard leaf and vendor string.
pub const CPUID_VENDOR_LEAF: u32 = 0;
/// CPUID leaf 0x80000000: highest extended leaf.
pub const CPUID_EXT_MAX_LEAF: u32 = 0x8000_0000;
/// CPUID leaf 0x80000001: extended features; ECX bit 2 is SVM.
pub const CPUID_EXT_FEATURES_LEAF: u32 = 0x8000_0001;
/// CPUID 0x80000001 ECX bit 2: SVM.
pub const CPUID_EXT_FEATURES_ECX_SVM: u32 = 1 << 2;
/// CPUID leaf 0x8000000A: SVM features.
pub const CPUID_SVM_LEAF: u32 = 0x8000_000a;
/// CPUID 0x8000000A EDX bit 13: AVIC.
pub const CPUID_SVM_EDX_AVIC: u32 = 1 << 13;
/// CPUID 0x8000000A EDX bit 18: x2AVIC.
pub const CPUID_SVM_EDX_X2AVIC: u32 = 1 << 18;

/// The registers one CPUID leaf returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CpuidRegs {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// Where CPUID values come from (the CPU, or a table in tests).
pub trait CpuidSource {
    /// Leaf `leaf`, subleaf 0; `None` if CPUID cannot be executed.
    fn cpuid(&self, leaf: u32) -> Option<CpuidRegs>;
}

/// The executing CPU's CPUID.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpuid;

impl CpuidSource for HostCpuid {
    #[cfg(target_arch = "x86_64")]
    fn cpuid(&self, leaf: u32) -> Option<CpuidRegs> {
        // `__cpuid` is a safe fn from Rust 1.94; the block keeps the crate
        // building on older compilers.
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is part of the x86_64 baseline and only reads
        // registers.
        let r = unsafe { core::arch::x86_64::__cpuid(leaf) };
        Some(CpuidRegs {
            eax: r.eax,
            ebx: r.ebx,
            ecx: r.ecx,
            edx: r.edx,
        })
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn cpuid(&self, _leaf: u32) -> Option<CpuidRegs> {
        None
    }
}

/// How one probed value was found.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Finding {
    /// Read from this sysfs file, with its raw contents.
    Param {
        /// The file.
        path: PathBuf,
        /// Its contents, trimmed.
        raw: String,
    },
    /// The file exists but does not hold Y/N/1/0.
    Unparsable {
        /// The file.
        path: PathBuf,
        /// Its contents, trimmed.
        raw: String,
    },
    /// The module is loaded but has no such parameter (older kernel).
    ParamMissing(PathBuf),
    /// The module is not loaded while KVM uses the named other module.
    OtherVendorModule(&'static str),
    /// KVM is loaded with neither `kvm_intel` nor `kvm_amd`.
    NoVendorModule,
    /// `kvm` itself is not loaded: nothing can be said.
    KvmNotLoaded,
    /// From CPUID 0x8000000A EDX.
    Cpuid,
    /// CPUID reports no SVM, so no AVIC.
    NoSvm,
    /// The CPU is not AMD: AVIC is an AMD feature.
    NotAmd,
    /// CPUID 0x8000000A is beyond the highest extended leaf.
    LeafAbsent,
    /// CPUID is not available (not x86-64) or the vendor is unknown.
    NoCpuid,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Param { path, raw } => write!(f, "{} = {raw}", path.display()),
            Self::Unparsable { path, raw } => {
                write!(f, "{} holds {raw:?}, not Y/N/1/0", path.display())
            }
            Self::ParamMissing(path) => write!(f, "{} missing", path.display()),
            Self::OtherVendorModule(m) => write!(f, "KVM uses {m}"),
            Self::NoVendorModule => f.write_str("kvm loaded with neither kvm_intel nor kvm_amd"),
            Self::KvmNotLoaded => f.write_str("kvm not loaded"),
            Self::Cpuid => f.write_str("CPUID 0x8000000A EDX"),
            Self::NoSvm => f.write_str("CPUID 0x80000001 ECX[2] (SVM) clear"),
            Self::NotAmd => f.write_str("not an AMD CPU"),
            Self::LeafAbsent => f.write_str("CPUID 0x8000000A not implemented"),
            Self::NoCpuid => f.write_str("CPUID unavailable or vendor unknown"),
        }
    }
}

/// The probe's result: the [`HostApicAccel`] the hint policy takes, and
/// how each field was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostProbe {
    /// The values.
    pub accel: HostApicAccel,
    /// CPUID 0 vendor string, if CPUID ran.
    pub vendor_id: Option<String>,
    /// Whether `kvm` is loaded (`/sys/module/kvm` exists).
    pub kvm_loaded: bool,
    /// Loaded `kvm_*` modules other than `kvm_intel`/`kvm_amd` (e.g. `kvm_pvm`).
    pub other_backends: Vec<String>,
    /// How `accel.apicv` was found.
    pub apicv: Finding,
    /// How `accel.ipiv` was found.
    pub ipiv: Finding,
    /// How `accel.avic` was found.
    pub avic: Finding,
    /// How `accel.force_avic` was found.
    pub force_avic: Finding,
    /// How `accel.cpu_avic` and `accel.cpu_x2avic` were found.
    pub cpu: Finding,
}

const KVM_INTEL: &str = "kvm_intel";
const KVM_AMD: &str = "kvm_amd";

fn parse_bool(raw: &str) -> Option<bool> {
    match raw {
        "Y" | "y" | "1" => Some(true),
        "N" | "n" | "0" => Some(false),
        _ => None,
    }
}

struct Modules<'a> {
    root: &'a Path,
    kvm: bool,
    intel: bool,
    amd: bool,
}

impl Modules<'_> {
    fn param(&self, module: &'static str, name: &str) -> (Option<bool>, Finding) {
        let loaded = match module {
            KVM_INTEL => self.intel,
            _ => self.amd,
        };
        if !loaded {
            return match (self.kvm, self.intel, self.amd) {
                (false, ..) => (None, Finding::KvmNotLoaded),
                (true, true, _) => (Some(false), Finding::OtherVendorModule(KVM_INTEL)),
                (true, _, true) => (Some(false), Finding::OtherVendorModule(KVM_AMD)),
                (true, false, false) => (Some(false), Finding::NoVendorModule),
            };
        }
        let path = self
            .root
            .join("module")
            .join(module)
            .join("parameters")
            .join(name);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let raw = text.trim().to_string();
                match parse_bool(&raw) {
                    Some(v) => (Some(v), Finding::Param { path, raw }),
                    None => (None, Finding::Unparsable { path, raw }),
                }
            }
            Err(_) => (None, Finding::ParamMissing(path)),
        }
    }
}

fn vendor_of(cpuid: &dyn CpuidSource) -> (CpuVendor, Option<String>) {
    let Some(r) = cpuid.cpuid(CPUID_VENDOR_LEAF) else {
        return (CpuVendor::Other, None);
    };
    let mut bytes = Vec::with_capacity(12);
    for reg in [r.ebx, r.edx, r.ecx] {
        bytes.extend_from_slice(&reg.to_le_bytes());
    }
    let id = String::from_utf8_lossy(&bytes).into_owned();
    let vendor = match id.as_str() {
        "GenuineIntel" => CpuVendor::Intel,
        "AuthenticAMD" | "HygonGenuine" => CpuVendor::Amd,
        _ => CpuVendor::Other,
    };
    (vendor, Some(id))
}

fn cpu_avic(cpuid: &dyn CpuidSource, vendor: CpuVendor) -> (Option<bool>, Option<bool>, Finding) {
    match vendor {
        CpuVendor::Intel => return (Some(false), Some(false), Finding::NotAmd),
        CpuVendor::Other => return (None, None, Finding::NoCpuid),
        CpuVendor::Amd => {}
    }
    let Some(max) = cpuid.cpuid(CPUID_EXT_MAX_LEAF) else {
        return (None, None, Finding::NoCpuid);
    };
    if max.eax < CPUID_SVM_LEAF {
        return (None, None, Finding::LeafAbsent);
    }
    let svm = cpuid
        .cpuid(CPUID_EXT_FEATURES_LEAF)
        .is_some_and(|r| r.ecx & CPUID_EXT_FEATURES_ECX_SVM != 0);
    if !svm {
        return (Some(false), Some(false), Finding::NoSvm);
    }
    match cpuid.cpuid(CPUID_SVM_LEAF) {
        Some(r) => (
            Some(r.edx & CPUID_SVM_EDX_AVIC != 0),
            Some(r.edx & CPUID_SVM_EDX_X2AVIC != 0),
            Finding::Cpuid,
        ),
        None => (None, None, Finding::NoCpuid),
    }
}

impl HostProbe {
    /// Probes this host: `/sys` and the executing CPU.
    ///
    /// ```
    /// use ipiv::HostProbe;
    ///
    /// // Reads sysfs and CPUID only; what it finds depends on the host.
    /// let probe = HostProbe::run();
    /// let _policy_input = probe.accel; // for CpuidBuilder::host
    /// println!("{probe}");
    /// ```
    pub fn run() -> Self {
        Self::probe(Path::new("/sys"), &HostCpuid)
    }

    /// Probes with sysfs mounted at `sysfs_root` (tests pass a temporary
    /// directory) and CPUID from `cpuid`.
    ///
    /// ```
    /// use std::path::Path;
    /// use ipiv::probe::{CpuidRegs, CpuidSource, HostProbe};
    ///
    /// /// A CPU whose CPUID cannot be read.
    /// struct NoCpuid;
    /// impl CpuidSource for NoCpuid {
    ///     fn cpuid(&self, _leaf: u32) -> Option<CpuidRegs> {
    ///         None
    ///     }
    /// }
    /// // No sysfs at all: kvm is not loaded, so every parameter is unknown.
    /// let probe = HostProbe::probe(Path::new("/nonexistent"), &NoCpuid);
    /// assert!(!probe.kvm_loaded);
    /// assert_eq!((probe.accel.apicv, probe.accel.avic), (None, None));
    /// ```
    pub fn probe(sysfs_root: &Path, cpuid: &dyn CpuidSource) -> Self {
        let module_dir = sysfs_root.join("module");
        let present = |m: &str| module_dir.join(m).is_dir();
        let modules = Modules {
            root: sysfs_root,
            kvm: present("kvm"),
            intel: present(KVM_INTEL),
            amd: present(KVM_AMD),
        };
        let mut other_backends: Vec<String> = fs::read_dir(&module_dir)
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with("kvm_") && n != KVM_INTEL && n != KVM_AMD)
                    .collect()
            })
            .unwrap_or_default();
        other_backends.sort();

        let (apicv, apicv_f) = modules.param(KVM_INTEL, "enable_apicv");
        let (ipiv, ipiv_f) = modules.param(KVM_INTEL, "enable_ipiv");
        let (avic, avic_f) = modules.param(KVM_AMD, "avic");
        let (force_avic, force_f) = modules.param(KVM_AMD, "force_avic");
        let (vendor, vendor_id) = vendor_of(cpuid);
        let (cpu_avic, cpu_x2avic, cpu_f) = cpu_avic(cpuid, vendor);
        Self {
            accel: HostApicAccel {
                vendor,
                apicv,
                ipiv,
                avic,
                force_avic,
                cpu_avic,
                cpu_x2avic,
            },
            vendor_id,
            kvm_loaded: modules.kvm,
            other_backends,
            apicv: apicv_f,
            ipiv: ipiv_f,
            avic: avic_f,
            force_avic: force_f,
            cpu: cpu_f,
        }
    }
}

fn yes_no(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

impl fmt::Display for HostProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.accel;
        let vendor = match a.vendor {
            CpuVendor::Intel => "Intel",
            CpuVendor::Amd => "AMD",
            CpuVendor::Other => "other/unknown",
        };
        writeln!(f, "host APIC virtualization probe")?;
        writeln!(
            f,
            "  {:<24} {vendor} ({})",
            "CPU vendor",
            self.vendor_id.as_deref().unwrap_or("CPUID unavailable")
        )?;
        let backends = if self.other_backends.is_empty() {
            "none".to_string()
        } else {
            self.other_backends.join(", ")
        };
        writeln!(
            f,
            "  {:<24} {} (other kvm_* modules: {backends})",
            "kvm",
            if self.kvm_loaded {
                "loaded"
            } else {
                "not loaded"
            }
        )?;
        let rows = [
            ("kvm_intel.enable_apicv", a.apicv, &self.apicv),
            ("kvm_intel.enable_ipiv", a.ipiv, &self.ipiv),
            ("kvm_amd.avic", a.avic, &self.avic),
            ("kvm_amd.force_avic", a.force_avic, &self.force_avic),
            ("CPU AVIC", a.cpu_avic, &self.cpu),
            ("CPU x2AVIC", a.cpu_x2avic, &self.cpu),
        ];
        for (name, value, how) in rows {
            writeln!(f, "  {name:<24} {:<8} ({how})", yes_no(value))?;
        }
        writeln!(
            f,
            "  {:<24} {}",
            "hardware APIC virt.",
            yes_no(a.hardware_apic_virtualization())
        )?;
        write!(f, "  {:<24} {}", "x2AVIC usable", yes_no(a.x2avic()))
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct FakeCpuid(HashMap<u32, CpuidRegs>);

    impl CpuidSource for FakeCpuid {
        fn cpuid(&self, leaf: u32) -> Option<CpuidRegs> {
            Some(self.0.get(&leaf).copied().unwrap_or_default())
        }
    }

    fn vendor_regs(id: &[u8; 12]) -> CpuidRegs {
        let w = |i: usize| u32::from_le_bytes([id[i], id[i + 1], id[i + 2], id[i + 3]]);
        CpuidRegs {
            eax: 0x10,
            ebx: w(0),
            edx: w(4),
            ecx: w(8),
        }
    }

    fn amd(svm: bool, edx: u32) -> FakeCpuid {
        let mut m = HashMap::new();
        m.insert(0, vendor_regs(b"AuthenticAMD"));
        m.insert(
            CPUID_EXT_MAX_LEAF,
            CpuidRegs {
                eax: 0x8000_0021,
                ..Default::default()
            },
        );
        m.insert(
            CPUID_EXT_FEATURES_LEAF,
            CpuidRegs {
                ecx: if svm { CPUID_EXT_FEATURES_ECX_SVM } else { 0 },
                ..Default::default()
            },
        );
        m.insert(
            CPUID_SVM_LEAF,
            CpuidRegs {
                edx,
                ..Default::default()
            },
        );
        FakeCpuid(m)
    }

    fn intel() -> FakeCpuid {
        let mut m = HashMap::new();
        m.insert(0, vendor_regs(b"GenuineIntel"));
        FakeCpuid(m)
    }

    /// A throw-away sysfs tree under the system temp directory.
    struct FakeSys(PathBuf);

    impl FakeSys {
        fn new(modules: &[(&str, &[(&str, &str)])]) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let root = std::env::temp_dir().join(format!(
                "ipiv-probe-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            for (module, params) in modules {
                let dir = root.join("module").join(module).join("parameters");
                fs::create_dir_all(&dir).unwrap();
                for (name, value) in *params {
                    fs::write(dir.join(name), format!("{value}\n")).unwrap();
                }
            }
            fs::create_dir_all(root.join("module")).unwrap();
            Self(root)
        }
    }

    impl Drop for FakeSys {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn pvm_host_has_no_apic_virtualization() {
        let sys = FakeSys::new(&[("kvm", &[("halt_poll_ns", "0")]), ("kvm_pvm", &[])]);
        let p = HostProbe::probe(&sys.0, &amd(false, 0));
        assert_eq!(p.accel.vendor, CpuVendor::Amd);
        assert_eq!(p.accel.avic, Some(false));
        assert_eq!(p.avic, Finding::NoVendorModule);
        assert_eq!(p.accel.apicv, Some(false));
        assert_eq!(p.accel.cpu_avic, Some(false));
        assert_eq!(p.cpu, Finding::NoSvm);
        assert_eq!(p.other_backends, vec!["kvm_pvm".to_string()]);
        assert_eq!(p.accel.hardware_apic_virtualization(), Some(false));
        assert!(p.to_string().contains("neither kvm_intel nor kvm_amd"));
    }

    #[test]
    fn amd_with_avic_and_x2avic() {
        let sys = FakeSys::new(&[
            ("kvm", &[]),
            ("kvm_amd", &[("avic", "Y"), ("force_avic", "N")]),
        ]);
        let p = HostProbe::probe(
            &sys.0,
            &amd(true, CPUID_SVM_EDX_AVIC | CPUID_SVM_EDX_X2AVIC),
        );
        assert_eq!(p.accel.avic, Some(true));
        assert_eq!(p.accel.force_avic, Some(false));
        assert_eq!(p.accel.cpu_avic, Some(true));
        assert_eq!(p.accel.cpu_x2avic, Some(true));
        assert_eq!(p.accel.apicv, Some(false));
        assert_eq!(p.apicv, Finding::OtherVendorModule(KVM_AMD));
        assert_eq!(p.accel.hardware_apic_virtualization(), Some(true));
        assert_eq!(p.accel.x2avic(), Some(true));
    }

    #[test]
    fn avic_bit_13_and_x2avic_bit_18_are_distinct() {
        let sys = FakeSys::new(&[("kvm", &[]), ("kvm_amd", &[("avic", "1")])]);
        let p = HostProbe::probe(&sys.0, &amd(true, 1 << 13));
        assert_eq!(
            (p.accel.cpu_avic, p.accel.cpu_x2avic),
            (Some(true), Some(false))
        );
        let p = HostProbe::probe(&sys.0, &amd(true, 1 << 18));
        assert_eq!(
            (p.accel.cpu_avic, p.accel.cpu_x2avic),
            (Some(false), Some(true))
        );
    }

    #[test]
    fn missing_parameter_files_are_unknown() {
        let sys = FakeSys::new(&[("kvm", &[]), ("kvm_intel", &[("enable_apicv", "Y")])]);
        let p = HostProbe::probe(&sys.0, &intel());
        assert_eq!(p.accel.apicv, Some(true));
        assert_eq!(p.accel.ipiv, None);
        assert!(matches!(p.ipiv, Finding::ParamMissing(_)));
        assert_eq!(p.accel.cpu_avic, Some(false));
        assert!(p.to_string().contains("unknown"));
    }

    #[test]
    fn garbage_values_are_unknown() {
        let sys = FakeSys::new(&[("kvm", &[]), ("kvm_intel", &[("enable_apicv", "maybe")])]);
        let p = HostProbe::probe(&sys.0, &intel());
        assert_eq!(p.accel.apicv, None);
        assert!(matches!(p.apicv, Finding::Unparsable { .. }));
    }

    #[test]
    fn no_kvm_means_unknown() {
        let sys = FakeSys::new(&[]);
        let p = HostProbe::probe(&sys.0, &intel());
        assert_eq!(p.accel.apicv, None);
        assert_eq!(p.apicv, Finding::KvmNotLoaded);
        assert_eq!(p.accel.hardware_apic_virtualization(), None);
    }

    #[test]
    fn leaf_absent_is_unknown() {
        let mut c = amd(true, CPUID_SVM_EDX_AVIC);
        c.0.insert(
            CPUID_EXT_MAX_LEAF,
            CpuidRegs {
                eax: 0x8000_0008,
                ..Default::default()
            },
        );
        let sys = FakeSys::new(&[("kvm", &[])]);
        let p = HostProbe::probe(&sys.0, &c);
        assert_eq!(p.accel.cpu_avic, None);
        assert_eq!(p.cpu, Finding::LeafAbsent);
    }

    #[test]
    fn this_host_probe_is_consistent() {
        // Whatever the machine, a probe must not panic and must say
        // "no" whenever kvm is loaded without a vendor module.
        let p = HostProbe::run();
        if p.kvm_loaded && p.avic == Finding::NoVendorModule {
            assert_eq!(p.accel.hardware_apic_virtualization(), Some(false));
        }
    }
}
