# One slim, non-root image for both entrypoints: outpost-agent and outpost-gateway.
# The testbed (dev/test only) is not installed into it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
COPY mgmt_gateway ./mgmt_gateway
COPY manifests ./manifests
RUN python -m venv /opt/outpost \
 && /opt/outpost/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/outpost/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin outpost \
 && mkdir -p /var/lib/outpost /var/lib/outpost-gateway \
 && chown outpost /var/lib/outpost /var/lib/outpost-gateway
COPY --from=build /opt/outpost /opt/outpost
ENV PATH=/opt/outpost/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532
EXPOSE 8080 8443
ENTRYPOINT ["outpost-agent"]
