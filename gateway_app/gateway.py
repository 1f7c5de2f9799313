"""The gateway of one process: settings, registry, proxy and collector, and what routes report."""

from __future__ import annotations

import logging
import platform
import threading
import time
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .capacity.history_file import HistoryFile
from .collector import IntervalCollector
from .config import GatewayConfig, load_config
from .keys import ClientKeys, Lockout
from .routing.metrics import iso_time
from .routing.proxy import Proxy
from .routing.registry import Registry, Snapshot
from .routing.telemetry import Telemetry
from .settings import Settings
from .watcher import ConfigWatcher

log = logging.getLogger("apirouter")

VERSION = "0.1.0"


@cache
def runtime_versions() -> dict[str, str]:
    """Python's and the stack's versions, looked up once (they cannot change while running)."""
    versions = {"python": platform.python_version()}
    for name in ("flask", "waitress", "requests", "marshmallow"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "unknown"
    return versions


class Gateway:
    """Everything one gateway process shares between requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry(max_connections=settings.threads,
                                 history_size=settings.metrics_history,
                                 failure_cooldown=settings.failure_cooldown,
                                 failure_cooldown_max=settings.failure_cooldown_max,
                                 connect_timeout=settings.connect_timeout,
                                 read_timeout=settings.read_timeout,
                                 headroom_seconds=settings.headroom_seconds)
        self._publish(load_config(settings.config_file))
        self.reconfig_lockout = Lockout(settings.reconfig_max_failures, seconds=60.0)
        self.telemetry = Telemetry(self.registry)
        self.proxy = Proxy(self.registry, settings, self.telemetry)
        self.collector = IntervalCollector(self.registry, settings.metrics_interval_seconds)
        if settings.metrics_history_file:  # closed intervals kept on disk for capacity planning
            self.collector.sinks.append(HistoryFile.from_settings(settings))
        self.watcher = (ConfigWatcher(settings.config_file, settings.config_watch_seconds,
                                      self.reload)
                        if settings.config_watch_seconds else None)
        self.started_at = time.time()
        self._reload_lock = threading.Lock()

    @property
    def current(self) -> Snapshot:
        """The published configuration, client keys and pools: read it once per request."""
        return self.registry.current

    @property
    def config(self) -> GatewayConfig:
        return self.registry.current.config

    @property
    def client_keys(self) -> ClientKeys:
        return self.registry.current.client_keys

    def _publish(self, config: GatewayConfig) -> Snapshot:
        """Publish ``config`` with its client keys (the environment's, named env-1, env-2 ...,
        then the file's) in one step."""
        named = {f"env-{i}": key for i, key in enumerate(self.settings.client_keys, 1)}
        return self.registry.publish(config, ClientKeys({**named, **config.client_keys}))

    def start(self) -> None:
        self.collector.start()
        if self.watcher:
            self.watcher.start()

    def stop(self, flush_metrics: bool = False) -> None:
        """Stop background threads and close Sessions; ``flush_metrics`` closes the open
        interval first (a graceful shutdown, so the history file gets it)."""
        self.collector.stop(flush=flush_metrics)
        if self.watcher:
            self.watcher.stop()
        self.registry.close()

    def reload(self) -> int:
        """Re-read the configuration file; raise ConfigError and keep the old list if invalid."""
        with self._reload_lock:  # two reloads at once would race to swap
            config = load_config(self.settings.config_file)
            self._publish(config)
        log.info("configuration reloaded: %d endpoint(s), %d deployment pool(s)",
                 len(config.endpoints), len(config.pools))
        return len(config.endpoints)

    def endpoints(self) -> dict[str, str]:
        return {str(e.priority): e.url for e in self.current.lb}

    def pools(self) -> dict[str, list[dict[str, Any]]]:
        """Each deployment pool's backends, for /instanceinfo."""
        return {name: [{"endpoint": e.url, "priority": e.priority, "weight": e.weight}
                       for e in entries]
                for name, entries in self.current.pools.items()}

    def instance_info(self, path: str) -> dict[str, Any]:
        s = self.settings
        return {
            "serverName": s.name,
            "serverVersion": VERSION,
            "envVars": {
                "apiGatewayHost": s.host,
                "apiGatewayListenPort": s.port,
                "apiGatewayEnv": s.env,
                "apiGatewayCollectInterval": s.metrics_interval_minutes,
                "apiGatewayCollectHistoryCount": s.metrics_history,
                "apiGatewayConfigFile": s.config_file,
            },
            "containerInfo": {
                "imageID": s.image_id,
                "nodeName": s.node_name,
                "podName": s.pod_name,
                "podNamespace": s.pod_namespace,
                "podServiceAccount": s.pod_svc_account,
            },
            "versions": runtime_versions(),
            "oaiEndpoints": self.endpoints(),
            # only with pools configured, so the original's shape is unchanged without them
            **({"deployments": self.pools()} if self.current.pools else {}),
            "apiGatewayUri": s.route_prefix,
            "endpointUri": path,
            "serverStartDate": iso_time(self.started_at),
            "status": "OK",
        }

    def metrics(self, path: str) -> dict[str, Any]:
        s = self.settings
        snapshot = self.registry.metrics_snapshot()
        return {
            "listenPort": s.port,
            "instanceName": s.name,
            "collectionInterval": s.metrics_interval_minutes,
            "historyCount": s.metrics_history,
            "endpointMetrics": snapshot["endpointMetrics"],
            **({"deploymentMetrics": snapshot["deploymentMetrics"]}
               if snapshot["deploymentMetrics"] else {}),
            "successApiCalls": snapshot["successApiCalls"],
            "failedApiCalls": snapshot["failedApiCalls"],
            "totalApiCalls": snapshot["totalApiCalls"],
            "endpointUri": path,
            "currentDate": iso_time(time.time()),
            "status": "OK",
        }

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]:
        """Ready unless every endpoint is benched for faults (throttling alone keeps it ready)."""
        states = self.registry.availability()
        ready = any(s["available"] or s["reason"] == "throttled" for s in states)
        return ready, states
