"""`nfdeploy serve`: one nfdeploy backend behind a real Triton Inference Server (PyTriton), with
Triton's dynamic batcher in front of it.

The served backend is the same object parity judged (same name, same artifact), so the parity
verdict in the export's report applies to what answers the requests; the model's config parameters
carry that verdict, the backend name and the artifact's sha256 so a client can see what it talks to.
PyTriton runs tritonserver as a child process and the Python function here in this process; the
function concatenates the requests Triton batched, runs the backend once and splits the result.
"""

from __future__ import annotations

import os
import re
import tempfile
import signal
import socket
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from nfdeploy.artifacts import read_json, sha256_file
from nfdeploy.backends import REFERENCE, default_report_dir, export_backends, load_export_source
from nfdeploy.errors import UserError, one_line, require
from nfdeploy.parity import read_parity_rows
from nfdeploy.runtime.base import Backend

MODEL_VERSION = 1
LOOPBACK = "127.0.0.1"
CPU_DEFAULT_BACKEND = "onnxruntime-cpu-fp32"
# A second output beside the logits: the number of rows the backend ran together for this request,
# so a client can relate each response to the batch it was computed in.
BATCH_OUTPUT = "executed_batch"
UNCHECKED = "unchecked"  # no parity report, or the backend is not in it
READY_TIMEOUT_S = 120.0


class ServeError(UserError, RuntimeError):
    """A server that cannot be started as asked (taken port, refused backend, unsuitable interpreter); one line."""


@dataclass
class ServeOptions:
    backend: str | None = None  # None: CPU_DEFAULT_BACKEND without a GPU, else the fastest that passed parity
    max_batch: int = 32
    max_queue_delay_us: int = 1000
    max_queue_size: int | None = None  # requests waiting at most (None: 4 × max_batch); beyond it Triton rejects
    instances: int = 1
    host: str = LOOPBACK
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    allow_unchecked: bool = False
    threads: int | None = None  # ONNX Runtime CPU intra-op threads per instance (None: its default)
    exit_timeout_s: int = 30  # how long a stop waits for in-flight requests
    log_file: Path | None = None  # tritonserver's log (None: a file in the temp dir, named when serving starts)


def interpreter_problem() -> str | None:
    """Why PyTriton cannot serve from this interpreter, in one line, or None."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not (Path(libdir) / soname).is_file():
        return (f"this Python ({sys.executable}) has no shared libpython, which tritonserver's Python backend "
                "embeds; make the venv from one that has (Debian's /usr/bin/python3, or pyenv with "
                "PYTHON_CONFIGURE_OPTS=--enable-shared): rm -r .venv && PYTHON=/usr/bin/python3 bash scripts/setup.sh")
    if int(np.__version__.split(".")[0]) >= 2:
        return f"PyTriton 0.7 needs numpy < 2 and this environment has numpy {np.__version__}: pip install 'nfdeploy[serve]'"
    return None


def use_own_libpython() -> None:
    """Put this interpreter's libpython first on the library path of the processes started from here.
    tritonserver's Python backend stub loads libpython by its soname: without this the dynamic linker
    may find another build of the same version (Debian's 3.11.2 beside pyenv's 3.11.7), whose C code
    then fails against this interpreter's stdlib ("'_thread.RLock' object has no attribute
    '_recursion_count'")."""
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if libdir and (not paths or paths[0] != libdir):
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir] + [p for p in paths if p != libdir])


def model_name_of(manifest: dict[str, Any]) -> str:
    """Triton model names allow letters, digits, dots, underscores and dashes."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(manifest.get("model") or "model"))


def parity_verdict(export_dir: str | Path, backend_name: str) -> str:
    """The backend's parity row status ("pass", "FAIL", "broken", ...) or "unchecked"."""
    rows = read_parity_rows(export_dir)
    return (rows or {}).get(backend_name, {}).get("status", UNCHECKED)


def default_backend_name(export_dir: str | Path, backends: list[Backend]) -> str:
    """ONNX Runtime CPU fp32 without a GPU; on a GPU the fastest backend (median at its largest benched
    batch) among those that passed parity and run on CUDA, from the export's saved reports."""
    cuda = [b for b in backends if b.device == "cuda" and b.unavailable_reason() is None]
    if not cuda:
        return CPU_DEFAULT_BACKEND
    rows = read_parity_rows(export_dir) or {}
    passed = {b.name for b in cuda if rows.get(b.name, {}).get("status") == "pass"}
    bench_path = default_report_dir(export_dir) / "bench.json"
    if not passed or not bench_path.is_file():
        return CPU_DEFAULT_BACKEND
    results = [r for r in read_json(bench_path, "bench report").get("results", []) if r.get("name") in passed]
    if not results:
        return CPU_DEFAULT_BACKEND
    top = max(r["batch"] for r in results)
    return min((r for r in results if r["batch"] == top), key=lambda r: r["median_ms"] / r["batch"])["name"]


