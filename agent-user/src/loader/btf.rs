//! Kernel struct field offsets, resolved from the running kernel's BTF.
//!
//! Rust eBPF has no CO-RE relocations, so the programs read kernel structs
//! through offsets resolved here and written into a read-only global. Fields
//! reached through anonymous structs/unions are found by searching them, and a
//! field may be given under several names (renames across kernel versions).
use std::path::Path;

use agent_common::config::KernelOffsets;

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Errors while resolving offsets.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read kernel BTF {path}: {message}")]
    Read { path: String, message: String },
    #[error("kernel BTF has no struct `{0}`")]
    NoStruct(String),
    #[error("struct `{strukt}` has no field `{field}` in this kernel's BTF")]
    NoField { strukt: String, field: String },
    #[error("`{strukt}.{field}` is a bitfield; only byte-aligned fields can be read")]
    Bitfield { strukt: String, field: String },
    #[error("BTF is malformed: {0}")]
    Malformed(String),
}

// BTF kinds (`include/uapi/linux/btf.h`).
const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One type record: where it starts in the type section, and its header.
#[derive(Clone, Copy)]
struct Ty {
    /// Byte offset of the record's first member (after the 12-byte header).
    body: usize,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// `size` or `type`, by kind.
    size_type: u32,
}

/// The kernel's BTF, read for field offsets: the raw bytes and where each type record starts
/// (one `u32` per type). Lookups by name scan the records; the daemon asks ~45 of them once.
/// A general BTF library builds tables of every name and member instead: ≈ 42 MiB for
/// 6.18's 5.5 MB BTF, which was the daemon's memory peak (`docs/benchmarks.md`).
pub struct KernelBtf {
    /// The whole blob, as read.
    data: Vec<u8>,
    /// Where the type and string sections are in `data`.
    types: std::ops::Range<usize>,
    strings: std::ops::Range<usize>,
    /// Offset into `types` of the record of type id `i + 1`.
    offsets: Vec<u32>,
    big_endian: bool,
}

