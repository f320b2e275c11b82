"""Building blocks shared by the Co-DINO modules."""
from codetr.nn.msda import MSDA_IMPLS, MultiScaleDeformableAttention, set_msda_impl

__all__ = ["MSDA_IMPLS", "MultiScaleDeformableAttention", "set_msda_impl"]
