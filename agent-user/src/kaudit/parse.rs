//! Parsing the text of kernel audit records (`audit(SEC.MSEC:SERIAL): key=value ...`) into the
//! reports Warden understands. The text comes from the kernel but describes what a sandboxed,
//! possibly hostile, process did (paths, command names): every field is bounded, strings the
//! kernel hex-encoded are decoded, anything malformed is rejected, nothing panics.

/// Audit record types Warden reads (`include/uapi/linux/audit.h`).
pub mod types {
    /// A seccomp action was logged (`SECCOMP_FILTER_FLAG_LOG`, or a kill).
    pub const SECCOMP: u16 = 1326;
    /// A Landlock access request was denied.
    pub const LANDLOCK_ACCESS: u16 = 1423;
    /// A Landlock domain's life: `status=allocated` (first denial), `status=deallocated`.
    pub const LANDLOCK_DOMAIN: u16 = 1424;
}

/// Longest record text accepted (the kernel's own limit is `MAX_AUDIT_MESSAGE_LENGTH`, 8970).
pub const MAX_TEXT: usize = 8970;
/// Longest decoded string kept (a path beyond it is cut and marked truncated).
pub const MAX_STRING: usize = 4096;

/// When and which audit event: `audit(SEC.MSEC:SERIAL)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Wall-clock time of the event, nanoseconds since the Unix epoch (millisecond precision).
    pub unix_ns: i128,
    pub serial: u64,
}

/// A denial reported by Landlock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockAccess {
    pub stamp: Stamp,
    /// The youngest domain that denied it.
    pub domain: u64,
    /// What was missing, e.g. `fs.read_file`, `scope.signal`, `ptrace`.
    pub blockers: Vec<String>,
    pub path: Option<String>,
    pub path_truncated: bool,
    pub ino: Option<u64>,
    /// The other process, for signals, ptrace and scoped sockets.
    pub opid: Option<u32>,
    pub ocomm: Option<String>,
}

/// A Landlock domain record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LandlockDomain {
    /// The domain's first denial: who created it.
    Allocated { stamp: Stamp, domain: u64, pid: u32 },
    /// The domain is gone: how many requests it denied in its life.
    Deallocated { stamp: Stamp, domain: u64, denials: u64 },
}

/// A logged seccomp action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seccomp {
    pub stamp: Stamp,
    pub pid: u32,
    pub comm: Option<String>,
    pub exe: Option<String>,
    /// `AUDIT_ARCH_*` of the call (0xc000003e x86_64, 0x40000003 i386).
    pub arch: u32,
    pub syscall: i64,
    /// The filter's return value (`SECCOMP_RET_*` | data).
    pub code: u32,
    /// The signal the action delivers (kills), else 0.
    pub sig: i32,
}

/// One kernel report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Landlock(LandlockAccess),
    Domain(LandlockDomain),
    Seccomp(Seccomp),
}

/// Why a record was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("audit record of {0} bytes is longer than the kernel ever writes")]
    TooLong(usize),
    #[error("audit record without an `audit(SEC.MSEC:SERIAL):` stamp")]
    NoStamp,
    #[error("audit record type {typ} lacks field {field}")]
    Missing { typ: u16, field: &'static str },
    #[error("audit record type {typ}: field {field} is malformed")]
    Malformed { typ: u16, field: &'static str },
}

/// `key=value` pairs of a record body, in order. Values keep their raw form (quoted or not).
fn fields(body: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = body.trim_start();
    while !rest.is_empty() && out.len() < 128 {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&after[..end + 2], &q[end + 1..]),
                None => (after, ""),
            }
        } else {
            match after.find(' ') {
                Some(sp) => (&after[..sp], &after[sp..]),
                None => (after, ""),
            }
        };
        out.push((key, value));
        rest = next.trim_start();
    }
    out
}

/// A string field: `"text"` as is, otherwise the kernel's hex encoding of untrusted bytes
/// (used when the string holds a quote, a space or a control character). `(null)` and `?`
/// are absent. Returns the string and whether it was cut at [`MAX_STRING`].
fn string(raw: &str) -> Option<(String, bool)> {
    let bytes: Vec<u8> = if let Some(q) = raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        q.as_bytes().to_vec()
    } else if raw == "(null)" || raw == "?" || raw.is_empty() {
        return None;
    } else {
        hex::decode(raw).ok()?
    };
    let truncated = bytes.len() > MAX_STRING;
    let kept = &bytes[..bytes.len().min(MAX_STRING)];
    Some((String::from_utf8_lossy(kept).into_owned(), truncated))
}

