"""`hf-sparseout inspect` through Typer's CliRunner (and one offline subprocess)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from architectures import SHARED, build
from typer.testing import CliRunner

from hf_sparseout_cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    build("gpt2", "causal-lm", "eager").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    model = build("llama", "causal-lm", "eager")
    model.config.attention_dropout = 0.0
    model.save_pretrained(path)
    return path


def test_table_lists_every_site(gpt2_dir):
    result = runner.invoke(
        app, ["inspect", str(gpt2_dir), "--q", "1.0", "--exclude", "drop", "--attention", "sparseout"]
    )
    assert result.exit_code == 0, result.output
    assert re.search(r"transformer\.h\.1\.attn\.attn_dropout\s+attention\s+0\.1\s+1\s+yes", result.output)
    assert "7 sites, 6 Sparseout, 1 plain dropout" in result.output


def test_json_with_attention_keep(gpt2_dir):
    result = runner.invoke(app, ["inspect", str(gpt2_dir), "--attention", "keep", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    kept = [s for s in report["sites"] if s["kind"] == "attention"]
    assert len(kept) == 2 and all(s["reason"] == "attention='keep'" for s in kept)
    assert report["config"]["attention"] == "keep" and report["patched"] is False


def test_regex_targets_and_comma_lists(gpt2_dir):
    regex = r"re:transformer\.h\.0\..*"
    result = runner.invoke(
        app, ["inspect", str(gpt2_dir), "--targets", regex, "--attention", "sparseout", "--format", "json"]
    )
    report = json.loads(result.output[result.output.index("{") :])
    assert {s["name"] for s in report["sites"] if s["sparseout"]} == {
        "transformer.h.0.attn.attn_dropout",
        "transformer.h.0.attn.resid_dropout",
        "transformer.h.0.mlp.dropout",
    }
    result = runner.invoke(
        app, ["inspect", str(gpt2_dir), "--targets", "mlp.dropout,resid_dropout", "--format", "json"]
    )
    report = json.loads(result.output[result.output.index("{") :])
    assert sum(s["sparseout"] for s in report["sites"]) == 4


def test_insert_on_a_model_without_dropout(llama_dir):
    result = runner.invoke(app, ["inspect", str(llama_dir), "--p", "0.1", "--insert", "mlp.act_fn", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert [s["name"] for s in report["sites"] if s["kind"] == "inserted"] == [
        "model.layers.0.mlp.act_fn",
        "model.layers.1.mlp.act_fn",
    ]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--targets", "nope"], "match no dropout site"),
        (["--p", "1.5"], "p=1.5"),
        (["--insert", "mlp.act_fn"], "set p > 0"),
        (["--insert", "nope", "--p", "0.1"], "activation modules"),
    ],
)
def test_bad_options_exit_2_with_a_message(gpt2_dir, args, expected):
    result = runner.invoke(app, ["inspect", str(gpt2_dir), *args])
    assert result.exit_code == 2
    assert expected in " ".join(result.output.split())


def test_bad_paths_exit_2(tmp_path, gpt2_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["inspect", str(empty)])
    assert result.exit_code == 2 and "no config.json" in " ".join(result.output.split())
    result = runner.invoke(app, ["inspect", str(gpt2_dir / "config.json")])
    assert result.exit_code == 2 and "is a file" in " ".join(result.output.split())


@pytest.mark.slow
def test_hub_id_offline_names_hf_hub_offline(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "hf_sparseout_cli", "inspect", "some-org/some-model"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    message = " ".join(out.stderr.split())
    assert "HF_HUB_OFFLINE" in message and "local path" in message


@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED / "models" / "tiny-gpt2").is_dir(), reason="needs ../shared/models/tiny-gpt2")
def test_the_shared_tiny_gpt2_checkpoint():
    path = str(SHARED / "models" / "tiny-gpt2")
    result = runner.invoke(app, ["inspect", path, "--attention", "sparseout", "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["summary"]["sites"] == 7 and report["summary"]["sparseout"] == 7


def test_verify_prints_the_counts_and_exits_0_when_everything_is_covered(gpt2_dir):
    result = runner.invoke(app, ["inspect", str(gpt2_dir), "--verify", "--attention", "sparseout"])
    assert result.exit_code == 0, result.output
    assert re.search(r"transformer\.h\.0\.attn\.attn_dropout\s+sparseout\s+0\.1\s+1\s+transformer", result.output)
    assert "7 Sparseout and 0 plain dropout applications" in result.output and ": OK" in result.output


def test_verify_exits_1_when_plain_dropout_is_left(gpt2_dir):
    result = runner.invoke(app, ["inspect", str(gpt2_dir), "--verify", "--exclude", "drop", "--format", "json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output[result.output.index("{") :])
    assert data["verify"]["ok"] is False and data["verify"]["agrees"] is True
    assert [c["place"] for c in data["verify"]["calls"] if c["reached_as"] == "plain"] == ["transformer.drop:dropout"]


def test_format_table_is_the_deprecated_spelling_of_text(gpt2_dir):
    text = CliRunner().invoke(app, ["inspect", str(gpt2_dir), "--format", "text"])
    table = CliRunner().invoke(app, ["inspect", str(gpt2_dir), "--format", "table"])
    assert text.exit_code == table.exit_code == 0, table.output
    assert "deprecated" in table.stderr and "deprecated" not in text.stderr
    assert table.stdout == text.stdout and "7 sites" in text.stdout


def test_inspect_defaults_to_the_patch_finetune_applies_and_says_so(gpt2_dir):
    from hf_sparseout.training.args import FinetuneArgs

    defaults = FinetuneArgs()
    result = runner.invoke(app, ["inspect", str(gpt2_dir), "--format", "json"])
    assert result.exit_code == 0, result.output
    config = json.loads(result.output[result.output.index("{") :])["config"]
    assert (config["attention"], config["q"], config["gradient"]) == (defaults.attention, defaults.q, defaults.gradient)
    text = runner.invoke(app, ["inspect", str(gpt2_dir)])
    assert "finetune's default patch" in text.output and f"attention={defaults.attention}" in text.output
    other = runner.invoke(app, ["inspect", str(gpt2_dir), "--attention", "sparseout", "--q", "1"])
    assert "not finetune's default" in other.output and "--attention sparseout" in other.output


@pytest.mark.parametrize("args", [["--p", "0"], [], ["--attention", "keep", "--p", "0"]], ids=str)
def test_verify_of_identity_sites_and_kept_attention_exits_0(gpt2_dir, args):
    result = runner.invoke(app, ["inspect", str(gpt2_dir), "--verify", *args])
    assert result.exit_code == 0, result.output
    assert "disagrees" not in result.output and ": OK" in result.output
    if "--attention" not in args or "keep" in args:
        assert "kept plain" in result.output
