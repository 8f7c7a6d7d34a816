//! The built-in guest kernel: per-vCPU entry (Hyper-V turned on the way
//! Linux's `hyperv_init` does), exception and interrupt handlers, and a
//! SYSCALL entry that gives the CPL3 scenario code the few privileged
//! operations it needs. CPL0 paths are kept short: on hosts that emulate
//! guest CPL0 code each instruction costs microseconds.

use hv_enlightenments::msr::{
    HV_X64_MSR_EOI, HV_X64_MSR_EOM, HV_X64_MSR_GUEST_OS_ID, HV_X64_MSR_HYPERCALL, HV_X64_MSR_ICR,
    HV_X64_MSR_VP_ASSIST_PAGE, HV_X64_MSR_VP_INDEX,
};
use hv_enlightenments::synic::{MESSAGE_FLAG_PENDING, MESSAGE_FLAGS_OFFSET};
use iced_x86::code_asm::*;

use super::abi::{self, percpu as pc, shared};
use super::asm::{Assembled, Error, assemble};
use crate::guest::layout::{HYPERCALL_PAGE, KERNEL_CODE, TLB_TEST_VA, USER_CODE, XAPIC_MMIO};
use crate::kvm::msr::MSR_APIC_BASE;

/// IA32_APIC_BASE global enable.
const APIC_BASE_EN: u32 = 1 << 11;
/// IA32_APIC_BASE x2APIC mode.
const APIC_BASE_EXTD: u32 = 1 << 10;
/// x2APIC spurious-interrupt vector register (bit 8: software enable).
pub const X2APIC_SVR: u32 = 0x80F;
/// x2APIC EOI register.
pub const X2APIC_EOI: u32 = 0x80B;
/// xAPIC register offsets (SDM Vol. 3 Table 11-1).
pub const XAPIC_EOI_OFFSET: u64 = 0xB0;
/// xAPIC spurious-interrupt vector register.
pub const XAPIC_SVR_OFFSET: u64 = 0xF0;
/// xAPIC ICR low (writing it sends).
pub const XAPIC_ICR_LOW_OFFSET: u64 = 0x300;
/// xAPIC ICR high (destination in bits 31:24).
pub const XAPIC_ICR_HIGH_OFFSET: u64 = 0x310;
/// x2APIC ICR.
pub const X2APIC_ICR: u32 = 0x830;
/// Hypercall code of HvCallSendSyntheticClusterIpi.
pub const HVCALL_SEND_IPI: u64 = 0x000B;
/// Control word "fast" bit.
pub const HV_FAST: u64 = 1 << 16;
/// HvCallSignalEvent.
pub const HVCALL_SIGNAL_EVENT: u64 = 0x005D;

/// Addresses in the assembled kernel.
pub struct Kernel {
    /// The code, to be written at [`KERNEL_CODE`].
    pub code: Vec<u8>,
    /// vCPU entry point (CPL0, long mode).
    pub entry: u64,
    /// System call entry (the `int 0x80` gate).
    pub syscall: u64,
    /// IDT gate targets.
    pub idt: [u64; 256],
}

fn gs(off: u64) -> AsmMemoryOperand {
    qword_ptr(off).gs()
}

/// Exceptions that push an error code (SDM Vol. 3 6.15).
const HAS_ERROR_CODE: [u8; 10] = [8, 10, 11, 12, 13, 14, 17, 21, 29, 30];

