"""The gateway of one process: settings, registry, proxy and collector, and what routes report."""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
import time
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .admission import Admission, admission_limit
from .capacity.history_file import HistoryFile
from .cluster.version import file_version
from .collector import IntervalCollector, aligned_start
from .config import ConfigError, GatewayConfig, load_config
from .keys import ClientKeys, WrongKeyThrottle
from .routing.metrics import iso_time
from .routing.proxy import Proxy
from .routing.registry import Registry, Snapshot
from .routing.telemetry import ClientUsageCollector, Telemetry
from .settings import Settings
from .usage import ClientUsage
from .watcher import ConfigWatcher

if TYPE_CHECKING:
    from .cluster.link import ClusterLink
    from .cluster.messages import Message

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


# how long the reconfig routes wait for the other replicas' answers
RELOAD_ANSWER_WAIT = 2.0


def replica_name(settings: Settings) -> str:
    """This process among the replicas: the instance name, the pod (or host) and the
    process id, so several processes on one host, or pods of one release, differ."""
    return f"{settings.name}@{settings.pod_name or socket.gethostname()}:{os.getpid()}"


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
                                 headroom_seconds=settings.headroom_seconds,
                                 minute_seconds=settings.metrics_minute_seconds)
        shared = bool(settings.redis_url)
        if shared:  # replicas' intervals must cover the same time to be added up
            self.registry.interval_start = aligned_start(settings.metrics_interval_seconds)
        self._publish(load_config(settings.config_file))
        self.usage = ClientUsage(settings.metrics_history,
                                 interval_start=self.registry.interval_start)
        self.reconfig_throttle = WrongKeyThrottle(settings.reconfig_max_failures, seconds=60.0)
        self.telemetry = Telemetry(self.registry)
        self.proxy = Proxy(self.registry, settings, self.telemetry)
        self.admission = Admission(admission_limit(settings.threads, settings.max_in_progress))
        self.telemetry.prometheus.register(self.admission.collector())
        self.telemetry.prometheus.register(
            ClientUsageCollector(self.usage, lambda: self.current.client_limits))
        self.config_version = file_version(settings.config_file)
        self.collector = IntervalCollector(self.registry, settings.metrics_interval_seconds,
                                           aligned=shared, usage=self.usage)
        self.cluster: ClusterLink | None = None
        if shared:
            from .cluster.link import ClusterLink, LinkCollector
            from .cluster.messages import ReloadRequest

            self.cluster = ClusterLink(settings, self.registry, replica_name(settings),
                                       lambda: self.config_version)
            self.cluster.handlers[ReloadRequest.kind] = self._reload_requested
            self.cluster.share_usage(self.usage)
            self.telemetry.prometheus.register(LinkCollector(self.cluster))
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
        then the file's) and their limits (clientDefaults' for the environment's) in one
        step."""
        named = {f"env-{i}": key for i, key in enumerate(self.settings.client_keys, 1)}
        limits = {**{name: config.client_defaults for name in named}, **config.client_limits}
        return self.registry.publish(config, ClientKeys({**named, **config.client_keys}),
                                     limits)

    def start(self) -> None:
        if self.cluster:  # first, so a late replica knows the running cooldowns
            self.cluster.start()
        self.collector.start()
        if self.watcher:
            self.watcher.start()

    def stop(self, flush_metrics: bool = False) -> None:
        """Stop background threads and close Sessions; ``flush_metrics`` closes the open
        interval first (a graceful shutdown, so the history file and the other replicas
        get it)."""
        self.collector.stop(flush=flush_metrics)
        if self.watcher:
            self.watcher.stop()
        if self.cluster:
            self.cluster.stop(final_write=flush_metrics)
        self.registry.close()

    def reload(self, fan_out: bool = True) -> int:
        """Re-read the configuration file; raise ConfigError and keep the old list if invalid.

        With ``fan_out`` (and Redis), every other replica is asked to re-read its own file
        too, whether this one's was valid or not, without waiting for their answers.
        """
        try:
            with self._reload_lock:  # two reloads at once would race to swap
                config = load_config(self.settings.config_file)
                self._publish(config)
                self.config_version = file_version(self.settings.config_file)
        finally:
            if self.watcher:
                self.watcher.note_reloaded()
            if fan_out and self.cluster:
                self.cluster.request_reload(wait=0)
        if self.cluster:
            self.cluster.read_state_soon()  # cooldowns of backends it lists now
        log.info("configuration reloaded: %d endpoint(s), %d deployment pool(s)",
                 len(config.endpoints), len(config.pools))
        return len(config.endpoints)

    def reload_everywhere(self) -> tuple[int | ConfigError, dict[str, Any] | None]:
        """The reconfig routes: reload here, then ask the other replicas and wait (at most
        RELOAD_ANSWER_WAIT s) for their answers. This replica's endpoint count or its
        ConfigError, and what the others answered (None without Redis)."""
        try:
            outcome: int | ConfigError = self.reload(fan_out=False)
        except ConfigError as exc:
            outcome = exc
        if self.cluster is None:
            return outcome, None
        return outcome, self.cluster.request_reload(wait=RELOAD_ANSWER_WAIT)

    def _reload_requested(self, message: Message) -> bool:
        """Another replica reloaded: re-read this replica's own file and say how it went."""
        from .cluster.messages import ReloadAnswer, ReloadRequest

        assert isinstance(message, ReloadRequest) and self.cluster is not None
        try:
            self.reload(fan_out=False)
            applied, error = True, ""
        except ConfigError as exc:
            applied, error = False, str(exc)[:500]
            log.error("reload asked by replica %s: the configuration file is invalid, keeping "
                      "the old one: %s", message.origin, exc)
        self.cluster.publish(ReloadAnswer(self.cluster.replica, message.request, applied,
                                          self.config_version, error))
        return applied

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
            **({"cluster": self.cluster_info()} if self.cluster else {}),
            "apiGatewayUri": s.route_prefix,
            "endpointUri": path,
            "serverStartDate": iso_time(self.started_at),
            "status": "OK",
        }

    def cluster_info(self) -> dict[str, Any]:
        """The shared state's health, for /instanceinfo: never the URL's password."""
        link = self.cluster
        assert link is not None
        return {"replica": link.replica,
                "configVersion": self.config_version,
                "redis": {"connected": link.connected, "address": link.address,
                          "keyPrefix": link.prefix, "since": iso_time(link.since),
                          "outages": link.outages, "droppedMessages": link.dropped},
                "cooldownPropagation": link.propagation()}

    def metrics(self, path: str, scope: str = "instance") -> dict[str, Any]:
        """The original's /metrics document. ``scope="cluster"``: every counter summed over
        the replicas (raises ClusterUnavailable when Redis cannot be read); without Redis,
        this instance is the whole cluster and says so."""
        s = self.settings
        extra: dict[str, Any] = {}
        if scope == "cluster" and self.cluster is not None:
            snapshot = self.cluster.cluster_metrics()
            extra = {"scope": "cluster", "replicas": snapshot["replicas"],
                     "currentIntervalStart": snapshot["currentIntervalStart"]}
        else:
            snapshot = self.registry.metrics_snapshot()
            if scope == "cluster":
                extra = {"scope": "instance",
                         "scopeNote": "API_GATEWAY_REDIS_URL is not set: this instance's "
                                      "figures are the whole gateway's",
                         "replicas": [{"name": s.name, "lastSeen": iso_time(time.time()),
                                       "live": True, "configVersion": self.config_version}]}
        return {
            "listenPort": s.port,
            "instanceName": s.name,
            "collectionInterval": s.metrics_interval_minutes,
            "historyCount": s.metrics_history,
            "endpointMetrics": snapshot["endpointMetrics"],
            **({"deploymentMetrics": snapshot["deploymentMetrics"]}
               if snapshot["deploymentMetrics"] else {}),
            # only with client keys, so the original's shape is unchanged without them
            **({"clientMetrics": snapshot.get("clientMetrics")
                                 or self.usage.metrics_json(self.current.client_limits)}
               if self.client_keys.enabled else {}),
            "successApiCalls": snapshot["successApiCalls"],
            "failedApiCalls": snapshot["failedApiCalls"],
            "totalApiCalls": snapshot["totalApiCalls"],
            "endpointUri": path,
            "currentDate": iso_time(time.time()),
            **extra,
            "status": "OK",
        }

    def readiness(self) -> tuple[bool, list[dict[str, Any]]]:
        """Ready unless every endpoint is benched for faults (throttling alone keeps it ready)."""
        states = self.registry.availability()
        ready = any(s["available"] or s["reason"] == "throttled" for s in states)
        return ready, states