impl KernelBtf {
    /// Parses the running kernel's BTF.
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let bytes = std::fs::read(path)
            .map_err(|e| BtfError::Read { path: path.display().to_string(), message: e.to_string() })?;
        Self::parse(bytes).map_err(|message| BtfError::Read { path: path.display().to_string(), message })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        Self::parse(bytes.to_vec()).map_err(|message| BtfError::Read { path: "<bytes>".into(), message })
    }

    fn parse(data: Vec<u8>) -> Result<Self, String> {
        let b = data.as_slice();
        let big_endian = match b.get(..2) {
            Some([0x9f, 0xeb]) => false,
            Some([0xeb, 0x9f]) => true,
            _ => return Err("not BTF (bad magic)".into()),
        };
        let word = |o: usize| -> Result<u32, String> {
            let w: [u8; 4] = b.get(o..o + 4).and_then(|s| s.try_into().ok()).ok_or("truncated header")?;
            Ok(if big_endian { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) })
        };
        let hdr_len = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let section = |off: usize, len: usize| {
            hdr_len
                .checked_add(off)
                .and_then(|s| Some(s..s.checked_add(len)?))
                .filter(|r| r.end <= b.len())
                .ok_or_else(|| "section out of bounds".to_string())
        };
        let (types, strings) = (section(type_off, type_len)?, section(str_off, str_len)?);
        let mut me = Self { data, types, strings, offsets: Vec::new(), big_endian };
        let mut at = 0usize;
        while at < me.types.len() {
            me.offsets.push(u32::try_from(at).map_err(|_| "type section too large")?);
            let t = me.header(at).ok_or("truncated type")?;
            let extra = match t.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * t.vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * t.vlen,
                2 | 7 | 8..=12 | 16 | 18 => 0,
                k => return Err(format!("unknown BTF kind {k}")),
            };
            at = t.body + extra;
        }
        if at != me.types.len() {
            return Err("truncated type section".into());
        }
        Ok(me)
    }

    fn u32_at(&self, o: usize) -> Option<u32> {
        let w: [u8; 4] = self.data[self.types.clone()].get(o..o + 4)?.try_into().ok()?;
        Some(if self.big_endian { u32::from_be_bytes(w) } else { u32::from_le_bytes(w) })
    }

    fn header(&self, at: usize) -> Option<Ty> {
        let info = self.u32_at(at + 4)?;
        Some(Ty {
            body: at + 12,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_type: self.u32_at(at + 8)?,
        })
    }

    /// The type with id `id` (0 is `void`: none).
    fn ty(&self, id: u32) -> Result<Ty, BtfError> {
        let at = id
            .checked_sub(1)
            .and_then(|i| self.offsets.get(i as usize))
            .ok_or_else(|| BtfError::Malformed(format!("type id {id} out of range")))?;
        self.header(*at as usize).ok_or_else(|| BtfError::Malformed(format!("type {id} truncated")))
    }

    fn name(&self, off: u32) -> &[u8] {
        let rest = self.data[self.strings.clone()].get(off as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&c| c == 0).unwrap_or(rest.len())]
    }

    /// Whether the string at `off` is `name`.
    fn name_is(&self, off: u32, name: &[u8]) -> bool {
        let rest = self.data[self.strings.clone()].get(off as usize..).unwrap_or_default();
        rest.starts_with(name) && rest.get(name.len()) == Some(&0)
    }

    /// Every type named `name`, in id order.
    fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Ty> + 'a {
        self.offsets
            .iter()
            .filter(move |&&at| {
                self.u32_at(at as usize).is_some_and(|off| off != 0 && self.name_is(off, name.as_bytes()))
            })
            .filter_map(|&at| self.header(at as usize))
    }

    /// Byte offset of `field` (first name that exists, in order) in `struct strukt`.
    pub fn offset(&self, strukt: &str, field: &[&str]) -> Result<u32, BtfError> {
        let s = self.find_struct(strukt)?;
        for name in field {
            if let Some(bits) = self.member_bits(&s, name, 0)? {
                if bits % 8 != 0 {
                    return Err(BtfError::Bitfield { strukt: strukt.into(), field: (*name).into() });
                }
                return Ok(bits / 8);
            }
        }
        Err(BtfError::NoField { strukt: strukt.into(), field: field.join("|") })
    }

    /// The first struct named `name` that has members (not a forward declaration).
    fn find_struct(&self, name: &str) -> Result<Ty, BtfError> {
        self.named(name)
            .find(|t| t.kind == KIND_STRUCT && t.vlen > 0)
            .ok_or_else(|| BtfError::NoStruct(name.into()))
    }

    /// Bit offset of `name` in the struct or union `s`, searching anonymous members.
    fn member_bits(&self, s: &Ty, name: &str, base: u32) -> Result<Option<u32>, BtfError> {
        for i in 0..s.vlen {
            let m = s.body + 12 * i;
            let (Some(name_off), Some(ty), Some(off)) =
                (self.u32_at(m), self.u32_at(m + 4), self.u32_at(m + 8))
            else {
                return Err(BtfError::Malformed("truncated member".into()));
            };
            // With `kind_flag`, the offset holds the bitfield size in its top byte.
            let (bit_offset, bitfield_size) =
                if s.kind_flag { (off & 0xff_ffff, off >> 24) } else { (off, 0) };
            let mname = self.name(name_off);
            if mname == name.as_bytes() {
                if bitfield_size != 0 {
                    return Ok(Some(base + bit_offset + 1)); // forces the bitfield error
                }
                return Ok(Some(base + bit_offset));
            }
            if mname.is_empty() {
                let inner = self.strip_modifiers(self.ty(ty)?)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(bits) = self.member_bits(&inner, name, base + bit_offset)?
                {
                    return Ok(Some(bits));
                }
            }
        }
        Ok(None)
    }

    fn strip_modifiers(&self, mut t: Ty) -> Result<Ty, BtfError> {
        for _ in 0..16 {
            match t.kind {
                KIND_CONST | KIND_VOLATILE | KIND_TYPEDEF | KIND_TYPE_TAG => t = self.ty(t.size_type)?,
                _ => return Ok(t),
            }
        }
        Err(BtfError::Malformed("modifier chain too long".into()))
    }

    /// Whether the kernel has a BTF function (e.g. an LSM hook's `bpf_lsm_<hook>`).
    pub fn has_func(&self, name: &str) -> bool {
        self.named(name).any(|t| t.kind == KIND_FUNC)
    }

    /// Number of parameters of a BTF function (e.g. an LSM hook's `bpf_lsm_<hook>`).
    pub fn func_params(&self, name: &str) -> Option<usize> {
        self.named(name).filter(|t| t.kind == KIND_FUNC).find_map(|f| {
            let proto = self.ty(f.size_type).ok()?;
            (proto.kind == KIND_FUNC_PROTO).then_some(proto.vlen)
        })
    }

    /// Resolves every offset the kernel programs need.
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        kernel_offsets(self)
    }
}

