"""Evaluation: classification now; retrieval, robustness and separability build on the same loop."""
