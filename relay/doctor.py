"""`relay doctor`: every prerequisite of the relay, checked on this machine, with the fix for each one missing.

Each check is a small function returning a `Check`; the list is data, so a reader sees at a glance what the relay
needs and the tests can run each check alone. Probes that need a network device make their own throw-away
namespace (per-run name) and remove it, so the doctor never touches the machine's real interfaces.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

INSTALL_HINT = "run `make setup` as root (apt-get install -y clang llvm libbpf-dev bpftool iproute2)"
NR_BPF = {"x86_64": 321, "aarch64": 280}
BPF_MAP_CREATE = 0
BPF_MAP_TYPE_ARRAY = 2


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _run(argv: list[str], timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def check_root() -> Check:
    ok = os.geteuid() == 0
    return Check("root", ok, f"euid {os.geteuid()}", "" if ok else "run the relay as root (BPF, netlink and namespaces need it)")


def check_bpf_syscall() -> Check:
    """Create (and close) a one-entry array map: the cheapest call that proves bpf(2) works for us."""
    nr = NR_BPF.get(platform.machine())
    if nr is None:
        return Check("bpf syscall", False, f"unknown syscall number on {platform.machine()}", "use x86_64 or aarch64")
    attr = (ctypes.c_uint32 * 32)()
    attr[0], attr[1], attr[2], attr[3] = BPF_MAP_TYPE_ARRAY, 4, 4, 1  # type, key size, value size, max entries
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, BPF_MAP_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        return Check("bpf syscall", False, f"bpf(BPF_MAP_CREATE) failed: {os.strerror(err)}",
                     "run as root; check kernel.unprivileged_bpf_disabled and that the kernel has CONFIG_BPF_SYSCALL")
    os.close(fd)
    return Check("bpf syscall", True, "bpf(BPF_MAP_CREATE) works")


def check_btf() -> Check:
    path = Path("/sys/kernel/btf/vmlinux")
    ok = path.exists()
    return Check("BTF", ok, str(path) + (" present" if ok else " missing"),
                 "" if ok else "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def check_bpffs() -> Check:
    mounts = Path("/proc/mounts").read_text()
    ok = any(line.split()[1:3] == ["/sys/fs/bpf", "bpf"] for line in mounts.splitlines() if len(line.split()) > 2)
    # Not required: the loader mounts bpffs itself when it first pins something.
    return Check("bpffs", ok, "/sys/fs/bpf mounted" if ok else "/sys/fs/bpf not mounted yet (the relay mounts it on first use)",
                 "" if ok else "mount -t bpf bpf /sys/fs/bpf", required=False)


def check_bpf_stats() -> Check:
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    if not path.exists():
        return Check("bpf_stats", False, "kernel.bpf_stats_enabled missing", "kernel >= 5.1 needed for per-program run time",
                     required=False)
    value = path.read_text().strip()
    return Check("bpf_stats", True, f"kernel.bpf_stats_enabled={value} (benchmarks switch it on while they run)",
                 required=False)


def _ip_netns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return _run(["ip", "-n", ns, *argv])


def check_netns_veth_clsact() -> list[Check]:
    """One throw-away namespace probes netns, veth, clsact and the shaping qdiscs; it is always removed."""
    if shutil.which("ip") is None or shutil.which("tc") is None:
        fix = "apt-get install -y iproute2"
        return [Check(n, False, "ip/tc not installed", fix) for n in ("netns", "veth", "clsact", "tbf/htb")]
    if os.geteuid() != 0:
        return [Check(n, False, "needs root to probe", "run `relay doctor` as root")
                for n in ("netns", "veth", "clsact", "tbf/htb")]
    ns = f"doctor-{uuid.uuid4().hex[:8]}"
    results: list[Check] = []
    created = _run(["ip", "netns", "add", ns])
    try:
        results.append(Check("netns", created.returncode == 0, created.stderr.strip() or "ip netns add works",
                             "" if created.returncode == 0 else "kernel needs CONFIG_NET_NS"))
        if created.returncode != 0:
            return results + [Check(n, False, "no namespace to probe in", "fix netns first")
                              for n in ("veth", "clsact", "tbf/htb")]
        veth = _ip_netns(ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        results.append(Check("veth", veth.returncode == 0, veth.stderr.strip() or "veth pair created",
                             "" if veth.returncode == 0 else "kernel needs CONFIG_VETH"))
        dev = "d0" if veth.returncode == 0 else "lo"
        clsact = _run(["tc", "-n", ns, "qdisc", "add", "dev", dev, "clsact"])
        results.append(Check("clsact", clsact.returncode == 0, clsact.stderr.strip() or "clsact qdisc attached",
                             "" if clsact.returncode == 0 else "kernel needs CONFIG_NET_SCH_INGRESS (clsact)"))
        tbf = _run(["tc", "-n", ns, "qdisc", "add", "dev", "d1" if dev == "d0" else dev, "root", "tbf",
                    "rate", "1mbit", "burst", "32kb", "latency", "50ms"])
        results.append(Check("tbf/htb", tbf.returncode == 0, tbf.stderr.strip() or "tbf qdisc works (link shaping)",
                             "" if tbf.returncode == 0 else "kernel needs CONFIG_NET_SCH_TBF", required=False))
    finally:
        if created.returncode == 0:
            _run(["ip", "netns", "del", ns])
    return results


def check_clang() -> Check:
    clang = shutil.which("clang")
    if clang is None:
        return Check("clang", False, "not installed", INSTALL_HINT)
    version = _run([clang, "--version"]).stdout.splitlines()[0] if clang else ""
    targets = _run(["llc", "--version"]).stdout if shutil.which("llc") else ""
    ok = "bpf" in targets
    return Check("clang", ok, version + ("" if ok else " (llc has no bpf target)"), "" if ok else INSTALL_HINT)


def check_libbpf() -> Check:
    name = ctypes.util.find_library("bpf")
    header = Path("/usr/include/bpf/libbpf.h").exists()
    if name is None or not header:
        missing = ", ".join(m for m, present in (("libbpf.so", name is not None), ("libbpf.h", header)) if not present)
        return Check("libbpf", False, f"missing: {missing}", INSTALL_HINT)
    lib = ctypes.CDLL(name)
    major = getattr(lib, "libbpf_major_version", None)
    minor = getattr(lib, "libbpf_minor_version", None)
    version = f"{major()}.{minor()}" if major and minor else "unknown version"
    return Check("libbpf", True, f"{name} {version}")


def check_bpftool() -> Check:
    ok = shutil.which("bpftool") is not None
    return Check("bpftool", ok, "installed" if ok else "not installed (only needed for debugging)",
                 "" if ok else INSTALL_HINT, required=False)


def check_tcpdump() -> Check:
    ok = shutil.which("tcpdump") is not None
    return Check("tcpdump", ok, "installed" if ok else "not installed (wire captures in tests and the demo)",
                 "" if ok else "apt-get install -y tcpdump", required=False)


# --- unsafe settings (warnings, never required: the relay runs, but it is exposed) ------------------------------


def _sysctl(name: str) -> int | None:
    try:
        return int(Path("/proc/sys", *name.split(".")).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def check_unprivileged_bpf() -> Check:
    v = _sysctl("kernel.unprivileged_bpf_disabled")
    ok = v is None or v != 0
    return Check("unprivileged bpf", ok, f"kernel.unprivileged_bpf_disabled = {v}",
                 "" if ok else "sysctl -w kernel.unprivileged_bpf_disabled=2 (any user can load BPF programs now)",
                 required=False)  # fmt: skip


def check_jit_harden() -> Check:
    v = _sysctl("net.core.bpf_jit_harden")
    ok = v is None or v >= 1
    return Check("bpf jit hardening", ok, f"net.core.bpf_jit_harden = {v}",
                 "" if ok else "sysctl -w net.core.bpf_jit_harden=1 (constant blinding against JIT spraying)",
                 required=False)  # fmt: skip


def check_state_dir(state_dir: Path) -> Check:
    """Private keys (key.pem, ca-key.pem) readable by anyone but their owner, or a folder others can write into."""
    if not state_dir.exists():
        return Check("state dir", True, f"{state_dir} not made yet (the relay makes keys 0600)", required=False)
    bad = []
    if state_dir.stat().st_mode & 0o022:
        bad.append(f"{state_dir} is writable by group/others")
    for key in sorted(state_dir.glob("*key*.pem")):
        if key.stat().st_mode & 0o077:
            bad.append(f"{key.name} mode {key.stat().st_mode & 0o777:o}")
    return Check("state dir", not bad, "; ".join(bad) or f"{state_dir}: keys private",
                 f"chmod 0600 {state_dir}/*key*.pem; chmod go-w {state_dir}" if bad else "", required=False)  # fmt: skip


UNSAFE_FLAGS = {
    "--insecure-upstream": "the upstream relay's certificate is not verified: anyone on the path can pose as it",
    "--insecure-lab-plaintext": "1-RTT packets travel unencrypted",
    "--keep-privileges": "the relay keeps every capability after set-up",
    "--key-update-every": "a test knob, not for production",
}


def check_relay_args(argv: list[str]) -> list[Check]:
    """The flags a relay is (to be) started with: `relay doctor --relay-args "--hal sim --insecure-upstream"`."""
    found = [f for f in UNSAFE_FLAGS if any(a == f or a.startswith(f + "=") for a in argv)]
    return [Check(f"flag {f}", False, UNSAFE_FLAGS[f], f"leave out {f} outside tests", required=False) for f in found]


def security_checks(state_dir: Path | None = None, relay_args: list[str] | None = None) -> list[Check]:
    if state_dir is None:
        from relay.serve import default_state_dir  # late: serve imports the HAL registry

        state_dir = default_state_dir()
    return [check_unprivileged_bpf(), check_jit_harden(), check_state_dir(state_dir)] + check_relay_args(
        relay_args or []
    )


def all_checks() -> list[Check]:
    singles: list[Callable[[], Check]] = [check_root, check_bpf_syscall, check_btf, check_bpffs, check_bpf_stats]
    checks = [f() for f in singles]
    checks += check_netns_veth_clsact()
    checks += [check_clang(), check_libbpf(), check_bpftool(), check_tcpdump()]
    return checks


def render(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"{mark}  {c.name:<{width}}  {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"      {'':<{width}}  fix: {c.fix}")
    bad = [c for c in checks if c.required and not c.ok]
    lines.append("")
    lines.append("all prerequisites present" if not bad else f"{len(bad)} required prerequisite(s) missing")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the checks as JSON (for scripts)")
    parser.add_argument("--state-dir", type=Path, default=None, help="the relay's --state-dir to vet (default: its default)")
    parser.add_argument("--relay-args", default="", metavar="ARGS",
                        help='the flags the relay runs with, to warn about unsafe ones, e.g. "--insecure-upstream"')


def run(args: argparse.Namespace) -> int:
    checks = all_checks() + security_checks(getattr(args, "state_dir", None),
                                            shlex.split(getattr(args, "relay_args", "") or ""))  # fmt: skip
    if args.json:
        json.dump([asdict(c) for c in checks], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(render(checks))
    return 0 if all(c.ok for c in checks if c.required) else 1