fn get<'a>(f: &[(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn stamp(text: &str) -> Result<(Stamp, &str), ParseError> {
    let rest = text.strip_prefix("audit(").ok_or(ParseError::NoStamp)?;
    let close = rest.find("):").ok_or(ParseError::NoStamp)?;
    let (time, serial) = rest[..close].split_once(':').ok_or(ParseError::NoStamp)?;
    let (sec, msec) = time.split_once('.').ok_or(ParseError::NoStamp)?;
    let sec: i64 = sec.parse().map_err(|_| ParseError::NoStamp)?;
    let msec: u32 = msec.parse().map_err(|_| ParseError::NoStamp)?;
    let serial: u64 = serial.parse().map_err(|_| ParseError::NoStamp)?;
    if msec >= 1000 {
        return Err(ParseError::NoStamp);
    }
    let unix_ns = i128::from(sec) * 1_000_000_000 + i128::from(msec) * 1_000_000;
    Ok((Stamp { unix_ns, serial }, &rest[close + 2..]))
}

/// Parses a record of type `typ`. `Ok(None)`: a type Warden does not read.
pub fn parse(typ: u16, text: &str) -> Result<Option<Report>, ParseError> {
    if !matches!(typ, types::SECCOMP | types::LANDLOCK_ACCESS | types::LANDLOCK_DOMAIN) {
        return Ok(None);
    }
    if text.len() > MAX_TEXT {
        return Err(ParseError::TooLong(text.len()));
    }
    let text = text.trim_end_matches(['\0', '\n']);
    let (stamp, body) = stamp(text)?;
    let f = fields(body);
    let need = |field: &'static str| get(&f, field).ok_or(ParseError::Missing { typ, field });
    let bad = |field: &'static str| ParseError::Malformed { typ, field };
    let hex_u64 = |field: &'static str| -> Result<u64, ParseError> {
        u64::from_str_radix(need(field)?, 16).map_err(|_| bad(field))
    };
    let dec = |field: &'static str| -> Result<Option<u64>, ParseError> {
        get(&f, field).map(|v| v.parse::<u64>().map_err(|_| bad(field))).transpose()
    };
    Ok(Some(match typ {
        types::LANDLOCK_ACCESS => {
            let domain = hex_u64("domain")?;
            let blockers = need("blockers")?
                .split(',')
                .filter(|b| !b.is_empty())
                .take(32)
                .map(|b| b.chars().take(64).collect())
                .collect();
            let path = get(&f, "path").and_then(string);
            let opid = dec("opid")?.map(|p| u32::try_from(p).map_err(|_| bad("opid"))).transpose()?;
            Report::Landlock(LandlockAccess {
                stamp,
                domain,
                blockers,
                path_truncated: path.as_ref().is_some_and(|p| p.1),
                path: path.map(|p| p.0),
                ino: dec("ino")?,
                opid,
                ocomm: get(&f, "ocomm").and_then(string).map(|s| s.0),
            })
        }
        types::LANDLOCK_DOMAIN => {
            let domain = hex_u64("domain")?;
            match need("status")? {
                "allocated" => {
                    let pid = dec("pid")?.ok_or(ParseError::Missing { typ, field: "pid" })?;
                    let pid = u32::try_from(pid).map_err(|_| bad("pid"))?;
                    Report::Domain(LandlockDomain::Allocated { stamp, domain, pid })
                }
                "deallocated" => {
                    let denials = dec("denials")?.ok_or(ParseError::Missing { typ, field: "denials" })?;
                    Report::Domain(LandlockDomain::Deallocated { stamp, domain, denials })
                }
                _ => return Err(bad("status")),
            }
        }
        _ => {
            let pid = dec("pid")?.ok_or(ParseError::Missing { typ, field: "pid" })?;
            let arch = u32::from_str_radix(need("arch")?, 16).map_err(|_| bad("arch"))?;
            let syscall: i64 = need("syscall")?.parse().map_err(|_| bad("syscall"))?;
            let code = need("code")?;
            let code = u32::from_str_radix(code.trim_start_matches("0x"), 16).map_err(|_| bad("code"))?;
            let sig: i32 = get(&f, "sig").unwrap_or("0").parse().map_err(|_| bad("sig"))?;
            Report::Seccomp(Seccomp {
                stamp,
                pid: u32::try_from(pid).map_err(|_| bad("pid"))?,
                comm: get(&f, "comm").and_then(string).map(|s| s.0),
                exe: get(&f, "exe").and_then(string).map(|s| s.0),
                arch,
                syscall,
                code,
                sig,
            })
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_records_seen_on_6_18() {
        let r = parse(
            1423,
            "audit(1796290630.794:5): domain=1457c08e3 blockers=fs.read_file path=\"/etc/hostname\" dev=\"vda\" ino=611",
        )
        .unwrap()
        .unwrap();
        let Report::Landlock(a) = r else { panic!("{r:?}") };
        assert_eq!(a.domain, 0x1457c08e3);
        assert_eq!(a.blockers, ["fs.read_file"]);
        assert_eq!(a.path.as_deref(), Some("/etc/hostname"));
        assert_eq!(a.ino, Some(611));
        assert_eq!(a.stamp, Stamp { unix_ns: 1_796_290_630_794_000_000, serial: 5 });
        let d = parse(
            1424,
            "audit(1796290630.794:4): domain=1457c08e3 status=allocated mode=enforcing pid=20681 uid=0 exe=\"/usr/bin/python3\" comm=\"python3\"",
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            d,
            Report::Domain(LandlockDomain::Allocated { domain: 0x1457c08e3, pid: 20681, .. })
        ));
        let d =
            parse(1424, "audit(1796290630.946:7): domain=1457c08e3 status=deallocated denials=3").unwrap();
        assert!(matches!(d, Some(Report::Domain(LandlockDomain::Deallocated { denials: 3, .. }))));
        let s = parse(
            1326,
            "audit(1796290711.874:67): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=24833 comm=\"python3\" exe=\"/usr/bin/python3.11\" sig=0 arch=c000003e syscall=39 compat=0 ip=0x7efecf31f829 code=0x50000",
        )
        .unwrap()
        .unwrap();
        let Report::Seccomp(s) = s else { panic!() };
        assert_eq!((s.pid, s.arch, s.syscall, s.code, s.sig), (24833, 0xc000003e, 39, 0x50000, 0));
        assert_eq!(s.exe.as_deref(), Some("/usr/bin/python3.11"));
    }

    #[test]
    fn decodes_hex_strings_and_signal_targets() {
        // "/tmp/a b" hex-encoded, as the kernel writes untrusted strings with a space.
        let r = parse(
            1423,
            "audit(1.001:9): domain=ff blockers=fs.read_file,fs.read_dir path=2F746D702F612062 dev=\"vda\" ino=1",
        )
        .unwrap()
        .unwrap();
        let Report::Landlock(a) = r else { panic!() };
        assert_eq!(a.path.as_deref(), Some("/tmp/a b"));
        assert_eq!(a.blockers, ["fs.read_file", "fs.read_dir"]);
        let r = parse(1423, "audit(1.001:9): domain=ff blockers=scope.signal opid=1 ocomm=\"systemd\"")
            .unwrap()
            .unwrap();
        let Report::Landlock(a) = r else { panic!() };
        assert_eq!((a.opid, a.ocomm.as_deref(), a.path), (Some(1), Some("systemd"), None));
    }

    #[test]
    fn rejects_malformed_records_and_ignores_other_types() {
        assert_eq!(parse(1300, "anything"), Ok(None));
        assert_eq!(parse(1423, "no stamp"), Err(ParseError::NoStamp));
        assert!(matches!(parse(1423, "audit(1.2:3): blockers=x"), Err(ParseError::Missing { .. })));
        assert!(matches!(
            parse(1423, "audit(1.2:3): domain=zz blockers=x"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(
            parse(1424, "audit(1.2:3): domain=1 status=odd"),
            Err(ParseError::Malformed { .. })
        ));
        assert!(matches!(parse(1326, &"x".repeat(MAX_TEXT + 1)), Err(ParseError::TooLong(_))));
    }

    proptest! {
        #[test]
        fn never_panics(typ in prop_oneof![Just(1326u16), Just(1423u16), Just(1424u16)], s in ".{0,300}") {
            let _ = parse(typ, &s);
            let _ = parse(typ, &format!("audit(1.2:3): {s}"));
        }
    }
}
