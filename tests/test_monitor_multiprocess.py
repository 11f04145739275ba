"""Two CPU processes under `accelerate launch` over a split of the data give the 1-process result."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # launches 2 processes

SCRIPT = pathlib.Path(__file__).resolve().parent / "monitor_multiprocess_script.py"


def _launch(num_processes: int, out: pathlib.Path, port: int) -> dict:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "the accelerate CLI is not installed"
    # `--cpu` with several processes needs MPI in accelerate 1.x; `--multi_gpu` selects its torchrun launcher,
    # and the script's Accelerator(cpu=True) keeps every process on the CPU (gloo process group).
    mode = "--multi_gpu" if num_processes > 1 else "--cpu"
    cmd = [accelerate, "launch", mode, "--num_processes", str(num_processes), "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([*cmd, str(SCRIPT), str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_processes_reduce_to_the_single_process_result(tmp_path):
    one = _launch(1, tmp_path / "one.json", 29617)
    two = _launch(2, tmp_path / "two.json", 29618)
    assert (one["num_processes"], two["num_processes"]) == (1, 2)
    assert list(one["sites"]) == list(two["sites"])
    # eval mode: attention-probability sites are not applied by the model, every other site is
    measured = {name: site for name, site in one["sites"].items() if site["vectors"] > 0}
    assert len(measured) == 5, list(measured)
    for name, site in measured.items():
        for key, value in site.items():
            assert two["sites"][name][key] == pytest.approx(value, rel=1e-6), (name, key)
    for key, value in one["overall"].items():
        assert two["overall"][key] == pytest.approx(value, rel=1e-6), key
    hist_one = one["histograms"]["transformer.h.1.mlp.dropout"]["counts"]
    assert two["histograms"]["transformer.h.1.mlp.dropout"]["counts"] == pytest.approx(hist_one)
    assert sum(hist_one) == one["sites"]["transformer.h.1.mlp.dropout"]["elements"]
