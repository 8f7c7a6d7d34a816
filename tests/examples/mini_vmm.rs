//! The smallest VMM serving Hyper-V PV IPIs and lazy EOI from the library
//! crates alone, on `kvm-ioctls` (userspace irqchip) and `vm-memory`: vCPU 0
//! sends fast SendSyntheticClusterIpi calls to vCPU 1, which halts between.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use hv_enlightenments::HV_PAGE_SIZE;
use hv_enlightenments::cpuid::{CpuidBuilder, Enlightenments};
use hv_enlightenments::hypercall::{self as hc, HvStatus, HypercallTrap};
use hv_enlightenments::msr::VP_ASSIST_APIC_ASSIST_OFFSET as APIC_ASSIST;
use hv_enlightenments::msr::{self, APIC_ASSIST_NO_EOI_REQUIRED as NO_EOI};
use hv_enlightenments::msr::{GuestMemoryWrite, MsrOutcome, Vp};
use iced_x86::{BlockEncoderOptions, code_asm::*};
use ipiv::{HaltCheck, Notify, PidTable, PostedVcpu};
use kvm_bindings::KVM_MSR_EXIT_REASON_FILTER as FILTER;
use kvm_bindings::{KVM_CAP_X86_USER_SPACE_MSR, kvm_interrupt};
use kvm_ioctls::{Kvm, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags};
use kvm_ioctls::{SyncReg, VcpuExit, VcpuFd, WriteMsrExit};
use lapic::{Config, LocalApic, ManualClock, regs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::signal::SIGRTMIN;

/// Errors end the run with a message.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Usage; IPIs the example sends; the least share (%) of lazy EOIs; time.
const USAGE: &str = "usage: mini_vmm  (boots a 2-vCPU guest that sends 100 PV IPIs)";
const IPIS: u32 = 100;
const LAZY_MIN_PERCENT: u64 = 90;
const TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);
/// vCPUs: the sender (0) and the receiver. VP index = APIC ID = vCPU index.
const VCPUS: usize = 2;
const RECEIVER: u32 = 1;
/// Guest RAM (one identity-mapped 2 MiB page) and what is where in it.
const RAM_SIZE: u64 = 2 << 20;
const PML4: u64 = 0x1000;
const PDPT: u64 = 0x2000;
const PD: u64 = 0x3000;
const GDT: u64 = 0x4000;
const IDT: u64 = 0x5000;
const HYPERCALL_PAGE: u64 = 0x6000;
const VP_ASSIST: [u64; VCPUS] = [0x7000, 0x8000];
const RECEIVED: u64 = 0x9000;
const LAZY: u64 = 0x9008;
const CODE: u64 = 0x1_0000;
const STACK_TOP: [u64; VCPUS] = [0x2_0000, 0x3_0000];
/// IPI vector, hypercall trap (`out 0xE0, al`), report ports (handled, lazy).
const IPI_VECTOR: u8 = 0x40;
const TRAP: HypercallTrap = HypercallTrap::PortIo { port: 0xE0 };
const PORT_RECEIVED: u16 = 0xF0;
const PORT_LAZY: u16 = 0xF1;
/// HV_X64_MSR_GUEST_OS_ID: open source (bit 63), vendor Linux (0x100), v0.
const GUEST_OS_ID: u64 = 0x8100_0000_0000_0000;
/// Long mode (SDM Vol. 3 2.5, 4.5): CR0, CR4.PAE, EFER LME|LMA, PTE bits.
const CR0_LONG: u64 = 0x8005_0033;
const CR4_PAE: u64 = 1 << 5;
const EFER_LMA: u64 = 1 << 10;
const EFER_LONG: u64 = (1 << 8) | EFER_LMA;
const PTE_PW: u64 = 0b11;
const PTE_PS: u64 = 1 << 7;
/// GDT (null, 64-bit code at 0x08); IDT: 16-byte interrupt gates, DPL 0.
const GDT_ENTRIES: [u64; 2] = [0, 0x00AF_9A00_0000_FFFF];
const SEL_CODE: u64 = 0x08;
const GATE_INTERRUPT: u64 = 0x8E;
const GATE_SIZE: u64 = 16;

vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, kvm_bindings::KVMIO, 0x86, kvm_interrupt);

/// Emits instructions, one assembly line each: `asm!(a; cpuid(); hlt())`.
macro_rules! asm {
    ($a:ident; $($op:ident($($arg:expr),*));+ $(;)?) => { $($a.$op($($arg),*)?;)+ };
}

