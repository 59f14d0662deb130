//! Capability probe: what this kernel really allows, learned by trying.
//!
//! Program types are probed by loading (and, for trampolines, attaching and
//! detaching) Warden's own programs, not by reading kernel config: on some
//! kernels `bpf` is listed in `/sys/kernel/security/lsm` and BPF LSM programs
//! still fail with EPERM before the verifier.
use std::{fs, path::Path};

use aya::programs::{BtfTracePoint, CgroupSockAddr, FEntry, Lsm};
use serde::Serialize;

use super::{KernelBtf, LoadOptions, load_object};
use crate::sandbox::cgroup2_mount;

/// One probed capability.
#[derive(Debug, Clone, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
}

/// Which engine would enforce what on this kernel.
#[derive(Debug, Clone, Serialize)]
pub struct Engines {
    /// `bpf-lsm` when BPF LSM programs load and attach, else `fallback`.
    pub primary: &'static str,
    pub notes: Vec<String>,
}

/// The probe result.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub kernel: String,
    pub features: Vec<Feature>,
    pub engine: Engines,
}

impl ProbeReport {
    pub fn available(&self, name: &str) -> bool {
        self.features.iter().any(|f| f.name == name && f.available)
    }

    /// A plain-text table.
    pub fn table(&self) -> String {
        let mut s = format!("kernel {}\n{:<18} {:<12} {}\n", self.kernel, "FEATURE", "STATUS", "DETAIL");
        for f in &self.features {
            let st = if f.available { "available" } else { "unavailable" };
            s.push_str(&format!("{:<18} {:<12} {}\n", f.name, st, f.detail));
        }
        s.push_str(&format!("\nengine: {}\n", self.engine.primary));
        for n in &self.engine.notes {
            s.push_str(&format!("  - {n}\n"));
        }
        s
    }
}

fn feature(name: &'static str, r: Result<String, String>) -> Feature {
    match r {
        Ok(detail) => Feature { name, available: true, detail },
        Err(detail) => Feature { name, available: false, detail },
    }
}

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Runs every probe.
pub fn probe() -> ProbeReport {
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let mut features = Vec::new();

    let kbtf = KernelBtf::from_sys();
    features.push(feature(
        "btf",
        match &kbtf {
            Ok(_) => {
                let size = fs::metadata(super::btf::VMLINUX_BTF).map(|m| m.len()).unwrap_or(0);
                Ok(format!("{} ({} KiB)", super::btf::VMLINUX_BTF, size / 1024))
            }
            Err(e) => Err(e.to_string()),
        },
    ));
    features.push(feature(
        "cgroup2",
        cgroup2_mount().map(|p| p.display().to_string()).map_err(|e| e.to_string()),
    ));
    features.push(feature("lsm_list", lsm_list()));

    let programs = kbtf
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|k| k.kernel_offsets().map_err(|e| e.to_string()))
        .and_then(|off| {
            let btf = aya::Btf::from_sys_fs().map_err(|e| e.to_string())?;
            let opts = LoadOptions {
                ring_bytes: 4096 * 16,
                max_tasks: 4,
                max_cgroups: 16,
                ..LoadOptions::default()
            };
            let ebpf = load_object(&off, &opts, Some(&btf), None).map_err(|e| err_chain(&e))?;
            Ok((ebpf, btf))
        });
    match programs {
        Ok((mut ebpf, btf)) => {
            features.push(feature("ring_buffer", Ok("BPF_MAP_TYPE_RINGBUF created".into())));
            features.push(feature("tp_btf", try_tp_btf(&mut ebpf, &btf)));
            features.push(feature("bpf_lsm", try_lsm(&mut ebpf, &btf)));
            let target = ["do_unlinkat", "vfs_unlink", "security_inode_unlink", "vfs_read"]
                .into_iter()
                .find(|f| kbtf.as_ref().is_ok_and(|k| k.has_func(f)));
            features.push(feature(
                "fentry",
                match target {
                    Some(t) => try_fentry(&mut ebpf, &btf, t),
                    None => Err("no known fentry probe target in this kernel's BTF".into()),
                },
            ));
            features.push(feature("cgroup_sock_addr", try_sock_addr(&mut ebpf)));
            features.push(feature(
                "cgroup_unix",
                super::raw_unix::UnixPrograms::load(&ebpf, super::EBPF_OBJECT, &btf)
                    .map(|_| "connect_unix + sendmsg_unix loaded (raw BPF_PROG_LOAD)".to_string())
                    .map_err(|e| err_chain(&e)),
            ));
        }
        Err(e) => {
            for name in ["ring_buffer", "tp_btf", "bpf_lsm", "fentry", "cgroup_sock_addr", "cgroup_unix"] {
                features.push(feature(name, Err(format!("eBPF object did not load: {e}"))));
            }
        }
    }
    features.push(feature("landlock", crate::sandbox::confine::landlock_abi().map(|v| format!("ABI {v}"))));
    features.push(feature("io_uring", io_uring()));
    features.push(feature("kernel_audit", kernel_audit()));

    let mut report =
        ProbeReport { kernel, features, engine: Engines { primary: "fallback", notes: Vec::new() } };
    let lsm = report.available("bpf_lsm");
    let landlock = report.available("landlock");
    let sock_addr = report.available("cgroup_sock_addr");
    let cgroup_unix = report.available("cgroup_unix");
    let tp_btf = report.available("tp_btf");
    report.engine.primary = if lsm { "bpf-lsm" } else { "fallback" };
    let notes = &mut report.engine.notes;
    if lsm {
        notes.push(
            "exec, file, network, signal and ptrace decisions at BPF LSM hooks (deny with EPERM)".into(),
        );
    } else {
        notes.push("BPF LSM unavailable: exec identity checked at sched_process_exec (kill before the first instruction)".into());
        if landlock {
            notes.push("file read/write/execute by hierarchy: Landlock domain on the task".into());
        }
    }
    let kernel_audit = report.available("kernel_audit");
    let notes = &mut report.engine.notes;
    if kernel_audit {
        notes.push(
            "Landlock and seccomp refusals recorded from the kernel's audit records (Landlock records name the task, not the process)"
                .into(),
        );
    }
    let unrecorded = crate::kaudit::unrecorded(lsm, kernel_audit);
    if !unrecorded.is_empty() {
        notes.push(format!(
            "refused but NOT recorded on this kernel: {} (task_start.unrecorded says so too)",
            unrecorded.join(", ")
        ));
    }
    if sock_addr {
        notes.push("egress: cgroup connect4/6 + sendmsg4/6 programs (EPERM)".into());
    }
    if !lsm {
        notes.push(if cgroup_unix {
            "path-named unix sockets: cgroup connect_unix + sendmsg_unix programs judge the name (EACCES)".into()
        } else {
            "path-named unix sockets: NOT judged on this kernel (the cgroup unix programs need 6.7; see cgroup_unix)".into()
        });
    }
    if tp_btf {
        notes.push("process lifecycle events: BTF tracepoints".into());
    } else {
        notes.push("no BTF tracepoints: Warden cannot observe processes on this kernel".into());
    }
    report
}

