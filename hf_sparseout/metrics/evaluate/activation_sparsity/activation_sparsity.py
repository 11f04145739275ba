"""Activation sparsity as an `evaluate` metric: Hoyer's measure, zero fractions and magnitudes of activation vectors.

Load it offline from the installed package (no Hub access)::

    import evaluate
    from hf_sparseout.metrics import evaluate_module_path
    metric = evaluate.load(evaluate_module_path())
    metric.compute(predictions=[[0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])

The values come from the pure functions of ``hf_sparseout.metrics``; see README.md here.
"""

import datasets
import evaluate
import torch

from hf_sparseout.metrics.functions import (
    DEFAULT_NEAR_ZERO_THRESHOLD,
    DEFAULT_RELATIVE_NEAR_ZERO,
    hoyer,
    l1_l2_ratio,
    mean_abs,
    near_zero_fraction,
    relative_near_zero_fraction,
    zero_fraction,
)

_DESCRIPTION = """
Activation sparsity of a set of activation vectors (one vector = the features of one token at
one site). Returns the mean over vectors of Hoyer's measure
(sqrt(n) - ||a||_1/||a||_2) / (sqrt(n) - 1) (1 = one-hot, 0 = constant; 1 for the zero vector
and for n = 1) and of the l1/l2 ratio, and, pooled over all elements, the fraction of exact
zeros, of near-zeros (|a| <= near_zero_threshold), of relative near-zeros
(|a| <= relative_near_zero_ratio * rms of the entry's own vector) and the mean |a|.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): activation vectors; each may have its own length.
    near_zero_threshold (float): |a| at or below it counts as near zero (default 1e-3).
    relative_near_zero_ratio (float): |a| at or below this times the vector's rms counts as
        relatively near zero (default 0.1; scale-free).
Returns:
    hoyer, l1_l2_ratio: means over vectors.
    zero_fraction, near_zero_fraction, relative_near_zero_fraction, mean_abs: pooled over all elements (the mean of the
        per-vector values when every vector has the same length).
    vectors, elements: how many were measured.
Examples:
    >>> metric = evaluate.load(hf_sparseout.metrics.evaluate_module_path())  # doctest: +SKIP
    >>> metric.compute(predictions=[[0.0, 3.0, 0.0, 0.0]])["hoyer"]  # doctest: +SKIP
    1.0
"""

_CITATION = """
@article{hoyer2004,
  title={Non-negative matrix factorization with sparseness constraints},
  author={Hoyer, Patrik O.}, journal={Journal of Machine Learning Research}, volume={5}, pages={1457--1469}, year={2004}
}
@inproceedings{khan2019sparseout,
  title={Sparseout: Controlling Sparsity in Deep Networks}, author={Khan, Najeeb and Stavness, Ian},
  booktitle={Canadian Conference on Artificial Intelligence}, year={2019}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ActivationSparsity(evaluate.Metric):
    """Hoyer sparsity, zero fractions and mean magnitude of activation vectors."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64"))}),
            reference_urls=["https://arxiv.org/abs/1904.08050"],
        )

    def _compute(
        self,
        predictions,
        near_zero_threshold=DEFAULT_NEAR_ZERO_THRESHOLD,
        relative_near_zero_ratio=DEFAULT_RELATIVE_NEAR_ZERO,
    ):
        sums = dict.fromkeys(("hoyer", "l1_l2_ratio", "zeros", "near_zeros", "relative", "l1"), 0.0)
        vectors = elements = 0
        by_length = {}
        for vector in predictions:
            by_length.setdefault(len(vector), []).append(vector)
        for n, group in by_length.items():
            if n == 0:
                continue
            x = torch.tensor(group, dtype=torch.float64)
            sums["hoyer"] += float(hoyer(x).sum())
            sums["l1_l2_ratio"] += float(l1_l2_ratio(x).sum())
            sums["zeros"] += float(zero_fraction(x).sum()) * n
            sums["near_zeros"] += float(near_zero_fraction(x, near_zero_threshold).sum()) * n
            sums["relative"] += float(relative_near_zero_fraction(x, relative_near_zero_ratio).sum()) * n
            sums["l1"] += float(mean_abs(x).sum()) * n
            vectors += len(group)
            elements += len(group) * n
        nan = float("nan")
        return {
            "hoyer": sums["hoyer"] / vectors if vectors else nan,
            "l1_l2_ratio": sums["l1_l2_ratio"] / vectors if vectors else nan,
            "zero_fraction": sums["zeros"] / elements if elements else nan,
            "near_zero_fraction": sums["near_zeros"] / elements if elements else nan,
            "relative_near_zero_fraction": sums["relative"] / elements if elements else nan,
            "mean_abs": sums["l1"] / elements if elements else nan,
            "vectors": vectors,
            "elements": elements,
        }
