"""The command line's shape: shared options defined once and shown under their group in every command that takes
them; a flag renders as a flag (no value type) in --help."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from nfdeploy.cli import app

COMMANDS = ("train", "export", "engine", "inspect", "backends", "parity", "compare", "bench", "pipeline", "spp",
            "serve", "package", "loadtest", "models")  # fmt: skip


def help_text(*args: str) -> str:
    r = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    return r.output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_flag_shows_no_value_type(command):
    text = help_text(command)
    assert "<bool>" not in text and "BOOLEAN" not in text, text
    assert re.search(r"--help\s+Show this message", text)


def test_shared_groups_appear_under_their_panel_in_each_command():
    for command in ("parity", "bench"):
        assert re.search(r"Backends.*--only.*--threads", help_text(command), re.S)
    for command in ("serve", "package", "loadtest"):
        text = help_text(command)
        assert re.search(r"Serving.*--backend.*--max-batch.*--max-queue-delay-us.*--batch-invariant", text, re.S)
    for command in ("export", "engine"):
        assert re.search(r"TensorRT.*--profile.*--tf32.*--cc", help_text(command), re.S)
    assert re.search(r"INT8.*--calibration.*--int8-keep.*--int8-ort-weight-bits", help_text("export"), re.S)
