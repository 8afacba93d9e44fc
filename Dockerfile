# webfones-relay: a slim image running `relay run` as a non-root user, state on a volume.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml constraints.txt README.md ./
COPY relay ./relay
# postgres: asyncpg, for a shared postgresql:// state (several instances, docs/SCALING.md).
RUN pip install --no-cache-dir --prefix=/install -c constraints.txt '.[fast,postgres]'

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RELAY_STATE=/var/lib/relay/relay-state.db \
    RELAY_LOG__FORMAT=json
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --home-dir /var/lib/relay --create-home relay \
    && mkdir -p /config \
    && chown relay:relay /var/lib/relay
USER relay
WORKDIR /var/lib/relay
VOLUME ["/var/lib/relay"]
# Optional admin API (admin.listen: 0.0.0.0:8080, with admin.token set).
EXPOSE 8080
# Liveness through the admin listener (set admin.listen, e.g. 0.0.0.0:8080 with admin.token, or
# 127.0.0.1:8080 for the probe only). The slim image has no curl: Python's urllib does it.
ENV RELAY_HEALTH_URL=http://127.0.0.1:8080/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RELAY_HEALTH_URL'], timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay"]
CMD ["run", "--config", "/config/relay.yaml"]
