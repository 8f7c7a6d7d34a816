//! Reference VMM: runs guests on KVM with the Hyper-V enlightenments served
//! in userspace.

use std::time::Duration;

use reference_vmm::guest::scenarios;
use reference_vmm::vm::{Vm, VmConfig};

fn main() {
    env_logger::init();
    let args: Vec<String> = std::env::args().collect();
    let n: u32 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let prog = match args.get(1).map(String::as_str) {
        Some("syscall") => scenarios::syscall_loop(1000).unwrap(),
        _ => scenarios::cpl3_loop(100_000_000).unwrap(),
    };
    dump_kernel();
    if let Ok(p) = std::env::var("DUMP") {
        std::fs::write(p, &prog.user_code).unwrap();
    }
    let vm = Vm::new(VmConfig {
        vcpus: n,
        hyperv: true,
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    match vm.run(&prog) {
        Ok(r) => {
            println!("wall {:?}", r.wall);
            if let Some(m) = &r.measured {
                println!(
                    "ops {} elapsed {:?} = {:.1} ns/op",
                    m.ops,
                    m.elapsed,
                    m.elapsed.as_nanos() as f64 / m.ops as f64
                );
                println!("{}", m.metrics.table(8));
            }
            println!("{}", r.metrics.table(8));
        }
        Err(e) => println!("error: {e}"),
    }
}
#[allow(dead_code)]
fn dump_kernel() {
    let k = reference_vmm::guest::kernel::build().unwrap();
    std::fs::write("/tmp/kernel.bin", &k.code).unwrap();
}
