# Container image of the API gateway for Azure OpenAI deployments.
#
# Build:  scripts/build-container.sh --tag apirouter:dev
# Run:    scripts/start-container.sh --config ./api-router-config.json
# Every setting comes from the environment; see docs/deploy.md.
FROM python:3.11-slim

# Python: no .pyc writes at run time (the root filesystem may be read-only; the code
# is compiled below), unbuffered logs, and a quiet pip that keeps no cache in the layer.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# The account the server runs as: unprivileged, no home, no login shell. Its numeric id is
# what USER names, so Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 apirouter \
    && useradd --system --uid 10001 --gid apirouter --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin apirouter

# Dependencies first, in their own layer: it is rebuilt only when requirements.txt changes.
COPY requirements.txt ./
RUN python -m pip install --no-cache-dir -r requirements.txt

# The code, owned by root: the server's account can read it, not change it.
COPY wsgi.py api-router-config.json ./
COPY gateway_app/ ./gateway_app/
RUN python -m compileall -q wsgi.py gateway_app

# Where the server listens; EXPOSE and the HEALTHCHECK below follow these two. The other
# optional settings (threads, limits, timeouts, shutdown grace, logging) keep the gateway's
# own defaults, documented in the README, so they are not repeated here. The required ones
# (API_GATEWAY_KEY, API_GATEWAY_CONFIG_FILE, API_GATEWAY_NAME, API_GATEWAY_ENV,
# API_GATEWAY_METRICS_CINTERVAL, API_GATEWAY_METRICS_CHISTORY) are deliberately not set: a
# missing one stops start-up with a clear message instead of running on a guess. Secrets are
# never baked in.
ENV API_GATEWAY_HOST=0.0.0.0 \
    API_GATEWAY_PORT=8000

EXPOSE 8000

USER 10001:10001

# Liveness of the server itself. There is no curl in the slim image, so Python asks.
# The port and path segment are read from the container's environment at check time.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as r; h = os.environ.get('API_GATEWAY_HOST', '0.0.0.0'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; h = '[' + h + ']' if ':' in h else h; p = os.environ.get('API_GATEWAY_PORT', '8000'); e = os.environ.get('API_GATEWAY_ENV', ''); r.urlopen(f'http://{h}:{p}/api/v1/{e}/apirouter/healthz', timeout=4)"]

# The server is the container's main process (PID 1) and handles SIGTERM itself: it stops
# accepting, lets running calls finish for up to API_GATEWAY_SHUTDOWN_GRACE seconds, exits 0.
STOPSIGNAL SIGTERM
CMD ["python", "wsgi.py"]
