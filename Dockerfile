# imgfit-batch: the CLI is the entrypoint.
#   docker build -t imgfit-batch .
#   docker run --gpus all -v "$PWD:/work" imgfit-batch run spec.yaml
#
# BASE_IMAGE must bring Python 3.10+ with pip and torch (>=2.3,<3) on PATH as
# `python3`; the default is an official PyTorch CUDA runtime image, so CUDA torch
# comes prebuilt and is not installed again here. Its CUDA 12.8 build has kernels
# for Turing to Blackwell (sm_75 ... sm_120: T4, A100, A10, L4, L40S, RTX 30/40/50,
# H100, H200, B200); `python3 -c "import torch; print(torch.cuda.get_arch_list())"`
# inside the image lists them. For older GPUs (V100, P100) build with
#   --build-arg BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
# linux/amd64: the manifests and the Slurm script expect x86-64 nodes.
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

# Build stage: turn the source into one wheel. setuptools and pip's caches stay here.
FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgfit_batch ./imgfit_batch
RUN python3 -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${BASE_IMAGE}
# Set by the build: --build-arg VERSION=<pyproject version> --build-arg SOURCE=<repo URL>
ARG VERSION=0.1.0
ARG SOURCE=""
LABEL org.opencontainers.image.title="imgfit-batch" \
      org.opencontainers.image.description="Train a coordinate network to recreate an image and film it learning" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# Dependencies are wheels (ffmpeg comes inside imageio-ffmpeg): no compiler, no apt.
# torch is already in the base image and satisfies the requirement, so pip keeps it.
COPY --from=build /dist /tmp/dist
# [gcs,azure]: gs:// and az:// locations work in the image as s3:// does
RUN python3 -m pip install --no-cache-dir "$(ls /tmp/dist/*.whl)[gcs,azure]" \
    && rm -rf /tmp/dist \
    && mkdir -p /work \
    && chown 1000:1000 /work

# Everything a library might cache goes under /tmp, so the image runs with a
# read-only root filesystem and one writable /tmp (an emptyDir in Kubernetes).
ENV HOME=/tmp \
    USER=imgfit \
    XDG_CACHE_HOME=/tmp/.cache \
    XDG_CONFIG_HOME=/tmp/.config \
    TORCH_HOME=/tmp/.cache/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/.cache/torchinductor \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    MPLCONFIGDIR=/tmp/.config/matplotlib \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /work
USER 1000:1000
# Exec form: the CLI is PID 1's only process, so the runtime's SIGTERM reaches it,
# it checkpoints and exits 75.
STOPSIGNAL SIGTERM
ENTRYPOINT ["imgfit-batch"]
CMD ["--help"]
