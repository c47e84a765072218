"""Load a compiled BPF object through libbpf: typed maps, programs, ring buffers, pins (cilium/ebpf's shape).

    with BpfObject.load(build_path("server_ingress"), rodata={"cfg": cfg}, pin_dir=PinDir("run42")) as obj:
        obj.maps["fast_tracks"].update(TrackKey(conn_id=1, alias=5), FastTrack(track_id=9))
        fd = obj.programs["server_ingress"].fd

Before load, the object's BTF is read without the kernel (``bpf/btf.py``): it gives each map's key and value
type (matched to the ctypes mirror in ``bpf/structs.py`` by struct name) and the offsets of ``.rodata``
globals, which are set by name. A failed load raises ``LoadError`` whose message is the last relevant
verifier lines and whose ``.log`` is the whole libbpf/verifier output. ``close()`` (or leaving the ``with``)
frees everything and removes the pins it made.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpf import btf as btfmod
from bpf import libbpf
from bpf.structs import MIRRORS, Mirror

BUILD_DIR = Path(__file__).resolve().parent / "build"
BPFFS = Path("/sys/fs/bpf")

# enum bpf_map_type values we treat specially (include/uapi/linux/bpf.h)
MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH, MAP_RINGBUF = 5, 6, 10, 27
_PERCPU = {MAP_PERCPU_HASH, MAP_PERCPU_ARRAY, MAP_LRU_PERCPU_HASH}
BPF_ANY, BPF_NOEXIST, BPF_EXIST = 0, 1, 2

CType = type[Any]  # a ctypes type: Mirror subclass or c_uint32 & co.


def build_path(name: str) -> Path:
    """Path of a compiled object (``make -C bpf`` builds it)."""
    return BUILD_DIR / f"{name}.o"


class LoadError(Exception):
    """The object could not be opened or loaded; ``str()`` is short, ``.log`` is complete."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(message)
        self.log = log


def summarize_log(log: str, keep: int = 3) -> str:
    """The last verifier lines before its statistics (where the reason is), or libbpf's last warning."""
    m = re.search(r"-- BEGIN PROG LOAD LOG --\n(.*?)-- END PROG LOAD LOG --", log, re.S)
    body = m.group(1) if m else log
    lines = [
        ln
        for ln in body.splitlines()
        if ln.strip() and not re.match(r"(processed \d+ insns|verification time|stack depth)", ln)
    ]
    return " | ".join(lines[-keep:]) if lines else "no log"


def ensure_bpffs() -> None:
    """Mount bpffs at /sys/fs/bpf when it is missing (pins need it)."""
    if os.path.ismount(BPFFS):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount bpffs at {BPFFS}: {os.strerror(err)}")


@dataclass
class PinDir:
    """A per-run folder under bpffs (/sys/fs/bpf/<prefix>); removed with everything in it by ``remove``."""

    prefix: str
    root: Path = BPFFS

    @property
    def path(self) -> Path:
        return self.root / self.prefix

    def create(self) -> Path:
        """The folder, root-only (0700): pinned maps hold connection ids and keys' slots, and anyone who can open a
        pin can update the map (issue #10, privilege)."""
        ensure_bpffs()
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)  # mkdir's mode is masked by the umask and ignored for an existing folder
        return self.path

    def remove(self) -> None:
        """Remove the folder and every pin in it (the end of a run)."""
        if not self.path.exists():
            return
        for entry in self.path.iterdir():
            entry.unlink()
        self.path.rmdir()

    def release(self, pins: list[Path]) -> None:
        """Remove these pins, then the folder if nothing else is pinned there (objects may share a folder)."""
        for p in pins:
            p.unlink(missing_ok=True)
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOTEMPTY:
                raise


def _ctype_of(b: btfmod.Btf, type_id: int) -> CType | None:
    """The ctypes mirror of a BTF type: a Mirror by struct name, or a plain unsigned integer."""
    t = b.types[b.resolve(type_id)]
    if t is None:
        return None
    if t.kind == btfmod.STRUCT:
        for m in MIRRORS:
            if m.c_name == t.name:
                return m
        return None
    if t.kind in (btfmod.INT, btfmod.ENUM):
        return {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}.get(t.size_or_type)
    return None


