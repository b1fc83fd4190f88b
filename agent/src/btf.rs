//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): the values of an enum (the
//! drop reasons of `enum skb_drop_reason` by name, so no table goes stale between kernels) and
//! the byte offset and size of a struct member, through anonymous unions and structs and along
//! a dotted path (`__sk_common.skc_net.net`), so probes read kernel structs at this kernel's
//! offsets. (aya-obj parses BTF too, but does not expose type lookups.)
//!
//! Format: a header, a type section (type ids from 1, each a 12-byte common part plus data
//! depending on its kind) and a string section. Only what the lookups need is interpreted.

use std::collections::HashMap;

/// Where the running kernel's BTF is.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// Why a BTF lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data is not BTF, or is cut short.
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    /// The kind of a type is unknown to this reader (a newer BTF version).
    #[error("BTF type {id} has unknown kind {kind}")]
    UnknownKind {
        /// Type id.
        id: u32,
        /// Its kind number.
        kind: u32,
    },
    /// No struct, union or enum of this name.
    #[error("the kernel's BTF has no {what} {name}")]
    NoType {
        /// "struct" or "enum".
        what: &'static str,
        /// The name looked for.
        name: String,
    },
    /// The struct has no such member.
    #[error("struct {ty} has no member {path}")]
    NoMember {
        /// The struct.
        ty: String,
        /// The member path.
        path: String,
    },
    /// The member is a bit field, which the probes cannot read as a whole value.
    #[error("{ty}.{path} is a bit field")]
    BitField {
        /// The struct.
        ty: String,
        /// The member path.
        path: String,
    },
}

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

/// One struct or union member: name, type, offset in bits, bit-field size (0 if none).
#[derive(Clone, Debug)]
struct Member {
    name: u32,
    ty: u32,
    bit_offset: u32,
    bitfield: u32,
}

#[derive(Clone, Debug)]
enum Kind {
    Int,
    Ptr,
    Array {
        elem: u32,
        len: u32,
    },
    Composite {
        members: Vec<Member>,
    },
    Enum {
        values: Vec<(u32, i64)>,
    },
    /// typedef, const, volatile, restrict, type tag: refers to another type.
    Alias,
    Other,
}

#[derive(Clone, Debug)]
struct Type {
    name: u32,
    kind_no: u32,
    /// Size for int/struct/union/enum/float, referenced type otherwise.
    size_or_type: u32,
    kind: Kind,
}

/// The kernel's types.
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<(String, u32), u32>,
}

/// A member's place in its struct.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the outermost struct.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
        .ok_or(BtfError::Malformed("cut short"))
}

impl Btf {
    /// Reads the running kernel's BTF.
    pub fn vmlinux() -> Result<Btf, BtfError> {
        let data = std::fs::read(VMLINUX).map_err(|source| BtfError::Read {
            path: VMLINUX.into(),
            source,
        })?;
        Btf::parse(&data)
    }

