"""A small reader of the BTF type information in a compiled BPF object (kernel Documentation/bpf/btf.rst).

pyelftools finds the ``.BTF`` section; this module decodes the types we need without the kernel: struct
layouts (to check the ctypes mirror in ``bpf/structs.py``), enums, and the variables of data sections (so the
loader can set a ``.rodata`` global by name before load, cilium/ebpf's CollectionSpec idea).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

BTF_MAGIC = 0xEB9F
_HDR = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type_off, type_len, str_off, str_len
_TYPE = struct.Struct("<III")  # name_off, info, size_or_type

# BTF_KIND_* (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


class BtfError(ValueError):
    """The object has no BTF, or BTF this reader does not understand."""


@dataclass(frozen=True)
class Member:
    name: str
    type_id: int
    offset_bits: int


@dataclass
class BtfType:
    kind: int
    name: str
    size_or_type: int
    members: list[Member] = field(default_factory=list)  # STRUCT, UNION
    enum_values: dict[str, int] = field(default_factory=dict)  # ENUM, ENUM64
    array: tuple[int, int] | None = None  # ARRAY: (element type id, number of elements)
    vars: list[tuple[int, int, int]] = field(default_factory=list)  # DATASEC: (var type id, offset, size)


@dataclass(frozen=True)
class FieldLayout:
    name: str
    offset: int  # bytes
    size: int  # bytes


@dataclass(frozen=True)
class StructLayout:
    name: str
    size: int
    fields: tuple[FieldLayout, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    section: str
    offset: int
    size: int


class Btf:
    """Decoded types of one object; ids are the BTF type ids (0 is void)."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) < _HDR.size:
            raise BtfError("BTF section too short")
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = _HDR.unpack_from(raw)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian objects are not supported)")
        self._strings = raw[hdr_len + str_off : hdr_len + str_off + str_len]
        self.types: list[BtfType | None] = [None]
        # Object files leave data-section variable offsets at 0; libbpf takes them from the ELF
        # symbol table (btf_fixup_datasec), and so do we.
        self.symbol_offsets: dict[str, int] = {}
        self._parse_types(raw[hdr_len + type_off : hdr_len + type_off + type_len])

    @classmethod
    def from_object(cls, path: str | Path) -> Btf:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            sec = elf.get_section_by_name(".BTF")
            if sec is None:
                raise BtfError(f"{path}: no .BTF section (compile with -g)")
            btf = cls(sec.data())
            symtab = elf.get_section_by_name(".symtab")
            if isinstance(symtab, SymbolTableSection):
                for sym in symtab.iter_symbols():
                    if sym["st_info"]["type"] == "STT_OBJECT":
                        btf.symbol_offsets[sym.name] = sym["st_value"]
            return btf

    def _str(self, off: int) -> str:
        end = self._strings.index(b"\0", off)
        return self._strings[off:end].decode()

    def _parse_types(self, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            name_off, info, size_or_type = _TYPE.unpack_from(data, pos)
            pos += _TYPE.size
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            t = BtfType(kind, self._str(name_off), size_or_type)
            if kind in (INT, VAR, DECL_TAG):
                pos += 4
            elif kind == ARRAY:
                elem, _index, nelems = struct.unpack_from("<III", data, pos)
                t.array = (elem, nelems)
                pos += 12
            elif kind in (STRUCT, UNION):
                for _ in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", data, pos)
                    bit_off = m_off & 0xFFFFFF if kflag else m_off
                    t.members.append(Member(self._str(m_name), m_type, bit_off))
                    pos += 12
            elif kind == ENUM:
                for _ in range(vlen):
                    e_name, e_val = struct.unpack_from("<Ii", data, pos)
                    t.enum_values[self._str(e_name)] = e_val
                    pos += 8
            elif kind == ENUM64:
                for _ in range(vlen):
                    e_name, lo, hi = struct.unpack_from("<III", data, pos)
                    t.enum_values[self._str(e_name)] = lo | (hi << 32)
                    pos += 12
            elif kind == FUNC_PROTO:
                pos += 8 * vlen
            elif kind == DATASEC:
                for _ in range(vlen):
                    t.vars.append(struct.unpack_from("<III", data, pos))
                    pos += 12
            elif kind not in (PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG):
                raise BtfError(f"unknown BTF kind {kind}")
            self.types.append(t)

    def _get(self, type_id: int) -> BtfType:
        t = self.types[type_id]
        if t is None:
            raise BtfError("void has no layout")
        return t

    def resolve(self, type_id: int) -> int:
        """Skip typedefs and qualifiers."""
        while (t := self._get(type_id)).kind in _MODIFIERS:
            type_id = t.size_or_type
        return type_id

    def sizeof(self, type_id: int) -> int:
        t = self._get(self.resolve(type_id))
        if t.kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return t.size_or_type
        if t.kind == PTR:
            return 8
        if t.kind == ARRAY and t.array is not None:
            return t.array[1] * self.sizeof(t.array[0])
        raise BtfError(f"type {type_id} ({t.name!r}, kind {t.kind}) has no size")

    def find(self, kind: int, name: str) -> int:
        for i, t in enumerate(self.types):
            if t is not None and t.kind == kind and t.name == name:
                return i
        raise KeyError(f"no BTF type of kind {kind} named {name!r}")

    def struct_layout(self, name: str) -> StructLayout:
        tid = self.find(STRUCT, name)
        t = self._get(tid)
        fields = []
        for m in t.members:
            if m.offset_bits % 8:
                raise BtfError(f"{name}.{m.name}: bitfields are not allowed in shared structs")
            fields.append(FieldLayout(m.name, m.offset_bits // 8, self.sizeof(m.type_id)))
        return StructLayout(name, t.size_or_type, tuple(fields))

    def enum(self, name: str) -> dict[str, int]:
        return dict(self._get(self.find(ENUM, name)).enum_values)

    def variables(self, section: str) -> dict[str, Variable]:
        """Variables of a data section (.rodata, .data, .bss) with their offsets."""
        out: dict[str, Variable] = {}
        for t in self.types:
            if t is None or t.kind != DATASEC or t.name != section:
                continue
            for var_id, offset, size in t.vars:
                name = self._get(var_id).name
                out[name] = Variable(name, section, offset or self.symbol_offsets.get(name, 0), size)
        return out
