"""A model that reseeds the global generator in its training forward (Reformer's reversible layers call
``torch.seed()`` then ``torch.manual_seed``): ``inspect``/``patch``/``verify`` leave the global RNG as it was."""

from __future__ import annotations

import torch
from torch import nn

import hf_sparseout
from hf_sparseout import SparseoutConfig


class _Reseeding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x):
        if self.training:
            torch.manual_seed(int(torch.seed() % 2**31))  # as Reformer's _init_attention_seed
        return self.dropout(self.linear(x))


def test_a_forward_that_reseeds_the_global_generator_leaves_it_as_it_was():
    model = _Reseeding().eval()
    inputs = torch.ones(2, 4)
    torch.manual_seed(7)
    torch.rand(3)
    seed, state = torch.initial_seed(), torch.get_rng_state()
    hf_sparseout.inspect(model, example_inputs=inputs)
    hf_sparseout.verify(model, inputs)
    hf_sparseout.patch(model, SparseoutConfig(q=1.5), example_inputs=inputs)
    assert torch.initial_seed() == seed
    assert torch.equal(torch.get_rng_state(), state)
    assert hf_sparseout.verify(model, inputs).ok
