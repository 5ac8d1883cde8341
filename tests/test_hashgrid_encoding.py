"""The hash grid encoding against a plain reference: values and gradients, square and
aspect-aware levels, dense and hashed levels, image borders; and bitwise determinism."""

from __future__ import annotations

import math

import pytest
import torch

from imgfit_batch.models.hashgrid import HashGridConfig, HashGridEncoding, level_shapes

PRIME = 2654435761


def reference_levels(enc: HashGridEncoding, xy: torch.Tensor) -> list[torch.Tensor]:
    """Each level's (N, F) features, written plainly from the documented layout: level l has
    rx x ry cells over [-1, 1]^2 (x along width); a point's features are the bilinear blend
    of its cell's 4 corners; a point on the far edge belongs to the last cell; a dense level
    stores vertex (i, j) at [j, i] of level_table(l), a hashed one at (i ^ j*PRIME) mod 2^T."""
    out = []
    u = (xy.double().clamp(-1, 1) + 1) / 2
    for level, (rx, ry) in enumerate(enc.level_shapes):
        table = enc.level_table(level)
        px, py = u[:, 0] * rx, u[:, 1] * ry
        ix = torch.minimum(px.floor(), torch.tensor(rx - 1.0)).long()
        iy = torch.minimum(py.floor(), torch.tensor(ry - 1.0)).long()
        fx, fy = (px - ix).float(), (py - iy).float()
        total = 0
        for dx, dy in [(0, 0), (1, 0), (0, 1), (1, 1)]:
            i, j = ix + dx, iy + dy
            if level in enc.dense_levels:
                feats = table[j, i]
            else:
                feats = table[(i ^ (j * PRIME)) & (enc.table_size - 1)]
            w = (fx if dx else 1 - fx) * (fy if dy else 1 - fy)
            total = total + w.unsqueeze(1) * feats
        out.append(total)
    return out


def points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * 2 - 1
    border = torch.tensor(
        [[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 0.3], [-0.2, 1.0], [-1.0, 0.7], [0.5, -1.0]]
    )
    edges = torch.rand(64, 2, generator=g) * 2 - 1
    edges[:32, 0] = torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0)
    edges[32:, 1] = torch.where(torch.arange(32) % 2 == 0, 1.0, -1.0)
    return torch.cat([border, edges, xy])


def randomized(enc: HashGridEncoding) -> HashGridEncoding:
    torch.manual_seed(3)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_(torch.randn_like(p))
    return enc


@pytest.mark.parametrize("width, height", [(None, None), (300, 120), (90, 256)])
@pytest.mark.parametrize("summed", [True, False])
def test_values_and_gradients_match_the_plain_reference(width, height, summed):
    # T = 10: levels up to 31 cells wide are dense, finer ones hashed
    enc = randomized(
        HashGridEncoding(
            num_levels=5,
            features_per_level=3,
            log2_hashmap_size=10,
            base_resolution=5,
            finest_resolution=160,
            width=width,
            height=height,
        )
    )
    assert enc.dense_levels and enc.hashed_levels
    if width is not None:
        assert all(rx != ry for rx, ry in enc.level_shapes[1:])
    xy = points(3000, seed=1)
    got = enc.forward_sum(xy) if summed else enc(xy)
    ref_levels = reference_levels(enc, xy)
    ref = torch.stack(ref_levels).sum(0) if summed else torch.cat(ref_levels, 1)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)  # float32 vs float64 positions

    upstream = torch.randn(got.shape, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad((got * upstream).sum(), list(enc.parameters()))
    ref_grads = torch.autograd.grad((ref * upstream).sum(), list(enc.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_levels_follow_the_images_aspect_on_its_longer_side():
    assert level_shapes([16, 100], 6000, 3376) == [(16, 9), (100, 56)]
    assert level_shapes([16, 100], 3376, 6000) == [(9, 16), (56, 100)]
    assert level_shapes([4], 1000, 10) == [(4, 1)]  # never fewer than one cell
    assert level_shapes([16], None, None) == [(16, 16)]
    model = HashGridConfig(
        kind="hashgrid", num_levels=3, base_resolution=8, finest_resolution=64, log2_hashmap_size=10
    ).build(3, width=200, height=100)
    assert model.encoding.level_shapes == [(8, 4), (23, 12), (64, 32)]
    assert model.encoding.level_table(0).shape == (5, 9, 3)  # (ry+1, rx+1, F)


def test_hashed_rows_use_the_low_bits_of_the_exact_hash_for_large_coordinates():
    # cell rows up to ~2^20: j * PRIME overflows 32 bits; int32 wrapping must keep the low T bits
    enc = randomized(
        HashGridEncoding(
            num_levels=1, features_per_level=1, log2_hashmap_size=12, base_resolution=1 << 20, finest_resolution=1 << 20
        )
    )
    xy = points(500, seed=4)
    index, _ = enc.hashed_corners(xy)
    u = (xy.double() + 1) / 2 * (1 << 20)
    i = torch.minimum(u[:, 0].floor(), torch.tensor(2.0**20 - 1)).long()
    j = torch.minimum(u[:, 1].floor(), torch.tensor(2.0**20 - 1)).long()
    expected = [((i + dx) ^ ((j + dy) * PRIME)) & 4095 for dx, dy in [(0, 0), (0, 1), (1, 0), (1, 1)]]
    assert torch.equal(index[0].long(), torch.stack(expected, 1))


def train(width: int, height: int, steps: int, threads: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = HashGridConfig(
        kind="hashgrid", num_levels=6, base_resolution=4, finest_resolution=200, log2_hashmap_size=12
    ).build(3, width=width, height=height)
    assert model.encoding.hashed_levels
    opt = torch.optim.Adam(model.parameters(), lr=0.01, betas=(0.9, 0.99), eps=1e-15)
    g = torch.Generator().manual_seed(5)
    i = torch.arange(width * height)
    xy = torch.stack([(i % width) / (width / 2) - 1, (height - i // width) / (height / 2) - 1], 1).float()
    target = torch.rand(width * height, 3, generator=g)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for _ in range(steps):
            batch = torch.randperm(width * height, generator=g)[:4096]
            loss = torch.nn.functional.mse_loss(model(xy[batch]), target[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(previous)
    return [p.detach().clone() for p in model.parameters()]


def test_two_identical_trainings_give_bitwise_equal_weights():
    a = train(200, 120, steps=8)
    b = train(200, 120, steps=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], train(200, 120, steps=7)[0])  # the steps did change the weights


def test_training_batch_order_does_not_change_the_loss():
    # a training batch is processed sorted by position; the caller still gets its own order
    model = randomized(
        HashGridConfig(
            kind="hashgrid", num_levels=4, base_resolution=4, finest_resolution=64, log2_hashmap_size=10
        ).build(3, width=64, height=40)
    )
    xy = points(2000, seed=6)
    with torch.no_grad():
        plain = model(xy)  # no sorting without autograd
    trained = model(xy)
    torch.testing.assert_close(trained.detach(), plain, atol=1e-6, rtol=0)
    assert math.isfinite(float(trained.detach().sum()))
