//! Minimal, read-only parser for the kernel's BTF type information.
//!
//! The eBPF classifier reads `sock->sk_cgrp_data.cgroup->kn->id` with `bpf_probe_read_kernel`,
//! and the offsets of those members differ between kernel builds, so they must be taken from the
//! running kernel's BTF (`/sys/kernel/btf/vmlinux`) when the program is loaded. aya-obj has a
//! full BTF parser, but its lookup functions are crate-private, so this module implements just
//! enough of the format to find structs by name and compute member offsets and member kinds.
//! Only the little-endian layout is supported, which covers every architecture we deploy on.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

/// Where the running kernel exposes its own BTF.
const VMLINUX_BTF_PATH: &str = "/sys/kernel/btf/vmlinux";

/// BTF magic number; its byte order in the blob tells the blob's endianness.
const BTF_MAGIC: u16 = 0xeb9f;
/// Size of the fixed part of the BTF header (magic through `str_len`).
const HEADER_LEN: usize = 24;
/// Size of the common part of every type record (`name_off`, `info`, `size_or_type`).
const TYPE_HEADER_LEN: usize = 12;
/// Size of one `btf_member` record of a struct or union.
const MEMBER_LEN: usize = 12;

/// Upper bound on typedef/modifier hops and anonymous-member nesting, so that a malformed (cyclic)
/// blob produces an error instead of looping forever.
const MAX_DEPTH: u32 = 64;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors from reading kernel BTF or looking up members in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The BTF file could not be read.
    #[error("read kernel BTF from {}", path.display())]
    Read {
        /// The file that was read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: io::Error,
    },
    /// The blob does not start with the BTF magic in either byte order.
    #[error("bad BTF magic {found:#06x}, expected {BTF_MAGIC:#06x}")]
    BadMagic {
        /// The first two bytes of the blob, read as little-endian.
        found: u16,
    },
    /// The blob is valid BTF in big-endian byte order, which this parser does not handle.
    #[error("BTF is big-endian, only the little-endian layout is supported")]
    BigEndian,
    /// The blob ends before a structure it declares.
    #[error("truncated BTF {what}: need {needed} bytes, have {available}")]
    Truncated {
        /// The part of the blob that is cut short.
        what: &'static str,
        /// Bytes required.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The blob is internally inconsistent or uses an unknown type kind.
    #[error("malformed BTF: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
    /// No struct of that name exists.
    #[error("kernel BTF has no struct {name}")]
    NoSuchStruct {
        /// The struct name that was looked up.
        name: String,
    },
    /// The struct has no member at the given (dotted) path.
    #[error("struct {strukt} has no member {member}")]
    NoSuchMember {
        /// The struct the path starts from.
        strukt: String,
        /// The dotted member path up to and including the missing element.
        member: String,
    },
    /// A type on the path has a different kind than required.
    #[error("{what} is {found}, expected {expected}")]
    UnexpectedKind {
        /// The dotted path of the offending member.
        what: String,
        /// The kind that was required.
        expected: &'static str,
        /// The kind that was found.
        found: String,
    },
    /// The member at the path is a bitfield, which has no byte offset.
    #[error("member {member} of struct {strukt} is a bitfield")]
    Bitfield {
        /// The struct the path starts from.
        strukt: String,
        /// The dotted member path.
        member: String,
    },
    /// The member at the path does not start on a byte boundary.
    #[error("member {member} of struct {strukt} is not byte aligned (bit offset {bit_offset})")]
    Unaligned {
        /// The struct the path starts from.
        strukt: String,
        /// The dotted member path.
        member: String,
        /// Bit offset of the member from the start of the struct.
        bit_offset: u64,
    },
    /// An empty member path was given.
    #[error("empty member path for struct {strukt}")]
    EmptyPath {
        /// The struct the path would start from.
        strukt: String,
    },
}

/// What a struct member's type is, after skipping typedefs and type qualifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberKind {
    /// A pointer of any kind.
    Pointer,
    /// An integer of the given size in bytes.
    Int {
        /// Size of the integer in bytes.
        bytes: u32,
    },
    /// Anything else (struct, union, array, enum, float, ...).
    Other,
}

/// Struct name to type id.
type StructIndex = HashMap<Box<[u8]>, u32>;

