"""The app's one blueprint. Its rules live under the route prefix, except those marked ROOT.

The original's routes live under ``/api/v1/{env}/apirouter``; the Azure OpenAI and OpenAI
data-plane paths (``/openai/...``, ``/v1/...``) must sit at the root, where the SDKs look for
them. Flask documents ``make_setup_state`` as the place to change how rules are registered.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask
from flask.blueprints import BlueprintSetupState

ROOT = "root:"  # a rule starting with this is registered without the blueprint's url_prefix


class _SetupState(BlueprintSetupState):
    def add_url_rule(self, rule: str, endpoint: str | None = None, view_func: Any = None,
                     **options: Any) -> None:
        if not rule.startswith(ROOT):
            super().add_url_rule(rule, endpoint, view_func, **options)
            return
        prefix, self.url_prefix = self.url_prefix, None
        try:
            super().add_url_rule(rule[len(ROOT):], endpoint, view_func, **options)
        finally:
            self.url_prefix = prefix


class GatewayBlueprint(Blueprint):
    def make_setup_state(self, app: Flask, options: dict, first_registration: bool = False
                         ) -> BlueprintSetupState:
        return _SetupState(self, app, options, first_registration)


bp = GatewayBlueprint("apirouter", __name__)