/// A vCPU thread (to unpark), its pthread id and `kvm_run.immediate_exit`.
struct Waker(Thread, libc::pthread_t, usize);

impl Waker {
    fn set_immediate_exit(&self, value: u8) {
        // SAFETY: the byte is in a kvm_run mapping its VcpuFd keeps until
        // the vCPU threads were joined; the VMM only uses this atomic.
        unsafe { AtomicU8::from_ptr(self.2 as *mut u8) }.store(value, SeqCst);
    }

    /// Out of `KVM_RUN` (or a sleep in HLT: it is unparked too).
    fn kick(&self) {
        self.0.unpark();
        self.set_immediate_exit(1);
        // SAFETY: a scoped vCPU thread, joined after every kick: a valid id.
        unsafe { libc::pthread_kill(self.1, SIGRTMIN()) };
    }
}

/// The kick signal's handler: delivery alone makes `KVM_RUN` return.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// What the vCPU threads share (`pids`: posted vectors and run states).
struct Vm {
    mem: GuestMemoryMmap,
    partition: Mutex<msr::Partition>,
    pids: PidTable,
    wakers: [OnceLock<Waker>; VCPUS],
    done: AtomicBool,
    counts: Mutex<Summary>,
}

/// The guest's report (handled, lazily), the VMM's counts (lazy, EOI exits).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub received: u32,
    pub guest_lazy: u32,
    pub lazy_eois: u64,
    pub eoi_exits: u64,
}

/// Runs the guest; its counts if each IPI arrived once, nearly all lazily.
pub fn run(ipis: u32) -> Result<Summary> {
    let kvm = Kvm::new()?;
    // Hyper-V leaves for a userspace APIC without APICv (the defaults).
    let plan = CpuidBuilder::new(VCPUS as u32)
        .enlightenments(Enlightenments::APIC_ACCESS | Enlightenments::PV_IPI)
        .build()?;
    let supported = kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)?;
    let mut cpuid = supported.as_slice().to_vec();
    plan.cpuid.apply_to_kvm_entries(&mut cpuid);
    let vm = Vm {
        mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM_SIZE as usize)])?,
        partition: Mutex::new(msr::Partition::new((&plan).into())),
        pids: PidTable::new(VCPUS as u32 - 1)?,
        wakers: Default::default(),
        done: AtomicBool::new(false),
        counts: Mutex::default(),
    };
    let starts = load_guest(&vm.mem, ipis)?;
    let vm_fd = kvm.create_vm()?;
    let mut cap = kvm_bindings::kvm_enable_cap::default();
    (cap.cap, cap.args[0]) = (KVM_CAP_X86_USER_SPACE_MSR, FILTER.into());
    vm_fd.enable_cap(&cap)?;
    // Synthetic MSRs exit: a clear bit denies, a denied access exits.
    let count = msr::HV_X64_MSR_RANGE_END - msr::HV_X64_MSR_RANGE_START;
    let range = MsrFilterRange {
        flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
        base: msr::HV_X64_MSR_RANGE_START,
        msr_count: count,
        bitmap: &vec![0; count.div_ceil(8) as usize],
    };
    vm_fd.set_msr_filter(MsrFilterDefaultAction::ALLOW, &[range])?;
    let mut region = kvm_bindings::kvm_userspace_memory_region::default();
    let host = vm.mem.get_host_address(GuestAddress(0))? as u64;
    (region.memory_size, region.userspace_addr) = (RAM_SIZE, host);
    // SAFETY: `region` maps `vm.mem`, which outlives `vm_fd` (created later).
    unsafe { vm_fd.set_user_memory_region(region) }?;
    let mut vcpus = Vec::new();
    for (i, start) in starts.into_iter().enumerate() {
        let fd = vm_fd.create_vcpu(i as u64)?;
        fd.set_cpuid2(&kvm_bindings::CpuId::from_entries(&cpuid)?)?;
        let mut sregs = fd.get_sregs()?;
        (sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer) = (CR0_LONG, PML4, CR4_PAE, EFER_LONG);
        (sregs.cs.base, sregs.cs.selector, sregs.cs.l) = (0, SEL_CODE as u16, 1);
        (sregs.gdt.base, sregs.idt.base) = (GDT, IDT); // reset limits: 0xFFFF
        fd.set_sregs(&sregs)?;
        // 64-bit mode at `start`, RDI = the VP assist page to enable.
        let mut regs = fd.get_regs()?;
        (regs.rip, regs.rsp, regs.rdi) = (start, STACK_TOP[i], VP_ASSIST[i]);
        fd.set_regs(&regs)?;
        let vp = Vp::new(i as u32, plan.privileges())?;
        vcpus.push((fd, vm.pids.register(i as u32)?, vp));
    }
    vmm_sys_util::signal::register_signal_handler(SIGRTMIN(), on_kick)?;
    let vm = &vm;
    thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (vcpus.iter_mut().enumerate())
            .map(|(i, (fd, me, vp))| s.spawn(move || run_vcpu(vm, i, fd, me, vp)))
            .collect();
        let deadline = Instant::now() + TIMEOUT;
        while !handles.iter().any(|h| h.is_finished()) && Instant::now() < deadline {
            thread::sleep(POLL);
        }
        vm.done.store(true, SeqCst);
        for waker in vm.wakers.iter().filter_map(OnceLock::get) {
            waker.kick();
        }
        for (i, h) in handles.into_iter().enumerate() {
            let result = h.join().unwrap_or(Err("panic".into()));
            result.map_err(|e| format!("vCPU {i}: {e}"))?;
        }
        Ok(())
    })?;
    let (s, n) = (*lock(&vm.counts), u64::from(ipis));
    let lazy = u64::from(s.guest_lazy) == s.lazy_eois && s.lazy_eois + s.eoi_exits == n;
    match u64::from(s.received) == n && lazy && s.lazy_eois * 100 >= n * LAZY_MIN_PERCENT {
        true => Ok(s),
        false => Err(format!("{ipis} IPIs: lost, repeated, eager or late: {s:?}").into()),
    }
}

