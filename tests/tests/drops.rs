//! Host tier: a ring buffer too small for the load loses records, and every lost record is
//! counted for the sandbox that produced it.
use std::time::Duration;

use agent_user::{
    decode::decode,
    loader::{LoadOptions, Sensor},
};
use warden_tests::{TestCgroup, command_in, require};

#[test]
fn a_tiny_ring_counts_every_lost_record_per_sandbox() {
    if !require("a_tiny_ring_counts_every_lost_record_per_sandbox", "tp_btf") {
        return;
    }
    // One page: about a dozen exec records fit.
    let opts = LoadOptions { ring_bytes: 4096, ..Default::default() };
    let mut sensor = Sensor::load(&opts).expect("load sensor");
    let mut ring = sensor.take_ring().expect("ring");
    let busy = TestCgroup::new("drops-busy");
    let idle = TestCgroup::new("drops-idle");
    sensor.watch(&[busy.id()], 1).unwrap();
    sensor.watch(&[idle.id()], 2).unwrap();

    const N: usize = 100;
    // Nothing reads the ring while this runs. Events: exec of sh, then per iteration a fork,
    // an exec and an exit of `true`, then the exit of sh.
    let script = format!("i=0; while [ $i -lt {N} ]; do /bin/true; i=$((i+1)); done");
    let st = command_in(&busy.cg, "/bin/sh", &["-c", &script]).status().unwrap();
    assert!(st.success());
    std::thread::sleep(Duration::from_millis(50));

    let mut delivered = 0u64;
    while let Some(item) = ring.next() {
        let ev = decode(&item).expect("decodes");
        assert_eq!(ev.meta().slot, 1);
        delivered += 1;
    }
    let drops = sensor.drops(1).unwrap();
    let expected = (1 + 3 * N + 1) as u64;
    assert!(drops.total > 0, "a one-page ring must overflow: delivered {delivered}");
    assert_eq!(delivered + drops.total, expected, "every record is delivered or counted: {drops:?}");
    assert_eq!(drops.total, drops.exec + drops.fork + drops.exit, "{drops:?}");
    assert_eq!(sensor.drops(2).unwrap().total, 0, "the idle sandbox lost nothing");
    sensor.reset_drops(1).unwrap();
    assert_eq!(sensor.drops(1).unwrap().total, 0);
}
