"""codetr's native side: ``runtime``, the Python binding of libcodetr (the C++ runtime's Detector,
model.json parser, pre- and postprocessing: one implementation for C++ and Python)."""
from __future__ import annotations

import torch  # noqa: F401  (loads libtorch first: the binding and libcodetr link against it)

from codetr import _lib

try:
    from codetr._lib import _runtime as runtime
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(f"codetr: the native runtime codetr._lib._runtime cannot be loaded ({exc}); "
                      f"{_lib.rebuild_hint()}") from exc

Error = runtime.Error