/// Whether refusals logged to the kernel's audit subsystem can be read: the status request
/// and the read-only multicast group both work, and Landlock logs (ABI 7).
fn kernel_audit() -> Result<String, String> {
    let st = crate::kaudit::netlink::status().map_err(|e| format!("audit status: {e}"))?;
    crate::kaudit::netlink::Listener::open().map_err(|e| format!("audit multicast group: {e}"))?;
    let abi = crate::sandbox::confine::landlock_abi().unwrap_or(0);
    let mut detail = format!(
        "audit {}, auditd {}, Landlock ABI {abi}{}",
        if st.enabled == 0 { "off (Warden turns it on with -a never,task)" } else { "on" },
        if st.pid == 0 { "not running".to_string() } else { format!("pid {}", st.pid) },
        if abi >= 7 { "" } else { " (< 7: Landlock does not log)" }
    );
    if !crate::kaudit::seccomp_logs_errno() {
        detail.push_str("; kernel.seccomp.actions_logged lacks errno: seccomp refusals are not logged");
    }
    Ok(detail)
}

fn try_tp_btf(ebpf: &mut aya::Ebpf, btf: &aya::Btf) -> Result<String, String> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut("sched_process_exec")
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load("sched_process_exec", btf).map_err(|e| err_chain(&e))?;
    Ok("sched_process_exec loaded".into())
}

fn try_lsm(ebpf: &mut aya::Ebpf, btf: &aya::Btf) -> Result<String, String> {
    let p: &mut Lsm = ebpf
        .program_mut("lsm_bprm_check")
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load("bprm_check_security", btf).map_err(|e| format!("load: {}", err_chain(&e)))?;
    // The program only refuses for watched cgroups and the maps are empty: attaching it for
    // a moment changes nothing, and proves the LSM really calls BPF programs.
    let link = p.attach().map_err(|e| format!("attach: {}", err_chain(&e)))?;
    p.detach(link).map_err(|e| format!("detach: {}", err_chain(&e)))?;
    Ok("bprm_check_security loaded and attached".into())
}

fn try_fentry(ebpf: &mut aya::Ebpf, btf: &aya::Btf, target: &str) -> Result<String, String> {
    let p: &mut FEntry = ebpf
        .program_mut("probe_fentry")
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load(target, btf).map_err(|e| format!("load: {}", err_chain(&e)))?;
    let link = p.attach().map_err(|e| format!("attach: {}", err_chain(&e)))?;
    p.detach(link).map_err(|e| format!("detach: {}", err_chain(&e)))?;
    Ok(format!("fentry on {target} loaded and attached"))
}

fn try_sock_addr(ebpf: &mut aya::Ebpf) -> Result<String, String> {
    let p: &mut CgroupSockAddr = ebpf
        .program_mut("probe_connect4")
        .ok_or("program missing")?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    p.load().map_err(|e| err_chain(&e))?;
    Ok("connect4 loaded".into())
}

fn lsm_list() -> Result<String, String> {
    let p = Path::new("/sys/kernel/security/lsm");
    match fs::read_to_string(p) {
        Ok(s) => {
            let s = s.trim().to_string();
            if s.split(',').any(|l| l == "bpf") { Ok(s) } else { Err(format!("bpf not listed: {s}")) }
        }
        Err(e) => Err(format!("{}: {e} (is securityfs mounted?)", p.display())),
    }
}

fn io_uring() -> Result<String, String> {
    let disabled =
        fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok().map(|s| s.trim().to_string());
    let mut params = [0u8; 120]; // struct io_uring_params
    // SAFETY: params is a zeroed io_uring_params-sized buffer; the fd is closed below.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(format!(
            "io_uring_setup: {} (io_uring_disabled={})",
            std::io::Error::last_os_error(),
            disabled.unwrap_or_else(|| "?".into())
        ));
    }
    // SAFETY: fd returned by io_uring_setup.
    unsafe { libc::close(fd as i32) };
    Ok(format!("io_uring_setup works (io_uring_disabled={})", disabled.unwrap_or_else(|| "?".into())))
}
