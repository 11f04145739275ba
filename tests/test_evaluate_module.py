"""The `activation_sparsity` evaluate module loads offline from the package and matches the pure functions."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from hf_sparseout.metrics import (
    evaluate_module_path,
    hoyer,
    l1_l2_ratio,
    mean_abs,
    near_zero_fraction,
    relative_near_zero_fraction,
    zero_fraction,
)

_RUN = """
import json, sys
import evaluate
from hf_sparseout.metrics import evaluate_module_path
metric = evaluate.load(evaluate_module_path())
cases = json.loads(sys.stdin.read())
out = [metric.compute(predictions=cases["equal"])]
out.append(metric.compute(predictions=cases["ragged"], near_zero_threshold=0.25))
for half in (cases["equal"][:3], cases["equal"][3:]):
    metric.add_batch(predictions=half)
out.append(metric.compute())
print(json.dumps(out))
"""


def test_module_layout_is_shippable():
    folder = pathlib.Path(evaluate_module_path())
    assert (folder / "activation_sparsity.py").is_file() and (folder / "README.md").is_file()
    assert not (folder.parent / "__init__.py").exists()  # `evaluate/` must not be a package


@pytest.mark.slow
def test_loads_offline_and_matches_the_pure_functions(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.relu(torch.randn(6, 10, generator=g, dtype=torch.float64))
    x[0] = 0
    x[1] = torch.tensor([0.0] * 9 + [2.5], dtype=torch.float64)
    ragged = [[0.0, 1.0, -3.0], [0.5, 0.2], [0.1, 0.0, 0.0, 4.0, 0.3]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # the module cache goes here, not to the user's cache
    proc = subprocess.run(
        [sys.executable, "-c", _RUN],
        input=json.dumps({"equal": x.tolist(), "ragged": ragged}),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard only: loading evaluate takes minutes on a loaded shared machine
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    whole, uneven, batched = json.loads(proc.stdout.strip().splitlines()[-1])

    want = {
        "hoyer": hoyer(x).mean().item(),
        "l1_l2_ratio": l1_l2_ratio(x).mean().item(),
        "zero_fraction": zero_fraction(x).mean().item(),
        "near_zero_fraction": near_zero_fraction(x).mean().item(),
        "relative_near_zero_fraction": relative_near_zero_fraction(x).mean().item(),
        "mean_abs": mean_abs(x).mean().item(),
    }
    for key, value in want.items():
        assert whole[key] == pytest.approx(value, rel=1e-12), key
        assert batched[key] == pytest.approx(value, rel=1e-12), key
    assert whole["hoyer"] > 0 and (whole["vectors"], whole["elements"]) == (6, 60)

    # ragged: Hoyer and ratio average vectors; fractions and |a| pool elements
    vecs = [torch.tensor(v, dtype=torch.float64) for v in ragged]
    assert uneven["hoyer"] == pytest.approx(sum(hoyer(v).item() for v in vecs) / 3)
    assert uneven["l1_l2_ratio"] == pytest.approx(sum(l1_l2_ratio(v).item() for v in vecs) / 3)
    assert uneven["zero_fraction"] == pytest.approx(3 / 10)
    assert uneven["near_zero_fraction"] == pytest.approx(5 / 10)
    assert uneven["relative_near_zero_fraction"] == pytest.approx(
        sum(relative_near_zero_fraction(v).item() * len(v) for v in vecs) / 10
    )
    assert uneven["mean_abs"] == pytest.approx(sum(abs(a) for v in ragged for a in v) / 10)
