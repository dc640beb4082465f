# syntax=docker/dockerfile:1
# The chatplane image: every data-plane tier (`chatplane ipconf|gateway|state|im`) and the
# operator (`python -m chatplane_operator`). Non-root (uid 10001), fine with a read-only root
# filesystem (writable /tmp comes from an emptyDir).

ARG PYTHON=3.11

FROM python:${PYTHON}-slim AS build
# a C compiler for chatplane._sendeach (large-group frames written outside the GIL;
# without it the build goes on and the event loop writes them itself)
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY dataplane ./dataplane
COPY operator ./operator
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator,scylla]"

FROM python:${PYTHON}-slim
RUN groupadd --gid 10001 chatplane \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin chatplane
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080 8081 9090
ENTRYPOINT ["chatplane"]
CMD ["--help"]
