"""Will this BPF object run on that target? A static check of a compiled object against a target profile.

Hardware offload (the Netronome/Corigine NFP) accepts a small subset of BPF, and the only way to learn what
failed on a real card is a terse ``[nfp]`` verifier line at load time. This checker reads the ELF object with
pyelftools (no kernel, no card), decodes each program's instructions, helpers, kfuncs, map references and stack,
and compares them with a target profile: a TOML data file in ``bpf/profiles/``, so a vendor adds a target
without code. Limits of the analysis are in docs/offload-check.md.
"""

from __future__ import annotations

import fnmatch
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import Section, SymbolTableSection

from bpf import btf as btfmod

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"
SCHEMA_VERSION = 1
EM_BPF = "EM_BPF"


def _words(text: str) -> list[str]:
    """A long name table reads best as one word list (in id order)."""
    return text.split()


# Helper ids in order from 1 (include/uapi/linux/bpf.h, ___BPF_FUNC_MAPPER; ids are append-only, so a table
# taken from one kernel names every id an older object can use). Unknown ids are reported as "helper_<id>".
_HELPER_NAMES = _words(
    "map_lookup_elem map_update_elem map_delete_elem probe_read ktime_get_ns trace_printk "
    "get_prandom_u32 get_smp_processor_id skb_store_bytes l3_csum_replace l4_csum_replace tail_call "
    "clone_redirect get_current_pid_tgid get_current_uid_gid get_current_comm get_cgroup_classid "
    "skb_vlan_push skb_vlan_pop skb_get_tunnel_key skb_set_tunnel_key perf_event_read redirect "
    "get_route_realm perf_event_output skb_load_bytes get_stackid csum_diff skb_get_tunnel_opt "
    "skb_set_tunnel_opt skb_change_proto skb_change_type skb_under_cgroup get_hash_recalc "
    "get_current_task probe_write_user current_task_under_cgroup skb_change_tail skb_pull_data "
    "csum_update set_hash_invalid get_numa_node_id skb_change_head xdp_adjust_head probe_read_str "
    "get_socket_cookie get_socket_uid set_hash setsockopt skb_adjust_room redirect_map sk_redirect_map "
    "sock_map_update xdp_adjust_meta perf_event_read_value perf_prog_read_value getsockopt "
    "override_return sock_ops_cb_flags_set msg_redirect_map msg_apply_bytes msg_cork_bytes "
    "msg_pull_data bind xdp_adjust_tail skb_get_xfrm_state get_stack skb_load_bytes_relative fib_lookup "
    "sock_hash_update msg_redirect_hash sk_redirect_hash lwt_push_encap lwt_seg6_store_bytes "
    "lwt_seg6_adjust_srh lwt_seg6_action rc_repeat rc_keydown skb_cgroup_id get_current_cgroup_id "
    "get_local_storage sk_select_reuseport skb_ancestor_cgroup_id sk_lookup_tcp sk_lookup_udp "
    "sk_release map_push_elem map_pop_elem map_peek_elem msg_push_data msg_pop_data rc_pointer_rel "
    "spin_lock spin_unlock sk_fullsock tcp_sock skb_ecn_set_ce get_listener_sock skc_lookup_tcp "
    "tcp_check_syncookie sysctl_get_name sysctl_get_current_value sysctl_get_new_value "
    "sysctl_set_new_value strtol strtoul sk_storage_get sk_storage_delete send_signal tcp_gen_syncookie "
    "skb_output probe_read_user probe_read_kernel probe_read_user_str probe_read_kernel_str "
    "tcp_send_ack send_signal_thread jiffies64 read_branch_records get_ns_current_pid_tgid xdp_output "
    "get_netns_cookie get_current_ancestor_cgroup_id sk_assign ktime_get_boot_ns seq_printf seq_write "
    "sk_cgroup_id sk_ancestor_cgroup_id ringbuf_output ringbuf_reserve ringbuf_submit ringbuf_discard "
    "ringbuf_query csum_level skc_to_tcp6_sock skc_to_tcp_sock skc_to_tcp_timewait_sock "
    "skc_to_tcp_request_sock skc_to_udp6_sock get_task_stack load_hdr_opt store_hdr_opt reserve_hdr_opt "
    "inode_storage_get inode_storage_delete d_path copy_from_user snprintf_btf seq_printf_btf "
    "skb_cgroup_classid redirect_neigh per_cpu_ptr this_cpu_ptr redirect_peer task_storage_get "
    "task_storage_delete get_current_task_btf bprm_opts_set ktime_get_coarse_ns ima_inode_hash "
    "sock_from_file check_mtu for_each_map_elem snprintf sys_bpf btf_find_by_name_kind sys_close "
    "timer_init timer_set_callback timer_start timer_cancel get_func_ip get_attach_cookie task_pt_regs "
    "get_branch_snapshot trace_vprintk skc_to_unix_sock kallsyms_lookup_name find_vma loop strncmp "
    "get_func_arg get_func_ret get_func_arg_cnt get_retval set_retval xdp_get_buff_len xdp_load_bytes "
    "xdp_store_bytes copy_from_user_task skb_set_tstamp ima_file_hash kptr_xchg map_lookup_percpu_elem "
    "skc_to_mptcp_sock dynptr_from_mem ringbuf_reserve_dynptr ringbuf_submit_dynptr "
    "ringbuf_discard_dynptr dynptr_read dynptr_write dynptr_data tcp_raw_gen_syncookie_ipv4 "
    "tcp_raw_gen_syncookie_ipv6 tcp_raw_check_syncookie_ipv4 tcp_raw_check_syncookie_ipv6 "
    "ktime_get_tai_ns user_ringbuf_drain cgrp_storage_get cgrp_storage_delete"
)
HELPERS: dict[int, str] = {i + 1: "bpf_" + n for i, n in enumerate(_HELPER_NAMES)}