/// Writes the guest (its call from the crate's encoder), page tables, GDT, IDT.
fn load_guest(mem: &GuestMemoryMmap, ipis: u32) -> Result<[u64; VCPUS]> {
    let mut page = [0u8; HV_PAGE_SIZE];
    let targets = hc::Targets::new(&[RECEIVER]);
    let call = hc::encode_send_ipi(targets, IPI_VECTOR, Default::default(), &mut page, 0)?;
    let mut a = CodeAssembler::new(64)?;
    let [mut sender, mut receiver, mut handler, mut setup] = [(); 4].map(|()| a.create_label());
    let [mut next, mut wait, mut report] = [(); 3].map(|()| a.create_label());
    let [mut idle, mut lazy, mut done] = [(); 3].map(|()| a.create_label());
    let assist = VP_ASSIST[RECEIVER as usize] + APIC_ASSIST;
    let no_eoi = NO_EOI.trailing_zeros();
    // setup: GUEST_OS_ID, HYPERCALL = page | 1, VP_ASSIST_PAGE = RDI | 1.
    asm!(a; set_label(&mut setup); mov(ecx, msr::HV_X64_MSR_GUEST_OS_ID); xor(eax, eax);
        mov(edx, (GUEST_OS_ID >> 32) as u32); wrmsr(); mov(ecx, msr::HV_X64_MSR_HYPERCALL);
        mov(eax, HYPERCALL_PAGE as u32 | 1); xor(edx, edx); wrmsr();
        mov(ecx, msr::HV_X64_MSR_VP_ASSIST_PAGE); lea(eax, ptr(rdi + 1)); wrmsr(); ret());
    // sender: an IPI, wait until handled, again; report (also on failure).
    asm!(a; set_label(&mut sender); call(setup); xor(r12d, r12d); set_label(&mut next); inc(r12);
        mov(rcx, call.rcx()); mov(rdx, call.rdx); mov(r8, call.r8);
        mov(rax, HYPERCALL_PAGE); call(rax); test(rax, rax); jnz(report);
        set_label(&mut wait); pause(); cmp(qword_ptr(RECEIVED), r12); jb(wait);
        cmp(r12d, ipis); jb(next); set_label(&mut report);
        mov(eax, dword_ptr(RECEIVED)); out(u32::from(PORT_RECEIVED), eax);
        mov(eax, dword_ptr(LAZY)); out(u32::from(PORT_LAZY), eax); cli(); hlt());
    // receiver: halt with interrupts on. handler: hv_apic_eoi_write, count.
    asm!(a; set_label(&mut receiver); call(setup); sti(); set_label(&mut idle); hlt(); jmp(idle);
        set_label(&mut handler); push(rax); push(rcx); push(rdx); btr(dword_ptr(assist), no_eoi);
        jc(lazy); mov(ecx, msr::HV_X64_MSR_EOI); xor(eax, eax); xor(edx, edx); wrmsr(); jmp(done);
        set_label(&mut lazy); inc(qword_ptr(LAZY));
        set_label(&mut done); inc(qword_ptr(RECEIVED)); pop(rdx); pop(rcx); pop(rax); iretq());
    let r = a.assemble_options(CODE, BlockEncoderOptions::RETURN_NEW_INSTRUCTION_OFFSETS)?;
    let isr = r.label_ip(&handler)?;
    let gate = (isr & 0xFFFF) | SEL_CODE << 16 | GATE_INTERRUPT << 40 | (isr >> 16 & 0xFFFF) << 48;
    let idt_gate = IDT + u64::from(IPI_VECTOR) * GATE_SIZE;
    // Gate bits 127:64 (offset 63:32) stay 0: the handler is below 4 GiB.
    let writes: [(u64, &[u8]); 6] = [
        (PML4, &(PDPT | PTE_PW).to_le_bytes()),
        (PDPT, &(PD | PTE_PW).to_le_bytes()),
        (PD, &(PTE_PW | PTE_PS).to_le_bytes()),
        (GDT, &GDT_ENTRIES.map(u64::to_le_bytes).concat()),
        (idt_gate, &gate.to_le_bytes()),
        (CODE, &r.inner.code_buffer),
    ];
    for (gpa, bytes) in writes {
        mem.write_slice(bytes, GuestAddress(gpa))?;
    }
    Ok([r.label_ip(&sender)?, r.label_ip(&receiver)?])
}

