"""The seed's Fourier model, written the seed's way (torch.cat in every SkipConn layer).

Used by seed_reference.py and by the micro-benchmarks that compare it with
imgfit_batch.models.seed (split weights, no concatenations). Parameters are laid out
like the seed's (inLayer, hidden.i, outLayer); `to_imgfit_state_dict` renames them
for imgfit_batch's Fourier, whose weight column blocks are in the same order.
"""

import torch
from torch import nn


class CenteredLinearMap:
    """Linear map of a box onto a box of the given size, centred on 0."""

    def __init__(self, xmin=-1.0, xmax=1.0, ymin=-1.0, ymax=1.0, x_size=None, y_size=None):
        x_m = x_size / (xmax - xmin) if x_size is not None else 1.0
        y_m = y_size / (ymax - ymin) if y_size is not None else 1.0
        self.m = torch.tensor([x_m, y_m], dtype=torch.float)
        self.b = torch.tensor([-(xmin + xmax) * x_m / 2, -(ymin + ymax) * y_m / 2], dtype=torch.float)

    def map(self, xy):
        return self.m.to(xy.device) * xy + self.b.to(xy.device)


class SkipConn(nn.Module):
    def __init__(self, hidden_size, num_hidden_layers, init_size):
        super().__init__()
        self.inLayer = nn.Linear(init_size, hidden_size)
        self.hidden = nn.ModuleList(
            nn.Linear(hidden_size * 2 + init_size if i > 0 else hidden_size + init_size, hidden_size)
            for i in range(num_hidden_layers)
        )
        self.outLayer = nn.Linear(hidden_size * 2 + init_size, 1)
        self.activation = nn.LeakyReLU()

    def forward(self, z):
        cur = self.activation(self.inLayer(z))
        prev = z.new_empty((z.shape[0], 0))
        for layer in self.hidden:
            combined = torch.cat([cur, prev, z], 1)
            prev = cur
            cur = self.activation(layer(combined))
        y = self.outLayer(torch.cat([cur, prev, z], 1))
        return (torch.tanh(y) + 1) / 2


class Fourier(nn.Module):
    def __init__(self, fourier_order, hidden_size, num_hidden_layers, linmap):
        super().__init__()
        self.inner_model = SkipConn(hidden_size, num_hidden_layers, fourier_order * 4 + 2)
        self._linmap = linmap
        self.register_buffer("orders", torch.arange(1, fourier_order + 1).float())

    def forward(self, xy):
        xy = self._linmap.map(xy).unsqueeze(-1)  # (N, 2, 1)
        features = torch.cat([torch.sin(self.orders * xy), torch.cos(self.orders * xy), xy], dim=-1)
        return self.inner_model(features.view(xy.shape[0], -1))


def to_imgfit_state_dict(seed_fourier: Fourier) -> dict:
    """The same weights under imgfit_batch.models.seed.Fourier's names."""
    out = {}
    for name, value in seed_fourier.inner_model.state_dict().items():
        name = name.replace("inLayer", "in_layer").replace("outLayer", "out_layer")
        out["net." + name] = value
    return out
