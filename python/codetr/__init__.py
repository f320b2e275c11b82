"""codetr: Co-DETR (Co-DINO) inference in plain PyTorch with a C++/CUDA deformable-attention op,
ahead-of-time export (AOTInductor, ONNX) and a C++ runtime that Python runs through a binding.

``import codetr`` loads the native runtime and the ``torch.ops.codetr`` ops (see codetr._C)."""

from codetr._native import Error, runtime  # noqa: E402  (libtorch first, then libcodetr)

__version__ = runtime.version()

try:
    from codetr import _C  # noqa: E402,F401  (torch.ops.codetr.* and their fake implementations)
except Error as exc:  # the op library is missing or does not load: say which and where
    raise ImportError(f"codetr: {exc}") from None
from codetr.checkpoint import load_checkpoint  # noqa: E402
from codetr.models import build_model  # noqa: E402
from codetr.presets import PRESETS, get_preset  # noqa: E402
from codetr.runtime import Detections, Detector, result_json, result_record  # noqa: E402
