"""Equivalent formulations of the seed's SkipConn, to measure which is fastest.

All share imgfit_batch.models.skipconn.SkipConn's parameters (in_layer, hidden.i,
out_layer, each weight's columns ordered [a_{i-1}, a_{i-2}, z]), so one state dict
loads into any of them, and all compute the contract's math:
  a0 = act(W_in z); a_i = act(W_i [a_{i-1}, a_{i-2}, z]); y = (tanh(W_out [a_n, a_{n-1}, z]) + 1) / 2

  cat         torch.cat([cur, prev, z]) into nn.Linear (the seed)
  split-wide  column blocks of each weight; every layer's z-block in one wide matmul up
              front, sliced per layer with zw[:, a:b] (imgfit_batch as of the merge)
  split-views the same, but the wide result and the weights are cut with
              torch.split (one SplitBackward that concatenates the gradients, instead
              of one full-size zero-filled gradient per slice)
  split-each  column blocks via torch.split; each layer's z-block its own addmm
              (no wide matmul); under bf16 autocast everything is rounded, the raw
              coordinates included (imgfit_batch as of 3f9cb37)
  fp32-z      split-each, but under autocast every layer's z-block is IEEE fp32 outside
              autocast, sums and activations fp32 (imgfit_batch from 71cb86c until the
              hi + lo coordinates of issue 23)
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODES = ("cat", "split-wide", "split-views", "split-each", "fp32-z")


class SkipConnVariant(nn.Module):
    def __init__(self, in_features: int, hidden_size: int, num_hidden_layers: int, out_features: int, mode: str):
        super().__init__()
        assert mode in MODES and num_hidden_layers > 0
        h = hidden_size
        self.mode, self.in_features, self.hidden_size = mode, in_features, hidden_size
        self.in_layer = nn.Linear(in_features, h)
        self.hidden = nn.ModuleList(
            nn.Linear(h + (h if i > 0 else 0) + in_features, h) for i in range(num_hidden_layers)
        )
        self.out_layer = nn.Linear(2 * h + in_features, out_features)
        self.act = nn.LeakyReLU()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return getattr(self, "_" + self.mode.replace("-", "_"))(z)

    def _cat(self, z):
        cur = self.act(self.in_layer(z))
        prev = z.new_empty((z.shape[0], 0))
        for layer in self.hidden:
            cur, prev = self.act(layer(torch.cat([cur, prev, z], 1))), cur
        return (torch.tanh(self.out_layer(torch.cat([cur, prev, z], 1))) + 1) / 2

    def _layers(self):
        return [*self.hidden, self.out_layer]

    def _split_wide(self, z):
        h, d = self.hidden_size, self.in_features
        layers = self._layers()
        w_z = torch.cat([layer.weight[:, -d:] for layer in layers], 0)
        b = torch.cat([layer.bias for layer in layers], 0)
        zw = torch.addmm(b, z, w_z.t())
        cur, prev, offset = self.act(self.in_layer(z)), None, 0
        for layer in layers:
            width = layer.out_features
            y = zw[:, offset : offset + width]
            offset += width
            y = torch.addmm(y, cur, layer.weight[:, :h].t())
            if prev is not None:
                y = torch.addmm(y, prev, layer.weight[:, h : 2 * h].t())
            if layer is self.out_layer:
                return (torch.tanh(y) + 1) / 2
            prev, cur = cur, self.act(y)

    def _blocks(self, layer):
        """(W_cur, W_prev or None, W_z) column blocks of a layer's weight, via one split."""
        h, d = self.hidden_size, self.in_features
        if layer.in_features == h + d:
            w_cur, w_z = layer.weight.split([h, d], 1)
            return w_cur, None, w_z
        return layer.weight.split([h, h, d], 1)

    def _split_views(self, z):
        layers = self._layers()
        blocks = [self._blocks(layer) for layer in layers]
        w_z = torch.cat([blk[2] for blk in blocks], 0)
        b = torch.cat([layer.bias for layer in layers], 0)
        zws = torch.addmm(b, z, w_z.t()).split([layer.out_features for layer in layers], 1)
        cur, prev = self.act(self.in_layer(z)), None
        for layer, (w_cur, w_prev, _), y in zip(layers, blocks, zws):
            y = torch.addmm(y, cur, w_cur.t())
            if w_prev is not None:
                y = torch.addmm(y, prev, w_prev.t())
            if layer is self.out_layer:
                return (torch.tanh(y) + 1) / 2
            prev, cur = cur, self.act(y)

    def _split_each(self, z):
        cur, prev = self.act(self.in_layer(z)), None
        for layer in self._layers():
            w_cur, w_prev, w_z = self._blocks(layer)
            y = torch.addmm(layer.bias, z, w_z.t())
            y = torch.addmm(y, cur, w_cur.t())
            if w_prev is not None:
                y = torch.addmm(y, prev, w_prev.t())
            if layer is self.out_layer:
                return (torch.tanh(y) + 1) / 2
            prev, cur = cur, self.act(y)

    def _fp32_z(self, z):
        if not torch.is_autocast_enabled(z.device.type):
            return self._split_each(z)
        with torch.autocast(z.device.type, enabled=False):
            cur = self.act(self.in_layer(z))
        prev = None
        for layer in self._layers():
            w_cur, w_prev, w_z = self._blocks(layer)
            with torch.autocast(z.device.type, enabled=False):
                y = torch.addmm(layer.bias, z, w_z.t())
            y = y + torch.mm(cur, w_cur.t())
            if w_prev is not None:
                y = y + torch.mm(prev, w_prev.t())
            if layer is self.out_layer:
                return (torch.tanh(y.float()) + 1) / 2
            prev, cur = cur, self.act(y)


