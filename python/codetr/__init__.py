"""codetr: Co-DETR (Co-DINO) inference in plain PyTorch with a C++/CUDA deformable-attention op,
ahead-of-time export (AOTInductor, ONNX) and a C++ runtime."""

__version__ = "0.1.0"