# enum bpf_map_type (include/uapi/linux/bpf.h), index = value.
MAP_TYPES = _words(
    "unspec hash array prog_array perf_event_array percpu_hash percpu_array stack_trace cgroup_array lru_hash "
    "lru_percpu_hash lpm_trie array_of_maps hash_of_maps devmap sockmap cpumap xskmap sockhash cgroup_storage "
    "reuseport_sockarray percpu_cgroup_storage queue stack sk_storage devmap_hash struct_ops ringbuf "
    "inode_storage task_storage bloom_filter user_ringbuf cgrp_storage"
)

# Section name prefix -> (program type, TC/XDP direction or None), after libbpf's section_defs table.
# Longest prefix wins; "tc"/"classifier" carry no direction (the loader picks the hook at attach time).
SECTION_TYPES: dict[str, tuple[str, str | None]] = {
    "tc/ingress": ("tc", "ingress"), "tc/egress": ("tc", "egress"),
    "tcx/ingress": ("tc", "ingress"), "tcx/egress": ("tc", "egress"),
    "classifier/ingress": ("tc", "ingress"), "classifier/egress": ("tc", "egress"),
    "tc": ("tc", None), "classifier": ("tc", None), "action": ("tc_action", None),
    "xdp": ("xdp", "ingress"), "socket": ("socket_filter", None), "kprobe/": ("kprobe", None),
    "kretprobe/": ("kprobe", None), "tracepoint/": ("tracepoint", None), "tp/": ("tracepoint", None),
    "raw_tracepoint/": ("raw_tracepoint", None), "fentry/": ("tracing", None), "fexit/": ("tracing", None),
    "cgroup_skb/": ("cgroup_skb", None), "sk_skb": ("sk_skb", None), "sk_msg": ("sk_msg", None),
    "lwt_": ("lwt", None), "syscall": ("syscall", None), "struct_ops": ("struct_ops", None),
}

