# Pillion, the sidecar alone (no app inside). From the repository root:
#   docker build -t pillion:0.1.0 .
# Arguments after the image name go to `pillion serve`:
#   docker run --rm pillion:0.1.0 --app-id myapp --resources-path /components
# See docs/deployment.md for Kubernetes and Compose.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency ships wheels for this base, so no compiler is needed; the sources are built in a
# throwaway folder and only the installed package stays in the image.
COPY pyproject.toml README.md constraints.txt /tmp/pillion/
COPY runtime /tmp/pillion/runtime
COPY components /tmp/pillion/components
# constraints.txt pins the versions the test suite ran against (scripts/lock).
RUN pip install -c /tmp/pillion/constraints.txt /tmp/pillion && rm -rf /tmp/pillion

# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a number, and the manifests in
# deploy/kubernetes name the same one.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/pillion --shell /usr/sbin/nologin pillion
USER 10001:10001
WORKDIR /home/pillion

# The HTTP API. It binds 127.0.0.1 unless told otherwise (--dapr-listen-addresses with
# --allow-remote-access); the metrics port (9090) is always loopback-only, so it is not exposed.
EXPOSE 3500

ENTRYPOINT ["pillion", "serve"]