/// The previous resolver, on `btf-rs` (which builds tables of every type): the reference
/// the scanning reader above must agree with, offset for offset.
/// What [`kernel_offsets`] reads: this module's reader, and in the tests the `btf-rs`
/// reference it is checked against (one list of offsets for both).
trait OffsetSource {
    fn offset(&self, strukt: &str, field: &[&str]) -> Result<u32, BtfError>;
    fn func_params(&self, name: &str) -> Option<usize>;
}

impl OffsetSource for KernelBtf {
    fn offset(&self, strukt: &str, field: &[&str]) -> Result<u32, BtfError> {
        KernelBtf::offset(self, strukt, field)
    }
    fn func_params(&self, name: &str) -> Option<usize> {
        KernelBtf::func_params(self, name)
    }
}

/// Resolves every offset the kernel programs need.
fn kernel_offsets(src: &impl OffsetSource) -> Result<KernelOffsets, BtfError> {
    // The LSM engine's path walk reads `vfsmount.mnt_root` at offset 0.
    if src.offset("vfsmount", &["mnt_root"])? != 0 {
        return Err(BtfError::Malformed("vfsmount.mnt_root is not the first field".into()));
    }
    Ok(KernelOffsets {
        task_pid: src.offset("task_struct", &["pid"])?,
        task_tgid: src.offset("task_struct", &["tgid"])?,
        task_real_parent: src.offset("task_struct", &["real_parent"])?,
        task_exit_code: src.offset("task_struct", &["exit_code"])?,
        bprm_file: src.offset("linux_binprm", &["file"])?,
        bprm_filename: src.offset("linux_binprm", &["filename"])?,
        file_inode: src.offset("file", &["f_inode"])?,
        inode_ino: src.offset("inode", &["i_ino"])?,
        inode_sb: src.offset("inode", &["i_sb"])?,
        sb_dev: src.offset("super_block", &["s_dev"])?,
        cgroup_kn: src.offset("cgroup", &["kn"])?,
        kn_id: src.offset("kernfs_node", &["id"])?,
        kn_parent: src.offset("kernfs_node", &["__parent", "parent"])?,
        bprm_buf: src.offset("linux_binprm", &["buf"])?,
        file_path: src.offset("file", &["f_path"])?,
        path_mnt: src.offset("path", &["mnt"])?,
        path_dentry: src.offset("path", &["dentry"])?,
        file_mode: src.offset("file", &["f_mode"])?,
        dentry_parent: src.offset("dentry", &["d_parent"])?,
        dentry_inode: src.offset("dentry", &["d_inode"])?,
        mount_mnt: src.offset("mount", &["mnt"])?,
        mount_parent: src.offset("mount", &["mnt_parent"])?,
        mount_mountpoint: src.offset("mount", &["mnt_mountpoint"])?,
        task_mm: src.offset("task_struct", &["mm"])?,
        mm_exe_file: src.offset("mm_struct", &["exe_file"])?,
        task_cgroups: src.offset("task_struct", &["cgroups"])?,
        css_set_dfl_cgrp: src.offset("css_set", &["dfl_cgrp"])?,
        sb_flags: src.offset("super_block", &["s_flags"])?,
        vma_file: src.offset("vm_area_struct", &["vm_file"])?,
        dentry_name: src.offset("dentry", &["d_name"])?,
        qstr_len: src.offset("qstr", &["len"])?,
        qstr_name: src.offset("qstr", &["name"])?,
        sb_magic: src.offset("super_block", &["s_magic"])?,
        proc_inode_pid: src.offset("proc_inode", &["pid"])?,
        proc_inode_vfs_inode: src.offset("proc_inode", &["vfs_inode"])?,
        pid_tasks: src.offset("pid", &["tasks"])?,
        task_pid_links: src.offset("task_struct", &["pid_links"])?,
        // `ret` follows the hook's own parameters.
        lsm_bpf_ret: src.func_params("bpf_lsm_bpf").map_or(3, |n| n as u32),
        unix_sock_path: src.offset("unix_sock", &["path"])?,
        socket_sk: src.offset("socket", &["sk"])?,
        // The unix cgroup hooks (6.7) came with `uaddrlen`; older kernels judge no unix
        // socket there (the programs do not load) and need neither.
        sock_addr_uaddr: src.offset("bpf_sock_addr_kern", &["uaddr"]).unwrap_or(0),
        sock_addr_uaddrlen: src.offset("bpf_sock_addr_kern", &["uaddrlen"]).unwrap_or(0),
        unix_sock_addr: src.offset("unix_sock", &["addr"])?,
        unix_address_name: src.offset("unix_address", &["name"])?,
        sock_cgroup: src.offset("sock", &["sk_cgrp_data"])? + src.offset("sock_cgroup_data", &["cgroup"])?,
        valid: 1,
    })
}

