"""Models: Hugging Face adapters (:mod:`.hf`), small vision encoders and the image classifier (:mod:`.vision`), and
the one checkpoint format every saved model uses (:mod:`.checkpoint`)."""

from .checkpoint import load_text_classifier
from .hf import DEFAULT_MODEL, load_for_task, load_tokenizer, resolve_model_path

__all__ = ["DEFAULT_MODEL", "load_for_task", "load_text_classifier", "load_tokenizer", "resolve_model_path"]
