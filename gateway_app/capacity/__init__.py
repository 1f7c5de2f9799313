"""Capacity planning: the report, the PTU table, the history file, the dashboard and the CLI.

``python -m gateway_app.capacity`` runs the command line (``__main__.py``).
"""