# Instruction encoding (Documentation/bpf/standardization/instruction-set.rst).
_INSN = struct.Struct("<BBhi")  # opcode, dst|src<<4, offset, immediate
INSN_SIZE = 8
CLS_LD, CLS_LDX, CLS_ST, CLS_STX, CLS_ALU, CLS_JMP, CLS_JMP32, CLS_ALU64 = range(8)
OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_MOD, OP_MOV = 0x00, 0x10, 0x20, 0x30, 0x90, 0xB0
SRC_X = 0x08
MODE_MEM, MODE_ATOMIC = 0x60, 0xC0
LD_IMM64 = 0x18
CALL, EXIT = 0x85, 0x95
PSEUDO_CALL, PSEUDO_KFUNC_CALL = 1, 2
ATOMIC_OPS = {0x00: "add", 0x40: "or", 0x50: "and", 0xA0: "xor", 0x01: "fetch_add", 0x41: "fetch_or",
              0x51: "fetch_and", 0xA1: "fetch_xor", 0xE1: "xchg", 0xF1: "cmpxchg"}
FP = 10
DATA_SECTIONS = (".data", ".bss", ".rodata")


class OffloadCheckError(ValueError):
    """The input is not something this checker can read (missing file, not ELF, not BPF, bad profile)."""


@dataclass(frozen=True)
class Insn:
    index: int  # slot index (8-byte units) within the section
    code: int
    dst: int
    src: int
    off: int
    imm: int

    @property
    def cls(self) -> int:
        return self.code & 0x07

    @property
    def slots(self) -> int:
        return 2 if self.code == LD_IMM64 else 1


@dataclass(frozen=True)
class MapInfo:
    name: str
    type: str
    key_size: int
    value_size: int
    max_entries: int


@dataclass(frozen=True)
class Reason:
    code: str  # stable identifier (JSON): helper, kfunc, alu64_mul, div_by_register, atomic, map_type, ...
    message: str


@dataclass
class Profile:
    """A target, loaded from TOML: what it allows, what it forbids, and why (the message shown to the user)."""

    name: str
    description: str
    max_insns: int
    max_stack: int
    program_types: list[str]
    directions: list[str]
    max_map_value: int | None = None  # bytes per map value (NIC map memory is entry-sized); None: any
    map_types: list[str] | None = None  # None: any
    atomics: list[str] | None = None
    helpers: list[str] | None = None
    why: dict[str, str] = field(default_factory=dict)
    forbid: dict[str, str] = field(default_factory=dict)
    forbid_helpers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, name_or_path: str) -> Profile:
        path = Path(name_or_path)
        if not path.suffix:
            path = PROFILE_DIR / f"{name_or_path}.toml"
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise OffloadCheckError(f"no target profile {name_or_path!r} (known: {', '.join(profile_names())})") from None
        except tomllib.TOMLDecodeError as exc:
            raise OffloadCheckError(f"{path}: {exc}") from None
        try:
            limits, allow = data["limits"], data["allow"]
            forbid = dict(data.get("forbid", {}))
            helpers = forbid.pop("helpers", {})
            return cls(
                name=data["name"], description=data.get("description", ""),
                max_insns=int(limits["max_insns"]), max_stack=int(limits["max_stack"]),
                max_map_value=limits.get("max_map_value"),
                program_types=list(allow["program_types"]), directions=list(allow["directions"]),
                map_types=allow.get("map_types"), atomics=allow.get("atomics"), helpers=allow.get("helpers"),
                why=dict(data.get("why", {})), forbid=forbid, forbid_helpers=dict(helpers),
            )
        except KeyError as exc:
            raise OffloadCheckError(f"{path}: missing key {exc}") from None

    def explain(self, key: str, default: str) -> str:
        return self.why.get(key, default)


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


@dataclass(frozen=True)
class Symbol:
    name: str
    shndx: int | str  # section index, or "SHN_UNDEF" for externs (kfuncs, __ksym)
    value: int
    kind: str  # STT_FUNC, STT_OBJECT, STT_SECTION, STT_NOTYPE


@dataclass
class Function:
    """One function symbol in an executable section: a program, or a subprogram when its section is .text."""

    name: str
    section: str
    shndx: int
    start: int  # first slot, within the section
    insns: list[Insn]