class FourierVariant(nn.Module):
    """imgfit_batch's Fourier (same features, same parameter names) over a SkipConn variant."""

    def __init__(self, fourier_order, hidden_size, num_hidden_layers, out_features, mode):
        super().__init__()
        self.register_buffer("orders", torch.arange(1, fourier_order + 1, dtype=torch.float32), persistent=False)
        self.net = SkipConnVariant(4 * fourier_order + 2, hidden_size, num_hidden_layers, out_features, mode)

    def forward(self, xy):
        u = (xy * math.pi).unsqueeze(-1)  # (N, 2, 1)
        ku = u * self.orders  # (N, 2, K)
        return self.net(torch.cat([torch.sin(ku), torch.cos(ku), u], dim=-1).flatten(1))


def check_equivalent(
    fourier_order: int = 4, hidden_size: int = 16, num_hidden_layers: int = 3, batch: int = 256
) -> float:
    """Every mode, loaded with imgfit_batch's Fourier's weights, gives its outputs and
    gradients (fp32); returns the largest difference seen, raises if one is off."""
    from imgfit_batch.models.skipconn import Fourier

    torch.manual_seed(0)
    ours = Fourier(fourier_order, hidden_size, num_hidden_layers, 3)
    xy = torch.rand(batch, 2) * 2 - 1
    ours(xy).square().mean().backward()
    want = torch.cat([p.grad.reshape(-1) for p in ours.parameters()])
    worst = 0.0
    for mode in MODES:
        variant = FourierVariant(fourier_order, hidden_size, num_hidden_layers, 3, mode)
        variant.load_state_dict(ours.state_dict())
        out = variant(xy)
        out.square().mean().backward()
        got = torch.cat([p.grad.reshape(-1) for p in variant.parameters()])
        with torch.no_grad():
            diff = max(float((out - ours(xy)).abs().max()), float((got - want).norm() / want.norm()))
        if diff > 1e-4:
            raise AssertionError(f"{mode}: differs from imgfit_batch's Fourier by {diff:.2e}")
        worst = max(worst, diff)
    return worst


if __name__ == "__main__":
    # python benchmarks/skipconn_variants.py [--smoke]: the equivalence check, on tiny sizes (seconds)
    print(f"all {len(MODES)} modes match imgfit_batch's Fourier: worst difference {check_equivalent():.1e}")
