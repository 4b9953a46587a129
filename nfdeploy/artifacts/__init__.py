"""What nfdeploy writes and reads on disk: atomic writes and checksums (files), the export manifest
(manifest), and a training run dir (run_dir, which sits a floor higher: it rebuilds a model)."""

from nfdeploy.artifacts.files import (
    ArtifactError,
    array_sha256,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_tensors,
    make_staging_dir,
    read_json,
    save_tensors,
    sha256_file,
)
from nfdeploy.artifacts.manifest import (
    FOLD_REPORT,
    MANIFEST,
    MANIFEST_FORMAT,
    EngineEntry,
    InputSpec,
    Manifest,
    ModelSource,
    OnnxEntry,
)

__all__ = [
    "FOLD_REPORT",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "ArtifactError",
    "EngineEntry",
    "InputSpec",
    "Manifest",
    "ModelSource",
    "OnnxEntry",
    "array_sha256",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_tensors",
    "make_staging_dir",
    "read_json",
    "save_tensors",
    "sha256_file",
]
