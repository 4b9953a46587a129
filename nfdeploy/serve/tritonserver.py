"""The tritonserver binary that PyTriton's wheel ships, run by itself on a model repository.

Only the binary and its Python backend are used, never PyTriton's Python API: a Python-backend model
answers each request of a dynamic batch on its own (its own error or its own outputs), which PyTriton's
function model cannot, and the server loads the repository before it opens its endpoints, so
`/v2/health/ready` is never true before every model answered its warm-up.

The Python backend needs its stub built for this interpreter's version; the wheel carries one per
version beside the backend, so the server gets a backend directory of its own whose `python/` links
the backend library, its utilities and the matching stub. The stub embeds libpython by soname: this
interpreter's LIBDIR goes first on the server's library path (with two builds of one version on a
machine, the linker otherwise finds the other one and the stub fails against this stdlib).
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nfdeploy.errors import UserError, one_line

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 300.0
# Header that guards the repository, shared-memory, logging and trace APIs when the server listens
# beyond loopback (the key is made at start and printed once).
ADMIN_HEADER = "nfdeploy-admin-key"
GUARDED_APIS = ("model-repository", "shared-memory", "logging", "trace")
# Lines of tritonserver's log that say nothing about a repository (no GPU, no DCGM on a CPU machine).
_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "cuda", "CUDA", "pinned memory", "GPU")


class ServeError(UserError, RuntimeError):
    """A server that cannot be started as asked (taken port, refused backend, a repository Triton does
    not load, an unsuitable interpreter); one line."""


def triton_dist() -> Path:
    """The tritonserver distribution inside the installed PyTriton wheel (bin/, backends/, stubs)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.origin:
        raise ServeError("the bundled tritonserver comes with nvidia-pytriton: pip install 'nfdeploy[serve]'")
    dist = Path(spec.origin).parent / "tritonserver"
    if not (dist / "bin" / "tritonserver").is_file():
        raise ServeError(
            f"{dist}/bin/tritonserver is missing: reinstall nvidia-pytriton (pip install 'nfdeploy[serve]')"
        )
    return dist


def interpreter_problem() -> str | None:
    """Why the bundled server's Python backend cannot run this interpreter's code, in one line, or None."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / soname).is_file():
        return (
            f"this Python ({sys.executable}) has no shared libpython, which tritonserver's Python backend "
            "embeds; make the venv from one that has (Debian's /usr/bin/python3, or pyenv with "
            "PYTHON_CONFIGURE_OPTS=--enable-shared): rm -r .venv && PYTHON=/usr/bin/python3 bash scripts/setup.sh"
        )
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    try:
        stub = triton_dist() / "python_backend_stubs" / version / "triton_python_backend_stub"
    except ServeError as e:
        return str(e)
    if not stub.is_file():
        return f"the bundled tritonserver has no Python backend stub for Python {version} ({stub} is missing)"
    return None


def backend_directory(root: Path) -> Path:
    """A backend directory for tritonserver under `root`: python/ links the wheel's Python backend and the
    stub built for this interpreter's version."""
    dist = triton_dist()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    python = root / "backends" / "python"
    python.mkdir(parents=True, exist_ok=True)
    links = {p.name: p for p in (dist / "backends" / "python").iterdir() if p.is_file()}
    links["triton_python_backend_stub"] = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    for name, target in links.items():
        (python / name).unlink(missing_ok=True)
        (python / name).symlink_to(target)
    return root / "backends"


def server_environment() -> dict[str, str]:
    """This process's environment with this interpreter's LIBDIR first on LD_LIBRARY_PATH (the stub inherits
    it); the stub writes no bytecode into the repository it serves."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p and p != libdir]
    env["LD_LIBRARY_PATH"] = ":".join([libdir, *paths] if libdir else paths)
    return env


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServeError(
                f"{what} port {port} on {host} is taken ({e.strerror}): choose another with --{what}-port"
            ) from None


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def triton_failure(log_text: str) -> str:
    """Triton's own reason a repository did not load, on one line, from its log: its error lines (and
    protobuf's parse error) without the lines a CPU machine always prints."""
    reasons = []
    for line in log_text.splitlines():
        line = line.strip()
        if (
            not (line.startswith("E") and re.match(r"^E\d{4} ", line))
            and "libprotobuf ERROR" not in line
            and not line.startswith("error:")
        ):
            continue
        if any(n in line for n in _NOISE):
            continue
        line = re.sub(r"^E\d{4} [\d:.]+ \d+ [\w.]+:\d+\] ", "", line)  # Triton's glog prefix
        line = re.sub(r"^\[libprotobuf ERROR [^\]]+\] ", "", line)
        reasons.append(line.strip('"'))
    return one_line(
        "; ".join(dict.fromkeys(reasons)) or "tritonserver exited without an error line (see its log)", 1500
    )


