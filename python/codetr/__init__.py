"""codetr: Co-DETR (Co-DINO) inference in plain PyTorch with a C++/CUDA deformable-attention op,
ahead-of-time export (AOTInductor, ONNX) and a C++ runtime."""

__version__ = "0.1.0"

from codetr.checkpoint import load_checkpoint  # noqa: E402
from codetr.models import build_model  # noqa: E402
from codetr.presets import PRESETS, get_preset  # noqa: E402
