"""The stacked network computes what M separate ConvNets compute.

Truths: the separate ConvNets themselves, trained with torch.optim.SGD on the same batches
(a step of the stack is M separate steps), and their eval-mode logits. The float64
comparisons isolate the stacking from float32 rounding: there the two agree to ~1e-12.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from nasproxy.errors import NasproxyError
from nasproxy.models import build_model
from nasproxy.multitrain.lockstep import sgd_step_
from nasproxy.multitrain.stacked import StackedConvNet
from nasproxy.spaces import ACTIVATIONS, NORMS, POOLINGS, Arch
from nasproxy.train import init_model

CPU = torch.device("cpu")
StateDiff = Callable[[torch.nn.Module, torch.nn.Module], float]


@pytest.mark.parametrize("norm", NORMS)
def test_stack_and_unstack_round_trip(norm: str, state_diff: StateDiff) -> None:
    arch = Arch(8, 2, "relu", norm, "avgpooling")
    singles = [init_model(arch, _FakeData(), s, CPU) for s in (3, 4)]  # type: ignore[arg-type]
    back = StackedConvNet.from_models(singles, 8).to_models()
    for a, b in zip(singles, back, strict=True):
        assert state_diff(a, b) == 0.0


class _FakeData:
    """The three shape fields init_model reads."""

    in_channels, num_classes, image_size = 3, 5, 8


def _step_both(
    arch: Arch, m: int = 3, steps: int = 3, b: int = 6, size: int = 8, acts: tuple = ()
) -> tuple:
    """Separate ConvNets with torch's SGD vs one stack with sgd_step_, on fixed batches
    (model i with activation ``acts[i]`` when given)."""
    torch.manual_seed(0)
    archs = [replace(arch, act=act) for act in acts] if acts else [arch] * m
    singles = [build_model(a, 3, 5, size) for a in archs]
    stack = StackedConvNet.from_models(singles, size)
    xs = torch.randn(steps, m, b, 3, size, size)
    ys = torch.randint(0, 5, (steps, m, b))
    opts = [
        torch.optim.SGD(s.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4) for s in singles
    ]
    params = list(stack.parameters())
    momenta = [torch.zeros_like(p) for p in params]
    for t in range(steps):
        for s, opt, x, y in zip(singles, opts, xs[t], ys[t], strict=True):
            opt.zero_grad()
            F.cross_entropy(s(x), y).backward()
            opt.step()
        logits = stack(xs[t].transpose(0, 1).reshape(b, m * 3, size, size))
        for p in params:
            p.grad = None
        losses = F.cross_entropy(logits.flatten(0, 1), ys[t].flatten(), reduction="none")
        losses.view(m, b).mean(1).sum().backward()
        sgd_step_(params, [p.grad for p in params], momenta, 0.1, 0.9, 5e-4)
    return singles, stack


STEP_CASES = [
    Arch(8, 2, ACTIVATIONS[i % 3], norm, pool)
    for i, (norm, pool) in enumerate((n, p) for n in NORMS for p in POOLINGS)
] + [Arch(8, 2, act, "groupnorm", "maxpooling") for act in ACTIVATIONS]


@pytest.mark.parametrize("arch", STEP_CASES, ids=str)
def test_stacked_steps_equal_separate_steps(
    arch: Arch, float64: None, state_diff: StateDiff
) -> None:
    singles, stack = _step_both(arch)
    for single, back in zip(singles, stack.to_models(), strict=True):
        assert state_diff(single, back) < 1e-12  # weights, biases, running stats
    # eval mode (batch norm on running statistics) agrees as well
    x = torch.randn(4, 3, 8, 8)
    stack.eval()
    logits = stack(x.repeat(1, 3, 1, 1))
    for i, single in enumerate(singles):
        single.eval()
        torch.testing.assert_close(logits[i], single(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "acts", [("relu", "relu", "sigmoid", "leakyrelu"), ("sigmoid", "relu", "sigmoid", "relu")]
)
@pytest.mark.parametrize("norm", ["batchnorm", "layernorm", "groupnorm"])
def test_a_stack_may_mix_activations(
    norm: str, acts: tuple, float64: None, state_diff: StateDiff
) -> None:
    """One shape, an activation a model (runs of one or several models): still separate
    models' SGD steps, in train and eval mode."""
    arch = Arch(8, 2, "relu", norm, "maxpooling")
    singles, stack = _step_both(arch, m=len(acts), acts=acts)
    assert [a.act for a in stack.archs] == list(acts)
    for single, back in zip(singles, stack.to_models(), strict=True):
        assert back.arch == single.arch and state_diff(single, back) < 1e-12
    x = torch.randn(4, 3, 8, 8)
    stack.eval()
    logits = stack(x.repeat(1, len(acts), 1, 1))
    for i, single in enumerate(singles):
        single.eval()
        torch.testing.assert_close(logits[i], single(x), rtol=0, atol=1e-12)
    with pytest.raises(NasproxyError, match="width, depth, norm and pooling"):
        StackedConvNet.from_models([singles[0], build_model(replace(arch, width=16), 3, 5, 8)], 8)
