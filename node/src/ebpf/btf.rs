//! A minimal reader of kernel BTF: enough to find the byte offset of a named
//! member of a named struct, through anonymous structs and unions.
//!
//! Rust eBPF has no CO-RE relocations, so the capture programs receive the
//! offsets of the kernel structs they walk from user space, read here from
//! `/sys/kernel/btf/vmlinux` at start-up (format: the kernel's
//! Documentation/bpf/btf.rst).

use std::{collections::HashMap, path::Path};

/// Where the running kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// A problem with a BTF blob or a lookup in it.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("not a BTF blob: {0}")]
    Format(&'static str),
    #[error("unknown BTF type kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {strukt} has no member {member} in the kernel's BTF")]
    NoMember { strukt: String, member: String },
    #[error("struct {strukt} member {member} is a bitfield")]
    Bitfield { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// One struct or union member.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    bit_offset: u32,
    bitfield_size: u32,
}

/// What this reader keeps of a type: the members of structs and unions.
#[derive(Debug, Clone)]
enum Type {
    Composite { members: Vec<Member> },
    Other,
}

/// Parsed BTF: the composite types, by id and by name.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    structs_by_name: HashMap<String, u32>,
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX_BTF))
    }

    /// Reads and parses a BTF file.
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    /// Parses a little-endian BTF blob (a raw `.BTF` section).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let header = Reader::new(data);
        if header.u16(0)? != MAGIC {
            return Err(BtfError::Format(
                "bad magic (big-endian BTF is not supported)",
            ));
        }
        let hdr_len = header.u32(4)? as usize;
        let type_off = header.u32(8)? as usize;
        let type_len = header.u32(12)? as usize;
        let str_off = header.u32(16)? as usize;
        let str_len = header.u32(20)? as usize;
        let section = |off: usize, len: usize| {
            let start = hdr_len
                .checked_add(off)
                .ok_or(BtfError::Format("offset overflow"))?;
            let end = start
                .checked_add(len)
                .ok_or(BtfError::Format("length overflow"))?;
            data.get(start..end)
                .ok_or(BtfError::Format("section out of bounds"))
        };
        let types = section(type_off, type_len)?;
        let strings = section(str_off, str_len)?;
        let name_at = |off: u32| -> Result<String, BtfError> {
            let tail = strings
                .get(off as usize..)
                .ok_or(BtfError::Format("string offset out of bounds"))?;
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            Ok(String::from_utf8_lossy(&tail[..end]).into_owned())
        };

        // Type id 0 is `void`; ids count from 1 in section order.
        let mut parsed = vec![Type::Other];
        let mut structs_by_name = HashMap::new();
        let reader = Reader::new(types);
        let mut at = 0;
        while at < types.len() {
            let id = parsed.len() as u32;
            let name_off = reader.u32(at)?;
            let info = reader.u32(at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            at += 12;
            let extra = match kind {
                // ptr, fwd, typedef, volatile, const, restrict, func, float, type tag
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                1 | 14 | 17 => 4,             // int, var, decl tag
                3 => 12,                      // array
                6 | 13 => 8 * vlen,           // enum, func proto
                4 | 5 | 15 | 19 => 12 * vlen, // struct, union, datasec, enum64
                _ => return Err(BtfError::UnknownKind { kind, id }),
            };
            if kind == KIND_STRUCT || kind == KIND_UNION {
                let mut members = Vec::with_capacity(vlen);
                for i in 0..vlen {
                    let m = at + 12 * i;
                    let offset = reader.u32(m + 8)?;
                    let (bit_offset, bitfield_size) = if kind_flag {
                        (offset & 0x00ff_ffff, offset >> 24)
                    } else {
                        (offset, 0)
                    };
                    members.push(Member {
                        name: name_at(reader.u32(m)?)?,
                        type_id: reader.u32(m + 4)?,
                        bit_offset,
                        bitfield_size,
                    });
                }
                let name = name_at(name_off)?;
                if kind == KIND_STRUCT && !name.is_empty() {
                    // The first definition wins: vmlinux has one per name.
                    structs_by_name.entry(name).or_insert(id);
                }
                parsed.push(Type::Composite { members });
            } else {
                parsed.push(Type::Other);
            }
            at += extra;
        }
        Ok(Btf {
            types: parsed,
            structs_by_name,
        })
    }

    /// The byte offset of `member` in `struct strukt`, looking inside
    /// anonymous struct and union members as C does.
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let no_member = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        };
        let found = self.find_member(id, member, 0).ok_or_else(no_member)?;
        if found.1 != 0 || found.0 % 8 != 0 {
            return Err(BtfError::Bitfield {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            });
        }
        Ok(found.0 / 8)
    }

    /// (bit offset, bitfield size) of `member` inside type `id`, which lies
    /// at `base` bits from the outer struct's start.
    fn find_member(&self, id: u32, member: &str, base: u32) -> Option<(u32, u32)> {
        let Type::Composite { members, .. } = self.types.get(id as usize)? else {
            return None;
        };
        for m in members {
            if m.name == member {
                return Some((base + m.bit_offset, m.bitfield_size));
            }
        }
        members
            .iter()
            .filter(|m| m.name.is_empty())
            .find_map(|m| self.find_member(m.type_id, member, base + m.bit_offset))
    }
}