def map_types_from_btf(b: btfmod.Btf) -> dict[str, tuple[CType | None, CType | None]]:
    """Key/value ctypes of every map declared in ``.maps`` (from the ``__type(key, ...)`` members)."""
    out: dict[str, tuple[CType | None, CType | None]] = {}
    for t in b.types:
        if t is None or t.kind != btfmod.DATASEC or t.name != ".maps":
            continue
        for var_id, _off, _size in t.vars:
            var = b.types[var_id]
            assert var is not None
            mdef = b.types[b.resolve(var.size_or_type)]
            assert mdef is not None
            kv: dict[str, CType | None] = {"key": None, "value": None}
            for m in mdef.members:
                ptr = b.types[m.type_id]
                if m.name in kv and ptr is not None and ptr.kind == btfmod.PTR:
                    kv[m.name] = _ctype_of(b, ptr.size_or_type)
            out[var.name] = (kv["key"], kv["value"])
    return out


class Map:
    """One map of a loaded object. Keys and values are ctypes mirrors (or ints for integer types);
    per-CPU maps return one value per possible CPU from ``lookup``."""

    def __init__(self, ptr: int, key_type: CType | None, value_type: CType | None) -> None:
        so = libbpf.lib()
        self.name: str = so.bpf_map__name(ptr).decode()
        self.fd: int = so.bpf_map__fd(ptr)
        self.type: int = so.bpf_map__type(ptr)
        self.key_size: int = so.bpf_map__key_size(ptr)
        self.value_size: int = so.bpf_map__value_size(ptr)
        self.max_entries: int = so.bpf_map__max_entries(ptr)
        self.key_type = key_type
        self.value_type = value_type
        self.pinned: Path | None = None
        self.percpu = self.type in _PERCPU
        self._ncpu = libbpf.num_possible_cpus() if self.percpu else 1
        self._stride = (self.value_size + 7) & ~7 if self.percpu else self.value_size

    def _key(self, key: Any) -> ctypes.Array[ctypes.c_char]:
        raw = self._encode(key, self.key_type, self.key_size)
        return ctypes.create_string_buffer(raw, self.key_size)

    @staticmethod
    def _encode(v: Any, t: CType | None, size: int) -> bytes:
        if isinstance(v, bytes | bytearray):
            raw = bytes(v)
        elif isinstance(v, int):
            raw = v.to_bytes(size, "little")
        else:
            raw = bytes(v)
        if len(raw) != size:
            raise ValueError(f"expected {size} bytes, got {len(raw)}")
        return raw

    def _decode(self, raw: bytes, t: CType | None) -> Any:
        if t is None:
            return raw
        if issubclass(t, Mirror):
            return t.from_buffer_copy(raw)
        return int.from_bytes(raw, "little")

    def lookup(self, key: Any) -> Any:
        """The value (a list per CPU for per-CPU maps), or None when the key is absent."""
        buf = ctypes.create_string_buffer(self._stride * self._ncpu)
        ret = libbpf.lib().bpf_map_lookup_elem(self.fd, self._key(key), buf)
        if ret == -2:  # -ENOENT
            return None
        libbpf.check(ret, f"lookup in map {self.name}")
        if not self.percpu:
            return self._decode(buf.raw[: self.value_size], self.value_type)
        return [
            self._decode(buf.raw[i * self._stride : i * self._stride + self.value_size], self.value_type)
            for i in range(self._ncpu)
        ]

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        """Set one value (per-CPU maps: a list with one value per CPU, or one value copied to all)."""
        if self.percpu:
            values = value if isinstance(value, list) else [value] * self._ncpu
            raw = b"".join(self._encode(v, self.value_type, self.value_size).ljust(self._stride, b"\0") for v in values)
        else:
            raw = self._encode(value, self.value_type, self.value_size)
        buf = ctypes.create_string_buffer(raw, len(raw))
        libbpf.check(libbpf.lib().bpf_map_update_elem(self.fd, self._key(key), buf, flags), f"update map {self.name}")

    def delete(self, key: Any) -> bool:
        """Remove a key; False when it was absent."""
        ret = libbpf.lib().bpf_map_delete_elem(self.fd, self._key(key))
        if ret == -2:
            return False
        libbpf.check(ret, f"delete from map {self.name}")
        return True

    def keys(self) -> Iterator[Any]:
        so = libbpf.lib()
        cur: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.key_size)
        while True:
            ret = so.bpf_map_get_next_key(self.fd, cur, nxt)
            if ret == -2:
                return
            libbpf.check(ret, f"iterate map {self.name}")
            yield self._decode(nxt.raw, self.key_type)
            cur, nxt = nxt, ctypes.create_string_buffer(self.key_size)

    def items(self) -> Iterator[tuple[Any, Any]]:
        for k in self.keys():
            v = self.lookup(k)
            if v is not None:
                yield k, v

    def sum_percpu(self, key: Any) -> int:
        """Sum of an integer per-CPU value over all CPUs (counters)."""
        vals = self.lookup(key)
        return sum(vals) if vals else 0

    def pin(self, path: Path) -> None:
        libbpf.check(libbpf.lib().bpf_obj_pin(self.fd, str(path).encode()), f"pin map {self.name} at {path}")
        os.chmod(path, 0o600)  # bpffs already creates pins 0600 & ~umask; say it, whatever the umask
        self.pinned = path


