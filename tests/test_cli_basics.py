"""The console script's root options, through Typer's CliRunner and as an installed script."""

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from hf_sparseout import __version__
from hf_sparseout_cli.main import app

runner = CliRunner()


def test_version_flag_prints_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hf-sparseout {__version__}"


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "env" in result.output


def test_env_json_reports_versions():
    result = runner.invoke(app, ["env", "--format", "json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["hf-sparseout"] == __version__
    assert info["torch"] != "not installed"


def test_unknown_command_is_an_error():
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


@pytest.mark.slow
def test_console_script_is_installed():
    exe = shutil.which("hf-sparseout")
    assert exe is not None, "pip install -e . should install the hf-sparseout console script"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout
    assert __version__ in out


@pytest.mark.slow
def test_cli_is_not_installed_as_top_level_cli_module(tmp_path):
    # Run outside the checkout, so only what is installed is importable.
    code = "import importlib.util as u; print(u.find_spec('hf_sparseout_cli') is not None, u.find_spec('cli'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "None"]
