//! Host tier: process lifecycle events from the real kernel, attributed to the right sandbox.
use std::time::Duration;

use agent_user::{
    decode::{Event, decode},
    loader::{LoadOptions, Sensor},
};
use aya::maps::{MapData, RingBuf};
use warden_tests::{TestCgroup, command_in, require, wait_for};

fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>) {
    while let Some(item) = ring.next() {
        out.push(decode(&item).expect("kernel records decode"));
    }
}

fn execs(events: &[Event]) -> Vec<(u32, String, u64, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Exec { proc, path, meta, .. } => {
                Some((proc.tgid, path.clone(), meta.cgroup_id, meta.slot))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn fork_exec_exit_of_a_child_tree_arrive_with_their_task() {
    if !require("fork_exec_exit_of_a_child_tree_arrive_with_their_task", "tp_btf") {
        return;
    }
    let mut sensor = Sensor::load(&LoadOptions::default()).expect("load sensor");
    let mut ring = sensor.take_ring().expect("ring");
    let cg = TestCgroup::new("lifecycle");
    sensor.watch(&[cg.id()], 5).expect("watch");

    // A control process outside the sandbox must not be reported.
    let outside = std::process::Command::new("/bin/sh").args(["-c", "/bin/true"]).status().unwrap();
    assert!(outside.success());

    let mut child = command_in(&cg.cg, "/bin/sh", &["-c", "/bin/true; (/bin/sleep 0.05; exit 4); exit 3"])
        .spawn()
        .expect("spawn in cgroup");
    let sh_pid = child.id();
    assert_eq!(child.wait().unwrap().code(), Some(3));

    let mut events = Vec::new();
    let got = wait_for(Duration::from_secs(5), || {
        drain(&mut ring, &mut events);
        let exits = events.iter().filter(|e| matches!(e, Event::Exit { .. })).count();
        (exits >= 4).then_some(())
    });
    assert!(got.is_some(), "expected 4 exits, got events: {events:#?}");

    // Every event is tagged with the sandbox's cgroup and slot.
    for e in &events {
        assert_eq!(e.meta().cgroup_id, cg.id(), "{e:?}");
        assert_eq!(e.meta().slot, 5, "{e:?}");
    }
    let ex = execs(&events);
    let paths: Vec<&str> = ex.iter().map(|(_, p, _, _)| p.as_str()).collect();
    assert_eq!(paths, ["/bin/sh", "/bin/true", "/bin/sleep"], "exec order: {ex:?}");
    assert_eq!(ex[0].0, sh_pid, "first exec is the spawned shell");

    // Forks: the shell forked the `true` child and the subshell; the subshell forked sleep.
    let forks: Vec<(u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Fork { proc, child_tgid, .. } => Some((proc.tgid, *child_tgid)),
            _ => None,
        })
        .collect();
    assert_eq!(forks.iter().filter(|(p, _)| *p == sh_pid).count(), 2, "{forks:?}");
    let true_pid = ex[1].0;
    assert!(forks.contains(&(sh_pid, true_pid)), "{forks:?}");

    // Exit codes as wait(2) statuses: sh exits 3, subshell 4.
    let exit_of = |pid: u32| {
        events.iter().find_map(|e| match e {
            Event::Exit { proc, exit_code, .. } if proc.tgid == pid => Some(*exit_code),
            _ => None,
        })
    };
    assert_eq!(exit_of(sh_pid), Some(3 << 8));
    assert_eq!(exit_of(true_pid), Some(0));
    // The exec's ppid is the shell; its file identity is the real /bin/true.
    let ev_true =
        events.iter().find(|e| matches!(e, Event::Exec { proc, .. } if proc.tgid == true_pid)).unwrap();
    let Event::Exec { proc, dev, ino, .. } = ev_true else { unreachable!() };
    assert_eq!(proc.ppid, sh_pid);
    let md = std::fs::metadata("/bin/true").unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(*ino, md.ino());
    assert_eq!(agent_user::audit::record::kernel_dev_to_user(*dev), md.dev());
}

#[test]
fn tasks_in_child_cgroups_belong_to_the_sandbox() {
    if !require("tasks_in_child_cgroups_belong_to_the_sandbox", "tp_btf") {
        return;
    }
    let mut sensor = Sensor::load(&LoadOptions::default()).expect("load sensor");
    let mut ring = sensor.take_ring().expect("ring");
    let cg = TestCgroup::new("ancestry");
    // A child that exists before the sandbox is bound, and one created after.
    let before = cg.child("before");
    sensor.watch(&[cg.id()], 9).expect("watch");
    let mut ids = vec![cg.id()];
    ids.extend(cg.cg.descendant_ids().unwrap());
    sensor.watch(&ids, 9).expect("watch descendants");
    let after = cg.child("after");
    let nested = agent_user::sandbox::Cgroup::create(after.path(), "nested").unwrap();

    for c in [&before, &after, &nested] {
        let st = command_in(c, "/bin/true", &[]).status().expect("run in child cgroup");
        assert!(st.success());
    }
    let mut events = Vec::new();
    let got = wait_for(Duration::from_secs(5), || {
        drain(&mut ring, &mut events);
        (execs(&events).len() >= 3).then_some(())
    });
    assert!(got.is_some(), "events: {events:#?}");
    let ex = execs(&events);
    let cgs: Vec<u64> = ex.iter().map(|e| e.2).collect();
    assert_eq!(cgs, [before.id(), after.id(), nested.id()]);
    assert!(ex.iter().all(|e| e.3 == 9), "all in the sandbox's slot: {ex:?}");
    let stats = sensor.stats().unwrap();
    assert!(
        stats[agent_common::maps::stat::CGROUP_INHERITED as usize] >= 2,
        "kernel inherited after+nested: {stats:?}"
    );
    // Removing a child cgroup removes its map entry (ids are never reused).
    std::fs::remove_dir(nested.path()).unwrap();
    assert_eq!(sensor.unwatch_slot(9).unwrap(), 3, "sandbox + before + after remain");
}
