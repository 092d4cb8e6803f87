"""Orchestration across layers: run models over datasets to collect statistics, fit, and write files."""
