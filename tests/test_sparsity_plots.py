"""plot_sparsity writes a readable PNG of per-site Hoyer bars and magnitude histograms."""

import pytest
import torch
from torch import nn

from hf_sparseout import Sparseout
from hf_sparseout.metrics import SparsityMonitor, plot_sparsity


class _TwoSites(nn.Module):
    def __init__(self, q: float) -> None:
        super().__init__()
        self.first = Sparseout(p=0.1, q=q)
        self.second = Sparseout(p=0.1, q=q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


def _result(seed: int) -> dict:
    model = _TwoSites(1.5).eval()
    with SparsityMonitor(model, histogram_sites=True) as monitor:
        model(torch.randn(4, 8, 32, generator=torch.Generator().manual_seed(seed)))
    return monitor.compute()


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_single_run_png(tmp_path):
    result = _result(0)
    fig = plot_sparsity(result, tmp_path / "one.png", title="one run")
    width, height = _png_size(tmp_path / "one.png")
    assert width >= 800 and height >= 300
    bars = fig.axes[0]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["first", "second"]
    heights = sorted(p.get_width() for p in bars.patches)
    assert heights == pytest.approx(sorted(s["hoyer"] for s in result["sites"].values()))
    assert len(fig.axes) == 3  # bars + one histogram per site
    # `second` sees a ReLU output: half its elements are exact zeros, shown in the legend
    legend = " ".join(t.get_text() for t in fig.axes[2].get_legend().get_texts())
    assert "zeros 5" in legend or "zeros 4" in legend


def test_two_runs_side_by_side(tmp_path):
    runs = {"Sparseout q=1.5": _result(0), "dropout": _result(1)}
    fig = plot_sparsity(runs, tmp_path / "two.png", hist_sites=["second"])
    _png_size(tmp_path / "two.png")
    assert len(fig.axes[0].patches) == 4 and len(fig.axes) == 2
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0].startswith("Sparseout q=1.5 (overall") and labels[1].startswith("dropout (overall")


def test_bad_arguments(tmp_path):
    result = _result(0)
    with pytest.raises(ValueError, match="no histogram"):
        plot_sparsity(result, hist_sites=["third"])
    with pytest.raises(ValueError, match="unknown metric"):
        plot_sparsity(result, metric="entropy")
    with pytest.raises(ValueError, match="compute"):
        plot_sparsity({"a": 1})
