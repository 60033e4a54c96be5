# One slim, non-root image for both entrypoints: outpost-agent and outpost-gateway.
# The testbed (dev/test only) is not installed into it; the gateway's helm (it renders chart
# add-ons) is built from the same pinned module the tests use.
FROM golang:1.26 AS helm
WORKDIR /src
COPY testbed/controlplane/go/helm/go.mod testbed/controlplane/go/helm/go.sum ./
RUN CGO_ENABLED=0 go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=v4.3.2 -X helm.sh/helm/v4/internal/version.metadata= -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    -o /out/helm helm.sh/helm/v4/cmd/helm

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
 && mkdir -p /var/lib/outpost /var/lib/outpost-gateway /var/cache/outpost-gateway \
 && chown outpost /var/lib/outpost /var/lib/outpost-gateway /var/cache/outpost-gateway
COPY --from=build /opt/outpost /opt/outpost
COPY --from=helm /out/helm /usr/local/bin/helm
ENV PATH=/opt/outpost/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532
EXPOSE 8080 8443
ENTRYPOINT ["outpost-agent"]
