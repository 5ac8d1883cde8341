"""The hashgrid and siren kinds: what they compute, how they learn, how they are configured."""

from __future__ import annotations

import io
import math

import pytest
import torch

from imgfit_batch.errors import SpecError
from imgfit_batch.models.hashgrid import (
    HashGridConfig,
    HashGridEncoding,
    clamp_unit_straight_through,
    level_resolutions,
)
from imgfit_batch.models.siren import SirenConfig
from imgfit_batch.specfile import parse_spec


def pixel_coords(height: int, width: int) -> torch.Tensor:
    i = torch.arange(height * width)
    r, c = i // width, i % width
    return torch.stack([c / (width / 2) - 1, (height - r) / (height / 2) - 1], 1).float()


def smooth_image(height: int, width: int, channels: int) -> torch.Tensor:
    xy = pixel_coords(height, width)
    cols = [0.5 + 0.4 * torch.sin(3 * xy[:, 0] + k) * torch.cos(5 * xy[:, 1] - k) for k in range(channels)]
    return torch.stack(cols, 1)  # (N, C) in [0.1, 0.9]


def fit(
    model: torch.nn.Module,
    xy: torch.Tensor,
    target: torch.Tensor,
    steps: int,
    lr: float,
    betas=(0.9, 0.999),
    eps=1e-8,
    gamma: float = 1.0,
) -> float:
    """Full-batch Adam with the lr multiplied by gamma after every step; the final MSE."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=eps)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=gamma)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(xy), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(xy), target))


def tiny_hashgrid(**overrides) -> HashGridConfig:
    fields = dict(kind="hashgrid", num_levels=4, base_resolution=4, finest_resolution=32, log2_hashmap_size=10)
    return HashGridConfig(**{**fields, **overrides})


# ---------------------------------------------------------------- hashgrid


def test_level_resolutions_grow_geometrically_from_base_to_finest():
    res = level_resolutions(8, 16, 512)
    assert res[0] == 16 and res[-1] == 512
    assert all(b > a for a, b in zip(res, res[1:]))
    ratios = [b / a for a, b in zip(res, res[1:])]
    assert max(ratios) / min(ratios) < 1.1


def test_coarse_levels_are_dense_and_fine_levels_hashed_by_table_size():
    enc = HashGridEncoding(
        num_levels=6, features_per_level=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=128
    )
    for level, res in enumerate(enc.resolutions):
        assert (level in enc.dense_levels) == ((res + 1) ** 2 <= 1 << 10)
    assert enc.dense_levels and enc.hashed_levels


def test_hashed_rows_stay_inside_their_own_level_table():
    enc = HashGridEncoding(
        num_levels=6, features_per_level=2, log2_hashmap_size=10, base_resolution=4, finest_resolution=128
    )
    corners = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [1.5, -3.0]])
    xy = torch.cat([corners, torch.rand(5000, 2) * 2 - 1])
    rows, weights = enc.hashed_corners(xy)  # (Lh, N, 4): level-major since the hashgrid-fast rewrite
    for j in range(len(enc.hashed_levels)):
        level_rows = rows[j]
        assert int(level_rows.min()) >= j * enc.table_size
        assert int(level_rows.max()) < (j + 1) * enc.table_size
    assert torch.allclose(weights.sum(-1), torch.ones_like(weights[..., 0]))
    assert float(weights.min()) >= 0


def test_hashed_lookup_blends_the_four_corner_rows_bilinearly():
    enc = HashGridEncoding(
        num_levels=1, features_per_level=1, log2_hashmap_size=8, base_resolution=40, finest_resolution=40
    )
    assert enc.hashed_levels == [0]
    with torch.no_grad():
        enc.hashed.copy_(torch.randn_like(enc.hashed))
    xy = torch.rand(64, 2) * 2 - 1
    got = enc(xy)[:, 0]
    res = 40
    expected = []
    for x, y in xy.tolist():
        px, py = (x + 1) / 2 * res, (y + 1) / 2 * res
        ix, iy = min(math.floor(px), res - 1), min(math.floor(py), res - 1)
        fx, fy = px - ix, py - iy
        value = 0.0
        for dx, dy, w in [(0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)]:
            row = ((ix + dx) ^ ((iy + dy) * 2654435761)) & 255
            value += w * float(enc.hashed[row, 0].detach())
        expected.append(value)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)


def test_dense_level_returns_vertex_values_at_vertex_coordinates():
    enc = HashGridEncoding(
        num_levels=1, features_per_level=1, log2_hashmap_size=12, base_resolution=8, finest_resolution=8
    )
    assert enc.dense_levels == [0]
    with torch.no_grad():
        enc.dense[0].copy_(torch.randn_like(enc.dense[0]))
    i, j = torch.meshgrid(torch.arange(9), torch.arange(9), indexing="ij")  # row j of y, column i of x
    xy = torch.stack([i.flatten() / 4 - 1, j.flatten() / 4 - 1], 1).float()
    got = enc(xy)[:, 0]
    expected = enc.dense[0][0, 0, j.flatten(), i.flatten()]
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("decoder", ["sum", "linear", "mlp"])
def test_gradient_reaches_every_dense_and_hashed_table(decoder):
    model = tiny_hashgrid(decoder=decoder, num_levels=5, finest_resolution=64).build(3)
    enc = model.encoding
    assert enc.dense_levels and enc.hashed_levels
    model(torch.rand(4096, 2) * 2 - 1).square().sum().backward()
    for texture in enc.dense:
        assert float(texture.grad.abs().sum()) > 0
    assert float(enc.hashed.grad.abs().sum()) > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_hashgrid_fits_a_small_image_far_better_than_a_constant(channels):
    torch.manual_seed(0)
    xy, target = pixel_coords(32, 32), smooth_image(32, 32, channels)
    model = tiny_hashgrid().build(channels)
    defaults = HashGridConfig.train_defaults
    mse = fit(
        model,
        xy,
        target,
        steps=100,
        lr=defaults["lr"],
        betas=defaults["adam_betas"],
        eps=defaults["adam_eps"],
        gamma=defaults["lr_final"] ** (1 / 100),
    )  # a planned decay to lr_final over 100 steps
    constant_mse = float(target.var(0, unbiased=False).mean())
    assert mse < constant_mse / 25  # 14 dB better than the flat image


def test_output_is_clamped_to_unit_range_but_gradient_passes_the_clamp():
    y = torch.tensor([-0.5, 0.3, 1.7], requires_grad=True)
    out = clamp_unit_straight_through(y)
    assert out.tolist() == pytest.approx([0.0, 0.3, 1.0])
    out.sum().backward()
    assert y.grad.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("kind", ["hashgrid", "siren"])
@pytest.mark.parametrize("channels", [1, 3])
def test_models_map_coordinates_to_unit_range_outputs_per_channel(kind, channels):
    cfg = tiny_hashgrid() if kind == "hashgrid" else SirenConfig(kind="siren", hidden_size=16, num_hidden_layers=1)
    with torch.no_grad():
        out = cfg.build(channels)(torch.rand(100, 2) * 2 - 1)
    assert out.shape == (100, channels) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1


@pytest.mark.parametrize("kind", ["hashgrid", "siren"])
def test_weights_round_trip_through_weights_only_load(kind):
    cfg = tiny_hashgrid(finest_resolution=64) if kind == "hashgrid" else SirenConfig(kind="siren", hidden_size=16)
    model = cfg.build(3)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = cfg.build(3)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    xy = torch.rand(50, 2) * 2 - 1
    assert torch.equal(model(xy), fresh(xy))


# ---------------------------------------------------------------- siren


def test_siren_init_follows_the_paper_bounds():
    torch.manual_seed(0)
    model = SirenConfig(kind="siren", hidden_size=256, num_hidden_layers=3, first_omega_0=30, hidden_omega_0=30).build(
        1
    )
    first = model.layers[0].linear.weight.detach()
    assert float(first.abs().max()) <= 1 / 2
    assert float(first.std()) == pytest.approx((1 / 2) / math.sqrt(3), rel=0.15)  # U(-b, b) has std b/sqrt(3)
    for layer in list(model.layers)[1:]:
        bound = math.sqrt(6 / 256) / 30
        weight = layer.linear.weight.detach()
        assert float(weight.abs().max()) <= bound
        assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.05)


def test_siren_activations_keep_their_spread_through_depth():
    # the point of the init: every sine layer's output is arcsine-distributed (std 1/sqrt(2))
    torch.manual_seed(0)
    model = SirenConfig(kind="siren", hidden_size=256, num_hidden_layers=5).build(1)
    h = torch.rand(20000, 2) * 2 - 1
    with torch.no_grad():
        for layer in model.layers:
            h = layer(h)
            assert 0.55 < float(h.std()) < 0.85


def test_siren_fits_a_small_image_far_better_than_a_constant():
    torch.manual_seed(0)
    xy, target = pixel_coords(16, 16), smooth_image(16, 16, 1)
    model = SirenConfig(kind="siren", hidden_size=32, num_hidden_layers=1).build(1)
    mse = fit(model, xy, target, steps=60, lr=1e-3)
    assert mse < float(target.var(unbiased=False)) / 50


def test_siren_output_is_unchanged_under_bf16_autocast():
    torch.manual_seed(0)
    model = SirenConfig(kind="siren", hidden_size=32).build(3)
    xy = torch.rand(512, 2) * 2 - 1
    with torch.no_grad():
        plain = model(xy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(xy)
    assert autocast.dtype == torch.float32
    assert torch.equal(plain, autocast)


def test_summed_hashgrid_output_is_unchanged_under_bf16_autocast():
    model = tiny_hashgrid(finest_resolution=64).build(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        xy = torch.rand(512, 2) * 2 - 1
        plain = model(xy)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(xy)
    assert torch.equal(plain, autocast.float())


# ---------------------------------------------------------------- spec


@pytest.mark.parametrize(
    "model, field",
    [
        ({"kind": "hashgrid", "num_levels": 0}, "model.num_levels"),
        ({"kind": "hashgrid", "log2_hashmap_size": 40}, "model.log2_hashmap_size"),
        ({"kind": "hashgrid", "decoder": "transformer"}, "model.decoder"),
        ({"kind": "hashgrid", "base_resolution": 64, "finest_resolution": 32}, "finest_resolution"),
        ({"kind": "hashgrid", "levels": 8}, "model.levels"),
        ({"kind": "siren", "first_omega_0": 0}, "model.first_omega_0"),
        ({"kind": "siren", "hidden_size": -3}, "model.hidden_size"),
    ],
)
def test_spec_rejects_bad_model_values_naming_the_field(model, field):
    with pytest.raises(SpecError, match=field.replace(".", r"\.")):
        parse_spec({"image": "a.png", "output": "out", "model": model})


def test_spec_rejects_adam_betas_outside_unit_interval():
    with pytest.raises(SpecError, match=r"train\.adam_betas"):
        parse_spec({"image": "a.png", "output": "out", "train": {"adam_betas": [0.9, 1.5]}})


@pytest.mark.parametrize("kind, config", [("hashgrid", HashGridConfig), ("siren", SirenConfig)])
def test_unset_train_fields_take_the_kinds_defaults_and_set_ones_are_kept(kind, config):
    spec = parse_spec({"image": "a.png", "output": "out", "model": {"kind": kind}, "train": {"lr": 0.123}})
    assert spec.train.lr == 0.123
    for name, value in config.train_defaults.items():
        if name != "lr":
            got = getattr(spec.train, name)
            assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value


def test_budget_only_run_has_no_epoch_limit_for_the_new_kinds():
    for kind in ("hashgrid", "siren"):
        spec = parse_spec({"image": "a.png", "output": "out", "model": {"kind": kind}, "train": {"max_seconds": 60}})
        assert spec.train.epochs is None


def test_seed_kinds_keep_pytorchs_adam_settings():
    spec = parse_spec({"image": "a.png", "output": "out"})
    assert spec.train.adam_eps is None and spec.train.adam_betas is None