@dataclass
class Program:
    name: str
    section: str
    fd: int
    pinned: Path | None = None

    def test_run(self, data: bytes, **kw: Any) -> Any:
        """BPF_PROG_TEST_RUN on this program (see ``bpf.testrun.test_run``)."""
        from bpf.testrun import test_run

        return test_run(self.fd, data, **kw)


class RingBuffer:
    """Consumer of one BPF ring buffer map; ``epoll_fd`` lets an event loop wait on it."""

    def __init__(self, m: Map, callback: Callable[[Any], None], record_type: type[Mirror] | None = None) -> None:
        self._callback = callback
        self._type = record_type
        self._error: BaseException | None = None
        self._cb = libbpf.SAMPLE_FN(self._on_sample)  # keep a reference while libbpf holds it
        self._rb: int | None = libbpf.check_ptr(
            libbpf.lib().ring_buffer__new(m.fd, self._cb, None, None), f"ring_buffer__new({m.name})"
        )
        self._loop: asyncio.AbstractEventLoop | None = None

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        raw = ctypes.string_at(data, size) if data else b""
        try:
            rec: Any = raw
            if self._type is not None and len(raw) >= ctypes.sizeof(self._type):
                rec = self._type.from_buffer_copy(raw[: ctypes.sizeof(self._type)])
            self._callback(rec)
        except BaseException as e:  # never unwind through libbpf's C frames
            self._error = e
            return -1
        return 0

    def _handle(self) -> int:
        if self._rb is None:
            raise ValueError("ring buffer closed")
        return self._rb

    @property
    def epoll_fd(self) -> int:
        return libbpf.check(libbpf.lib().ring_buffer__epoll_fd(self._handle()), "ring_buffer__epoll_fd")

    def _reraise(self, ret: int, what: str) -> int:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return libbpf.check(ret, what)

    def consume(self) -> int:
        """Handle every available record now; returns how many."""
        return self._reraise(libbpf.lib().ring_buffer__consume(self._handle()), "ring_buffer__consume")

    def poll(self, timeout_ms: int) -> int:
        return self._reraise(libbpf.lib().ring_buffer__poll(self._handle(), timeout_ms), "ring_buffer__poll")

    def add_reader(self, loop: asyncio.AbstractEventLoop) -> None:
        """Consume from an asyncio loop whenever the epoll fd is readable."""
        loop.add_reader(self.epoll_fd, self.consume)
        self._loop = loop

    def close(self) -> None:
        if self._rb is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self.epoll_fd)
            self._loop = None
        libbpf.lib().ring_buffer__free(self._rb)
        self._rb = None


