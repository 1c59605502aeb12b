"""Training objectives. Each returns a dict with ``loss`` and the model ``output`` (timm's task contract)."""

from . import classification, context_encoder, image_classification, mae  # noqa: F401  (registers)
