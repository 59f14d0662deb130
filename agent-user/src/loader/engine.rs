//! Which enforcement engine a sensor runs, chosen once for `warden run` and the daemon.
//!
//! The BPF LSM engine judges at LSM hooks (`agent-ebpf/src/hooks/lsm.rs`); the fallback
//! engine judges exec identity at `sched_process_exec` (`hooks/sched.rs`) and files, signals
//! and syscalls with Landlock and seccomp applied to the task's first process
//! (`sandbox/confine.rs`). Egress is judged by cgroup sock_addr programs under both.
use super::{LoadError, Sensor};

/// What the operator asked for (`warden run --engine`, the daemon config's `engine:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EngineChoice {
    /// BPF LSM where the kernel loads it, else the fallback engine.
    #[default]
    Auto,
    /// BPF LSM or fail.
    #[value(name = "bpf-lsm")]
    BpfLsm,
    /// The fallback engine even where BPF LSM would load.
    Fallback,
}

/// The engine a sensor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    BpfLsm,
    Fallback,
}

impl Engine {
    /// The name records and the API carry (`task_start.engine`, `TaskInfo.engine`).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::BpfLsm => "bpf-lsm",
            Engine::Fallback => "fallback",
        }
    }

    /// Whether this is the BPF LSM engine.
    pub fn is_lsm(self) -> bool {
        self == Engine::BpfLsm
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    /// The inverse of [`Engine::as_str`].
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bpf-lsm" => Ok(Engine::BpfLsm),
            "fallback" => Ok(Engine::Fallback),
            other => Err(format!("engine {other:?} is not bpf-lsm or fallback")),
        }
    }
}

/// Attaches the engine `choice` asks for to `sensor`. A BPF LSM engine already pinned by a
/// previous daemon is adopted whatever the choice (it is enforcing tasks now). `auto` falls
/// back when the kernel refuses BPF LSM: EPERM (a kernel that blocks trampolines) at info
/// level, anything else (a verifier rejection, a missing hook) as a warning.
pub fn select_engine(sensor: &mut Sensor, choice: EngineChoice) -> Result<Engine, LoadError> {
    if sensor.lsm_engine_pinned() {
        sensor.attach_lsm_engine()?;
        return Ok(Engine::BpfLsm);
    }
    match choice {
        EngineChoice::Fallback => Ok(Engine::Fallback),
        EngineChoice::BpfLsm => sensor.attach_lsm_engine().map(|()| Engine::BpfLsm),
        EngineChoice::Auto => match sensor.attach_lsm_engine() {
            Ok(()) => Ok(Engine::BpfLsm),
            Err(e) => {
                let msg = format!("{e}");
                if is_eperm(&e) {
                    tracing::info!(error = %msg, "BPF LSM unavailable; using the fallback engine");
                } else {
                    tracing::warn!(error = %msg, "BPF LSM engine failed to attach; using the fallback engine");
                }
                Ok(Engine::Fallback)
            }
        },
    }
}

/// Whether a load error is the kernel's EPERM (BPF LSM blocked), looking through causes.
fn is_eperm(e: &LoadError) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EPERM)
        {
            return true;
        }
        if s.to_string().contains("Operation not permitted") {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_names_round_trip() {
        for e in [Engine::BpfLsm, Engine::Fallback] {
            assert_eq!(e.as_str().parse::<Engine>(), Ok(e));
        }
        assert!("lsm".parse::<Engine>().is_err());
    }

    #[test]
    fn eperm_is_recognised_through_causes() {
        let e = LoadError::Cpus(std::io::Error::from_raw_os_error(libc::EPERM));
        assert!(is_eperm(&e));
        let e = LoadError::Cpus(std::io::Error::from_raw_os_error(libc::EINVAL));
        assert!(!is_eperm(&e));
    }
}
