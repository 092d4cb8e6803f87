"""Robustness alterations: common corruptions (``corruptions``), shifted copies (``shift``), ..."""