/// Runs vCPU `i` until the guest reports, the VM stops, or an error.
fn run_vcpu(vm: &Vm, i: usize, fd: &mut VcpuFd, me: &PostedVcpu, vp: &mut Vp) -> Result<()> {
    let mut apic = LocalApic::new(Config::new(i as u32), Arc::new(ManualClock::new(0)))?;
    // Software-enabled, as firmware leaves it: this guest never touches it.
    let svr = regs::SVR_RESET | regs::SVR_ENABLE;
    let _ = apic.write_mmio(regs::SVR.into(), &svr.to_le_bytes());
    fd.set_sync_valid_reg(SyncReg::Register);
    fd.set_sync_valid_reg(SyncReg::SystemRegister);
    // SAFETY: pthread_self has no preconditions.
    let pthread = unsafe { libc::pthread_self() };
    let exit_flag = &raw mut fd.get_kvm_run().immediate_exit as usize;
    let waker = Waker(thread::current(), pthread, exit_flag);
    let waker = vm.wakers.get(i).ok_or("no vCPU")?.get_or_init(|| waker);
    let (run_state, pir) = (me.run_state(), me.descriptor());
    while !vm.done.load(SeqCst) {
        // Entry: posted vectors, then inject or ask for a window, arm lazy EOI.
        apic.deliver_fixed_vectors(run_state.enter_guest(pir));
        let run = fd.get_kvm_run();
        let ready = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        if let Some(v) = apic.pending().filter(|_| ready) {
            let irq = kvm_interrupt { irq: u32::from(v) };
            // SAFETY: KVM_INTERRUPT reads one kvm_interrupt from `irq`,
            // which outlives the call; `fd` is a vCPU fd.
            if unsafe { vmm_sys_util::ioctl::ioctl_with_ref(fd, KVM_INTERRUPT(), &irq) } < 0 {
                return Err(format!("KVM_INTERRUPT: {}", std::io::Error::last_os_error()).into());
            }
            apic.acknowledge(v);
        }
        fd.get_kvm_run().request_interrupt_window = u8::from(apic.pending().is_some());
        let assist = vp.vp_assist_page().map(|p| GuestAddress(p + APIC_ASSIST));
        if let Some(gpa) = assist.filter(|_| apic.arm_lazy_eoi()) {
            vm.mem.write_obj(NO_EOI, gpa)?;
        }
        let exit = fd.run();
        // Exit: perform the EOI the guest skipped, take what was posted.
        let posted = run_state.leave_guest(pir);
        if let Some(gpa) = assist.filter(|_| apic.lazy_eoi_armed()) {
            let bits: u32 = vm.mem.read_obj(gpa)?;
            vm.mem.write_obj(bits & !NO_EOI, gpa)?;
            let eoi = apic.complete_lazy_eoi(bits & NO_EOI == 0);
            lock(&vm.counts).lazy_eois += u64::from(eoi.is_some());
        }
        apic.deliver_fixed_vectors(posted);
        match exit {
            Ok(VcpuExit::Hlt) if apic.pending().is_none() => {
                while !vm.done.load(SeqCst) && run_state.prepare_halt(pir) == HaltCheck::Sleep {
                    thread::park();
                }
            }
            Ok(VcpuExit::Hlt | VcpuExit::IrqWindowOpen) => {}
            Ok(VcpuExit::IoOut(port, data)) => {
                let value = data.iter().rev().fold(0, |acc, &b| acc << 8 | u32::from(b));
                match port {
                    p if Some(p) == TRAP.io_port() => hypercall(vm, fd)?,
                    PORT_RECEIVED => lock(&vm.counts).received = value,
                    PORT_LAZY => {
                        lock(&vm.counts).guest_lazy = value;
                        return Ok(());
                    }
                    _ => return Err(format!("guest wrote {value:#x} to port {port:#x}").into()),
                }
            }
            Ok(VcpuExit::X86Wrmsr(exit)) => wrmsr(vm, vp, &mut apic, exit)?,
            Err(e) if e.errno() == libc::EINTR => waker.set_immediate_exit(0),
            other => return Err(format!("unexpected exit {other:?}").into()),
        }
    }
    Ok(())
}

