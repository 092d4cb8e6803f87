"""poolcli: find, fit, swap and evaluate pooling in pretrained CNNs."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__", "load_model", "save_checkpoint", "build_model"]


def __getattr__(name: str):  # lazy: `import poolcli` stays cheap for the CLI's --help
    if name in ("load_model", "save_checkpoint"):
        from .models import checkpoint

        return getattr(checkpoint, name)
    if name == "build_model":
        from .models.spec import build_model

        return build_model
    raise AttributeError(name)
