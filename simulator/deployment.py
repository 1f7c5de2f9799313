"""A running deployment: its settings with the state they need (limiter and fault dice)."""

from __future__ import annotations

from dataclasses import dataclass

from simulator.config import DeploymentConfig
from simulator.faults import FaultInjector, FaultRates
from simulator.limits import SlidingWindowLimiter


@dataclass
class Deployment:
    """One simulated deployment; shared by all the threads that serve it."""

    config: DeploymentConfig
    limiter: SlidingWindowLimiter
    faults: FaultInjector

    @classmethod
    def build(cls, config: DeploymentConfig) -> Deployment:
        """Fresh state (empty window, dice at their seed) for ``config``."""
        return cls(
            config=config,
            limiter=SlidingWindowLimiter(
                tokens=config.tpm, requests=config.effective_rpm, window=config.window_seconds
            ),
            faults=FaultInjector(
                FaultRates(
                    drop=config.drop_rate,
                    error_500=config.fault_rate_500,
                    slow=config.slow_rate,
                ),
                seed=config.seed,
            ),
        )

    def first_token_delay(self) -> float:
        """Seconds before the first token."""
        return self.config.ttft_ms / 1000.0

    def token_delay(self) -> float:
        """Seconds between two output tokens."""
        return self.config.ms_per_token / 1000.0
