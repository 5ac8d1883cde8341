"""Whether an image fits this node: what a job holds per pixel, against what the host
(and the GPU) can give. Checked from the image's header, before anything is decoded,
and on the GPU before the target is copied there, so a job that cannot fit says so in
one line instead of dying of an OOM kill an hour later.

Host, per pixel of C channels (uint8):
    decoding      Pillow's image (C) and the uint8 target (C), plus the file's bytes
    training      the target (C) and this epoch's pixel order (int32: 4) on a CPU device;
                  on CUDA the order passes through the host (4) on its way to the GPU
    publishing    the target (C), final.png's pixels (C) and Pillow's copy to encode them (C)
    => at most 3C + 4 bytes a pixel at once, plus the file and the model (CPU: 5 fp32 copies
       of the parameters: weights, gradients, Adam's two moments, the average)
GPU: the target (C), the order (4), the model (5 copies, and the film's: 6) and a final band
(imgfit_batch.final).

Exit codes: more than the node has at all is 3 (this job, as specified, cannot run on
such a node: downscale it, or use a node with more memory); more than is free right now
(other processes hold it) is 69, retryable.
"""

from __future__ import annotations

import io
import os

import torch

from imgfit_batch.errors import NodeLocalError, UnavailableError

# The default input.max_pixels: the most pixels an int32 pixel index addresses (the
# epoch's order is int32); below it, what this node holds decides (check_host, check_device).
MAX_PIXELS = 2**31 - 1
PARAM_COPIES = 5  # fp32 weights, gradients, Adam's two moments, the average


def host_bytes(pixels: int, channels: int, file_bytes: int, param_bytes: int) -> int:
    """The most host memory a job holds at once for its image (see the module's docstring)."""
    return pixels * (3 * channels + 4) + file_bytes + param_bytes


def device_bytes(pixels: int, channels: int, param_bytes: int, band_pixels: int) -> int:
    """`param_bytes` as `param_bytes()` gives them (PARAM_COPIES); the GPU holds one copy more,
    the weights its frames are drawn from (film.FilmStream)."""
    return pixels * (channels + 4) + param_bytes * (PARAM_COPIES + 1) // PARAM_COPIES + band_pixels * channels


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the image's header (nothing decoded); None if Pillow cannot tell
    (decode_image then says why)."""
    try:
        from PIL import Image

        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(io.BytesIO(data)) as img:
                return img.size
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    except Exception:
        return None


def host_memory() -> tuple[int, int]:
    """(total, available) bytes for this process: the machine's, within its cgroup's limit."""
    info = {}
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                key, _, rest = line.partition(":")
                info[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return 1 << 62, 1 << 62  # unknown: do not refuse
    total, available = info.get("MemTotal", 1 << 62), info.get("MemAvailable", info.get("MemFree", 1 << 62))
    limit, used = _cgroup_memory()
    if limit is not None:
        total, available = min(total, limit), min(available, max(limit - (used or 0), 0))
    return total, available


def _cgroup_memory() -> tuple[int | None, int | None]:
    for limit_file, used_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as fh:
                raw = fh.read().strip()
        except OSError:
            continue
        if raw == "max" or not raw.isdigit() or int(raw) >= 1 << 60:
            return None, None
        try:
            with open(used_file) as fh:
                used = int(fh.read().strip())
        except (OSError, ValueError):
            used = None
        return int(raw), used
    return None, None


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB"


def check_host(
    uri: str,
    width: int,
    height: int,
    channels: int,
    file_bytes: int,
    param_bytes: int,
    memory: tuple[int, int] | None = None,
) -> None:
    """Raise unless the image fits this host's memory (`memory`: (total, available), else measured)."""
    need = host_bytes(width * height, channels, file_bytes, param_bytes)
    total, available = memory or host_memory()
    what = (
        f"{uri}: {width}x{height} = {width * height} pixels needs about {_gb(need)} of host memory "
        f"({3 * channels + 4} bytes a pixel and the model)"
    )
    if need > total:
        raise UnavailableError(
            f"{what}, more than this node has ({_gb(total)}); downscale the image, or run on a node with more memory"
        )
    if need > available:
        raise NodeLocalError(
            f"{what}, more than is free on this node now ({_gb(available)} of {_gb(total)}); "
            "run it again when memory is free, or on another node"
        )


def check_device(
    uri: str,
    device: torch.device,
    width: int,
    height: int,
    channels: int,
    param_bytes: int,
    band_pixels: int,
    memory: tuple[int, int] | None = None,
) -> None:
    """On CUDA, raise unless the target, its order, the model and a final band fit the GPU
    (`memory`: (free, total), else torch.cuda.mem_get_info)."""
    if device.type != "cuda" and memory is None:
        return
    need = device_bytes(width * height, channels, param_bytes, band_pixels)
    free, total = memory or torch.cuda.mem_get_info(device)
    what = (
        f"{uri}: {width}x{height} pixels needs about {_gb(need)} of GPU memory ({channels + 4} bytes a pixel "
        "and the model)"
    )
    if need > total:
        raise UnavailableError(
            f"{what}, more than this GPU has ({_gb(total)}); downscale the image, or use a GPU with more memory"
        )
    if need > free:
        raise NodeLocalError(
            f"{what}, more than is free on this GPU now ({_gb(free)} of {_gb(total)}); run it "
            "again when it is free, or on another node"
        )


def param_bytes(spec, channels: int, width: int, height: int) -> int:
    """PARAM_COPIES x the fp32 parameters of the model this spec builds for this image. A kind
    whose size follows the image (hashgrid's tables: GBs) is counted without allocating it, on
    the meta device; the MLP kinds (a few MB at most) are built on the CPU, which is faster
    than the meta device's first use (~1 s of lazy imports in torch, 15 % of a small job)."""
    try:
        resolved, _ = spec.for_image(width, height)
        with torch.random.fork_rng(devices=[]), torch.device("meta" if hasattr(resolved.model, "derive") else "cpu"):
            model = resolved.model.build(channels, width, height)  # the job's own generators untouched
        return PARAM_COPIES * 4 * sum(p.numel() for p in model.parameters())
    except Exception:  # a kind that cannot build on meta: counted as nothing, the pixels still are
        return 0


def max_pixels(spec) -> int:
    return spec.input.max_pixels if spec.input.max_pixels is not None else MAX_PIXELS


def device_type_for(choice: str) -> str:
    """The device a job will train on, without initialising CUDA (train.device)."""
    if choice == "cpu" or os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