@dataclass
class ServerAddress:
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002

    @property
    def urls(self) -> dict[str, str]:
        return {
            "http": f"http://{self.host}:{self.http_port}",
            "grpc": f"{self.host}:{self.grpc_port}",
            "metrics": f"http://{self.host}:{self.metrics_port}/metrics",
        }

    def client_host(self) -> str:
        """Where a client on this machine reaches the server (a wildcard address is reached on loopback)."""
        return LOOPBACK if self.host in ("0.0.0.0", "") else self.host


@dataclass
class TritonProcess:
    """tritonserver on one model repository, in a child process; `with TritonProcess(...) as t:` or start()/stop().

    Ready means every model of the repository loaded and answered its warm-up: tritonserver (model
    control mode none) loads the repository before it opens its endpoints, and reports ready only while
    all of them are (strict readiness). start() returns once `/v2/health/ready` answers 200, or raises
    ServeError with Triton's own reason when the server exits first."""

    repository: Path
    address: ServerAddress = field(default_factory=ServerAddress)
    exit_timeout_s: int = 30
    log_file: Path | None = None
    admin_key: str | None = None  # made at start when the host is not loopback
    proc: subprocess.Popen | None = None
    _workdir: Path | None = None

    def command(self, backends: Path) -> list[str]:
        a = self.address
        cmd = [
            str(triton_dist() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            f"--cache-directory={triton_dist() / 'caches'}",
            f"--http-address={a.host}",
            f"--http-port={a.http_port}",
            f"--grpc-address={a.host}",
            f"--grpc-port={a.grpc_port}",
            f"--metrics-address={a.host}",
            f"--metrics-port={a.metrics_port}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            "--disable-auto-complete-config",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        if self.admin_key:
            guard = f"{','.join(GUARDED_APIS)}:{ADMIN_HEADER}={self.admin_key}"
            cmd += [f"--http-restricted-api={guard}", f"--grpc-restricted-protocol={guard}"]
        return cmd

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> TritonProcess:
        problem = interpreter_problem()
        if problem:
            raise ServeError(problem)
        a = self.address
        for what, port in (("http", a.http_port), ("grpc", a.grpc_port), ("metrics", a.metrics_port)):
            check_port_free(a.host, port, what)
        if not is_loopback(a.host) and self.admin_key is None:
            self.admin_key = secrets.token_hex(16)
        self._workdir = Path(tempfile.mkdtemp(prefix="nfdeploy-triton-"))
        self.log_file = self.log_file or self._workdir / "tritonserver.log"
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(backend_directory(self._workdir)),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=server_environment(),
                preexec_fn=terminate_with_parent if sys.platform == "linux" else None,
            )
        try:
            self._wait_ready(ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        url = f"http://{self.address.client_host()}:{self.address.http_port}/v2/health/ready"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            code = self.proc.poll() if self.proc else None
            if code is not None:
                raise ServeError(
                    f"Triton did not load the repository {self.repository} (exit {code}): "
                    f"{triton_failure(self.log_text())}"
                )
            if ready_status(url) == 200:
                return
            time.sleep(0.1)
        raise ServeError(f"tritonserver was not ready within {timeout_s:.0f} s (log: {self.log_file})")

    def log_text(self) -> str:
        try:
            return Path(self.log_file).read_text(errors="replace") if self.log_file else ""
        except OSError:
            return ""

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        """SIGTERM: tritonserver stops taking requests, finishes those in flight (up to exit_timeout_s), exits."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(self.exit_timeout_s + 15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            code = proc.returncode
        if self._workdir is not None:
            keep_log = self.log_file is not None and Path(self.log_file).parent != self._workdir
            if keep_log or code in (0, None):
                shutil.rmtree(self._workdir, ignore_errors=True)
        return code

    def __enter__(self) -> TritonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ready_status(url: str, timeout_s: float = 1.0) -> int | None:
    """HTTP status of a readiness URL, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def terminate_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies, however it dies, so no server outlives
    the process that started it (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


__all__ = [
    "ADMIN_HEADER",
    "GUARDED_APIS",
    "LOOPBACK",
    "READY_TIMEOUT_S",
    "ServeError",
    "ServerAddress",
    "TritonProcess",
    "backend_directory",
    "check_port_free",
    "free_port",
    "interpreter_problem",
    "is_loopback",
    "ready_status",
    "server_environment",
    "terminate_with_parent",
    "triton_dist",
    "triton_failure",
]