/// A synthetic MSR write, refused with #GP as the crates say.
fn wrmsr(vm: &Vm, vp: &mut Vp, apic: &mut LocalApic, exit: WriteMsrExit) -> Result<()> {
    let (index, value) = (exit.index, exit.data);
    // Pages the guest enables must be RAM (the crate passes aligned GPAs).
    let ram = |gpa: u64| gpa < RAM_SIZE;
    let out = msr::write(&mut lock(&vm.partition), vp, index, value, &ram);
    let (gp, write) = match out {
        MsrOutcome::Apic(_) => {
            // EOI, TPR, ICR (an ICR IPI is not routed: this guest uses PV IPIs).
            lock(&vm.counts).eoi_exits += u64::from(index == msr::HV_X64_MSR_EOI);
            (apic.write_msr(index, value).is_gp(), None)
        }
        MsrOutcome::Action(action) => (false, action.guest_memory_write()),
        other => (other != MsrOutcome::Done, None),
    };
    *exit.error = u8::from(gp);
    let (gpa, bytes) = match write {
        Some(GuestMemoryWrite::HypercallStub { gpa }) => (gpa, TRAP.stub().page().to_vec()),
        Some(GuestMemoryWrite::Zero { gpa, len }) => (gpa, vec![0; len]),
        None => return Ok(()),
    };
    Ok(vm.mem.write_slice(&bytes, GuestAddress(gpa))?)
}

/// The hypercall trap.
fn hypercall(vm: &Vm, fd: &mut VcpuFd) -> Result<()> {
    let (regs, sregs) = (fd.sync_regs().regs, fd.sync_regs().sregs);
    if !hc::caller_may_call_sregs(&sregs) {
        // A full VMM injects #UD; this guest only calls from CPL 0.
        return Err("hypercall from CPL > 0 or real mode".into());
    }
    let mode = hc::HypercallMode::from(&sregs);
    let hregs = hc::HypercallGprs::from(&regs).hypercall_regs(mode);
    let status = match hc::decode(&hregs, &vm.mem) {
        Ok(hc::Hypercall::SendIpi(ipi)) => {
            for vp in ipi.targets.iter_present(VCPUS as u32) {
                // VP index = APIC ID; ipiv says how to notify.
                let notify = vm.pids.post_one(vp, ipi.vector)?;
                match (notify, vm.wakers.get(vp as usize).and_then(OnceLock::get)) {
                    (Notify::Kick, Some(w)) => w.kick(),
                    (Notify::Wake, Some(w)) => w.0.unpark(),
                    _ => {}
                }
            }
            HvStatus::SUCCESS
        }
        Ok(_) => HvStatus::INVALID_HYPERCALL_CODE,
        Err(status) => status,
    };
    let out = &mut fd.sync_regs_mut().regs;
    let result = hc::HypercallResult::from(status).encode();
    mode.result_regs(result).apply(&mut out.rax, &mut out.rdx);
    fd.set_sync_dirty_reg(SyncReg::Register);
    Ok(())
}

/// Locks `m`; a panicked holder left a usable value.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        println!("{USAGE}");
        return ExitCode::from(u8::from(args != ["--help"]));
    }
    match run(IPIS) {
        Ok(s) => {
            let (n, lazy, exits) = (s.received, s.lazy_eois, s.eoi_exits);
            print!("mini_vmm: {n} PV IPIs delivered, {lazy} completed by lazy EOI, ");
            println!("{exits} EOI exits");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mini_vmm: {e}");
            ExitCode::FAILURE
        }
    }
}
