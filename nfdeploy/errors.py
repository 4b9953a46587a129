"""The error types the CLI turns into a one-line message and a non-zero exit."""

from nfdeploy.artifacts import ArtifactError
from nfdeploy.config import RecipeError
from nfdeploy.data import DataError


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module: str, extra: str):
    """Import an optional heavy dependency lazily, or say which extra provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{module} is not installed ({e}); install it with: pip install 'nfdeploy[{extra}]'") from None


USER_ERRORS = (ArtifactError, RecipeError, DataError, MissingExtraError)

__all__ = ["ArtifactError", "DataError", "MissingExtraError", "RecipeError", "USER_ERRORS", "require"]
