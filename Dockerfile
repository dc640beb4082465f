# syntax=docker/dockerfile:1
# The chatplane image: every data-plane tier (`chatplane ipconf|gateway|state|im`) and the
# operator (`python -m chatplane_operator`). Non-root (uid 10001), fine with a read-only root
# filesystem (writable /tmp and /data come from volumes).
#
# The same layout as scripts/image/build, which builds it without a registry or a daemon
# (mmdebstrap + a venv from the wheels): Debian bookworm's python3, the project in a venv at
# /opt/chatplane, user chatplane 10001:10001 with /data, entrypoint chatplane.

FROM debian:bookworm-slim AS build
# a C compiler for chatplane._sendeach (large-group frames written outside the GIL;
# without it the build goes on and the event loop writes them itself)
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY dataplane ./dataplane
COPY operator ./operator
RUN /build/bin/pip wheel --no-cache-dir --wheel-dir /wheels ".[operator,scylla]"

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv ca-certificates tzdata \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python3 -m venv /opt/chatplane \
 && /opt/chatplane/bin/pip install --no-cache-dir --no-index --find-links=/wheels \
        "chatplane[operator,scylla]" \
 && /opt/chatplane/bin/pip uninstall -y pip setuptools
RUN groupadd --gid 10001 chatplane \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /data \
        --shell /usr/sbin/nologin chatplane \
 && mkdir /data && chown 10001:10001 /data
ENV PATH=/opt/chatplane/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
USER 10001:10001
WORKDIR /data
EXPOSE 8080 8081 9090
ENTRYPOINT ["chatplane"]
CMD ["--help"]
