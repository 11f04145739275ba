"""hf-sparseout: Sparseout (Khan & Stavness, 2019) for Hugging Face transformers models."""

from hf_sparseout.layers import Sparseout
from hf_sparseout.ops.sparseout import MAX_SCALE, sparseout
from hf_sparseout.version import __version__

__all__ = ["MAX_SCALE", "Sparseout", "__version__", "sparseout"]
