# syntax=docker/dockerfile:1
# One image for the API (`easel serve`) and the workers (`easel worker`); docs/deploy.md.
#
#   docker build -t easel .                                 # hosted providers (OpenAI, Gemini, BFL, Midjourney)
#   docker build -t easel:cuda --build-arg EXTRAS=local .  # + torch and diffusers: local FLUX on an NVIDIA GPU
#
# Every install goes through constraints.txt, the lock `make install` and CI install from, so
# the image runs the versions the tests ran. The lock pins torch for Python 3.11 only, hence
# the default PYTHON_VERSION; PyPI's torch wheel for Linux x86_64 brings its own CUDA
# libraries, so a slim base is enough: the host's NVIDIA driver comes in through the NVIDIA
# container toolkit (`docker run --gpus all`, or the Kubernetes device plugin).

ARG PYTHON_VERSION=3.11
ARG DEBIAN_RELEASE=bookworm

FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS build
# Extras of pyproject.toml to install, comma-separated: "" or "local".
ARG EXTRAS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/easel
WORKDIR /src

# The dependencies first, in a layer of their own (read from pyproject.toml, pinned by
# constraints.txt): a change to the code alone reuses it, torch included.
COPY pyproject.toml constraints.txt ./
RUN python -c 'import sys, tomllib; \
project = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
extras = [name for name in sys.argv[1].split(",") if name]; \
print("\n".join(project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]))' \
        "$EXTRAS" > /tmp/requirements.txt \
    && /opt/easel/bin/pip install -c constraints.txt -r /tmp/requirements.txt

# Then Easel itself, not editable, without touching the pinned dependencies.
COPY README.md ./
COPY src ./src
RUN /opt/easel/bin/pip install --no-deps -c constraints.txt .


FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS runtime
ARG EXTRAS=""
# With the local extra, torch.compile (which the diffusers backend runs at load time on CUDA)
# builds Triton's kernel launchers with the system C compiler at run time. Debian's security
# updates replace exact package versions, so they are not pinned; the base tag pins the release.
# hadolint ignore=DL3008
RUN case ",${EXTRAS}," in \
        *,local,*) apt-get update \
            && apt-get install -y --no-install-recommends gcc libc6-dev \
            && rm -rf /var/lib/apt/lists/* ;; \
    esac

# A user of its own, not root; its home is the working directory, where the default SQLite
# database and file store (./easel-data) and the Hugging Face cache of a local worker live.
RUN groupadd --system --gid 10001 easel \
    && useradd --system --uid 10001 --gid easel --home-dir /var/lib/easel --create-home \
        --shell /usr/sbin/nologin easel

COPY --from=build /opt/easel /opt/easel
ENV PATH=/opt/easel/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

LABEL org.opencontainers.image.title="easel" \
      org.opencontainers.image.description="Self-hostable image-generation task server speaking Tripo's task protocol" \
      org.opencontainers.image.licenses="Apache-2.0"

WORKDIR /var/lib/easel
USER 10001:10001
EXPOSE 8000
# easel is PID 1 and handles SIGTERM itself: the API ends its streams and lets requests
# finish within shutdown_grace_s; a worker puts its running tasks back in the queue.
ENTRYPOINT ["easel"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
