"""The seed's algorithm written out plainly from the contract ("The seed's model,
exactly"), independent of the package: the golden tests hold the real job against it.

Nothing here imports imgfit_batch. It is deliberately the slow, obvious version:
torch.cat for every SkipConn concatenation, a Python loop over Fourier orders.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def pixel_coords(index: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Row-major pixel index -> (x, y): x = c/(W/2) - 1, y = (H - r)/(H/2) - 1."""
    r = index // width
    c = index % width
    x = c.float() / (width / 2) - 1
    y = (height - r).float() / (height / 2) - 1
    return torch.stack([x, y], dim=1)


def fourier_features(xy: torch.Tensor, order: int) -> torch.Tensor:
    """[-1, 1] -> [-pi, pi], then per coordinate u (x first, then y):
    sin(1u) .. sin(Ku), cos(1u) .. cos(Ku), u."""
    columns = []
    for j in range(2):
        u = xy[:, j] * math.pi
        columns += [torch.sin(k * u) for k in range(1, order + 1)]
        columns += [torch.cos(k * u) for k in range(1, order + 1)]
        columns.append(u)
    return torch.stack(columns, dim=1)


class PlainSkipConn(nn.Module):
    """a0 = act(W_in z); a_i = act(W_i cat(a_{i-1}, a_{i-2}, z)) (a_{i-2} absent for the
    first hidden layer); y = (tanh(W_out cat(a_n, a_{n-1}, z)) + 1) / 2."""

    def __init__(self, in_features: int, hidden: int, layers: int, out_features: int):
        super().__init__()
        # creation order = the order torch's RNG initialises them in
        self.in_layer = nn.Linear(in_features, hidden)
        self.hidden = nn.ModuleList(
            [nn.Linear(hidden + in_features if i == 0 else 2 * hidden + in_features, hidden) for i in range(layers)]
        )
        self.out_layer = nn.Linear((2 * hidden if layers else hidden) + in_features, out_features)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        act = nn.functional.leaky_relu
        a = [act(self.in_layer(z))]
        for layer in self.hidden:
            previous = a[-2:][::-1]  # a_{i-1}, then a_{i-2} when there is one
            a.append(act(layer(torch.cat([*previous, z], dim=1))))
        return (torch.tanh(self.out_layer(torch.cat([*a[-2:][::-1], z], dim=1))) + 1) / 2


class PlainModel(nn.Module):
    """`fourier`: features of order K into the SkipConn; `skipconn`: the SkipConn on
    the coordinates mapped to [-pi, pi]."""

    def __init__(self, kind: str, hidden: int, layers: int, order: int, out_features: int):
        super().__init__()
        self.kind, self.order = kind, order
        width = 4 * order + 2 if kind == "fourier" else 2
        self.net = PlainSkipConn(width, hidden, layers, out_features)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        z = fourier_features(xy, self.order) if self.kind == "fourier" else xy * math.pi
        return self.net(z)


def load_plain_model(model_pt: dict) -> PlainModel:
    """A PlainModel holding the weights of a job's model.pt (seed kinds only). The
    parameters are matched by order, which is the order the layers were created in."""
    cfg = model_pt["model"]
    state = model_pt["state_dict"]
    out_features = 1 if model_pt["color"] == "gray" else 3
    model = PlainModel(
        cfg["kind"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg.get("fourier_order", 0), out_features
    )
    params = list(model.parameters())
    tensors = list(state.values())
    assert [tuple(p.shape) for p in params] == [tuple(t.shape) for t in tensors], "model.pt's layers"
    with torch.no_grad():
        for p, t in zip(params, tensors):
            p.copy_(t)
    return model


def plain_render(model: nn.Module, width: int, height: int) -> torch.Tensor:
    """The field at width x height, (H, W, C) uint8, rounded as an 8-bit PNG holds it."""
    with torch.no_grad():
        y = model(pixel_coords(torch.arange(width * height), width, height))
    return (y.clamp(0, 1) * 255).round().to(torch.uint8).view(height, width, -1)


def plain_train(
    kind: str,
    target: torch.Tensor,
    width: int,
    height: int,
    *,
    hidden: int,
    layers: int,
    order: int,
    epochs: int,
    batch_size: int,
    lr: float,
    lr_step_epochs: int,
    lr_gamma: float,
    grad_clip: float,
    seed: int,
):
    """The seed's training: returns (model, [(loss, lr) per step]). target: (N, C) uint8."""
    torch.manual_seed(seed)
    model = PlainModel(kind, hidden, layers, order, target.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_step_epochs, gamma=lr_gamma)
    order_generator = torch.Generator()
    order_generator.manual_seed(seed)
    n = width * height
    log = []
    for _ in range(epochs):
        permutation = torch.randperm(n, generator=order_generator)
        for start in range(0, n, batch_size):
            index = permutation[start : start + batch_size]
            prediction = model(pixel_coords(index, width, height))
            loss = nn.functional.mse_loss(prediction, target[index].float() / 255)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            log.append((loss.item(), optimizer.param_groups[0]["lr"]))
            optimizer.step()
        schedule.step()
    return model, log