@dataclass
class ObjectFile:
    """What the checker needs from an ELF object: functions with decoded instructions, relocations, maps."""

    path: Path
    functions: list[Function]
    relocs: dict[tuple[int, int], Symbol]  # (section index, slot) -> symbol the instruction refers to
    section_names: dict[int, str]
    maps: dict[str, MapInfo]
    btf: btfmod.Btf | None

    @classmethod
    def read(cls, path: str | Path) -> ObjectFile:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                if elf["e_machine"] != EM_BPF:
                    raise OffloadCheckError(f"{path}: an ELF object for {elf['e_machine']}, not BPF")
                return cls._from_elf(path, elf)
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise OffloadCheckError(f"{path}: {exc.strerror}") from None
        except OffloadCheckError:
            raise
        except ELFError as exc:
            raise OffloadCheckError(f"{path}: not an ELF object ({exc})") from None
        except (struct.error, ValueError, IndexError, KeyError, EOFError, AttributeError, TypeError) as exc:
            # pyelftools reads lazily: a truncated or corrupt object fails anywhere inside it.
            raise OffloadCheckError(f"{path}: corrupt ELF/BPF object ({type(exc).__name__}: {exc})") from None

    @classmethod
    def _from_elf(cls, path: Path, elf: ELFFile) -> ObjectFile:
        names = {i: s.name for i, s in enumerate(elf.iter_sections())}
        symtab = elf.get_section_by_name(".symtab")
        symbols: list[Symbol] = []
        if isinstance(symtab, SymbolTableSection):
            for s in symtab.iter_symbols():
                shndx = s["st_shndx"]
                sym_name = s.name or (names.get(shndx, "") if isinstance(shndx, int) else "")
                symbols.append(Symbol(sym_name, shndx, s["st_value"], s["st_info"]["type"]))
        exec_secs: dict[int, Section] = {
            i: s for i, s in enumerate(elf.iter_sections())
            if s["sh_type"] == "SHT_PROGBITS" and s["sh_flags"] & SH_FLAGS.SHF_EXECINSTR
        }
        relocs: dict[tuple[int, int], Symbol] = {}
        for sec in elf.iter_sections():
            if isinstance(sec, RelocationSection) and sec["sh_info"] in exec_secs:
                for r in sec.iter_relocations():
                    relocs[(sec["sh_info"], r["r_offset"] // INSN_SIZE)] = symbols[r["r_info_sym"]]
        functions = []
        for idx, sec in exec_secs.items():
            insns = decode(sec.data())
            by_slot = {i.index: i for i in insns}
            for s in symtab.iter_symbols() if isinstance(symtab, SymbolTableSection) else ():
                if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] == idx:
                    first, last = s["st_value"] // INSN_SIZE, (s["st_value"] + s["st_size"]) // INSN_SIZE
                    body = [by_slot[j] for j in range(first, last) if j in by_slot]
                    functions.append(Function(s.name, sec.name, idx, first, body))
        btf = None
        if elf.get_section_by_name(".BTF") is not None:
            try:
                btf = btfmod.Btf.from_object(path)
            except btfmod.BtfError:
                btf = None
        maps = _btf_maps(btf) if btf else {}
        for sym in symbols:  # maps without BTF (legacy "maps" section) still get a name
            if sym.kind == "STT_OBJECT" and names.get(sym.shndx if isinstance(sym.shndx, int) else -1) == ".maps":
                maps.setdefault(sym.name, MapInfo(sym.name, "unknown", 0, 0, 0))
        for i, n in names.items():  # data sections become internal one-entry array maps (libbpf)
            if n.startswith(DATA_SECTIONS):
                maps[n] = MapInfo(n, "array", 4, elf.get_section(i)["sh_size"], 1)
        return cls(path, functions, relocs, names, maps, btf)


def decode(data: bytes) -> list[Insn]:
    """Instructions of a section; ld_imm64 is one Insn spanning two slots (its second half is skipped)."""
    out: list[Insn] = []
    slot = 0
    while slot * INSN_SIZE + INSN_SIZE <= len(data):
        code, regs, off, imm = _INSN.unpack_from(data, slot * INSN_SIZE)
        insn = Insn(slot, code, regs & 0x0F, regs >> 4, off, imm)
        out.append(insn)
        slot += insn.slots
    return out


def _btf_maps(btf: btfmod.Btf) -> dict[str, MapInfo]:
    """BTF-defined maps: each var of the .maps DATASEC is a struct whose members encode the map's attributes
    (__uint(name, N) is a pointer to an array of N elements; __type(key, T) is a pointer to T)."""
    out: dict[str, MapInfo] = {}
    for t in btf.types:
        if t is None or t.kind != btfmod.DATASEC or t.name != ".maps":
            continue
        for var_id, _off, _size in t.vars:
            var = btf.types[var_id]
            if var is None:
                continue
            attrs: dict[str, int] = {}
            st = btf.types[btf.resolve(var.size_or_type)]
            for m in st.members if st is not None else ():
                ptr = btf.types[btf.resolve(m.type_id)]
                if ptr is None or ptr.kind != btfmod.PTR:
                    continue
                target = btf.types[btf.resolve(ptr.size_or_type)] if ptr.size_or_type else None
                if m.name in ("key", "value"):
                    attrs[f"{m.name}_size"] = btf.sizeof(ptr.size_or_type)
                elif target is not None and target.kind == btfmod.ARRAY and target.array is not None:
                    attrs[m.name] = target.array[1]
            mt = attrs.get("type", 0)
            out[var.name] = MapInfo(var.name, MAP_TYPES[mt] if mt < len(MAP_TYPES) else f"type_{mt}",
                                    attrs.get("key_size", 0), attrs.get("value_size", 0), attrs.get("max_entries", 0))
    return out


@dataclass
class FunctionFacts:
    """What one function does, before any target is applied (a profile only judges these facts)."""

    helpers: dict[int, int] = field(default_factory=dict)  # helper id -> first slot
    kfuncs: dict[str, int] = field(default_factory=dict)
    calls: list[Function] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)
    alu64_mul: list[int] = field(default_factory=list)
    div_by_register: list[int] = field(default_factory=list)
    atomics: dict[str, int] = field(default_factory=dict)  # op name -> first slot
    map_value_stores: list[int] = field(default_factory=list)
    stack: int = 0  # bytes below r10 used by this frame


