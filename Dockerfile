# The bridge as a small, non-root image. Build: docker build -t dicomweb-fhir-bridge .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --create-home bridge
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY config/bridge.example.env ./config/
USER bridge
# Inside a container the loopback default would make the service unreachable: listen on all interfaces
# and let the container network decide who gets in. Off loopback the bridge does not start until BRIDGE_AUTH
# is chosen: BRIDGE_AUTH=smart with BRIDGE_AUTH_ISSUER (see docker-compose.yml), or, knowingly, none.
ENV BRIDGE_HOST=0.0.0.0 \
    BRIDGE_PORT=8080 \
    PYTHONUNBUFFERED=1
EXPOSE 8080
# /healthz says the process answers; /readyz (the PACS answers) is for the orchestrator's readiness probe. Both
# are on BRIDGE_ADMIN_PORT instead when it is set.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('BRIDGE_ADMIN_PORT') or os.environ['BRIDGE_PORT']}/healthz\", timeout=4)"]
ENTRYPOINT ["imaging-bridge"]
CMD ["serve"]