/// Assembles the guest kernel.
pub fn build() -> Result<Kernel, Error> {
    let mut a = CodeAssembler::new(64)?;
    let mut entry = a.create_label();
    let mut syscall = a.create_label();
    let mut exc_common = a.create_label();
    let mut eoi = a.create_label();
    let mut send_ipi = a.create_label();
    let mut irq_ipi = a.create_label();
    let mut irq_pong = a.create_label();
    let mut irq_flush = a.create_label();
    let mut irq_wake = a.create_label();
    let mut irq_timer = a.create_label();
    let mut irq_spurious = a.create_label();
    let mut exc: Vec<CodeLabel> = (0..32).map(|_| a.create_label()).collect();

    // ---- entry: RDI = vCPU index, GS base = this vCPU's variables.
    a.set_label(&mut entry)?;
    a.mov(gs(pc::CPU), rdi)?;
    // x2APIC on (IA32_APIC_BASE EN | EXTD), then software-enable it (SVR);
    // or, when asked, stay in xAPIC mode and enable it through MMIO.
    {
        let mut x2 = a.create_label();
        let mut apic_done = a.create_label();
        a.cmp(qword_ptr(shared::XAPIC), 0)?;
        a.je(x2)?;
        a.mov(rax, XAPIC_MMIO + XAPIC_SVR_OFFSET)?;
        a.mov(dword_ptr(rax), 0x1FF)?;
        a.jmp(apic_done)?;
        a.set_label(&mut x2)?;
        a.mov(ecx, MSR_APIC_BASE)?;
        a.rdmsr()?;
        a.or(eax, APIC_BASE_EN | APIC_BASE_EXTD)?;
        a.wrmsr()?;
        a.mov(ecx, X2APIC_SVR)?;
        a.mov(eax, 0x1FF)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.set_label(&mut apic_done)?;
    }
    let mut nohv = a.create_label();
    a.cmp(qword_ptr(shared::HV_ENABLED), 0)?;
    a.je(nohv)?;
    a.mov(ecx, HV_X64_MSR_VP_INDEX)?;
    a.rdmsr()?;
    a.mov(gs(pc::VP_INDEX), rax)?;
    a.mov(ecx, HV_X64_MSR_VP_ASSIST_PAGE)?;
    a.mov(rax, gs(pc::ASSIST))?;
    a.or(eax, 1)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.mov(ecx, HV_X64_MSR_GUEST_OS_ID)?;
    a.mov(eax, abi::GUEST_OS_ID as u32)?;
    a.mov(edx, (abi::GUEST_OS_ID >> 32) as u32)?;
    a.wrmsr()?;
    a.mov(ecx, HV_X64_MSR_HYPERCALL)?;
    a.mov(eax, (HYPERCALL_PAGE | 1) as u32)?;
    a.xor(edx, edx)?;
    a.wrmsr()?;
    a.set_label(&mut nohv)?;
    // To CPL3 at the scenario entry.
    a.push(i32::from(crate::guest::boot::SEL_UDATA))?;
    a.push(gs(pc::USTACK))?;
    a.push(0x202)?;
    a.push(i32::from(crate::guest::boot::SEL_UCODE))?;
    a.push(USER_CODE as i32)?;
    a.iretq()?;

    // ---- exceptions
    for (v, l) in exc.iter_mut().enumerate() {
        a.set_label(l)?;
        if !HAS_ERROR_CODE.contains(&(v as u8)) {
            a.push(0)?;
        }
        a.push(v as i32)?;
        a.jmp(exc_common)?;
    }
    // Stack: rax, vector, error, rip, cs, rflags, rsp, ss.
    a.set_label(&mut exc_common)?;
    a.push(rax)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    a.mov(gs(pc::LAST_VEC), rax)?;
    a.inc(gs(pc::FAULTS))?;
    a.mov(rax, gs(pc::FIXUP))?;
    let mut fatal = a.create_label();
    a.test(rax, rax)?;
    a.jz(fatal)?;
    a.mov(qword_ptr(rsp + 24), rax)?;
    a.mov(gs(pc::FIXUP), 0)?;
    a.pop(rax)?;
    a.add(rsp, 16)?;
    a.iretq()?;
    a.set_label(&mut fatal)?;
    a.mov(rax, qword_ptr(rsp + 8))?;
    a.mov(rdx, qword_ptr(rsp + 24))?;
    a.mov(rsi, qword_ptr(rsp + 16))?;
    a.out(u32::from(abi::PANIC_PORT), al)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(fatal)?;

    // ---- eoi: completes the in-service interrupt; clobbers rax, rcx, rdx.
    a.set_label(&mut eoi)?;
    {
        let mut msr = a.create_label();
        let mut write = a.create_label();
        let mut done = a.create_label();
        let mut not_xapic = a.create_label();
        a.mov(rax, qword_ptr(shared::EOI_MODE))?;
        let mut some = a.create_label();
        a.cmp(rax, abi::eoi_mode::NONE as i32)?;
        a.jne(some)?;
        a.ret()?;
        a.set_label(&mut some)?;
        a.cmp(rax, abi::eoi_mode::XAPIC as i32)?;
        a.jne(not_xapic)?;
        a.mov(rcx, XAPIC_MMIO + XAPIC_EOI_OFFSET)?;
        a.mov(dword_ptr(rcx), 0)?;
        a.ret()?;
        a.set_label(&mut not_xapic)?;
        a.cmp(rax, abi::eoi_mode::LAZY as i32)?;
        a.jne(msr)?;
        a.mov(rcx, gs(pc::ASSIST))?;
        a.btr(dword_ptr(rcx), 0)?;
        let mut lazy = a.create_label();
        a.jc(lazy)?;
        a.set_label(&mut msr)?;
        a.mov(ecx, X2APIC_EOI)?;
        a.test(rax, rax)?;
        a.jz(write)?;
        // Lazy EOI not taken in xAPIC mode without the hint: the MMIO EOI.
        let mut synthetic = a.create_label();
        a.cmp(rax, abi::eoi_mode::LAZY as i32)?;
        a.jne(synthetic)?;
        a.cmp(qword_ptr(shared::XAPIC), 0)?;
        a.je(synthetic)?;
        a.cmp(qword_ptr(shared::APIC_ACCESS_HINT), 0)?;
        a.jne(synthetic)?;
        a.mov(rcx, XAPIC_MMIO + XAPIC_EOI_OFFSET)?;
        a.mov(dword_ptr(rcx), 0)?;
        a.ret()?;
        a.set_label(&mut synthetic)?;
        a.mov(ecx, HV_X64_MSR_EOI)?;
        a.set_label(&mut write)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.jmp(done)?;
        a.set_label(&mut lazy)?;
        a.inc(gs(pc::LAZY_EOIS))?;
        a.set_label(&mut done)?;
        a.ret()?;
    }

    // ---- send_ipi: vector in esi to vCPU edi (APIC ID = VP index = vCPU
    // index in this VMM); clobbers rax, rcx, rdx, r8.
    a.set_label(&mut send_ipi)?;
    {
        let mut pv = a.create_label();
        let mut not_xapic = a.create_label();
        a.cmp(qword_ptr(shared::IPI_MODE), 2)?;
        a.jne(not_xapic)?;
        a.mov(rcx, XAPIC_MMIO)?;
        a.mov(eax, edi)?;
        a.shl(eax, 24)?;
        a.mov(dword_ptr(rcx + XAPIC_ICR_HIGH_OFFSET), eax)?;
        a.mov(dword_ptr(rcx + XAPIC_ICR_LOW_OFFSET), esi)?;
        a.ret()?;
        a.set_label(&mut not_xapic)?;
        let mut not_synthetic = a.create_label();
        a.cmp(qword_ptr(shared::IPI_MODE), 3)?;
        a.jne(not_synthetic)?;
        // HV_X64_MSR_ICR in xAPIC mode: destination in bits 63:56.
        a.mov(ecx, HV_X64_MSR_ICR)?;
        a.mov(eax, esi)?;
        a.mov(edx, edi)?;
        a.shl(edx, 24)?;
        a.wrmsr()?;
        a.ret()?;
        a.set_label(&mut not_synthetic)?;
        a.cmp(qword_ptr(shared::IPI_MODE), 0)?;
        a.jne(pv)?;
        a.mov(ecx, X2APIC_ICR)?;
        a.mov(eax, esi)?;
        a.mov(edx, edi)?;
        a.wrmsr()?;
        a.ret()?;
        a.set_label(&mut pv)?;
        a.mov(ecx, (HVCALL_SEND_IPI | HV_FAST) as u32)?;
        a.mov(edx, esi)?;
        a.xor(r8d, r8d)?;
        a.bts(r8, rdi)?;
        a.mov(rax, HYPERCALL_PAGE)?;
        a.jmp(rax)?;
    }

    // ---- interrupt handlers
    let save = |a: &mut CodeAssembler| -> Result<(), iced_x86::IcedError> {
        for r in [rax, rcx, rdx, rsi, rdi, r8] {
            a.push(r)?;
        }
        Ok(())
    };
    let restore = |a: &mut CodeAssembler| -> Result<(), iced_x86::IcedError> {
        for r in [r8, rdi, rsi, rdx, rcx, rax] {
            a.pop(r)?;
        }
        a.iretq()
    };
    a.set_label(&mut irq_ipi)?;
    save(&mut a)?;
    a.inc(gs(pc::IPI_COUNT))?;
    a.lock().inc(qword_ptr(shared::ACKS))?;
    {
        // A SynIC message ping: free the slot, EOM if another waits,
        // reply with an event (fast HvSignalEvent).
        let mut no_synic = a.create_label();
        let mut no_eom = a.create_label();
        a.mov(rax, qword_ptr(shared::SYNIC_PING_SLOT))?;
        a.test(rax, rax)?;
        a.jz(no_synic)?;
        a.cmp(gs(pc::CPU), 0)?;
        a.je(no_synic)?;
        a.mov(dword_ptr(rax), 0)?;
        a.test(
            byte_ptr(rax + MESSAGE_FLAGS_OFFSET),
            u32::from(MESSAGE_FLAG_PENDING),
        )?;
        a.jz(no_eom)?;
        a.mov(ecx, HV_X64_MSR_EOM)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.set_label(&mut no_eom)?;
        a.mov(ecx, (HVCALL_SIGNAL_EVENT | HV_FAST) as u32)?;
        a.mov(rdx, qword_ptr(shared::SYNIC_EVENT_INPUT))?;
        a.xor(r8d, r8d)?;
        a.mov(rax, HYPERCALL_PAGE)?;
        a.call(rax)?;
        a.set_label(&mut no_synic)?;
    }
    {
        let mut no_pong = a.create_label();
        a.cmp(qword_ptr(shared::PONG), 0)?;
        a.je(no_pong)?;
        a.cmp(gs(pc::CPU), 0)?;
        a.je(no_pong)?;
        a.xor(edi, edi)?;
        a.mov(esi, u32::from(abi::VEC_PONG))?;
        a.call(send_ipi)?;
        a.set_label(&mut no_pong)?;
    }
    a.call(eoi)?;
    restore(&mut a)?;

    a.set_label(&mut irq_pong)?;
    save(&mut a)?;
    {
        // A SynIC event reply: clear its flag first, so the next signal
        // sets it again (only a 0 -> 1 change raises the interrupt).
        let mut no_flags = a.create_label();
        a.mov(rax, qword_ptr(shared::SYNIC_EVENT_FLAGS))?;
        a.test(rax, rax)?;
        a.jz(no_flags)?;
        a.lock().btr(qword_ptr(rax), 0)?;
        a.set_label(&mut no_flags)?;
    }
    a.inc(gs(pc::PONG_COUNT))?;
    a.call(eoi)?;
    restore(&mut a)?;

    a.set_label(&mut irq_flush)?;
    save(&mut a)?;
    a.mov(rax, TLB_TEST_VA)?;
    a.invlpg(byte_ptr(rax))?;
    a.inc(gs(pc::FLUSH_COUNT))?;
    a.lock().inc(qword_ptr(shared::ACKS))?;
    a.call(eoi)?;
    restore(&mut a)?;

    // The wake handler also samples the TLB test window, so a vCPU that
    // was halted through a shootdown shows what it sees after it.
    a.set_label(&mut irq_wake)?;
    save(&mut a)?;
    a.mov(rax, TLB_TEST_VA)?;
    a.mov(rax, qword_ptr(rax))?;
    a.mov(gs(pc::SEEN_VAL), rax)?;
    a.inc(gs(pc::WAKE_COUNT))?;
    a.call(eoi)?;
    restore(&mut a)?;

    a.set_label(&mut irq_timer)?;
    save(&mut a)?;
    a.inc(gs(pc::TIMER_COUNT))?;
    {
        // A synthetic timer's message: free the slot, EOM if another
        // message waits behind it.
        let mut no_msg = a.create_label();
        a.mov(rax, qword_ptr(shared::STIMER_SLOT))?;
        a.test(rax, rax)?;
        a.jz(no_msg)?;
        a.mov(dword_ptr(rax), 0)?;
        a.test(
            byte_ptr(rax + MESSAGE_FLAGS_OFFSET),
            u32::from(MESSAGE_FLAG_PENDING),
        )?;
        a.jz(no_msg)?;
        a.mov(ecx, HV_X64_MSR_EOM)?;
        a.xor(eax, eax)?;
        a.xor(edx, edx)?;
        a.wrmsr()?;
        a.set_label(&mut no_msg)?;
    }
    a.call(eoi)?;
    restore(&mut a)?;

    // Spurious and unexpected vectors: complete and count nothing.
    a.set_label(&mut irq_spurious)?;
    save(&mut a)?;
    a.call(eoi)?;
    restore(&mut a)?;

    // ---- System calls: `int3` (a DPL3 gate, see abi::VEC_SYSCALL). RAX = call,
    // RDI/RSI/RDX = arguments, result in RAX; RCX, RDX, R8 and R9 are
    // clobbered.
    a.set_label(&mut syscall)?;
    {
        let mut l_wrmsr = a.create_label();
        let mut l_rdmsr = a.create_label();
        let mut l_hc = a.create_label();
        let mut l_halt = a.create_label();
        let mut l_halt_until = a.create_label();
        let mut l_invlpg = a.create_label();
        let mut ok = a.create_label();
        let mut ret = a.create_label();
        let mut fault = a.create_label();
        a.mov(gs(pc::SYS_RSP), rsp)?;
        a.cmp(eax, abi::SYS_WRMSR)?;
        a.je(l_wrmsr)?;
        a.cmp(eax, abi::SYS_HALT)?;
        a.je(l_halt)?;
        a.cmp(eax, abi::SYS_HALT_UNTIL)?;
        a.je(l_halt_until)?;
        a.cmp(eax, abi::SYS_HYPERCALL)?;
        a.je(l_hc)?;
        a.cmp(eax, abi::SYS_RDMSR)?;
        a.je(l_rdmsr)?;
        a.cmp(eax, abi::SYS_INVLPG)?;
        a.je(l_invlpg)?;
        let mut l_call0 = a.create_label();
        a.cmp(eax, abi::SYS_CALL0)?;
        a.je(l_call0)?;
        a.mov(rax, -1i64)?;
        a.jmp(ret)?;

        a.set_label(&mut l_wrmsr)?;
        a.lea(rax, ptr(fault))?;
        a.mov(gs(pc::FIXUP), rax)?;
        a.mov(ecx, edi)?;
        a.mov(eax, esi)?;
        a.mov(rdx, rsi)?;
        a.shr(rdx, 32)?;
        a.wrmsr()?;
        a.xor(eax, eax)?;
        a.jmp(ok)?;

        a.set_label(&mut l_rdmsr)?;
        a.lea(rax, ptr(fault))?;
        a.mov(gs(pc::FIXUP), rax)?;
        a.mov(ecx, edi)?;
        a.rdmsr()?;
        a.shl(rdx, 32)?;
        a.or(rax, rdx)?;
        a.jmp(ok)?;

        a.set_label(&mut l_hc)?;
        a.lea(rax, ptr(fault))?;
        a.mov(gs(pc::FIXUP), rax)?;
        a.mov(rcx, rdi)?;
        a.mov(r8, rdx)?;
        a.mov(rdx, rsi)?;
        a.mov(r9, HYPERCALL_PAGE)?;
        a.call(r9)?;
        a.jmp(ok)?;

        // The gate cleared IF: no interrupt between this check and the
        // halt (`sti` holds interrupts off for one more instruction).
        a.set_label(&mut l_halt_until)?;
        a.cmp(qword_ptr(rdi).gs(), rsi)?;
        a.mov(eax, 0)?;
        a.jae(ret)?;
        a.set_label(&mut l_halt)?;
        a.sti()?;
        a.hlt()?;
        a.cli()?;
        a.xor(eax, eax)?;
        a.jmp(ret)?;

        a.set_label(&mut l_invlpg)?;
        a.invlpg(byte_ptr(rdi))?;
        a.xor(eax, eax)?;
        a.jmp(ret)?;

        a.set_label(&mut l_call0)?;
        a.lea(rax, ptr(fault))?;
        a.mov(gs(pc::FIXUP), rax)?;
        a.call(rdi)?;
        a.jmp(ok)?;

        a.set_label(&mut ok)?;
        a.mov(gs(pc::FIXUP), 0)?;
        a.set_label(&mut ret)?;
        a.iretq()?;

        // A fault inside a call (the hypercall page) leaves the return
        // address behind: go back to the entry stack.
        a.set_label(&mut fault)?;
        a.mov(rsp, gs(pc::SYS_RSP))?;
        a.mov(rax, gs(pc::LAST_VEC))?;
        a.bts(rax, 63)?;
        a.jmp(ret)?;
    }

    let mut want = vec![
        entry,
        syscall,
        irq_ipi,
        irq_pong,
        irq_flush,
        irq_wake,
        irq_timer,
        irq_spurious,
    ];
    want.extend(exc.iter().copied());
    let Assembled { code, labels } = assemble(&mut a, KERNEL_CODE, &want)?;
    let spurious = labels[7];
    let mut idt = [spurious; 256];
    idt[..32].copy_from_slice(&labels[8..40]);
    idt[usize::from(abi::VEC_IPI)] = labels[2];
    idt[usize::from(abi::VEC_PONG)] = labels[3];
    idt[usize::from(abi::VEC_FLUSH)] = labels[4];
    idt[usize::from(abi::VEC_WAKE)] = labels[5];
    idt[usize::from(abi::VEC_TIMER)] = labels[6];
    idt[usize::from(abi::VEC_SYSCALL)] = labels[1];
    Ok(Kernel {
        code,
        entry: labels[0],
        syscall: labels[1],
        idt,
    })
}