    /// Parses little-endian BTF data.
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != 0xeb9f {
            return Err(BtfError::Malformed("no little-endian BTF magic"));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_at = hdr_len + type_off;
        let tsec = data
            .get(types_at..types_at + type_len)
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of bounds"))?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![Type {
            name: 0,
            kind_no: 0,
            size_or_type: 0,
            kind: Kind::Other,
        }];
        let mut at = 0;
        while at < tsec.len() {
            let id = types.len() as u32;
            let name = u32_at(tsec, at)?;
            let info = u32_at(tsec, at + 4)?;
            let size_or_type = u32_at(tsec, at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind_no = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let kind = match kind_no {
                KIND_INT => {
                    at += 4;
                    Kind::Int
                }
                KIND_PTR => Kind::Ptr,
                KIND_ARRAY => {
                    let elem = u32_at(tsec, at)?;
                    let len = u32_at(tsec, at + 8)?;
                    at += 12;
                    Kind::Array { elem, len }
                }
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let off = u32_at(tsec, at + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (off & 0x00ff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        members.push(Member {
                            name: u32_at(tsec, at)?,
                            ty: u32_at(tsec, at + 4)?,
                            bit_offset,
                            bitfield,
                        });
                        at += 12;
                    }
                    Kind::Composite { members }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let raw = u32_at(tsec, at + 4)?;
                        let v = if kind_flag {
                            i64::from(raw as i32)
                        } else {
                            i64::from(raw)
                        };
                        values.push((u32_at(tsec, at)?, v));
                        at += 8;
                    }
                    Kind::Enum { values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for _ in 0..vlen {
                        let lo = u64::from(u32_at(tsec, at + 4)?);
                        let hi = u64::from(u32_at(tsec, at + 8)?);
                        values.push((u32_at(tsec, at)?, (hi << 32 | lo) as i64));
                        at += 12;
                    }
                    Kind::Enum { values }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Kind::Alias
                }
                KIND_FWD | KIND_FUNC | KIND_FLOAT => Kind::Other,
                KIND_FUNC_PROTO => {
                    at += 8 * vlen;
                    Kind::Other
                }
                KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Kind::Other
                }
                KIND_DATASEC => {
                    at += 12 * vlen;
                    Kind::Other
                }
                kind => return Err(BtfError::UnknownKind { id, kind }),
            };
            if at > tsec.len() {
                return Err(BtfError::Malformed("type data cut short"));
            }
            types.push(Type {
                name,
                kind_no,
                size_or_type,
                kind,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        let mut by_name = HashMap::new();
        for (id, t) in btf.types.iter().enumerate().skip(1) {
            if t.name != 0 {
                let name = btf.string(t.name).to_string();
                by_name.entry((name, t.kind_no)).or_insert(id as u32);
            }
        }
        btf.by_name = by_name;
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or_default();
        let end = s.iter().position(|b| *b == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    fn ty(&self, id: u32) -> Result<&Type, BtfError> {
        self.types
            .get(id as usize)
            .ok_or(BtfError::Malformed("reference to a missing type"))
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Result<&Type, BtfError> {
        for _ in 0..32 {
            let t = self.ty(id)?;
            match t.kind {
                Kind::Alias => id = t.size_or_type,
                _ => return Ok(t),
            }
        }
        Err(BtfError::Malformed("typedef chain too long"))
    }

    fn size(&self, id: u32) -> Result<u32, BtfError> {
        let t = self.resolve(id)?;
        Ok(match &t.kind {
            Kind::Ptr => 8,
            Kind::Array { elem, len } => self.size(*elem)? * len,
            _ => t.size_or_type,
        })
    }

    /// The values of `enum name` (or its 64-bit form), by member name.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let id = self
            .by_name
            .get(&(name.to_string(), KIND_ENUM))
            .or_else(|| self.by_name.get(&(name.to_string(), KIND_ENUM64)))
            .ok_or_else(|| BtfError::NoType {
                what: "enum",
                name: name.into(),
            })?;
        match &self.ty(*id)?.kind {
            Kind::Enum { values } => Ok(values
                .iter()
                .map(|(n, v)| (self.string(*n).to_string(), *v))
                .collect()),
            _ => unreachable!("indexed as an enum"),
        }
    }

    /// The offset and size of `path` (dot-separated member names) in `struct ty`. Members of
    /// anonymous unions and structs are found as if they were the struct's own.
    pub fn member(&self, ty: &str, path: &str) -> Result<Field, BtfError> {
        let mut id = *self
            .by_name
            .get(&(ty.to_string(), KIND_STRUCT))
            .ok_or_else(|| BtfError::NoType {
                what: "struct",
                name: ty.into(),
            })?;
        let mut offset_bits = 0u32;
        let no_member = || BtfError::NoMember {
            ty: ty.into(),
            path: path.into(),
        };
        for part in path.split('.') {
            let (bits, bitfield, member_ty) = self.find(id, part)?.ok_or_else(no_member)?;
            if bitfield != 0 {
                return Err(BtfError::BitField {
                    ty: ty.into(),
                    path: path.into(),
                });
            }
            offset_bits += bits;
            id = member_ty;
        }
        if !offset_bits.is_multiple_of(8) {
            return Err(BtfError::BitField {
                ty: ty.into(),
                path: path.into(),
            });
        }
        Ok(Field {
            offset: offset_bits / 8,
            size: self.size(id)?,
        })
    }

    /// A member `name` of composite `id`, searched through anonymous members: its bit offset,
    /// bit-field size and type.
    fn find(&self, id: u32, name: &str) -> Result<Option<(u32, u32, u32)>, BtfError> {
        let Kind::Composite { members } = &self.resolve(id)?.kind else {
            return Ok(None);
        };
        for m in members {
            if m.name != 0 {
                if self.string(m.name) == name {
                    return Ok(Some((m.bit_offset, m.bitfield, m.ty)));
                }
            } else if let Some((off, bf, ty)) = self.find(m.ty, name)? {
                return Ok(Some((m.bit_offset + off, bf, ty)));
            }
        }
        Ok(None)
    }
}

/// The name a drop reason is shown by: `SKB_DROP_REASON_NO_SOCKET` → `NO_SOCKET`,
/// `SKB_CONSUMED` → `CONSUMED`.
pub fn reason_name(enumerator: &str) -> &str {
    enumerator
        .strip_prefix("SKB_DROP_REASON_")
        .or_else(|| enumerator.strip_prefix("SKB_"))
        .unwrap_or(enumerator)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF data: strings and raw type records.
    struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
    }

    impl Builder {
        fn new() -> Self {
            Builder {
                strings: vec![0],
                types: Vec::new(),
            }
        }
        fn s(&mut self, s: &str) -> u32 {
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }
        fn words(&mut self, w: &[u32]) {
            for x in w {
                self.types.extend_from_slice(&x.to_le_bytes());
            }
        }
        fn info(kind: u32, vlen: u32, flag: bool) -> u32 {
            (u32::from(flag) << 31) | (kind << 24) | vlen
        }
        fn bytes(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.push(1);
            out.push(0);
            for w in [
                24u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// 1: int (4 bytes), 2: u16 typedef of a 2-byte int (3), 4: pointer to 1,
    /// 5: enum skb_drop_reason, 6: anonymous union { ptr dev; int scratch },
    /// 7: struct inner { u16 nh @ 4 }, 8: struct sk_buff { union @0; int len @ 8; inner hdr @ 12;
    /// bit field flags @ 16 (3 bits) }.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.s("int");
        b.words(&[int, Builder::info(KIND_INT, 0, false), 4, 32]);
        let u16n = b.s("u16");
        b.words(&[u16n, Builder::info(KIND_TYPEDEF, 0, false), 3]);
        let short = b.s("unsigned short");
        b.words(&[short, Builder::info(KIND_INT, 0, false), 2, 16]);
        b.words(&[0, Builder::info(KIND_PTR, 0, false), 1]);
        let (e, consumed, no_socket) = (
            b.s("skb_drop_reason"),
            b.s("SKB_CONSUMED"),
            b.s("SKB_DROP_REASON_NO_SOCKET"),
        );
        b.words(&[e, Builder::info(KIND_ENUM, 2, false), 4]);
        b.words(&[consumed, 1, no_socket, 3]);
        let (dev, scratch) = (b.s("dev"), b.s("dev_scratch"));
        b.words(&[0, Builder::info(KIND_UNION, 2, false), 8]);
        b.words(&[dev, 4, 0, scratch, 1, 0]);
        let (inner, nh) = (b.s("inner"), b.s("network_header"));
        b.words(&[inner, Builder::info(KIND_STRUCT, 1, false), 8]);
        b.words(&[nh, 2, 32]);
        let (skb, len, hdr, flags) = (b.s("sk_buff"), b.s("len"), b.s("hdr"), b.s("flags"));
        b.words(&[skb, Builder::info(KIND_STRUCT, 4, true), 24]);
        b.words(&[0, 6, 0, len, 1, 64, hdr, 7, 96, flags, 1, (3 << 24) | 128]);
        b.bytes()
    }

    #[test]
    fn members_are_found_through_anonymous_unions_and_paths() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member("sk_buff", "dev").unwrap(),
            Field { offset: 0, size: 8 }
        );
        assert_eq!(
            btf.member("sk_buff", "len").unwrap(),
            Field { offset: 8, size: 4 }
        );
        assert_eq!(
            btf.member("sk_buff", "hdr.network_header").unwrap(),
            Field {
                offset: 16,
                size: 2
            }
        );
    }

    #[test]
    fn lookups_that_cannot_succeed_say_why() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(matches!(
            btf.member("sk_buff", "flags"),
            Err(BtfError::BitField { .. })
        ));
        assert_eq!(
            btf.member("sk_buff", "hdr.nope").unwrap_err().to_string(),
            "struct sk_buff has no member hdr.nope"
        );
        assert_eq!(
            btf.member("sock", "x").unwrap_err().to_string(),
            "the kernel's BTF has no struct sock"
        );
        assert!(matches!(
            Btf::parse(b"not btf at all, not at all"),
            Err(BtfError::Malformed(_))
        ));
        let mut cut = sample();
        cut.truncate(40);
        assert!(Btf::parse(&cut).is_err());
    }

    #[test]
    fn enum_values_and_reason_names() {
        let btf = Btf::parse(&sample()).unwrap();
        let v = btf.enum_values("skb_drop_reason").unwrap();
        assert_eq!(
            v,
            vec![
                ("SKB_CONSUMED".to_string(), 1),
                ("SKB_DROP_REASON_NO_SOCKET".to_string(), 3)
            ]
        );
        assert_eq!(reason_name(&v[1].0), "NO_SOCKET");
        assert_eq!(reason_name(&v[0].0), "CONSUMED");
        assert_eq!(reason_name("OTHER"), "OTHER");
    }

    #[test]
    fn the_running_kernel_names_its_drop_reasons() {
        let Ok(btf) = Btf::vmlinux() else {
            eprintln!("SKIPPED: no readable {VMLINUX}");
            return;
        };
        let v = btf.enum_values("skb_drop_reason").unwrap();
        assert!(v.iter().any(|(n, _)| n == "SKB_DROP_REASON_NO_SOCKET"));
        assert!(v.iter().any(|(n, _)| n == "SKB_CONSUMED"));
        assert_eq!(btf.member("sk_buff", "len").unwrap().size, 4);
        assert_eq!(btf.member("sk_buff", "dev").unwrap().size, 8);
        assert_eq!(btf.member("sk_buff", "network_header").unwrap().size, 2);
    }
}