@dataclass
class BpfObject:
    """A loaded object; use ``BpfObject.load``. Context manager: leaving it frees everything."""

    path: Path
    maps: dict[str, Map]
    programs: dict[str, Program]
    log: str
    pin_dir: PinDir | None = None
    _obj: int | None = None
    _rings: list[RingBuffer] = field(default_factory=list)
    _pins: list[Path] = field(default_factory=list)  # pins this object made (libbpf's included)
    _preexisting: frozenset[str] = frozenset()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        rodata: Mapping[str, Mirror | bytes] | None = None,
        pin_dir: PinDir | None = None,
        ifindex: int = 0,
        log_level: int = 0,
        reuse_maps: Mapping[str, Map] | None = None,
        max_entries: Mapping[str, int] | None = None,
    ) -> BpfObject:
        """Open, configure ``.rodata`` globals by name, load, and (with ``pin_dir``) pin maps and programs.

        ``ifindex`` != 0 asks for device offload of every program and map (bpf_program__set_ifindex).
        ``log_level`` 1 or 2 keeps the verifier log of a successful load in ``.log`` (2 adds its statistics).
        ``reuse_maps`` names maps this object shares with another loaded one (bpf_map__reuse_fd): e.g. the state
        client_egress writes and client_ingress reads. ``max_entries`` overrides maps' sizes by name before load
        (bpf_map__set_max_entries; a ring buffer's is its size in bytes: a power-of-two multiple of the page size)."""
        path = Path(path)
        try:
            spec = btfmod.Btf.from_object(path)
        except (OSError, btfmod.BtfError) as e:
            raise LoadError(f"{path}: {e}", "") from e
        so = libbpf.lib()
        opts = libbpf.BpfObjectOpenOpts(sz=ctypes.sizeof(libbpf.BpfObjectOpenOpts), kernel_log_level=log_level)
        preexisting: frozenset[str] = frozenset()
        if pin_dir is not None:
            # Maps declared with __uint(pinning, LIBBPF_PIN_BY_NAME) are pinned (or reused) here by libbpf.
            opts.pin_root_path = str(pin_dir.create()).encode()
            preexisting = frozenset(os.listdir(pin_dir.path))
        with libbpf.LogCapture(libbpf.LIBBPF_DEBUG if log_level else libbpf.LIBBPF_INFO) as cap:
            obj = so.bpf_object__open_file(str(path).encode(), ctypes.byref(opts))
            if not obj:
                if pin_dir is not None:
                    pin_dir.release([])
                raise LoadError(f"{path}: open failed: {os.strerror(ctypes.get_errno())}", cap.text)
            try:
                cls._configure(obj, spec, rodata or {}, ifindex)
                cls._reuse(obj, reuse_maps or {})
                cls._resize(obj, max_entries or {})
                ret = so.bpf_object__load(obj)
                if ret < 0:
                    raise LoadError(f"{path.name}: load failed ({os.strerror(-ret)}): {summarize_log(cap.text)}", cap.text)
            except BaseException:
                so.bpf_object__close(obj)
                if pin_dir is not None:
                    pin_dir.release([])
                raise
        types = map_types_from_btf(spec)
        self = cls(path=path, maps={}, programs={}, log=cap.text, _obj=obj, _preexisting=preexisting)
        try:
            m = so.bpf_object__next_map(obj, None)
            while m:
                name = so.bpf_map__name(m).decode()
                self.maps[name] = Map(m, *types.get(name, (None, None)))
                m = so.bpf_object__next_map(obj, m)
            p = so.bpf_object__next_program(obj, None)
            while p:
                name = so.bpf_program__name(p).decode()
                self.programs[name] = Program(name, so.bpf_program__section_name(p).decode(), so.bpf_program__fd(p))
                p = so.bpf_object__next_program(obj, p)
            if pin_dir is not None:
                self.pin_dir = pin_dir
                self._pin(pin_dir.create())
        except BaseException:
            self.close()
            raise
        return self

    @staticmethod
    def _reuse(obj: int, maps: Mapping[str, Map]) -> None:
        so = libbpf.lib()
        wanted = dict(maps)
        m = so.bpf_object__next_map(obj, None)
        while m and wanted:
            other = wanted.pop(so.bpf_map__name(m).decode(), None)
            if other is not None:
                libbpf.check(so.bpf_map__reuse_fd(m, other.fd), f"reuse map {other.name}")
            m = so.bpf_object__next_map(obj, m)
        if wanted:
            raise LoadError(f"the object has no map named {', '.join(sorted(wanted))} to share", "")

    @staticmethod
    def _resize(obj: int, sizes: Mapping[str, int]) -> None:
        so = libbpf.lib()
        for name, size in sizes.items():
            m = so.bpf_object__find_map_by_name(obj, name.encode())
            if not m:
                raise LoadError(f"the object has no map named {name} to resize", "")
            ret = so.bpf_map__set_max_entries(m, size)
            if ret < 0:
                raise LoadError(f"map {name}: max_entries {size} refused ({os.strerror(-ret)})", "")

    @staticmethod
    def _configure(obj: int, spec: btfmod.Btf, rodata: Mapping[str, Mirror | bytes], ifindex: int) -> None:
        so = libbpf.lib()
        if rodata:
            variables = spec.variables(".rodata")
            m = so.bpf_object__next_map(obj, None)
            while m and not so.bpf_map__name(m).decode().endswith(".rodata"):
                m = so.bpf_object__next_map(obj, m)
            if not m:
                raise LoadError("the object has no .rodata section", "")
            size = ctypes.c_size_t()
            base = libbpf.check_ptr(so.bpf_map__initial_value(m, ctypes.byref(size)), "bpf_map__initial_value")
            for name, value in rodata.items():
                var = variables.get(name)
                if var is None:
                    raise LoadError(f"no .rodata global named {name!r} (have: {sorted(variables)})", "")
                raw = bytes(value)
                if len(raw) != var.size or var.offset + var.size > size.value:
                    raise LoadError(f".rodata {name}: {len(raw)} bytes given, the global has {var.size}", "")
                ctypes.memmove(base + var.offset, raw, len(raw))
        if ifindex:
            p = so.bpf_object__next_program(obj, None)
            while p:
                so.bpf_program__set_ifindex(p, ifindex)
                p = so.bpf_object__next_program(obj, p)
            m = so.bpf_object__next_map(obj, None)
            while m:
                if not so.bpf_map__name(m).decode().startswith("."):
                    so.bpf_map__set_ifindex(m, ifindex)
                m = so.bpf_object__next_map(obj, m)

    def _pin(self, folder: Path) -> None:
        for name, m in self.maps.items():
            if "." in name:  # internal maps (.rodata, .bss) stay private
                continue
            if (folder / name).exists():  # pinned by libbpf at load (LIBBPF_PIN_BY_NAME), maybe shared
                m.pinned = folder / name
                if name not in self._preexisting:
                    self._pins.append(m.pinned)
            else:
                m.pin(folder / name)
                self._pins.append(folder / name)
        for name, p in self.programs.items():
            path = folder / name
            libbpf.check(libbpf.lib().bpf_obj_pin(p.fd, str(path).encode()), f"pin program {name}")
            p.pinned = path
            self._pins.append(path)

    def ring_buffer(
        self, map_name: str, callback: Callable[[Any], None], record_type: type[Mirror] | None = None
    ) -> RingBuffer:
        """A consumer of a BPF_MAP_TYPE_RINGBUF map; closed with the object."""
        m = self.maps[map_name]
        if m.type != MAP_RINGBUF:
            raise ValueError(f"map {map_name} is not a ring buffer")
        rb = RingBuffer(m, callback, record_type)
        self._rings.append(rb)
        return rb

    def close(self) -> None:
        for rb in self._rings:
            rb.close()
        self._rings.clear()
        if self.pin_dir is not None:
            self.pin_dir.release(self._pins)
            self._pins.clear()
            self.pin_dir = None
        if self._obj is not None:
            libbpf.lib().bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