/// Parsed kernel BTF with a name index over its structs.
#[derive(Debug)]
pub struct KernelBtf {
    /// The type section, validated at parse time so that every record lies inside it.
    types: Vec<u8>,
    /// The string section.
    strings: Vec<u8>,
    /// Start of each type record in `types`; type id `n` is at index `n - 1` (id 0 is void).
    offsets: Vec<u32>,
    /// Struct name to type id; only structs are indexed because that is all callers look up.
    structs: StructIndex,
}

/// The common fields of one type record.
#[derive(Debug, Clone, Copy)]
struct TypeRec {
    name_off: u32,
    info: u32,
    size_or_type: u32,
    /// Offset of the kind-specific data in the type section.
    data: usize,
}

impl TypeRec {
    fn kind(&self) -> u32 {
        (self.info >> 24) & 0x1f
    }

    fn vlen(&self) -> u32 {
        self.info & 0xffff
    }

    fn kind_flag(&self) -> bool {
        self.info >> 31 != 0
    }
}

/// A member found by name, with its offset relative to the struct the search started at.
#[derive(Debug, Clone, Copy)]
struct FoundMember {
    type_id: u32,
    bit_offset: u64,
    bitfield_size: u32,
}

impl KernelBtf {
    /// Reads and parses the running kernel's BTF from `/sys/kernel/btf/vmlinux`.
    ///
    /// # Errors
    ///
    /// Returns [`BtfError::Read`] if the file cannot be read (e.g. a kernel built without
    /// `CONFIG_DEBUG_INFO_BTF`), or any parse error from [`KernelBtf::parse`].
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = Path::new(VMLINUX_BTF_PATH);
        let bytes = std::fs::read(path)
            .map_err(|source| BtfError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&bytes)
    }

    /// Parses a raw little-endian BTF blob.
    ///
    /// # Errors
    ///
    /// Returns [`BtfError::BadMagic`] or [`BtfError::BigEndian`] for a foreign header,
    /// [`BtfError::Truncated`] if the blob is shorter than its header claims, and
    /// [`BtfError::Malformed`] for inconsistent sections, bad strings or unknown type kinds.
    pub fn parse(bytes: &[u8]) -> Result<Self, BtfError> {
        let header = bytes.get(..HEADER_LEN).ok_or(BtfError::Truncated {
            what: "header",
            needed: HEADER_LEN,
            available: bytes.len(),
        })?;
        let magic = u16::from_le_bytes([header[0], header[1]]);
        if magic != BTF_MAGIC {
            if magic.swap_bytes() == BTF_MAGIC {
                return Err(BtfError::BigEndian);
            }
            return Err(BtfError::BadMagic { found: magic });
        }
        let field = |i: usize| read_u32(header, 4 + 4 * i).unwrap_or(0);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0), field(1), field(2), field(3), field(4));
        if (hdr_len as usize) < HEADER_LEN {
            return Err(malformed(format!("header length {hdr_len} is below {HEADER_LEN}")));
        }
        let types = section(bytes, "type section", hdr_len, type_off, type_len)?;
        let strings = section(bytes, "string section", hdr_len, str_off, str_len)?;

        let (offsets, structs) = index(types, strings)?;
        Ok(KernelBtf { types: types.to_vec(), strings: strings.to_vec(), offsets, structs })
    }

    /// Returns the byte offset of the member reached by following `path` from struct `strukt`.
    ///
    /// Each path element names a member of the current struct or union, looking through
    /// anonymous struct/union members. Intermediate members must be embedded structs or unions
    /// (possibly behind typedefs or qualifiers); pointers are not followed.
    ///
    /// # Errors
    ///
    /// Returns [`BtfError::NoSuchStruct`], [`BtfError::NoSuchMember`],
    /// [`BtfError::UnexpectedKind`] if an intermediate member is not a struct or union,
    /// [`BtfError::Bitfield`] or [`BtfError::Unaligned`] if the member has no byte offset,
    /// [`BtfError::EmptyPath`] for an empty path, and [`BtfError::Malformed`] for broken BTF.
    pub fn member_offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let (_, bit_offset) = self.resolve_path(strukt, path)?;
        u32::try_from(bit_offset / 8).map_err(|_| malformed("member offset overflows u32".into()))
    }

    /// Returns what kind of type the member reached by following `path` from `strukt` has.
    ///
    /// Typedefs and const/volatile/restrict/type-tag qualifiers are skipped.
    ///
    /// # Errors
    ///
    /// The same as [`KernelBtf::member_offset`].
    pub fn member_kind(&self, strukt: &str, path: &[&str]) -> Result<MemberKind, BtfError> {
        let (type_id, _) = self.resolve_path(strukt, path)?;
        let id = self.skip_modifiers(type_id)?;
        if id == 0 {
            return Ok(MemberKind::Other);
        }
        let rec = self.type_rec(id)?;
        Ok(match rec.kind() {
            KIND_PTR => MemberKind::Pointer,
            KIND_INT => MemberKind::Int { bytes: rec.size_or_type },
            _ => MemberKind::Other,
        })
    }

    /// Follows `path` from struct `strukt`; returns the final member's type id and bit offset.
    fn resolve_path(&self, strukt: &str, path: &[&str]) -> Result<(u32, u64), BtfError> {
        if path.is_empty() {
            return Err(BtfError::EmptyPath { strukt: strukt.to_owned() });
        }
        let mut current = *self
            .structs
            .get(strukt.as_bytes())
            .ok_or_else(|| BtfError::NoSuchStruct { name: strukt.to_owned() })?;
        let mut bit_offset = 0u64;
        let mut type_id = current;
        for (i, element) in path.iter().enumerate() {
            let dotted = || path[..=i].join(".");
            if i > 0 {
                current = self.skip_modifiers(type_id)?;
                let kind = self.kind_of(current)?;
                if kind != KIND_STRUCT && kind != KIND_UNION {
                    return Err(BtfError::UnexpectedKind {
                        what: format!("{strukt}.{}", path[..i].join(".")),
                        expected: "struct or union",
                        found: kind_name(kind).to_owned(),
                    });
                }
            }
            let found = self.find_member(current, element.as_bytes(), 0)?.ok_or_else(|| {
                BtfError::NoSuchMember { strukt: strukt.to_owned(), member: dotted() }
            })?;
            if found.bitfield_size != 0 || self.is_legacy_bitfield(found.type_id)? {
                return Err(BtfError::Bitfield { strukt: strukt.to_owned(), member: dotted() });
            }
            bit_offset += found.bit_offset;
            if !bit_offset.is_multiple_of(8) {
                return Err(BtfError::Unaligned {
                    strukt: strukt.to_owned(),
                    member: dotted(),
                    bit_offset,
                });
            }
            type_id = found.type_id;
        }
        Ok((type_id, bit_offset))
    }

    /// Searches struct/union `id` for member `name`, descending into anonymous members.
    fn find_member(
        &self,
        id: u32,
        name: &[u8],
        depth: u32,
    ) -> Result<Option<FoundMember>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed(format!("anonymous members nested too deeply in type {id}")));
        }
        let rec = self.type_rec(id)?;
        for i in 0..rec.vlen() as usize {
            let pos = rec.data + i * MEMBER_LEN;
            let field = |k: usize| {
                read_u32(&self.types, pos + 4 * k)
                    .ok_or_else(|| malformed(format!("member {i} of type {id} is out of bounds")))
            };
            let (name_off, type_id, raw_offset) = (field(0)?, field(1)?, field(2)?);
            // With kind_flag set, the offset field packs the bitfield size into the top byte.
            let (bit_offset, bitfield_size) = if rec.kind_flag() {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            let member_name = self.name(name_off)?;
            if member_name == name {
                return Ok(Some(FoundMember {
                    type_id,
                    bit_offset: u64::from(bit_offset),
                    bitfield_size,
                }));
            }
            if member_name.is_empty() {
                let inner = self.skip_modifiers(type_id)?;
                let kind = self.kind_of(inner)?;
                if kind == KIND_STRUCT || kind == KIND_UNION {
                    if let Some(mut found) = self.find_member(inner, name, depth + 1)? {
                        found.bit_offset += u64::from(bit_offset);
                        return Ok(Some(found));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Whether `id` is an INT carrying the pre-kind_flag bitfield encoding (partial width).
    fn is_legacy_bitfield(&self, id: u32) -> Result<bool, BtfError> {
        if id == 0 {
            return Ok(false);
        }
        let rec = self.type_rec(id)?;
        if rec.kind() != KIND_INT {
            return Ok(false);
        }
        let encoding = read_u32(&self.types, rec.data)
            .ok_or_else(|| malformed(format!("int type {id} is out of bounds")))?;
        let bits = encoding & 0xff;
        let offset = (encoding >> 16) & 0xff;
        Ok(offset != 0 || u64::from(bits) != u64::from(rec.size_or_type) * 8)
    }

    /// Follows typedefs and qualifiers from `id` to the underlying type id (0 for void).
    fn skip_modifiers(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            if id == 0 {
                return Ok(0);
            }
            let rec = self.type_rec(id)?;
            match rec.kind() {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = rec.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(malformed(format!("typedef/qualifier chain from type {id} is too long or cyclic")))
    }

    /// Kind of type `id`, with 0 (void) reported as kind 0.
    fn kind_of(&self, id: u32) -> Result<u32, BtfError> {
        if id == 0 {
            return Ok(0);
        }
        Ok(self.type_rec(id)?.kind())
    }

    /// The record of type `id`, or an error if `id` does not exist.
    fn type_rec(&self, id: u32) -> Result<TypeRec, BtfError> {
        self.rec(id).ok_or_else(|| malformed(format!("reference to nonexistent type {id}")))
    }

    fn rec(&self, id: u32) -> Option<TypeRec> {
        let pos = *self.offsets.get((id as usize).checked_sub(1)?)?;
        rec_at(&self.types, pos as usize)
    }

    fn name(&self, off: u32) -> Result<&[u8], BtfError> {
        name_at(&self.strings, off)
    }
}

/// Walks the type section once, recording where each type starts and indexing structs by name.
fn index(types: &[u8], strings: &[u8]) -> Result<(Vec<u32>, StructIndex), BtfError> {
    let mut offsets: Vec<u32> = Vec::new();
    let mut structs = StructIndex::new();
    let len = types.len();
    let mut pos = 0usize;
    while pos < len {
        let id = offsets.len() + 1;
        let truncated = || malformed(format!("type {id} runs past the end of the type section"));
        let rec = rec_at(types, pos).ok_or_else(truncated)?;
        let vlen = rec.vlen() as usize;
        let extra = match rec.kind() {
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
            KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
            kind => return Err(malformed(format!("type {id} has unknown kind {kind}"))),
        };
        let end = rec.data + extra;
        if end > len {
            return Err(truncated());
        }
        // The type section length is a u32, so every position fits.
        offsets.push(pos as u32);
        if rec.kind() == KIND_STRUCT && rec.name_off != 0 {
            let id = offsets.len() as u32;
            let name = name_at(strings, rec.name_off)?;
            match structs.get_mut(name) {
                None => {
                    structs.insert(name.into(), id);
                }
                Some(existing) => {
                    // Forward-declared or emptied duplicates (vlen 0) must not shadow the
                    // real definition.
                    let existing_empty = offsets
                        .get(*existing as usize - 1)
                        .and_then(|&p| rec_at(types, p as usize))
                        .is_some_and(|r| r.vlen() == 0);
                    if existing_empty && rec.vlen() > 0 {
                        *existing = id;
                    }
                }
            }
        }
        pos = end;
    }
    Ok((offsets, structs))
}

/// The common fields of the type record starting at `pos`, if they lie inside `types`.
fn rec_at(types: &[u8], pos: usize) -> Option<TypeRec> {
    Some(TypeRec {
        name_off: read_u32(types, pos)?,
        info: read_u32(types, pos + 4)?,
        size_or_type: read_u32(types, pos + 8)?,
        data: pos + TYPE_HEADER_LEN,
    })
}

/// The NUL-terminated name at `off` in the string section, as raw bytes.
fn name_at(strings: &[u8], off: u32) -> Result<&[u8], BtfError> {
    if off == 0 {
        return Ok(b"");
    }
    let rest = strings
        .get(off as usize..)
        .ok_or_else(|| malformed(format!("string offset {off} is out of bounds")))?;
    let nul = rest
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed(format!("string at offset {off} is not terminated")))?;
    Ok(&rest[..nul])
}

/// Byte offsets needed to read a socket's cgroup v2 id in the eBPF program.
///
/// The program reads `sock->sk_cgrp_data.cgroup`, then `cgroup->kn`, then `kn->id`, each with
/// `bpf_probe_read_kernel` at the offsets below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupIdOffsets {
    /// Offset of the `struct cgroup *` at `sk_cgrp_data.cgroup` in `struct sock`.
    pub sock_cgroup: u32,
    /// Offset of the `struct kernfs_node *kn` in `struct cgroup`.
    pub cgroup_kn: u32,
    /// Offset of the 64-bit `id` in `struct kernfs_node`.
    pub kn_id: u32,
}

impl CgroupIdOffsets {
    /// Computes the offsets from kernel BTF and checks the member types along the way.
    ///
    /// # Errors
    ///
    /// Returns any lookup error from [`KernelBtf::member_offset`], or
    /// [`BtfError::UnexpectedKind`] if `cgroup` or `kn` is not a pointer or `id` is not an
    /// 8-byte integer (as on kernels older than 5.5, where it was a union).
    pub fn from_btf(btf: &KernelBtf) -> Result<Self, BtfError> {
        let sock_cgroup = checked_offset(btf, "sock", &["sk_cgrp_data", "cgroup"], Expect::Ptr)?;
        let cgroup_kn = checked_offset(btf, "cgroup", &["kn"], Expect::Ptr)?;
        let kn_id = checked_offset(btf, "kernfs_node", &["id"], Expect::U64)?;
        Ok(Self { sock_cgroup, cgroup_kn, kn_id })
    }
}

/// The member kind `checked_offset` requires.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Ptr,
    U64,
}

/// Offset of a member after verifying its kind, so a layout change fails loudly at load time.
fn checked_offset(
    btf: &KernelBtf,
    strukt: &str,
    path: &[&str],
    expect: Expect,
) -> Result<u32, BtfError> {
    let kind = btf.member_kind(strukt, path)?;
    let (ok, expected) = match expect {
        Expect::Ptr => (kind == MemberKind::Pointer, "a pointer"),
        Expect::U64 => (kind == MemberKind::Int { bytes: 8 }, "an 8-byte integer"),
    };
    if !ok {
        let found = match kind {
            MemberKind::Pointer => "a pointer".to_owned(),
            MemberKind::Int { bytes } => format!("a {bytes}-byte integer"),
            MemberKind::Other => "neither a pointer nor an integer".to_owned(),
        };
        return Err(BtfError::UnexpectedKind {
            what: format!("{strukt}.{}", path.join(".")),
            expected,
            found,
        });
    }
    btf.member_offset(strukt, path)
}

/// Returns the `[hdr_len + off, hdr_len + off + len)` slice of `bytes`.
fn section<'a>(
    bytes: &'a [u8],
    what: &'static str,
    hdr_len: u32,
    off: u32,
    len: u32,
) -> Result<&'a [u8], BtfError> {
    let start = u64::from(hdr_len) + u64::from(off);
    let end = start + u64::from(len);
    let needed = usize::try_from(end).map_err(|_| malformed(format!("{what} is too large")))?;
    bytes.get(needed - len as usize..needed).ok_or(BtfError::Truncated {
        what,
        needed,
        available: bytes.len(),
    })
}

