"""Entry point. ``waitress-serve wsgi:app`` imports ``app``; ``python wsgi.py`` serves it.

``python wsgi.py`` is the recommended way: it applies the thread count, connection limit and
body limit from the environment and drains calls in flight on SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING

from flask import Flask

from gateway_app import create_app
from gateway_app.config import ConfigError
from gateway_app.settings import Settings, SettingsError


def build_app() -> Flask:
    """The app, or one clear line on stderr and exit status 1."""
    try:
        return create_app()
    except (SettingsError, ConfigError) as exc:
        print(f"apirouter: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def _help_epilog() -> str:
    lines = ["environment variables (required ones have no default):"]
    for name, _field, default in Settings.variables():
        if default is MISSING:
            shown = "required"
        else:
            shown = f"default {default}" if default not in ("", ()) else "optional, no default"
        lines.append(f"  {name:43} {shown}")
    lines.append("See README.md for what each one means.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python wsgi.py",
        description="Serve the Azure OpenAI API gateway with waitress. All settings come from "
                    "the environment; SIGTERM drains calls in flight, then exits 0.",
        epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    app = build_app()
    from gateway_app.server import serve

    serve(app, app.extensions["apirouter"].settings)
    app.extensions["apirouter"].stop(flush_metrics=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    app = build_app()
