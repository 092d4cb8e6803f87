"""poolcli: find, fit, swap and evaluate pooling in pretrained CNNs.

The Python API (:mod:`poolcli.api`): ``load_model``, ``inspect``, ``collect``, ``fit``, ``convert``,
``finetune``, ``evaluate``; ``open_data`` and ``save_checkpoint``.
"""

from __future__ import annotations

__version__ = "0.2.0"
_API = ("load_model", "inspect", "collect", "fit", "convert", "finetune", "evaluate", "open_data")
__all__ = ["__version__", *_API, "save_checkpoint", "build_model"]


def __getattr__(name: str):  # lazy: `import poolcli` stays cheap for the CLI's --help
    if name in _API:
        from . import api

        return getattr(api, name)
    if name == "save_checkpoint":
        from .models import checkpoint

        return checkpoint.save_checkpoint
    if name == "build_model":
        from .models.spec import build_model

        return build_model
    raise AttributeError(name)
