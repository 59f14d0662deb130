//! The record kinds: the `kind` field of every audit record, one type instead of string
//! literals spread over the producers and readers. The names are the schema (`docs/events.md`).
use serde::{Deserialize, Serialize};

macro_rules! kinds {
    ($( $(#[$doc:meta])* $v:ident = $s:literal, )*) => {
        /// What a record is about (`kind`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Kind {
            $( $(#[$doc])* #[serde(rename = $s)] $v, )*
        }

        impl Kind {
            /// Every kind, in schema order.
            pub const ALL: &'static [Kind] = &[$(Kind::$v),*];

            /// The name written in records.
            pub const fn as_str(self) -> &'static str {
                match self { $(Kind::$v => $s,)* }
            }

            /// The kind a record names, if it is one this build knows.
            pub fn parse(s: &str) -> Option<Kind> {
                match s { $($s => Some(Kind::$v),)* _ => None }
            }
        }
    };
}

kinds! {
    /// A task began (its first process is about to run).
    TaskStart = "task_start",
    /// A task ended.
    TaskEnd = "task_end",
    /// A program ran (or was refused).
    Exec = "exec",
    /// A process forked (or a fork was refused by `limits.processes`).
    Fork = "fork",
    /// A process exited.
    Exit = "exit",
    /// An outbound TCP/UDP connect.
    Connect = "connect",
    /// A UDP datagram to an address.
    Sendmsg = "sendmsg",
    /// A file opened.
    Open = "open",
    /// A name made, linked, renamed or removed.
    File = "file",
    /// A pathname unix-socket connect or send.
    UnixConnect = "unix_connect",
    /// A signal to another process.
    Signal = "signal",
    /// ptrace-mode access to another process.
    Ptrace = "ptrace",
    /// A `bpf()` call.
    Bpf = "bpf",
    /// The mount API.
    Mount = "mount",
    /// An executable mapping.
    Mmap = "mmap",
    /// Kernel module or kexec calls.
    Module = "module",
    /// A brokered or issued secret.
    Secret = "secret",
    /// An abstract unix socket (Landlock scope).
    Unix = "unix",
    /// A device ioctl.
    Ioctl = "ioctl",
    /// A socket family refused by seccomp.
    Socket = "socket",
    /// Any other system call refused by seccomp.
    Syscall = "syscall",
    /// A Landlock refusal of a kind this build does not name.
    Landlock = "landlock",
    /// A name lookup through the task's resolver.
    Dns = "dns",
    /// Records were lost.
    Gap = "gap",
    /// A signed checkpoint of the chain.
    Checkpoint = "checkpoint",
    /// A scope-drift rule fired.
    Finding = "finding",
    /// A pod's container could not be bound to its scope.
    BindFailed = "bind_failed",
    /// A sandboxed process called the daemon's API and was refused.
    Api = "api",
    /// A call (a tool call or pipeline stage) began inside a task or another call.
    CallStart = "call_start",
    /// A call ended.
    CallEnd = "call_end",
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Default for Kind {
    /// Only so records can be built with `..Default::default()`; every producer sets its kind.
    fn default() -> Self {
        Kind::Gap
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    #[test]
    fn names_round_trip_and_match_serde() {
        for &k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<Kind>(&format!("\"{k}\"")).unwrap(), k);
        }
        assert_eq!(Kind::parse("nope"), None);
    }

    #[test]
    fn the_schema_doc_lists_every_kind() {
        let doc = include_str!("../../../docs/events.md");
        let row = doc.lines().find(|l| l.starts_with("| `kind` |")).expect("kind row in docs/events.md");
        for &k in Kind::ALL {
            assert!(row.contains(&format!("`{k}`")), "docs/events.md's kind row lacks `{k}`");
        }
    }
}
