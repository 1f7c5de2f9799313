"""Entry point. ``waitress-serve wsgi:app`` imports ``app``; ``python wsgi.py`` serves it.

``python wsgi.py`` is the recommended way: it applies the thread count, connection limit and
body limit from the environment, drains calls in flight on SIGTERM, and can read the variables
from an env file (``--env-file``, docker's format).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import MISSING

from flask import Flask

from gateway_app import create_app
from gateway_app.config import ConfigError
from gateway_app.envfile import EnvFileError, load_env_files
from gateway_app.settings import Settings, SettingsError


def cannot_start(problem: object) -> SystemExit:
    """Print the one start-up error line; raise what this returns to exit with status 1."""
    print(f"apirouter: cannot start: {problem}", file=sys.stderr)
    return SystemExit(1)


def build_app() -> Flask:
    """The app, or one clear line on stderr and exit status 1."""
    try:
        return create_app()
    except (SettingsError, ConfigError) as exc:
        raise cannot_start(exc) from None


def _help_epilog() -> str:
    lines = ["environment variables (required ones have no default):"]
    for name, _field, default in Settings.variables():
        if default is MISSING:
            shown = "required"
        else:
            if isinstance(default, bool):  # flags read on/off, as the README spells them
                default = "on" if default else "off"
            shown = f"default {default}" if default not in ("", ()) else "optional, no default"
        lines.append(f"  {name:43} {shown}")
    lines.append("See README.md for what each one means, and .env.sample for an env file that "
                 "lists them all.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python wsgi.py",
        description="Serve the Azure OpenAI API gateway with waitress. All settings come from "
                    "the environment, or from env files; SIGTERM drains calls in flight, then "
                    "exits 0.",
        epilog=_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--env-file", metavar="FILE", action="append", default=[],
        help="read variables from FILE, in the format of docker run --env-file: VAR=VALUE "
             "lines, taken as they are (no quotes removed, nothing expanded), # comments, and "
             "a bare VAR to take it from the environment. Variables already in the "
             "environment win over the file. Repeatable: a later file wins over an earlier one.")
    args = parser.parse_args(argv)
    try:
        load_env_files(args.env_file, os.environ)
    except EnvFileError as exc:
        raise cannot_start(exc) from None
    app = build_app()
    from gateway_app.server import serve

    serve(app, app.extensions["apirouter"].settings)
    app.extensions["apirouter"].stop(flush_metrics=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
else:
    app = build_app()
