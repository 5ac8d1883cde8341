"""Where the job computes: choosing the device, configuring CUDA, naming it,
whether bf16 is native there, and how much memory the process used."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Iterator

import torch

from imgfit_batch.errors import NodeLocalError


def pick_device(choice: str) -> torch.device:
    """`train.device`: cpu, cuda, or auto (CUDA when visible).

    cuda asked for but not usable here (no GPU visible, or a broken one) is a fault of
    this node, not of the job: exit 69, so the scheduler tries again, elsewhere."""
    if choice == "cpu":
        return torch.device("cpu")
    try:
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            torch.zeros(1, device=f"cuda:{index}")  # initialises the context: a broken GPU fails here, not mid-run
            return torch.device("cuda", index)
        problem = "no CUDA GPU is visible (check --gpus / nvidia.com/gpu / --gres=gpu)"
    except RuntimeError as exc:  # driver mismatch, ECC error, device busy or lost, ...
        # a GPU is there but broken: even under auto, hours on the CPU would be no favour
        raise NodeLocalError(
            f"train.device: the GPU on this node is not usable ({' '.join(str(exc).split())[:200]}); "
            "run it again on another node, or set train.device: cpu"
        ) from None
    if choice == "cuda":
        raise NodeLocalError(
            f"train.device: cuda was asked for, but on this node {problem}; run it again on a node "
            "with a working GPU, or use device: auto to fall back to the CPU"
        )
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def configure(device: torch.device, deterministic: bool, threads: int | None, precision: str = "auto") -> None:
    """Process-wide settings for a job on `device` (call before building the model).

    train.precision: fp32 is IEEE fp32 everywhere (no TF32); auto and bf16 let CUDA
    matmuls that are not autocast to bf16 use TF32 (unless deterministic). Inputs and
    metrics never see TF32 or bf16 (`exact_fp32`)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if device.type != "cuda":
        return
    tf32 = precision != "fp32" and not deterministic
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: hashgrid's backward (grid_sample) has no deterministic CUDA kernel;
        # torch warns for it instead of failing the job
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextlib.contextmanager
def exact_fp32(device_type: str) -> Iterator[None]:
    """IEEE fp32 arithmetic inside, whatever the job set outside: no autocast, and on
    CUDA no TF32 (10-bit mantissa) in matmuls or cuDNN convolutions. For what must not
    be rounded: raw coordinates entering a network, metrics, final.png."""
    with torch.autocast(device_type, enabled=False):
        if device_type != "cuda":
            yield
            return
        matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are native (fast) on this device: CUDA compute capability
    8.0 or newer (A100, RTX 30xx, L4, H100, ...; T4 and V100 only emulate bf16, slowly,
    though torch.cuda.is_bf16_supported() says yes), or a CPU with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def peak_memory_mb(device: torch.device) -> dict:
    """This process's peak resident memory, and the GPU's peak allocation when on CUDA."""
    peak = {"host": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}  # Linux: KiB
    if device.type == "cuda":
        peak["cuda"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak
