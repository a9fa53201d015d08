# nfdseg GPU image: NVIDIA's TensorRT container + nfdseg with all its extras ([all]: train, export, trt, demo, video).
#   docker build -t nfdseg .                                   # default base below
#   docker build --build-arg BASE_IMAGE=nvcr.io/nvidia/tensorrt:24.08-py3 -t nfdseg:trt10 .   # TensorRT 10
#   docker run --gpus all -p 7860:7860 -v $PWD/runs:/work/runs nfdseg demo runs/quick/export --host 0.0.0.0
# The base image brings CUDA, cuDNN and TensorRT (10 or 11, by tag); engines built inside it must be
# served by the same TensorRT version on the same GPU architecture (see docs/deploying.md).
ARG BASE_IMAGE=nvcr.io/nvidia/tensorrt:25.10-py3
FROM ${BASE_IMAGE}

ARG TORCH_SPEC="torch torchvision"
# PIP_BREAK_SYSTEM_PACKAGES: Ubuntu 24.04-based NVIDIA images mark the system Python externally managed
# (PEP 668); this image is single-purpose, so nfdseg installs into it directly.
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_BREAK_SYSTEM_PACKAGES=1 GRADIO_ANALYTICS_ENABLED=False MPLBACKEND=Agg

WORKDIR /opt/nfdseg
COPY pyproject.toml README.md ./
COPY nfdseg ./nfdseg
COPY distill ./distill
COPY export ./export
COPY serve ./serve
COPY demo ./demo
COPY app ./app
COPY docker/healthcheck.py /usr/local/bin/nfdseg-healthcheck.py
# TensorRT's Python package comes with the base image; torch is needed for distill/export only.
# pip is not upgraded: over the distro's pip (installed by apt, no RECORD file) `pip install --upgrade pip`
# fails to uninstall it. [all] brings cuda-python 13 beside a CUDA 13 torch (the default base is CUDA 13); on a
# CUDA 12 base (TensorRT 10 images such as 24.08) pass --build-arg NFDSEG_EXTRAS=train,export,trt,demo and a
# CUDA 12 torch (--build-arg TORCH_SPEC=...), so cuda-python 12 matches the driver (see docs/deploying.md).
ARG NFDSEG_EXTRAS=all
RUN python3 -m pip install ${TORCH_SPEC} \
 && python3 -m pip install ".[${NFDSEG_EXTRAS}]" \
 && cd / && python3 -c "import nfdseg.serve, nfdseg.export.onnx2engine; print('nfdseg ok')"

RUN useradd --create-home --uid 10001 nfdseg && mkdir -p /work && chown nfdseg /work
USER nfdseg
WORKDIR /work

EXPOSE 7860
# `nfdseg demo`: healthy when the demo answers HTTP on its port (a closed port is unhealthy); batch
# commands serve nothing: healthy when the runtime imports (docker/healthcheck.py, tested in tests/test_docker.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python3 /usr/local/bin/nfdseg-healthcheck.py
ENTRYPOINT ["nfdseg"]
CMD ["--help"]
