"""``--noise matched`` where it changes nothing (q = 2 is dropout, p = 0 the identity): refused, or recorded."""

from __future__ import annotations

import json

import pytest
from finetune_helpers import FAST, invoke, write_text_corpus

from hf_sparseout.sweep.grid import grid, point_args
from hf_sparseout.training.args import FinetuneArgs, UsageError


@pytest.mark.parametrize(("option", "meaning"), [(["--q", "2"], "plain dropout"), (["--p", "0"], "identity")])
def test_finetune_refuses_matched_noise_where_it_is_a_no_op(tmp_path, option, meaning):
    out = tmp_path / "out"
    result = invoke("--noise", "matched", *option, *FAST, "--max-steps", "1", "--output-dir", str(out))
    flat = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "--noise matched" in flat and meaning in flat and "drop --noise matched" in flat
    assert not out.exists()


def test_matched_noise_is_refused_only_where_it_changes_nothing():
    FinetuneArgs(noise="matched", q=1.5, p=0.1).validate()
    FinetuneArgs(noise="matched", q=1.5).validate()  # each site's own p
    FinetuneArgs(noise="raw", q=2.0, p=0.0).validate()
    for q, p in ((2.0, None), (2.0, 0.1), (1.5, 0.0)):
        with pytest.raises(UsageError, match="--noise matched"):
            FinetuneArgs(noise="matched", q=q, p=p).validate()


def test_sweep_passes_the_effective_noise_to_its_dropout_and_p0_points():
    """A sweep with one --noise matched trains its q = 2 and p = 0 runs, which are raw dropout / the identity."""
    args = FinetuneArgs(noise="matched")
    points = grid(args, [1.5], [0.0, 0.1], [0])  # adds the q = 2 runs
    noise = {(pt.p, pt.q): point_args(args, pt).noise for pt in points}
    assert noise == {(0.0, 2.0): "raw", (0.1, 1.5): "matched", (0.1, 2.0): "raw"}  # p = 0: one run per seed
    with pytest.raises(UsageError, match="--noise matched has no effect"):  # no run would have matched noise
        grid(args, [2.0], [None, 0.1], [0])


@pytest.mark.slow
def test_controls_of_a_matched_run_record_their_effective_noise(tmp_path):
    data = write_text_corpus(tmp_path / "txt")
    out = tmp_path / "out"
    result = invoke(
        "--noise", "matched", "--p", "0.1", "--baseline", "both", "--dataset", str(data), *FAST,
        "--max-steps", "1", "--max-eval-samples", "4", "--output-dir", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output[-3000:]
    runs = json.loads((out / "metrics.json").read_text())["runs"]
    noise = {name: run["noise"] for name, run in runs.items()}
    assert noise == {"sparseout": "matched", "dropout": "raw", "p=0": "none"}
    for directory, noise in ((out, "matched"), (out / "baseline", "raw"), (out / "p0", "raw")):
        assert json.loads((directory / "config.json").read_text())["sparseout"]["noise"] == noise
