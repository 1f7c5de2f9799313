"""Benchmarks of the gateway against a fast fake deployment (nginx) and the simulator.

Run ``python bench/run.py`` (``--quick`` for a smoke run, ``--help`` for the options).
"""