@dataclass
class ProgramReport:
    name: str
    section: str
    type: str
    direction: str | None
    insns: int  # ld_imm64 counted once
    slots: int  # 8-byte units, as the kernel counts (ld_imm64 = 2)
    stack: int
    helpers: list[tuple[int, str]]
    kfuncs: list[str]
    subprograms: list[str]
    maps: list[MapInfo]
    reasons: list[Reason]

    @property
    def fits(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "section": self.section, "type": self.type, "direction": self.direction,
            "insns": self.insns, "slots": self.slots, "stack": self.stack,
            "helpers": [{"id": i, "name": n} for i, n in self.helpers], "kfuncs": self.kfuncs,
            "subprograms": self.subprograms,
            "maps": [{"name": m.name, "type": m.type, "key_size": m.key_size, "value_size": m.value_size,
                      "max_entries": m.max_entries} for m in self.maps],
            "fits": self.fits, "reasons": [{"code": r.code, "message": r.message} for r in self.reasons],
        }


@dataclass
class Report:
    object: str
    target: str
    programs: list[ProgramReport]

    @property
    def fits(self) -> bool:
        return all(p.fits for p in self.programs)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA_VERSION, "object": self.object, "target": self.target, "fits": self.fits,
                "programs": [p.to_json() for p in self.programs]}


def section_type(section: str) -> tuple[str, str | None]:
    """Program type and direction from a section name: the longest matching prefix of SECTION_TYPES, where
    a prefix ending in '/' or '_' matches any continuation and one without matches itself or '<prefix>/...'."""

    def matches(prefix: str) -> bool:
        if prefix.endswith(("/", "_")):
            return section.startswith(prefix)
        return section == prefix or section.startswith(prefix + "/")

    found = [p for p in SECTION_TYPES if matches(p)]
    if found:
        return SECTION_TYPES[max(found, key=len)]
    if section.startswith("xdp"):  # xdp.frags, xdp_...
        return SECTION_TYPES["xdp"]
    return ("unknown", None)


