"""Import zennit without torchvision (the least possible shim).

zennit 0.5.1 imports ``zennit.torchvision`` from its ``__init__``, and that module runs
``from torchvision.models.resnet import Bottleneck, BasicBlock`` at import time, only to define
canonizers for torchvision's ResNets. brainage does not use those canonizers, and torchvision has
no CPU build where brainage is developed. So, *only when torchvision is not importable*,
:func:`import_zennit` puts three throwaway stand-in modules (``torchvision``,
``torchvision.models``, ``torchvision.models.resnet`` with two empty placeholder classes
``Bottleneck`` and ``BasicBlock``) into ``sys.modules`` for the duration of ``import zennit`` and
removes them again right after (in ``finally``), so no other code ever sees a fake torchvision:
``import torchvision`` still fails afterwards exactly as before.

Consequence: ``zennit.torchvision``'s ResNet canonizers hold the placeholder classes and never
match a module (inert); everything else in zennit is the unmodified library. Where torchvision is
installed, zennit is imported normally and nothing is patched.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types

_LOCK = threading.Lock()
_STAND_INS = ("torchvision", "torchvision.models", "torchvision.models.resnet")


def _torchvision_importable() -> bool:
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"] is not None
    try:
        return importlib.util.find_spec("torchvision") is not None
    except (ImportError, ValueError):
        return False


def _stand_in_modules() -> dict[str, types.ModuleType]:
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.__doc__ = "brainage stand-in so that zennit imports without torchvision (never used)."

    class Bottleneck:  # placeholder: no module is ever an instance of it
        """Placeholder for torchvision.models.resnet.Bottleneck (zennit import only)."""

    class BasicBlock:  # placeholder: no module is ever an instance of it
        """Placeholder for torchvision.models.resnet.BasicBlock (zennit import only)."""

    resnet.Bottleneck = Bottleneck
    resnet.BasicBlock = BasicBlock
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    root = types.ModuleType("torchvision")
    root.models = models
    return {"torchvision": root, "torchvision.models": models, "torchvision.models.resnet": resnet}


def import_zennit() -> types.ModuleType:
    """Import and return the ``zennit`` package, shimming torchvision only if it is missing.

    Returns
    -------
    module
        The ``zennit`` package (with ``zennit.composites``, ``zennit.canonizers``, … loaded).

    Raises
    ------
    ImportError
        zennit is not installed.
    """
    if "zennit" in sys.modules and hasattr(sys.modules["zennit"], "composites"):
        return sys.modules["zennit"]
    with _LOCK:
        if _torchvision_importable():
            return importlib.import_module("zennit")
        stand_ins = _stand_in_modules()
        previous = {name: sys.modules[name] for name in _STAND_INS if name in sys.modules}
        for name, module in stand_ins.items():
            sys.modules[name] = module
        try:
            return importlib.import_module("zennit")
        finally:
            for name, module in stand_ins.items():
                if sys.modules.get(name) is module:
                    if name in previous:
                        sys.modules[name] = previous[name]
                    else:
                        del sys.modules[name]
