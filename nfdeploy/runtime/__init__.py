"""Runtimes behind one small interface (Polygraphy-style runners): name, device, precision, run."""

from nfdeploy.runtime.base import Backend, BackendBroken, BackendUnavailable

__all__ = ["Backend", "BackendBroken", "BackendUnavailable"]