#[cfg(test)]
mod reference {
    #![allow(dead_code)]
    use super::{BtfError, KernelOffsets, VMLINUX_BTF};
    use btf_rs::{Btf, Type};
    use std::path::Path;

    /// A parsed BTF with field-offset lookups.
    pub struct RefBtf {
        btf: Btf,
    }

    impl RefBtf {
        /// Parses the running kernel's BTF.
        pub fn from_sys() -> Result<Self, BtfError> {
            Self::from_file(Path::new(VMLINUX_BTF))
        }

        pub fn from_file(path: &Path) -> Result<Self, BtfError> {
            let btf = Btf::from_file(path).map_err(|e| BtfError::Read {
                path: path.display().to_string(),
                message: format!("{e:#}"),
            })?;
            Ok(Self { btf })
        }

        pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
            let btf = Btf::from_bytes(bytes)
                .map_err(|e| BtfError::Read { path: "<bytes>".into(), message: format!("{e:#}") })?;
            Ok(Self { btf })
        }

        /// Byte offset of `field` (first name that exists, in order) in `struct strukt`.
        pub fn offset(&self, strukt: &str, field: &[&str]) -> Result<u32, BtfError> {
            let s = self.find_struct(strukt)?;
            for name in field {
                if let Some(bits) = self.member_bits(&s, name, 0)? {
                    if bits % 8 != 0 {
                        return Err(BtfError::Bitfield { strukt: strukt.into(), field: (*name).into() });
                    }
                    return Ok(bits / 8);
                }
            }
            Err(BtfError::NoField { strukt: strukt.into(), field: field.join("|") })
        }

        fn find_struct(&self, name: &str) -> Result<btf_rs::Struct, BtfError> {
            let types = self.btf.resolve_types_by_name(name).unwrap_or_default();
            types
                .into_iter()
                .find_map(|t| match t {
                    Type::Struct(s) if !s.members.is_empty() => Some(s),
                    _ => None,
                })
                .ok_or_else(|| BtfError::NoStruct(name.into()))
        }

        /// Bit offset of `name` in `s`, searching anonymous struct/union members.
        fn member_bits(&self, s: &btf_rs::Struct, name: &str, base: u32) -> Result<Option<u32>, BtfError> {
            for m in &s.members {
                let mname = self.btf.resolve_name(m).unwrap_or_default();
                if mname == name {
                    if m.bitfield_size().is_some_and(|b| b != 0) {
                        return Ok(Some(base + m.bit_offset() + 1)); // forces the bitfield error
                    }
                    return Ok(Some(base + m.bit_offset()));
                }
                if mname.is_empty() {
                    let inner =
                        self.btf.resolve_chained_type(m).map_err(|e| BtfError::Malformed(e.to_string()))?;
                    let inner = self.strip_modifiers(inner)?;
                    if let Type::Struct(inner) | Type::Union(inner) = inner
                        && let Some(bits) = self.member_bits(&inner, name, base + m.bit_offset())?
                    {
                        return Ok(Some(bits));
                    }
                }
            }
            Ok(None)
        }

        fn strip_modifiers(&self, mut t: Type) -> Result<Type, BtfError> {
            for _ in 0..16 {
                let next = match &t {
                    Type::Const(c) => self.btf.resolve_chained_type(c),
                    Type::Volatile(v) => self.btf.resolve_chained_type(v),
                    Type::Typedef(td) => self.btf.resolve_chained_type(td),
                    Type::TypeTag(tt) => self.btf.resolve_chained_type(tt),
                    _ => return Ok(t),
                };
                t = next.map_err(|e| BtfError::Malformed(e.to_string()))?;
            }
            Err(BtfError::Malformed("modifier chain too long".into()))
        }

        /// Whether the kernel has a BTF function (e.g. an LSM hook's `bpf_lsm_<hook>`).
        pub fn has_func(&self, name: &str) -> bool {
            self.btf
                .resolve_types_by_name(name)
                .map(|ts| ts.iter().any(|t| matches!(t, Type::Func(_))))
                .unwrap_or(false)
        }