fn read_u32(buf: &[u8], pos: usize) -> Option<u32> {
    let bytes = buf.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn malformed(what: String) -> BtfError {
    BtfError::Malformed { what }
}

fn kind_name(kind: u32) -> &'static str {
    match kind {
        0 => "void",
        KIND_INT => "an integer",
        KIND_PTR => "a pointer",
        KIND_ARRAY => "an array",
        KIND_STRUCT => "a struct",
        KIND_UNION => "a union",
        KIND_ENUM | KIND_ENUM64 => "an enum",
        KIND_FWD => "a forward declaration",
        KIND_FUNC | KIND_FUNC_PROTO => "a function",
        KIND_FLOAT => "a float",
        _ => "an unexpected kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Assembles a little-endian BTF blob; type ids are handed out in call order from 1.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
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

        fn push(&mut self, words: &[u32]) -> u32 {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
            (u32::from(kind_flag) << 31) | (kind << 24) | vlen
        }

        fn int(&mut self, name: &str, bytes: u32) -> u32 {
            let n = self.string(name);
            self.push(&[n, Self::info(KIND_INT, 0, false), bytes, bytes * 8])
        }

        fn int_bits(&mut self, name: &str, bytes: u32, bits: u32) -> u32 {
            let n = self.string(name);
            self.push(&[n, Self::info(KIND_INT, 0, false), bytes, bits])
        }

        fn modifier(&mut self, kind: u32, name: &str, target: u32) -> u32 {
            let n = self.string(name);
            self.push(&[n, Self::info(kind, 0, false), target])
        }

        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let n = self.string(name);
            let mut words = vec![n, Self::info(kind, members.len() as u32, kind_flag), size];
            for &(name, ty, offset) in members {
                words.extend([self.string(name), ty, offset]);
            }
            self.push(&words)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let type_len = self.types.len() as u32;
            for w in [24, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&u32::to_le_bytes(w));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// Builds a blob with an anonymous union, a typedef'd member, a kind_flag bitfield struct,
    /// a legacy bitfield and a duplicate empty struct.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let ull = b.int("unsigned long long", 8);
        let int = b.int("int", 4);
        let u64_t = b.modifier(KIND_TYPEDEF, "u64", ull);
        let void_ptr = b.modifier(KIND_PTR, "", 0);
        // A member-less duplicate before the real definition must not win the name lookup.
        b.composite(KIND_STRUCT, "inner", 0, false, &[]);
        let inner =
            b.composite(KIND_STRUCT, "inner", 16, false, &[("a", u64_t, 0), ("b", int, 64)]);
        let inner_t = b.modifier(KIND_TYPEDEF, "inner_t", inner);
        let const_inner = b.modifier(KIND_CONST, "", inner_t);
        let anon_struct =
            b.composite(KIND_STRUCT, "", 8, false, &[("lo", int, 0), ("hi", int, 32)]);
        let anon_union =
            b.composite(KIND_UNION, "", 8, false, &[("ptr", void_ptr, 0), ("", anon_struct, 0)]);
        let bits3 = b.int_bits("", 4, 3);
        b.composite(
            KIND_STRUCT,
            "outer",
            48,
            false,
            &[
                ("first", int, 0),
                ("", anon_union, 64),
                ("in", const_inner, 128),
                ("big", u64_t, 256),
                ("legacy", bits3, 320),
            ],
        );
        b.composite(
            KIND_STRUCT,
            "flags",
            8,
            true,
            &[("f1", int, 3 << 24), ("f2", int, (5 << 24) | 3), ("whole", int, 32)],
        );
        b.composite(KIND_STRUCT, "odd", 8, true, &[("", anon_struct, 4)]);
        b.build()
    }

    #[test]
    fn offsets_in_synthetic_btf() {
        let btf = KernelBtf::parse(&sample()).expect("sample BTF parses");
        assert_eq!(btf.member_offset("outer", &["first"]).expect("first"), 0);
        assert_eq!(btf.member_offset("outer", &["ptr"]).expect("ptr"), 8);
        assert_eq!(btf.member_offset("outer", &["hi"]).expect("hi"), 12);
        assert_eq!(btf.member_offset("outer", &["in"]).expect("in"), 16);
        assert_eq!(btf.member_offset("outer", &["in", "a"]).expect("in.a"), 16);
        assert_eq!(btf.member_offset("outer", &["in", "b"]).expect("in.b"), 24);
        assert_eq!(btf.member_offset("outer", &["big"]).expect("big"), 32);
        assert_eq!(btf.member_offset("inner", &["b"]).expect("inner.b"), 8);
        assert_eq!(btf.member_offset("flags", &["whole"]).expect("whole"), 4);
    }

    #[test]
    fn member_kinds_in_synthetic_btf() {
        let btf = KernelBtf::parse(&sample()).expect("sample BTF parses");
        let kind = |path: &[&str]| btf.member_kind("outer", path).expect("member exists");
        assert_eq!(kind(&["ptr"]), MemberKind::Pointer);
        assert_eq!(kind(&["big"]), MemberKind::Int { bytes: 8 });
        assert_eq!(kind(&["lo"]), MemberKind::Int { bytes: 4 });
        assert_eq!(kind(&["in"]), MemberKind::Other);
        assert_eq!(kind(&["in", "a"]), MemberKind::Int { bytes: 8 });
    }

    #[test]
    fn lookup_errors() {
        let btf = KernelBtf::parse(&sample()).expect("sample BTF parses");
        assert!(matches!(
            btf.member_offset("nope", &["x"]),
            Err(BtfError::NoSuchStruct { name }) if name == "nope"
        ));
        assert!(matches!(
            btf.member_offset("outer", &["in", "missing"]),
            Err(BtfError::NoSuchMember { strukt, member })
                if strukt == "outer" && member == "in.missing"
        ));
        let err = btf.member_offset("outer", &["first", "x"]).expect_err("int has no members");
        assert!(matches!(err, BtfError::UnexpectedKind { ref what, .. } if what == "outer.first"));
        assert_eq!(err.to_string(), "outer.first is an integer, expected struct or union");
        // A pointer member is not followed, even when it is the anonymous union's `ptr`.
        assert!(matches!(
            btf.member_offset("outer", &["ptr", "x"]),
            Err(BtfError::UnexpectedKind { .. })
        ));
        assert!(matches!(btf.member_offset("flags", &["f1"]), Err(BtfError::Bitfield { .. })));
        assert!(matches!(btf.member_offset("flags", &["f2"]), Err(BtfError::Bitfield { .. })));
        assert!(matches!(btf.member_offset("outer", &["legacy"]), Err(BtfError::Bitfield { .. })));
        assert!(matches!(
            btf.member_offset("odd", &["lo"]),
            Err(BtfError::Unaligned { bit_offset: 4, .. })
        ));
        assert!(matches!(btf.member_offset("outer", &[]), Err(BtfError::EmptyPath { .. })));
    }

    #[test]
    fn header_errors() {
        let blob = sample();

        let mut bad = blob.clone();
        bad[0] = 0x12;
        bad[1] = 0x34;
        assert!(matches!(KernelBtf::parse(&bad), Err(BtfError::BadMagic { found: 0x3412 })));

        let mut swapped = blob.clone();
        swapped.swap(0, 1);
        assert!(matches!(KernelBtf::parse(&swapped), Err(BtfError::BigEndian)));

        assert!(matches!(
            KernelBtf::parse(&blob[..10]),
            Err(BtfError::Truncated { what: "header", .. })
        ));
        assert!(matches!(
            KernelBtf::parse(&blob[..blob.len() - 1]),
            Err(BtfError::Truncated { what: "string section", .. })
        ));
    }

    #[test]
    fn malformed_type_section() {
        let mut b = Builder::new();
        b.push(&[0, Builder::info(20, 0, false), 0]);
        let err = KernelBtf::parse(&b.build()).expect_err("kind 20 is unknown");
        assert!(matches!(err, BtfError::Malformed { .. }));
        assert_eq!(err.to_string(), "malformed BTF: type 1 has unknown kind 20");

        // A struct claiming more members than the section holds.
        let mut b = Builder::new();
        b.push(&[0, Builder::info(KIND_STRUCT, 2, false), 8, 0, 0, 0]);
        assert!(matches!(KernelBtf::parse(&b.build()), Err(BtfError::Malformed { .. })));

        // A typedef cycle must end in an error, not a hang.
        let mut b = Builder::new();
        let a = b.modifier(KIND_TYPEDEF, "a", 2);
        b.modifier(KIND_TYPEDEF, "b", a);
        b.composite(KIND_STRUCT, "s", 8, false, &[("m", a, 0)]);
        let btf = KernelBtf::parse(&b.build()).expect("cycle is only detected on use");
        assert!(matches!(btf.member_kind("s", &["m"]), Err(BtfError::Malformed { .. })));
    }

    #[test]
    fn cgroup_id_offsets_from_running_kernel() {
        if !Path::new(VMLINUX_BTF_PATH).exists() {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{VMLINUX_BTF_PATH} is missing; CI runners must have kernel BTF");
            }
            eprintln!("note: {VMLINUX_BTF_PATH} not present, skipping kernel BTF test");
            return;
        }
        let btf = KernelBtf::from_sys_fs().expect("kernel BTF parses");
        let offsets = CgroupIdOffsets::from_btf(&btf).expect("cgroup id offsets resolve");
        eprintln!("cgroup id offsets: {offsets:?}");
        // Pointers in struct sock are 8-byte aligned and the struct is well under a page.
        assert!(offsets.sock_cgroup > 0 && offsets.sock_cgroup < 4096, "{offsets:?}");
        assert_eq!(offsets.sock_cgroup % 8, 0, "{offsets:?}");
        assert!(offsets.cgroup_kn < 4096 && offsets.cgroup_kn.is_multiple_of(8), "{offsets:?}");
        assert!(offsets.kn_id < 4096 && offsets.kn_id.is_multiple_of(8), "{offsets:?}");
    }
}
