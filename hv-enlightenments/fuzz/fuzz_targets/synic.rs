//! Fuzzes the SynIC data path with guest-controlled input: the
//! HvPostMessage/HvSignalEvent decoder (memory and fast forms), the
//! connection table's routing, and delivery into message and event flags
//! pages whose contents the guest controls.
//!
//! Input layout: RCX, RDX offset (8 bytes each), SINT value, SIMP/SIEFP
//! selector (1 byte each), then the bytes of guest memory mapped at `BASE`
//! (the hypercall input and the SynIC pages).

#![no_main]

use hv_enlightenments::cpuid::Privileges;
use hv_enlightenments::hypercall::{CallCode, HypercallRegs};
use hv_enlightenments::msr::{self, Vp};
use hv_enlightenments::synic::{
    CellMemory, Connection, Connections, MessageQueue, PortKind, PortTarget, Route, SynicHypercall,
    decode_synic, signal_event,
};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x10_0000;
const HEADER: usize = 8 + 8 + 2;

fn word(data: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = data.get(i * 8..i * 8 + 8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let mut rcx = word(data, 0);
    // Mostly one of the two codes.
    if rcx & 0x8000 == 0 {
        let code = if rcx & 1 == 0 {
            CallCode::POST_MESSAGE
        } else {
            CallCode::SIGNAL_EVENT
        };
        rcx = (rcx & !0xFFFF) | u64::from(code.0);
    }
    let rdx_off = word(data, 1);
    let sint_value = u64::from(data.get(16).copied().unwrap_or(0x30));
    let pages = data.get(17).copied().unwrap_or(0);
    let mut mem_bytes = data.get(HEADER..).unwrap_or(&[]).to_vec();
    mem_bytes.resize(mem_bytes.len().max(0x2000), 0);
    let mem = CellMemory::new(BASE, &mut mem_bytes);

    // Fast calls take RDX as is; memory calls point into the buffer.
    let rdx = if rcx & (1 << 16) != 0 {
        rdx_off
    } else {
        BASE.wrapping_add(rdx_off % 0x2100)
    };
    let regs = HypercallRegs {
        rcx,
        rdx,
        ..Default::default()
    };
    let Ok(call) = decode_synic(&regs, &mem) else {
        return;
    };

    let mut table: Connections<4> = Connections::new();
    let target = PortTarget::Vp {
        vp_index: 0,
        sint: (pages >> 4) & 0xF,
    };
    let _ = table.insert(
        call_connection(&call),
        Connection {
            port_id: 1,
            kind: if pages & 1 == 0 {
                PortKind::Message
            } else {
                PortKind::Event {
                    base_flag: 0,
                    flag_count: 2048,
                }
            },
            target,
        },
    );

    let mut vp = Vp::new(0, Privileges::all()).expect("VP 0");
    let ram = |_gpa: u64| true;
    let _ = vp.write(msr::HV_X64_MSR_SCONTROL, u64::from(pages >> 1 & 1), &ram);
    let _ = vp.write(msr::HV_X64_MSR_SIMP, BASE | 1, &ram);
    let _ = vp.write(
        msr::HV_X64_MSR_SIEFP,
        (BASE + 0x1000) | u64::from(pages >> 2 & 1),
        &ram,
    );
    for n in 0..16 {
        let _ = vp.write(
            msr::HV_X64_MSR_SINT0 + n,
            sint_value | (u64::from(pages >> 3 & 1) << 16),
            &ram,
        );
    }
    let mut queue = MessageQueue::new();
    match table.route(&call) {
        Ok(Route::Message { sint, message, .. }) => {
            for _ in 0..3 {
                let _ = queue.post(&vp, sint, &message, &mem);
            }
            let _ = queue.end_of_message(&vp, &mem);
        }
        Ok(Route::Event { sint, flag, .. }) => {
            let _ = signal_event(&vp, sint, flag, &mem);
        }
        _ => {}
    }
});

fn call_connection(call: &SynicHypercall) -> u32 {
    match call {
        SynicHypercall::PostMessage(p) => p.connection_id,
        SynicHypercall::SignalEvent(s) => s.connection_id,
        _ => 0,
    }
}
