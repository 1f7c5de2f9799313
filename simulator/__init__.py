"""A small Azure OpenAI simulator: deployments with quotas, latency, streaming and faults.

Run it with ``python -m simulator`` or embed it::

    from simulator import SimulatorServer
    with SimulatorServer({"deployments": [{"name": "d1", "apikey": "k"}]}, port=0) as srv:
        print(srv.url)
"""

from simulator.config import (
    ConfigError,
    DeploymentConfig,
    SimulatorConfig,
    load_config,
    parse_config,
)
from simulator.server import SimulatorServer

__all__ = [
    "ConfigError",
    "DeploymentConfig",
    "SimulatorConfig",
    "SimulatorServer",
    "load_config",
    "parse_config",
]