def artifact_of(backend: Backend, export_dir: Path, manifest: dict[str, Any]) -> tuple[str, str]:
    """(file, sha256) of what the backend runs: its ONNX file or engine, or the run's weights for torch."""
    for attr in ("path", "engine_path"):  # OrtBackend.path, TensorRTBackend.engine_path
        p = getattr(backend, attr, None)
        if isinstance(p, (str, Path)) and Path(p).is_file():
            return Path(p).name, sha256_file(p)
    src = manifest.get("source", {})
    return str(src.get("weights", "?")), str(src.get("weights_sha256", "?"))


def check_port_free(host: str, port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServeError(f"{what} port {port} on {host} is taken ({e.strerror}): choose another with --{what}-port") from None


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BadRequest(ValueError):
    """A request the backend must not run (non-finite values); Triton returns the message to its client."""


def make_infer_function(backend: Backend, input_name: str, output_name: str) -> Callable[[list], list]:
    """The function Triton calls with the requests its dynamic batcher grouped: one backend.run over
    their concatenation, split back per request. Shape, dtype and batch size were checked by Triton
    against the model config before the call; finiteness is checked here (Triton has no such check).
    PyTriton 0.7 answers a non-decoupled model's batch with one error or all results, so an error
    here reaches every request the batcher grouped with the bad one (the load test counts them)."""

    def infer(requests: list) -> list:
        arrays = [np.asarray(r[input_name]) for r in requests]
        for a in arrays:
            if not np.isfinite(a).all():
                raise BadRequest(f"input {input_name!r} has non-finite values (NaN or inf): refused")
        sizes = [len(a) for a in arrays]
        out = backend.run(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        rows = np.int32(len(out))
        return [{output_name: part, BATCH_OUTPUT: np.full((len(part), 1), rows, np.int32)}
                for part in np.split(out, np.cumsum(sizes)[:-1])]

    return infer


class ModelServer:
    """A started Triton server serving one backend of an export; `with ModelServer(...) as s:` or start()/stop()."""

    def __init__(self, export_dir: str | Path, options: ServeOptions | None = None, *, log: Callable[[str], None] = print):
        self.export_dir = Path(export_dir)
        self.options = options or ServeOptions()
        self.log = log
        self._triton: Any = None
        self._backends: list[Backend] = []
        self._chosen: list[Backend] = []
        self.parameters: dict[str, str] = {}
        self.log_file = Path(self.options.log_file or Path(tempfile.gettempdir()) / f"nfdeploy-serve-{os.getpid()}.log")

    # ---------------------------------------------------------------------------------- setup
    def _choose(self) -> tuple[list[Backend], str, dict[str, Any]]:
        opts = self.options
        source = load_export_source(self.export_dir)
        made = [export_backends(source, compile=False, threads=opts.threads) for _ in range(opts.instances)]
        name = opts.backend or default_backend_name(self.export_dir, made[0])
        picked = [next((b for b in bs if b.name == name), None) for bs in made]
        if picked[0] is None:
            raise ServeError(f"--backend {name}: no such backend of this export; names: "
                             f"{', '.join(b.name for b in made[0] if b.name != REFERENCE)}")
        reason = picked[0].unavailable_reason()
        if reason:
            raise ServeError(f"--backend {name} cannot run here: {reason}")
        verdict = parity_verdict(self.export_dir, name)
        if verdict == UNCHECKED:
            self.log(f"warning: no parity verdict for {name} (run `nfdeploy parity {self.export_dir}`); serving it as unchecked")
        elif verdict != "pass" and not opts.allow_unchecked:
            raise ServeError(f"{name}: its parity verdict is {verdict}; refusing to serve it "
                             "(--allow-unchecked serves it anyway and says so in the model's parameters)")
        elif verdict != "pass":
            self.log(f"warning: serving {name} although its parity verdict is {verdict} (--allow-unchecked)")
        return picked, verdict, source.manifest

    def prepare(self) -> "ModelServer":
        """Choose and check the backend(s) and state the model's parameters; starts nothing."""
        opts = self.options
        if opts.max_batch < 1 or opts.instances < 1 or opts.max_queue_delay_us < 0:
            raise ServeError("--max-batch and --instances must be >= 1 and --max-queue-delay-us >= 0")
        backends, verdict, manifest = self._choose()
        file, sha = artifact_of(backends[0], self.export_dir, manifest)
        self.model_name = model_name_of(manifest)
        self.io_names = (manifest["input"]["name"], manifest["output"]["name"])
        self.parameters = {"nfdeploy.backend": backends[0].name, "nfdeploy.parity": verdict,
                           "nfdeploy.checked": "no" if verdict != "pass" else "yes",
                           "nfdeploy.allow_unchecked": "yes" if opts.allow_unchecked and verdict != "pass" else "no",
                           "nfdeploy.artifact": file, "nfdeploy.artifact_sha256": sha}
        self._chosen = backends
        return self

    def start(self) -> "ModelServer":
        require("pytriton", "serve")
        problem = interpreter_problem()
        if problem:
            raise ServeError(problem)
        use_own_libpython()
        opts = self.options
        for what, port in (("http", opts.http_port), ("grpc", opts.grpc_port), ("metrics", opts.metrics_port)):
            check_port_free(opts.host, port, what)
        self.prepare()
        backends = self._chosen
        from pytriton.model_config import DynamicBatcher, ModelConfig, QueuePolicy, Tensor
        from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

        c, h, w = backends[0].input_shape
        in_name, out_name = self.io_names
        self._backends = backends
        try:
            for b in backends:
                b.activate()
            n_out = backends[0].run(np.zeros((1, c, h, w), np.float32)).shape[1:]  # output dims, and a warm-up
            config = TritonConfig(http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host,
                                  grpc_port=opts.grpc_port, metrics_address=opts.host, metrics_port=opts.metrics_port,
                                  exit_timeout_secs=opts.exit_timeout_s, log_verbose=0,
                                  log_file=self.log_file)
            # Statistics stay readable without a token: the load test reads them; everything else
            # PyTriton protects by default stays protected.
            security = TritonSecurityConfig(restricted_endpoints=["shared-memory", "model-repository", "trace", "logging"])
            self._triton = Triton(config=config, security_config=security)
            self._triton.bind(model_name=self.model_name, model_version=MODEL_VERSION,
                              infer_func=[make_infer_function(b, in_name, out_name) for b in backends],
                              inputs=[Tensor(name=in_name, dtype=np.float32, shape=(c, h, w))],
                              outputs=[Tensor(name=out_name, dtype=np.float32, shape=tuple(int(d) for d in n_out)),
                                       Tensor(name=BATCH_OUTPUT, dtype=np.int32, shape=(1,))],
                              config=ModelConfig(max_batch_size=opts.max_batch,
                                                 batcher=DynamicBatcher(max_queue_delay_microseconds=opts.max_queue_delay_us,
                                                                        default_queue_policy=self.queue_policy(QueuePolicy))),
                              strict=True)
            self._add_parameters()
            self._triton.run()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def queue_policy(self, policy_type: Any) -> Any:
        # A bounded queue: under overload a request is rejected at once instead of joining a backlog the
        # server keeps computing after its clients gave up. (Per-request server-side timeouts are left
        # off: with PyTriton 0.7, requests dropped from the queue by timeout kept the model from
        # unloading, and every stop waited out the full exit timeout.)
        size = self.options.max_queue_size if self.options.max_queue_size is not None else 4 * self.options.max_batch
        return policy_type(max_queue_size=size)

    def _add_parameters(self) -> None:
        # PyTriton has no public way to add config parameters; they go where its own backend
        # parameters go (config.pbtxt `parameters`), before the model is loaded.
        for model in self._triton._model_manager.models:  # noqa: SLF001 - PyTriton internals, pinned 0.7.0
            model._get_triton_model_config().backend_parameters.update(self.parameters)  # noqa: SLF001

    def _wait_ready(self) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(f"{self.options.host}:{self.options.http_port}")
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline:
                try:
                    if client.is_server_ready() and client.is_model_ready(self.model_name, str(MODEL_VERSION)):
                        return
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                time.sleep(0.2)
            raise ServeError(f"the server did not become ready within {READY_TIMEOUT_S:.0f} s")
        finally:
            client.close()

    @property
    def urls(self) -> dict[str, str]:
        o = self.options
        return {"http": f"http://{o.host}:{o.http_port}", "grpc": f"{o.host}:{o.grpc_port}",
                "metrics": f"http://{o.host}:{o.metrics_port}/metrics"}

    def is_alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        """Drain in-flight requests (tritonserver waits up to exit_timeout_s), stop it, free the backends."""
        if self._triton is not None:
            triton, self._triton = self._triton, None
            triton.stop()
        for b in self._backends:
            b.deactivate()
        self._backends = []

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_until_signal(export_dir: str | Path, options: ServeOptions, *, log: Callable[[str], None] = print) -> int:
    """Start, print the URLs once ready, serve until SIGINT or SIGTERM, drain, stop; 0 on a clean stop."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ModelServer(export_dir, options, log=log) as server:
            p = server.parameters
            log(f"serving {server.model_name} (version {MODEL_VERSION}) with {p['nfdeploy.backend']} "
                f"(parity: {p['nfdeploy.parity']}), max batch {options.max_batch}, {options.instances} instance(s)")
            for kind, url in server.urls.items():
                log(f"  {kind}: {url}")
            log(f"  tritonserver log: {server.log_file}")
            log("ready")
            while not stop.wait(0.5):
                if not server.is_alive():
                    raise ServeError("the Triton server died; see its log above")
            log("stopping: draining in-flight requests")
        return 0
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


__all__ = ["BATCH_OUTPUT", "CPU_DEFAULT_BACKEND", "LOOPBACK", "MODEL_VERSION", "UNCHECKED", "BadRequest", "ModelServer", "ServeError",
           "ServeOptions", "artifact_of", "default_backend_name", "free_port", "interpreter_problem",
           "make_infer_function", "model_name_of", "parity_verdict", "serve_until_signal"]
