//! Packet behaviour of the real XDP object, proven with BPF_PROG_TEST_RUN.
mod support;

use aya::{
    maps::PerCpuArray,
    programs::{TestRun as _, TestRunOptions},
};
use lb_common::Counter;
use lb_userspace::ebpf;

const XDP_PASS: u32 = 2;

fn counter(ebpf: &aya::Ebpf, c: Counter) -> u64 {
    let stats: PerCpuArray<_, u64> = PerCpuArray::try_from(ebpf.map("STATS").expect("STATS map"))
        .expect("STATS is a per-CPU array");
    stats
        .get(&(c as u32), 0)
        .expect("read counter")
        .iter()
        .sum()
}

#[test]
fn arp_frame_is_passed_and_counted() {
    support::require_root();
    let ebpf = ebpf::load().expect("load the XDP object");
    let prog = ebpf::program(&ebpf).expect("program");
    // Ethernet broadcast, ethertype ARP, then a 28-byte ARP request.
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    frame.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    frame.resize(14 + 28, 0);
    let before = counter(&ebpf, Counter::PassNotIpv4);
    let mut out = vec![0u8; frame.len()];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&frame),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    assert_eq!(r.return_value, XDP_PASS);
    assert_eq!(
        &out[..r.data_size_out as usize],
        &frame[..],
        "frame must be untouched"
    );
    assert_eq!(counter(&ebpf, Counter::PassNotIpv4), before + 1);
}