_LOOKUP_HELPERS = {1, 195}  # bpf_map_lookup_elem, bpf_map_lookup_percpu_elem: return a map value pointer


def function_facts(obj: ObjectFile, fn: Function) -> FunctionFacts:
    """One linear pass over the function in layout order, tracking two register facts: "points into the stack
    at r10+k" (for stack use) and "points into a map value" (for stores). Straight-line tracking: a join of
    branches keeps whatever the layout-order predecessor left, and a pointer spilled to the stack is forgotten
    (docs/offload-check.md lists what this misses)."""
    facts = FunctionFacts()
    by_start = {(f.shndx, f.start): f for f in obj.functions}
    fp: dict[int, int] = {}
    mapval: set[int] = set()
    low = 0

    def clobber(reg: int) -> None:
        fp.pop(reg, None)
        mapval.discard(reg)

    def touch(base: int, off: int) -> None:
        nonlocal low
        if base == FP:
            low = min(low, off)
        elif base in fp:
            low = min(low, fp[base] + off)

    for insn in fn.insns:
        cls, op = insn.cls, insn.code & 0xF0
        sym = obj.relocs.get((fn.shndx, insn.index))
        if insn.code == LD_IMM64:
            clobber(insn.dst)
            if sym is not None and isinstance(sym.shndx, int):
                sec = obj.section_names.get(sym.shndx, "")
                if sec == ".maps" and sym.name not in facts.maps:
                    facts.maps.append(sym.name)
                elif sec.startswith(DATA_SECTIONS):
                    if sec not in facts.maps:
                        facts.maps.append(sec)
                    if not sec.startswith(".rodata"):
                        mapval.add(insn.dst)  # address of a global: a pointer into an array map's value
        elif cls in (CLS_ALU, CLS_ALU64):
            src_x = bool(insn.code & SRC_X)
            if cls == CLS_ALU64 and op == OP_MUL:
                facts.alu64_mul.append(insn.index)
            if op in (OP_DIV, OP_MOD) and src_x:
                facts.div_by_register.append(insn.index)
            if cls == CLS_ALU64 and op == OP_MOV and src_x:
                clobber(insn.dst)
                if insn.src == FP:
                    fp[insn.dst] = 0
                elif insn.src in fp:
                    fp[insn.dst] = fp[insn.src]
                if insn.src in mapval:
                    mapval.add(insn.dst)
            elif cls == CLS_ALU64 and op in (OP_ADD, OP_SUB) and not src_x:
                if insn.dst in fp:
                    fp[insn.dst] += insn.imm if op == OP_ADD else -insn.imm
                    low = min(low, fp[insn.dst])
            elif cls == CLS_ALU64 and op in (OP_ADD, OP_SUB) and insn.dst in mapval:
                fp.pop(insn.dst, None)  # map value pointer + a scalar register: still into the value
            else:
                clobber(insn.dst)
        elif cls == CLS_LDX:
            touch(insn.src, insn.off)
            clobber(insn.dst)
        elif cls in (CLS_ST, CLS_STX):
            touch(insn.dst, insn.off)
            mode = insn.code & 0xE0
            if mode == MODE_ATOMIC:
                name = ATOMIC_OPS.get(insn.imm, f"atomic_{insn.imm:#x}")
                facts.atomics.setdefault(name, insn.index)
                if insn.imm & 0x01 or insn.imm in (0xE1, 0xF1):  # fetch/xchg/cmpxchg write back a register
                    clobber(0 if insn.imm == 0xF1 else insn.src)
            elif mode == MODE_MEM and insn.dst in mapval:
                facts.map_value_stores.append(insn.index)
        elif insn.code == CALL:
            extern = sym is not None and sym.shndx == "SHN_UNDEF"
            if insn.src == PSEUDO_KFUNC_CALL or extern:
                facts.kfuncs.setdefault(_kfunc_name(obj, sym, insn), insn.index)
            elif insn.src == PSEUDO_CALL:
                if sym is not None and isinstance(sym.shndx, int):
                    target = (sym.shndx, sym.value // INSN_SIZE + insn.imm + 1)
                else:
                    target = (fn.shndx, insn.index + insn.imm + 1)
                callee = by_start.get(target)
                if callee is not None and callee not in facts.calls:
                    facts.calls.append(callee)
            else:
                facts.helpers.setdefault(insn.imm, insn.index)
            for r in range(6):
                clobber(r)
            if insn.src == 0 and not extern and insn.imm in _LOOKUP_HELPERS:
                mapval.add(0)
    facts.stack = -low
    return facts


def _kfunc_name(obj: ObjectFile, sym: Symbol | None, insn: Insn) -> str:
    """In an object file a kfunc call carries a relocation to its extern symbol; a linked one, its BTF id."""
    if sym is not None and sym.name:
        return sym.name
    if obj.btf is not None and 0 < insn.imm < len(obj.btf.types):
        t = obj.btf.types[insn.imm]
        if t is not None and t.kind == btfmod.FUNC:
            return t.name
    return f"kfunc_btf_{insn.imm}"


def check(path: str | Path, target: str = "nfp") -> Report:
    """Analyse every program of the object at ``path`` against the named profile (or a profile file path)."""
    profile = Profile.load(target)
    obj = ObjectFile.read(path)
    facts = {id(f): function_facts(obj, f) for f in obj.functions}
    programs = [judge(obj, f, facts, profile) for f in obj.functions if f.section != ".text"]
    return Report(str(path), profile.name, programs)


def _reachable(fn: Function, facts: dict[int, FunctionFacts]) -> list[Function]:
    seen: list[Function] = []
    todo = [fn]
    while todo:
        f = todo.pop()
        if any(f is s for s in seen):
            continue
        seen.append(f)
        todo.extend(facts[id(f)].calls)
    return seen


def _stack_depth(fn: Function, facts: dict[int, FunctionFacts], path: tuple[int, ...] = ()) -> int:
    """Frames add up along a call chain (each subprogram has its own frame, as the verifier sums them)."""
    if id(fn) in path:
        return 0
    own = facts[id(fn)]
    return own.stack + max((_stack_depth(c, facts, (*path, id(fn))) for c in own.calls), default=0)


def judge(obj: ObjectFile, fn: Function, facts: dict[int, FunctionFacts], profile: Profile) -> ProgramReport:
    funcs = _reachable(fn, facts)
    all_facts = [facts[id(f)] for f in funcs]
    ptype, direction = section_type(fn.section)
    reasons: list[Reason] = []

    def add(code: str, message: str) -> None:
        r = Reason(code, message)
        if r not in reasons:
            reasons.append(r)

    def where(f: FunctionFacts, slots: list[int]) -> str:
        return f"at insn {slots[0]}" + (f" (+{len(slots) - 1} more)" if len(slots) > 1 else "")

    if ptype not in profile.program_types:
        add("program_type", f"program type {ptype} (section {fn.section!r}): "
            + profile.explain("program_types", f"target runs {', '.join(profile.program_types)} only"))
    if direction is not None and direction not in profile.directions:
        add("direction", f"attaches at {ptype} {direction} (section {fn.section!r}): "
            + profile.explain("directions", f"target attaches on {', '.join(profile.directions)} only"))
    helpers: dict[int, str] = {}
    kfuncs: list[str] = []
    maps: list[str] = []
    for f in all_facts:
        for hid in f.helpers:
            helpers.setdefault(hid, HELPERS.get(hid, f"helper_{hid}"))
        kfuncs += [k for k in f.kfuncs if k not in kfuncs]
        maps += [m for m in f.maps if m not in maps]
    for hid, name in sorted(helpers.items()):
        why = next((w for pat, w in profile.forbid_helpers.items() if fnmatch.fnmatchcase(name, pat)), None)
        if why is None and profile.helpers is not None and name not in profile.helpers:
            why = profile.explain("helpers", "not allowed on this target")
        if why is not None:
            add("helper", f"uses {name} (helper {hid}): {why}")
    if "kfuncs" in profile.forbid:
        for k in kfuncs:
            add("kfunc", f"calls kfunc {k}: {profile.forbid['kfuncs']}")
    for f in all_facts:
        if f.alu64_mul and "alu64_mul" in profile.forbid:
            add("alu64_mul", f"64-bit multiply (BPF_ALU64|BPF_MUL) {where(f, f.alu64_mul)}: {profile.forbid['alu64_mul']}")
        if f.div_by_register and "div_by_register" in profile.forbid:
            add("div_by_register", f"divide/modulo by a register (BPF_X) {where(f, f.div_by_register)}: "
                + profile.forbid["div_by_register"])
        if f.map_value_stores and "map_value_stores" in profile.forbid:
            add("map_value_store", f"store into a map value {where(f, f.map_value_stores)}: "
                + profile.forbid["map_value_stores"])
        for op, slot in f.atomics.items():
            if profile.atomics is not None and op not in profile.atomics:
                add("atomic", f"atomic {op} at insn {slot}: "
                    + profile.explain("atomics", f"target allows atomic {', '.join(profile.atomics)} only"))
    map_infos = [obj.maps.get(m, MapInfo(m, "unknown", 0, 0, 0)) for m in maps]
    for m in map_infos:
        if profile.map_types is not None and m.type not in profile.map_types:
            add("map_type", f"map {m.name} is {m.type}: "
                + profile.explain("map_types", f"target allows {', '.join(profile.map_types)} maps only"))
        if profile.max_map_value is not None and m.value_size > profile.max_map_value:
            add("map_value_size", f"map {m.name} has {m.value_size}-byte values > {profile.max_map_value}: "
                + profile.explain("map_value", "over the target's map value size"))
    insns = sum(len(f.insns) for f in funcs)
    slots = sum(i.slots for f in funcs for i in f.insns)
    stack = _stack_depth(fn, facts)
    if slots > profile.max_insns:
        add("insn_limit", f"{slots} instruction slots > {profile.max_insns}: "
            + profile.explain("insns", "over the target's instruction limit"))
    if stack > profile.max_stack:
        add("stack_limit", f"{stack} bytes of stack > {profile.max_stack}: "
            + profile.explain("stack", "over the target's stack limit"))
    return ProgramReport(fn.name, fn.section, ptype, direction, insns, slots, stack, sorted(helpers.items()),
                         kfuncs, [f.name for f in funcs[1:]], map_infos, reasons)


def format_table(report: Report) -> str:
    """The human view: one row per program, then its reasons indented below it."""
    head = ("program", "section", "type", "insns", "stack", "helpers", "maps", "verdict")
    rows = [head]
    for p in report.programs:
        rows.append((p.name, p.section, p.type + (f"/{p.direction}" if p.direction else ""), str(p.insns),
                     str(p.stack), str(len(p.helpers)), str(len(p.maps)), "fits" if p.fits else "DOES NOT FIT"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [f"{report.object}: target {report.target}"]
    for k, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if k:
            p = report.programs[k - 1]
            if p.helpers:
                lines.append("    helpers: " + ", ".join(f"{n} ({i})" for i, n in p.helpers))
            if p.maps:
                lines.append("    maps: " + ", ".join(f"{m.name} ({m.type}, {m.key_size}/{m.value_size} B x "
                                                     f"{m.max_entries})" for m in p.maps))
            lines += [f"    - {r.message}" for r in p.reasons]
    if not report.programs:
        lines.append("(no programs)")
    lines.append("insns count ld_imm64 as one instruction; limits are checked on 8-byte slots (ld_imm64 = 2).")
    lines.append(f"verdict: {'every program fits' if report.fits else 'does not fit'} {report.target}")
    return "\n".join(lines)