/// Bounds-checked little-endian reads.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Reader(data)
    }

    fn u16(&self, at: usize) -> Result<u16, BtfError> {
        let bytes = self
            .0
            .get(at..at + 2)
            .ok_or(BtfError::Format("truncated"))?;
        Ok(u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&self, at: usize) -> Result<u32, BtfError> {
        let bytes = self
            .0
            .get(at..at + 4)
            .ok_or(BtfError::Format("truncated"))?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob by hand: `struct outer { int a; union { long b; int c; }; }`
    /// with `a` at byte 0 and the anonymous union at byte 8.
    fn sample() -> Vec<u8> {
        let strings = b"\0outer\0a\0b\0c\0int\0long\0";
        let name = |s: &str| -> u32 {
            let needle = [b"\0".as_slice(), s.as_bytes(), b"\0"].concat();
            strings
                .windows(needle.len())
                .position(|w| w == needle)
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[name("int"), 1 << 24, 4, 32]);
        // 2: long (8 bytes)
        push(&[name("long"), 1 << 24, 8, 64]);
        // 3: anonymous union { long b; int c; }
        push(&[0, (KIND_UNION << 24) | 2, 8]);
        push(&[name("b"), 2, 0]);
        push(&[name("c"), 1, 0]);
        // 4: struct outer { int a; <union 3> at bit 64 }
        push(&[name("outer"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[name("a"), 1, 0]);
        push(&[0, 3, 64]);

        let mut blob = Vec::new();
        for w in [
            u32::from(MAGIC) | (1 << 16),
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&w.to_le_bytes());
        }
        blob.extend_from_slice(&types);
        blob.extend_from_slice(strings);
        blob
    }

    #[test]
    fn finds_direct_and_anonymous_union_members() {
        let btf = Btf::parse(&sample()).expect("hand-built BTF parses");
        assert_eq!(btf.member_offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.member_offset("outer", "b").unwrap(), 8);
        assert_eq!(btf.member_offset("outer", "c").unwrap(), 8);
    }

    #[test]
    fn missing_struct_and_member_are_named_in_the_error() {
        let btf = Btf::parse(&sample()).unwrap();
        let err = btf.member_offset("inner", "a").unwrap_err().to_string();
        assert!(err.contains("no struct inner"), "saw {err}");
        let err = btf.member_offset("outer", "zz").unwrap_err().to_string();
        assert!(err.contains("no member zz"), "saw {err}");
    }

    #[test]
    fn truncated_blob_is_an_error_not_a_panic() {
        let blob = sample();
        for len in [0, 3, 10, 30, blob.len() - 1] {
            assert!(Btf::parse(&blob[..len]).is_err(), "length {len} parsed");
        }
    }
}
