# nfdseg GPU image: NVIDIA's TensorRT container + nfdseg with every stage and the GPU runtime
# ([all-cu13]: train, export, cuda-python 13, demo, video, onnxruntime-gpu for CUDA 13: one onnxruntime build only).
#   docker build -t nfdseg .                                   # default base below (TensorRT 10, CUDA 13)
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:24.08-py3 --build-arg NFDSEG_EXTRAS=all-cu12 \
#     --build-arg TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu126" -t nfdseg:trt10 .
#                                                              # TensorRT 10 on CUDA 12.6: CUDA 12 everything
#   docker run --gpus all --user $(id -u):$(id -g) -p 7860:7860 -v $PWD/runs:/work/runs nfdseg \
#     demo runs/quick/export --host 0.0.0.0
# --user: run as the owner of the mounted runs/ so the container can write there (the entrypoint gives such a
# uid a writable HOME, and warns when runs/ is not writable). Without --user it runs as uid 10001.
# A runtime-only image (no torch): --build-arg TORCH_SPEC= --build-arg NFDSEG_EXTRAS=gpu-cu13,demo (or cpu,demo).
# The base image brings CUDA, cuDNN and TensorRT, by tag (25.10: TensorRT 10; TensorRT 11.0 GA is dated 2026-06-02
# in NVIDIA/TensorRT's CHANGELOG, so no tag before 26.06 holds it); engines built inside it must be
# served by the same TensorRT version on the same GPU architecture (see docs/deploying.md).
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${BASE_IMAGE}

ARG TORCH_SPEC="torch torchvision"
# PIP_BREAK_SYSTEM_PACKAGES: Ubuntu 24.04-based NVIDIA images mark the system Python externally managed
# (PEP 668); this image is single-purpose, so nfdseg installs into it directly.
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 GRADIO_ANALYTICS_ENABLED=False MPLBACKEND=Agg

WORKDIR /opt/nfdseg
# One COPY: the package's folders are whatever pyproject.toml's package-dir names (.dockerignore leaves out
# tests, docs, benchmarks and run outputs), so a new layer folder needs no Dockerfile change.
COPY . ./
COPY docker/healthcheck.py /usr/local/bin/nfdseg-healthcheck.py
COPY docker/entrypoint.sh /usr/local/bin/nfdseg-entrypoint
COPY docker/check_install.py /usr/local/bin/nfdseg-check-install.py
# TensorRT's Python package comes with the base image; torch is needed for distill/export only (TORCH_SPEC
# empty: none). pip is not upgraded: over the distro's pip (installed by apt, no RECORD file) `pip install
# --upgrade pip` fails to uninstall it. [all-cu13] is the CUDA 13 set for the default base (cuda-python 13 beside
# a CUDA 13 torch, onnxruntime-gpu for CUDA 13); on a CUDA 12 base (TensorRT 10 images such as 24.08) pass
# NFDSEG_EXTRAS=all-cu12 and a CUDA 12 torch in TORCH_SPEC (see the example above and docs/deploying.md).
# The last step fails the build unless exactly one onnxruntime build is installed.
ARG NFDSEG_EXTRAS=all-cu13
RUN if [ -n "${TORCH_SPEC}" ]; then python3 -m pip install ${TORCH_SPEC}; fi \
 && python3 -m pip install ".[${NFDSEG_EXTRAS}]" \
 && cd / && python3 /usr/local/bin/nfdseg-check-install.py

# /work is writable by any uid (sticky, like /tmp) and the entrypoint gives a uid without a home a temporary
# one, so `--user $(id -u):$(id -g)` works without rebuilding; runs/ is normally the host's folder, mounted there.
RUN useradd --create-home --uid 10001 nfdseg && mkdir -p /work/runs && chmod 1777 /work /work/runs \
 && chmod 755 /usr/local/bin/nfdseg-entrypoint
USER nfdseg
WORKDIR /work
VOLUME ["/work/runs"]

EXPOSE 7860
# `nfdseg demo`: healthy when the demo answers HTTP on its port (a closed port is unhealthy); batch
# commands serve nothing: healthy when the runtime imports (docker/healthcheck.py, tested in tests/test_docker.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python3 /usr/local/bin/nfdseg-healthcheck.py
ENTRYPOINT ["/usr/local/bin/nfdseg-entrypoint"]
CMD ["--help"]
