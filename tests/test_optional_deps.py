"""A missing optional package is an error with the pip command (exit 2 from the CLI), never a traceback.

Each test hides the package as if it were not installed: ``sys.modules[name] = None`` makes
``import name`` raise ``ModuleNotFoundError`` for the duration of the test.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from finetune_helpers import FAST, invoke, invoke_cli, write_text_corpus

import hf_sparseout
from hf_sparseout.errors import HfSparseoutError, MissingDependencyError
from hf_sparseout.optional import MATPLOTLIB, PEFT, require


def _hide(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make ``name`` and its loaded submodules unimportable for this test."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")] + [name]:
        monkeypatch.setitem(sys.modules, module, None)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_require_names_the_feature_and_the_install_command(monkeypatch):
    _hide(monkeypatch, "peft")
    with pytest.raises(MissingDependencyError) as info:
        require("peft", feature="loading an adapter", install=PEFT)
    err = info.value
    assert isinstance(err, HfSparseoutError) and isinstance(err, ImportError)  # callers catching either see it
    assert "loading an adapter needs the 'peft' package" in str(err)
    assert err.hint == "pip install 'hf-sparseout[peft]'"
    assert require("json", feature="x", install="y").dumps([1]) == "[1]"  # an installed module is returned


def test_finetune_without_matplotlib_exits_2_before_training(tmp_path, monkeypatch):
    data = write_text_corpus(tmp_path / "data")
    out = tmp_path / "out"
    _hide(monkeypatch, "matplotlib")
    result = invoke("--dataset", str(data), *FAST, "--max-steps", "2", "--output-dir", str(out))
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert "finetune's plots needs the 'matplotlib' package" in text
    assert f"Hint: {MATPLOTLIB}" in text
    assert "Traceback" not in result.output
    assert not out.exists(), "nothing may be written before the check"


def test_sweep_without_matplotlib_exits_2_before_any_run(tmp_path, monkeypatch):
    data = write_text_corpus(tmp_path / "data")
    out = tmp_path / "sweep"
    _hide(monkeypatch, "matplotlib")
    args = ["--q", "1.0", "--seeds", "1", "--dataset", str(data), *FAST, "--max-steps", "2", "--output-dir", str(out)]
    result = invoke_cli("sweep", *args)
    assert result.exit_code == 2, result.output
    text = _flat(result.output)
    assert "the sweep's plots needs the 'matplotlib' package" in text and f"Hint: {MATPLOTLIB}" in text
    assert not out.exists() or not any(out.rglob("*.safetensors")), "no run may start"


def test_plot_sparsity_without_matplotlib(monkeypatch):
    _hide(monkeypatch, "matplotlib")
    result = {"overall": {"hoyer": 0.5}, "sites": {"h.0.mlp.dropout": {"hoyer": 0.5}}}
    with pytest.raises(MissingDependencyError, match="plot_sparsity needs the 'matplotlib' package") as info:
        hf_sparseout.plot_sparsity(result)
    assert info.value.hint == MATPLOTLIB


def test_adapter_checkpoint_without_peft(tmp_path, monkeypatch):
    (tmp_path / "adapter_config.json").write_text('{"base_model_name_or_path": "gpt2"}')
    _hide(monkeypatch, "peft")
    with pytest.raises(MissingDependencyError, match="PEFT adapter checkpoint needs the 'peft' package") as info:
        hf_sparseout.from_pretrained(tmp_path, sparseout_config=hf_sparseout.SparseoutConfig(q=1.0))
    assert info.value.hint == PEFT


@pytest.mark.slow
def test_import_and_help_work_without_matplotlib():
    """matplotlib is imported by the plots only: the package, the CLI and its help load without it."""
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "import hf_sparseout\n"
        "from typer.testing import CliRunner\n"
        "from hf_sparseout_cli.main import app\n"
        "result = CliRunner().invoke(app, ['finetune', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'matplotlib' not in sys.modules or sys.modules['matplotlib'] is None\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"
