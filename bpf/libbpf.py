"""ctypes bindings to the system libbpf (libbpf.so.1, API 1.1): only the calls the loader needs.

libbpf returns negative error codes (and sets errno) or NULL; ``check``/``check_ptr`` turn those into
``OSError`` so callers never look at raw return values. The verifier log reaches Python through
``libbpf_set_print`` (see ``LogCapture``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from functools import cache

c_void_p, c_int, c_char_p, c_size_t, c_uint32 = (
    ctypes.c_void_p,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_uint32,
)

# enum libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2

# int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *, va_list ap)
PRINT_FN = ctypes.CFUNCTYPE(c_int, c_int, c_char_p, c_void_p)
# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
SAMPLE_FN = ctypes.CFUNCTYPE(c_int, c_void_p, c_void_p, c_size_t)


class BpfObjectOpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts (libbpf.h, 1.1)."""

    _fields_ = [
        ("sz", c_size_t),
        ("object_name", c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", c_char_p),
        ("_attach_prog_fd", c_uint32),
        ("kconfig", c_char_p),
        ("btf_custom_path", c_char_p),
        ("kernel_log_buf", c_void_p),
        ("kernel_log_size", c_size_t),
        ("kernel_log_level", c_uint32),
    ]


class BpfTestRunOpts(ctypes.Structure):
    """struct bpf_test_run_opts (bpf.h)."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


_SIGNATURES: dict[str, tuple[object, list[object]]] = {
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "bpf_object__open_file": (c_void_p, [c_char_p, ctypes.POINTER(BpfObjectOpenOpts)]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__initial_value": (c_void_p, [c_void_p, ctypes.POINTER(c_size_t)]),
    "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_map__set_ifindex": (c_int, [c_void_p, c_uint32]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__set_ifindex": (None, [c_void_p, c_uint32]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_prog_test_run_opts": (c_int, [c_int, ctypes.POINTER(BpfTestRunOpts)]),
    "ring_buffer__new": (c_void_p, [c_int, SAMPLE_FN, c_void_p, c_void_p]),
    "ring_buffer__poll": (c_int, [c_void_p, c_int]),
    "ring_buffer__consume": (c_int, [c_void_p]),
    "ring_buffer__epoll_fd": (c_int, [c_void_p]),
    "ring_buffer__free": (None, [c_void_p]),
    "libbpf_num_possible_cpus": (c_int, []),
}


@cache
def lib() -> ctypes.CDLL:
    """The loaded libbpf.so.1 with argument/return types set (loaded once, on first use)."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    so = ctypes.CDLL(name, use_errno=True)
    for fn, (restype, argtypes) in _SIGNATURES.items():
        f = getattr(so, fn)
        f.restype = restype
        f.argtypes = argtypes
    return so


def check(ret: int, what: str) -> int:
    """libbpf convention: a negative return is -errno."""
    if ret < 0:
        code = -ret if ret != -1 else (ctypes.get_errno() or errno.EINVAL)
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return ret


def check_ptr(ptr: int | None, what: str) -> int:
    if not ptr:
        code = ctypes.get_errno() or errno.EINVAL
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return ptr


def num_possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


# The verifier log arrives as one message; libbpf's own buffer for it is at most 16 MiB.
_FORMAT_MAX = 16 * 1024 * 1024


def _format(fmt: bytes, args: int | None) -> str:
    """Expand libbpf's printf-style message with libc vsnprintf (va_list is passed through opaque)."""
    libc = ctypes.CDLL(None)
    vsn = libc.vsnprintf
    vsn.restype = c_int
    vsn.argtypes = [c_char_p, c_size_t, c_char_p, c_void_p]
    buf = ctypes.create_string_buffer(_FORMAT_MAX)
    n = vsn(buf, len(buf), fmt, args)
    return buf.raw[: max(0, min(n, len(buf) - 1))].decode(errors="replace")


class LogCapture:
    """Collects libbpf's messages (warnings and the verifier log on a failed load) while active.

    libbpf has one global print callback; the capture installs its own and restores silence on exit,
    so only one capture should be active at a time (the loader holds it only around open/load).
    """

    def __init__(self, level: int = LIBBPF_INFO) -> None:
        self.level = level
        self.lines: list[str] = []
        self._cb = PRINT_FN(self._on_print)

    def _on_print(self, level: int, fmt: bytes | None, args: int | None) -> int:
        if fmt is not None and level <= self.level:
            self.lines.append(_format(fmt, args))
        return 0

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> LogCapture:
        lib().libbpf_set_print(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        lib().libbpf_set_print(PRINT_FN())  # NULL: silence
