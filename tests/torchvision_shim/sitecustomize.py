"""Test-only shim: let torchvision's pure-Python parts import beside a torch it was not built for.

Why: PyPI's torchvision wheel is a CUDA build.  Beside the CPU-only torch of this environment its
compiled extension (``torchvision/_C.so``) fails to load, ``torchvision.extension._has_ops()`` is
False, and ``import torchvision`` then dies in ``torchvision/_meta_registrations.py`` with
``RuntimeError: operator torchvision::nms does not exist`` (it registers fake kernels for ops
that were never defined).  timm imports torchvision, so timm does not import either.

What: when -- and only when -- ``torchvision.extension`` has been executed and reports that its
compiled ops did not load, this defines the two operator *schemas* the meta registrations need
(``torchvision::nms`` and ``torchvision::qnms``, the same schemas torchvision's C++ code
declares), with no kernels.  Calling those ops would still fail; nothing nfdeploy or timm's
NormFreeNet uses calls them.

How: a ``sys.meta_path`` finder wraps the loader of ``torchvision.extension`` (a post-import
hook).  The shim never imports torchvision (or torch) itself, and where torchvision's extension
loads cleanly, or the schemas already exist, it does nothing.

Use: tests import this module before timm (``sys.path.insert(0, <this folder>); import
sitecustomize``); a subprocess started with this folder on PYTHONPATH gets it automatically,
since Python imports ``sitecustomize`` at start-up.  (A ``sitecustomize`` on PYTHONPATH shadows
any other one; this environment has none.)  The product code never needs it.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_TARGET = "torchvision.extension"
_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBS: list = []  # keep the torch.library.Library alive: dropping it would undefine the schemas


def _define_missing_schemas(extension_module) -> None:
    if extension_module._has_ops():  # the compiled ops loaded: torchvision is fine as it is
        return
    import torch  # already imported by torchvision.extension

    missing = [name for name in _SCHEMAS if not _schema_exists(torch, f"torchvision::{name}")]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(_SCHEMAS[name])
    _LIBS.append(lib)


def _schema_exists(torch, qualname: str) -> bool:
    try:
        torch._C._get_schema(qualname, "")
        return True
    except RuntimeError:
        return False


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _define_missing_schemas(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


if not any(isinstance(f, _Finder) for f in sys.meta_path) and _TARGET not in sys.modules:
    sys.meta_path.insert(0, _Finder())
