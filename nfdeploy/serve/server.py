"""`nfdeploy serve`: a Triton model repository served by the bundled tritonserver.

Given an export dir, the repository is the one `nfdeploy package` writes (packaged on the fly into a
temporary dir); given a repository, it is served as it is. Either way what answers the requests is what
a Triton container would load from that repository, and its Python-backend model runs the backend parity
judged, under the same name, from the same file (its sha256 in the model's parameters).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nfdeploy.artifacts import MANIFEST
from nfdeploy.serve.repository import (
    MODEL_CONFIG,
    PackagedModel,
    PackageOptions,
    check_repository,
    config_parameters,
    model_dirs,
    package_export,
    parse_config,
)
from nfdeploy.serve.tritonserver import (
    ADMIN_HEADER,
    GUARDED_APIS,
    LOOPBACK,
    ServeError,
    ServerAddress,
    TritonProcess,
    free_port,
    is_loopback,
    ready_status,
    terminate_with_parent,
)


@dataclass
class ServeOptions:
    package: PackageOptions = field(default_factory=PackageOptions)  # how an export is packaged (not a repository)
    address: ServerAddress = field(default_factory=ServerAddress)
    exit_timeout_s: int = 30  # how long a stop waits for in-flight requests
    log_file: Path | None = None  # tritonserver's log (None: a temp file, named when serving starts)


def is_export_dir(path: Path) -> bool:
    return (path / MANIFEST).is_file()


class ModelServer:
    """tritonserver serving an export (packaged here) or a repository; `with ModelServer(...) as s:` or
    start()/stop()."""

    def __init__(self, path: str | Path, options: ServeOptions | None = None, *, log: Callable[[str], None] = print):
        self.path = Path(path)
        self.options = options or ServeOptions()
        self.log = log
        self.repository: Path | None = None
        self.models: dict[str, dict[str, str]] = {}  # served model name -> its config parameters
        self.notes: list[str] = []
        self._tmp: Path | None = None
        self.triton: TritonProcess | None = None

    def prepare(self) -> ModelServer:
        """The repository to serve, packaged when the path is an export; starts nothing."""
        if is_export_dir(self.path):
            self._tmp = Path(tempfile.mkdtemp(prefix="nfdeploy-repo-"))
            made: list[PackagedModel] = package_export(
                self.path, self._tmp / "repository", self.options.package, log=self.log
            )
            self.repository = self._tmp / "repository"
            self.notes = [n for m in made for n in m.notes]
        else:
            model_dirs(self.path)  # neither an export nor a repository: a clear error before any server starts
            self.repository = self.path
        return self

    def start(self) -> ModelServer:
        """Triton loads the repository first (a config it rejects is its own reason, in one line), then the
        checks a loader cannot make (files against the packaged manifest) must pass too."""
        try:
            if self.repository is None:
                self.prepare()
            self.triton = TritonProcess(
                self.repository, self.options.address, self.options.exit_timeout_s, self.options.log_file
            )
            self.triton.start()
            self.models = {
                d.name: config_parameters(parse_config(d / MODEL_CONFIG)) for d in model_dirs(self.repository)
            }
            problems = {m: p for m, p in check_repository(self.repository).items() if p}
            if problems:
                raise ServeError(
                    "the repository fails its checks: " + "; ".join(f"{m}: {', '.join(p)}" for m, p in problems.items())
                )
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def log_file(self) -> Path | None:
        return self.triton.log_file if self.triton else self.options.log_file

    @property
    def urls(self) -> dict[str, str]:
        return self.options.address.urls

    def is_alive(self) -> bool:
        return self.triton is not None and self.triton.is_alive()

    def stop(self) -> int | None:
        """Drain in-flight requests (tritonserver waits up to exit_timeout_s), stop it, remove a packaged repository."""
        code = None
        if self.triton is not None:
            triton, self.triton = self.triton, None
            code = triton.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
            self.repository = None
        return code

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def load_check(repository: str | Path, *, log_file: Path | None = None) -> float:
    """Load the repository in the bundled tritonserver on free loopback ports (every model must load and answer
    its warm-up), stop it; the seconds it took to be ready. Raises ServeError with Triton's reason."""
    address = ServerAddress(LOOPBACK, free_port(), free_port(), free_port())
    t = time.perf_counter()
    with TritonProcess(Path(repository), address, exit_timeout_s=10, log_file=log_file):
        return time.perf_counter() - t


