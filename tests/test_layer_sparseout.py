"""The ``hf_sparseout.Sparseout`` module: attributes, repr, train/eval, in-place, argument checks."""

from __future__ import annotations

import copy
import pickle
import re

import pytest
import torch
from sparseout_oracle import mask_for, out64
from torch import nn

import hf_sparseout
from hf_sparseout import Sparseout

SEED = 2024


@pytest.mark.parametrize(
    ("p", "q", "inplace", "gradient"),
    [(0.1, 1.5, False, "reference"), (0.5, 2.0, True, "exact"), (0, 3, False, "exact"), (1.0, 0.5, True, "reference")],
)
def test_attributes_and_repr(p: float, q: float, inplace: bool, gradient: str) -> None:
    layer = Sparseout(p=p, q=q, inplace=inplace, gradient=gradient)
    assert (layer.p, layer.q, layer.inplace, layer.gradient) == (p, q, inplace, gradient)
    text = repr(layer)
    assert text.startswith("Sparseout(")
    for part in (f"p={float(p)!r}", f"q={float(q)!r}", f"inplace={inplace}", f"gradient={gradient!r}"):
        assert part in text, (part, text)
    # a module holding it shows the same line
    assert f"(0): {text}" in repr(nn.Sequential(layer))


def test_defaults_match_dropout_and_hold_no_state() -> None:
    layer = Sparseout()
    assert layer.p == nn.Dropout().p == 0.5
    assert layer.q == 2.0 and layer.inplace is False and layer.gradient == "reference"
    assert layer.training
    assert len(layer.state_dict()) == 0 and not list(layer.parameters())


@pytest.mark.parametrize("q", [0.5, 2.0, 3.0])
def test_eval_is_identity_and_train_is_not(q: float) -> None:
    layer = Sparseout(p=0.5, q=q, inplace=True)
    x = torch.randn(32, 16)
    before = x.clone()
    layer.eval()
    assert layer(x) is x and torch.equal(x, before)
    layer.train()
    y = layer(x.clone())
    assert not torch.equal(y, before)


@pytest.mark.parametrize("q", [0.5, 1.5, 3.0])
@pytest.mark.parametrize("gradient", ["reference", "exact"])
def test_train_forward_equals_functional_and_formula(q: float, gradient: str) -> None:
    x = torch.randn(16, 32, dtype=torch.float64)
    layer = Sparseout(p=0.3, q=q, gradient=gradient)
    torch.manual_seed(SEED)
    y = layer(x)
    torch.manual_seed(SEED)
    assert torch.equal(y, hf_sparseout.sparseout(x, p=0.3, q=q, gradient=gradient))
    torch.testing.assert_close(y, out64(x, mask_for(x, 0.3, SEED), 0.3, q), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_q2_module_is_bitwise_nn_dropout(dtype: torch.dtype) -> None:
    x = torch.randn(64, 64).to(dtype)
    torch.manual_seed(SEED)
    y = Sparseout(p=0.2, q=2.0)(x)
    torch.manual_seed(SEED)
    assert torch.equal(y, nn.Dropout(p=0.2)(x))


def test_attributes_are_live() -> None:
    """``.p``/``.q`` are plain attributes read at every call (transformers sets and reads ``module.p``)."""
    layer = Sparseout(p=0.5, q=1.5)
    x = torch.randn(128)
    layer.p = 0.0
    assert layer(x) is x
    layer.p, layer.q = 0.4, 3.0
    torch.manual_seed(SEED)
    y = layer(x)
    torch.testing.assert_close(y.double(), out64(x, mask_for(x, 0.4, SEED), 0.4, 3.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("q", [0.5, 2.0, 3.0])
@pytest.mark.parametrize("gradient", ["reference", "exact"])
def test_inplace_on_non_leaf_modifies_input_and_keeps_gradients(dtype: torch.dtype, q: float, gradient: str) -> None:
    a = torch.randn(8, 64, dtype=dtype, requires_grad=True)
    w = torch.randn(8, 64, dtype=dtype)

    def run(inplace: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.tanh(a) * 3.0  # non-leaf whose own backward (tanh) needs its saved output, not x
        torch.manual_seed(SEED)
        y = Sparseout(p=0.4, q=q, inplace=inplace, gradient=gradient)(x)
        (y * w).sum().backward()
        grad = a.grad.clone()
        a.grad = None
        return x, y, grad

    x_ref, y_ref, grad_ref = run(inplace=False)
    x_in, y_in, grad_in = run(inplace=True)
    assert y_in is x_in, "inplace=True should return its input"
    assert torch.equal(x_in, y_ref), "the input tensor was not overwritten with the result"
    assert not torch.equal(x_ref, y_ref)  # (the non-inplace run left its input alone)
    assert torch.equal(grad_in, grad_ref)


def test_inplace_on_leaf_requiring_grad_is_refused() -> None:
    x = torch.randn(16, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        Sparseout(p=0.3, q=1.5, inplace=True)(x)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"p": -0.5}, "p=-0.5"),
        ({"p": 1.01}, "p=1.01"),
        ({"p": float("nan")}, "p=nan"),
        ({"q": -2.0}, "q=-2.0"),
        ({"q": float("inf")}, "q=inf"),
        ({"q": float("nan")}, "q=nan"),
        ({"gradient": "straight-through"}, "gradient='straight-through'"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs: dict, shown: str) -> None:
    with pytest.raises(ValueError, match=re.escape(shown)):
        Sparseout(**kwargs)


def test_non_floating_input_raises_type_error() -> None:
    with pytest.raises(TypeError, match="floating"):
        Sparseout(p=0.1, q=1.5)(torch.arange(6))


def test_copy_and_pickle_keep_settings() -> None:
    layer = Sparseout(p=0.2, q=0.75, inplace=True, gradient="exact").eval()
    for other in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
        assert (other.p, other.q, other.inplace, other.gradient, other.training) == (0.2, 0.75, True, "exact", False)
        assert repr(other) == repr(layer)