        /// Number of parameters of a BTF function (e.g. an LSM hook's `bpf_lsm_<hook>`).
        pub fn func_params(&self, name: &str) -> Option<usize> {
            let types = self.btf.resolve_types_by_name(name).ok()?;
            types.iter().find_map(|t| match t {
                Type::Func(f) => match self.btf.resolve_chained_type(f).ok()? {
                    Type::FuncProto(p) => Some(p.parameters.len()),
                    _ => None,
                },
                _ => None,
            })
        }

        /// Resolves every offset the kernel programs need, as the reader does.
        pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
            super::kernel_offsets(self)
        }
    }

    impl super::OffsetSource for RefBtf {
        fn offset(&self, strukt: &str, field: &[&str]) -> Result<u32, BtfError> {
            RefBtf::offset(self, strukt, field)
        }
        fn func_params(&self, name: &str) -> Option<usize> {
            RefBtf::func_params(self, name)
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! A tiny BTF writer for synthetic blobs (ints, pointers, structs, unions).
    #[derive(Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    pub struct Member<'a> {
        pub name: &'a str,
        pub ty: u32,
        pub bit_offset: u32,
    }

    impl BtfBuilder {
        pub fn new() -> Self {
            Self { types: Vec::new(), strings: vec![0], next_id: 1 }
        }
        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        fn push(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size_or_type: u32) -> u32 {
            let name_off = self.string(name);
            let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
            for w in [name_off, info, size_or_type] {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }
        pub fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let id = self.push(name, 1, 0, false, bytes);
            self.types.extend_from_slice(&(bytes * 8).to_le_bytes());
            id
        }
        pub fn ptr(&mut self, to: u32) -> u32 {
            self.push("", 2, 0, false, to)
        }
        pub fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[Member<'_>],
            bitfields: bool,
        ) -> u32 {
            let kind = if union { 5 } else { 4 };
            let id = self.push(name, kind, members.len() as u32, bitfields, size);
            for m in members {
                let n = self.string(m.name);
                for w in [n, m.ty, m.bit_offset] {
                    self.types.extend_from_slice(&w.to_le_bytes());
                }
            }
            id
        }
        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
            out.push(1);
            out.push(0);
            let hdr_len = 24u32;
            let type_len = self.types.len() as u32;
            for w in [hdr_len, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{BtfBuilder, Member};
    use super::*;

    fn synthetic() -> KernelBtf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let long = b.int("long", 8);
        let p = b.ptr(int);
        // struct inner_anon { long a; int wanted; } (anonymous)
        let anon = b.composite(
            false,
            "",
            16,
            &[
                Member { name: "a", ty: long, bit_offset: 0 },
                Member { name: "wanted", ty: int, bit_offset: 64 },
            ],
            false,
        );
        // union { int u1; struct anon; } (anonymous)
        let un = b.composite(
            true,
            "",
            16,
            &[Member { name: "u1", ty: int, bit_offset: 0 }, Member { name: "", ty: anon, bit_offset: 0 }],
            false,
        );
        b.composite(
            false,
            "outer",
            64,
            &[
                Member { name: "first", ty: long, bit_offset: 0 },
                Member { name: "ptr", ty: p, bit_offset: 64 },
                Member { name: "", ty: un, bit_offset: 128 },
                Member { name: "__parent", ty: p, bit_offset: 256 },
            ],
            false,
        );
        // A bitfield struct: kind_flag set, offset = size << 24 | bit offset.
        b.composite(
            false,
            "bits",
            8,
            &[
                Member { name: "whole", ty: int, bit_offset: 0 },
                Member { name: "flag", ty: int, bit_offset: (1 << 24) | 35 },
            ],
            true,
        );
        KernelBtf::from_bytes(&b.build()).expect("synthetic BTF parses")
    }

    #[test]
    fn direct_members() {
        let btf = synthetic();
        assert_eq!(btf.offset("outer", &["first"]).unwrap(), 0);
        assert_eq!(btf.offset("outer", &["ptr"]).unwrap(), 8);
    }

    #[test]
    fn members_inside_anonymous_struct_in_anonymous_union() {
        let btf = synthetic();
        // union at byte 16, struct inside at 0, field at byte 8 of it.
        assert_eq!(btf.offset("outer", &["wanted"]).unwrap(), 24);
        assert_eq!(btf.offset("outer", &["u1"]).unwrap(), 16);
    }

    #[test]
    fn renamed_field_falls_back_in_order() {
        let btf = synthetic();
        assert_eq!(btf.offset("outer", &["parent", "__parent"]).unwrap(), 32);
        assert_eq!(btf.offset("outer", &["__parent", "parent"]).unwrap(), 32);
    }

    #[test]
    fn missing_struct_field_and_bitfields_are_errors() {
        let btf = synthetic();
        assert!(matches!(btf.offset("nope", &["x"]), Err(BtfError::NoStruct(_))));
        assert!(matches!(btf.offset("outer", &["x", "y"]), Err(BtfError::NoField { .. })));
        assert!(matches!(btf.offset("bits", &["flag"]), Err(BtfError::Bitfield { .. })));
        assert_eq!(btf.offset("bits", &["whole"]).unwrap(), 0);
    }

    /// The captured BTF of this project's CI kernel (Linux 6.18): the resolver must find
    /// every field the programs read, with `kernfs_node.__parent` (renamed in 6.15).
    #[test]
    fn captured_kernel_btf_resolves_every_offset() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/btf/vmlinux-6.18.btf.zst");
        let compressed = std::fs::read(path).expect("fixture present");
        let mut raw = Vec::new();
        let mut dec = ruzstd::decoding::StreamingDecoder::new(compressed.as_slice()).expect("zstd");
        std::io::Read::read_to_end(&mut dec, &mut raw).expect("decompress");
        let btf = KernelBtf::from_bytes(&raw).expect("parse captured BTF");
        let off = btf.kernel_offsets().expect("all offsets resolve");
        assert_eq!(off.valid, 1);
        // The walk reads `vfsmount.mnt_root` at offset 0 of the embedded vfsmount.
        assert_eq!(btf.offset("vfsmount", &["mnt_root"]).unwrap(), 0);
        // 6.18's bpf hook is (cmd, attr, size, kernel): ret is argument 4.
        assert_eq!(off.lsm_bpf_ret, 4);
        // `qstr` is { union { struct { hash, len }; hash_len }; name }.
        assert_eq!((off.qstr_len, off.qstr_name), (4, 8));
        assert_eq!(btf.func_params("bpf_lsm_file_open"), Some(1));
        // Independent facts about 6.18's layout: pid and tgid are adjacent pid_t's,
        // kernfs_node.id is a u64 and __parent exists, linux_binprm.file follows mm/p.
        assert_eq!(off.task_tgid, off.task_pid + 4);
        assert!(btf.offset("kernfs_node", &["parent"]).is_err(), "6.18 renamed parent");
        assert_eq!(off.kn_parent, btf.offset("kernfs_node", &["__parent"]).unwrap());
        assert!(off.task_real_parent > off.task_tgid);
        assert!(btf.has_func("bpf_lsm_bprm_check_security"));
        assert!(!btf.has_func("bpf_lsm_definitely_not_a_hook"));
    }

    /// The scanning reader agrees with the `btf-rs` resolver it replaced: every offset and
    /// every LSM hook's parameter count, on the captured 6.18 BTF and on this kernel's.
    #[test]
    fn agrees_with_the_btf_rs_resolver() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/btf/vmlinux-6.18.btf.zst");
        let compressed = std::fs::read(path).expect("fixture present");
        let mut raw = Vec::new();
        let mut dec = ruzstd::decoding::StreamingDecoder::new(compressed.as_slice()).expect("zstd");
        std::io::Read::read_to_end(&mut dec, &mut raw).expect("decompress");
        let mut blobs = vec![raw];
        if let Ok(b) = std::fs::read(VMLINUX_BTF) {
            blobs.push(b);
        }
        for raw in &blobs {
            let new = KernelBtf::from_bytes(raw).unwrap();
            let old = super::reference::RefBtf::from_bytes(raw).unwrap();
            assert_eq!(new.kernel_offsets().unwrap(), old.kernel_offsets().unwrap());
            for (_, hook, _) in crate::loader::LSM_PROGRAMS {
                let f = format!("bpf_lsm_{hook}");
                assert_eq!(new.func_params(&f), old.func_params(&f), "{f}");
                assert_eq!(new.has_func(&f), old.has_func(&f), "{f}");
            }
            assert_eq!(new.offset("qstr", &["hash_len"]).ok(), old.offset("qstr", &["hash_len"]).ok());
            assert!(matches!(new.offset("task_struct", &["no_such_field"]), Err(BtfError::NoField { .. })));
        }
        // Not BTF, or cut short: errors, not panics.
        assert!(KernelBtf::from_bytes(b"nope").is_err());
        assert!(KernelBtf::from_bytes(&blobs[0][..blobs[0].len() / 2]).is_err());
    }
}