def describe_served(server: ModelServer) -> list[str]:
    """What `serve` prints once ready: each model and its backend, why that backend, the URLs."""
    lines = []
    for name, p in server.models.items():
        lines.append(
            f"serving {name} with {p.get('nfdeploy.backend', '?')} (parity: {p.get('nfdeploy.check.parity', '?')})"
        )
        if p.get("nfdeploy.chosen"):
            lines.append(f"  chosen: {p['nfdeploy.chosen']}")
        if p.get("nfdeploy.batch_invariance"):
            lines.append(f"  batch invariance: {p['nfdeploy.batch_invariance']}")
    for kind, url in server.urls.items():
        lines.append(f"  {kind}: {url}")
    if server.triton and server.triton.admin_key:
        lines.append(
            f"  listening beyond loopback: the {', '.join(GUARDED_APIS)} APIs need the header "
            f"{ADMIN_HEADER}: {server.triton.admin_key} (health, metadata, inference and statistics do not)"
        )
    lines.append(f"  tritonserver log: {server.log_file}")
    return lines


def serve_until_signal(path: str | Path, options: ServeOptions, *, log: Callable[[str], None] = print) -> int:
    """Start, print what is served once ready, serve until SIGINT or SIGTERM, drain, stop; 0 on a clean stop."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ModelServer(path, options, log=log) as server:
            for line in describe_served(server):
                log(line)
            if not is_loopback(options.address.host):
                log(f"warning: listening on {options.address.host}, not loopback")
            log("ready")
            while not stop.wait(0.5):
                if not server.is_alive():
                    raise ServeError(f"tritonserver died; see its log {server.log_file}")
            log("stopping: draining in-flight requests")
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class ServeProcess:
    """`nfdeploy serve PATH` in a child process on free loopback ports (the load test's server: its CPU time is
    not the client's); stopped with SIGTERM, which drains in-flight requests."""

    def __init__(self, path: str | Path, serve_args: Sequence[str] = (), log_file: Path | None = None):
        self.path, self.serve_args = Path(path), list(serve_args)
        self.proc: subprocess.Popen | None = None
        self.log_file = log_file
        self.ports: dict[str, int] = {}
        self.ready_polls: list[tuple[float, int | None]] = []  # (seconds since start, HTTP status of /v2/health/ready)

    def command(self) -> list[str]:
        ports = [a for k, p in self.ports.items() for a in (f"--{k}-port", str(p))]
        return [sys.executable, "-m", "nfdeploy", "serve", str(self.path), *ports, *self.serve_args]

    def start(self, ready_timeout_s: float = 300.0) -> ServeProcess:
        self.ports = {k: free_port() for k in ("http", "grpc", "metrics")}
        out = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=terminate_with_parent if sys.platform == "linux" else None,
            )
        finally:
            if self.log_file:
                out.close()  # the child has its own descriptor
        self.wait_ready(ready_timeout_s)
        return self

    def wait_ready(self, timeout_s: float) -> None:
        """Poll readiness from the start (every poll recorded) until 200; a child that exits first is an error."""
        t0, deadline = time.monotonic(), time.monotonic() + timeout_s
        self.ready_polls = []
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServeError(
                    f"`nfdeploy serve` exited with {self.proc.returncode} before it was ready"
                    + (f" (log: {self.log_file})" if self.log_file else "")
                )
            status = ready_status(self.ready_url)
            self.ready_polls.append((time.monotonic() - t0, status))
            if status == 200:
                return
            time.sleep(0.05)
        self.stop()
        raise ServeError(f"`nfdeploy serve` was not ready within {timeout_s:.0f} s")

    @property
    def url(self) -> str:
        return f"{LOOPBACK}:{self.ports['grpc']}"

    @property
    def ready_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['http']}/v2/health/ready"

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM, wait; the exit code (0 on a clean stop)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


__all__ = [
    "LOOPBACK",
    "ModelServer",
    "ServeError",
    "ServeOptions",
    "ServeProcess",
    "describe_served",
    "free_port",
    "is_export_dir",
    "load_check",
    "serve_until_signal",
]
