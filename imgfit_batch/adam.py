"""Adam for the CPU job, without torch.optim's start-up cost.

`torch.optim.Optimizer` imports `torch._dynamo` (and with it sympy, torch.fx and
torch.distributed) the first time any of its methods runs: `add_param_group` in its
constructor, and `step`. That is 0.9 s of every CPU job's start-up (issue 23), for a
compiler the CPU job never uses. `FusedAdam` is the same update through the same kernel
`torch.optim.Adam(fused=True)` runs on the CPU (`torch._fused_adam_`, after the same
step count increment), so it is bit for bit that optimizer (tests/test_parts.py). Its
`state_dict` is torch's format, so a checkpoint moves between it and `torch.optim.Adam`
(the CUDA path, where the graphed step needs torch's capturable Adam) either way.

What the job uses of an optimizer is all there is: `param_groups` (the schedule sets
"lr"), `state`, `zero_grad(set_to_none=True)`, `step()`, `state_dict()`,
`load_state_dict()`. No weight decay, amsgrad or maximize: the spec has none.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

# the group entries torch.optim.Adam(fused=True) writes, with its values for what the spec does not set
_GROUP_DEFAULTS: dict[str, Any] = {
    "weight_decay": 0,
    "amsgrad": False,
    "maximize": False,
    "foreach": None,
    "capturable": False,
    "differentiable": False,
    "fused": True,
    "decoupled_weight_decay": False,
}


def available() -> bool:
    """The fused kernel is there (torch 2.4 and later run it on the CPU)."""
    return hasattr(torch, "_fused_adam_")


class FusedAdam:
    """torch.optim.Adam(params, lr, betas, eps, fused=True), on the CPU, without torch.optim."""

    def __init__(
        self, params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps=1e-8
    ):
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, **_GROUP_DEFAULTS}
        self.param_groups: list[dict[str, Any]] = [{**self.defaults, "params": list(params)}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            raise ValueError("FusedAdam.zero_grad: only set_to_none=True (the job's)")
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            by_kind: dict[tuple, tuple[list[torch.Tensor], ...]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state.get(p)
                if not state:  # as torch's _init_group: a float32 step on the parameter's device, zero moments
                    state = self.state[p] = {
                        "step": torch.tensor(0.0, dtype=torch.float32, device=p.device),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                lists = by_kind.setdefault((p.device, p.dtype), ([], [], [], [], []))
                for column, value in zip(lists, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                    column.append(value)
            beta1, beta2 = group["betas"]
            for params, grads, exp_avgs, exp_avg_sqs, steps in by_kind.values():
                torch._foreach_add_(steps, 1)
                torch._fused_adam_(
                    params,
                    grads,
                    exp_avgs,
                    exp_avg_sqs,
                    [],
                    steps,
                    amsgrad=False,
                    lr=group["lr"],
                    beta1=beta1,
                    beta2=beta2,
                    weight_decay=group["weight_decay"],
                    eps=group["eps"],
                    maximize=False,
                    grad_scale=None,
                    found_inf=None,
                )

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's format: parameters by their index across the groups."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        return {"state": {index[id(p)]: state for p, state in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """A state_dict of this class or of torch.optim.Adam, cast as torch casts it for a fused Adam."""
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
            len(g["params"]) != len(s["params"]) for g, s in zip(self.param_groups, saved)
        ):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        params = {i: p for g, s in zip(self.param_groups, saved) for i, p in zip(s["params"], g["params"])}
        self.state = {}
        for i, values in state_dict["state"].items():
            p = params[i]
            self.state[p] = {
                name: value.to(dtype=torch.float32 if name == "step" else p.dtype, device=p.device)
                for name, value in values.items()
            }
        for group, s in zip(self.param_groups, saved):
            group.update({k: v for k, v in s.items() if k != "params"})
