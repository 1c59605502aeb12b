"""Models: Hugging Face adapters (:mod:`gentune.models.hf`)."""

from .hf import DEFAULT_MODEL, load_checkpoint, load_for_task, load_tokenizer, resolve_model_path

__all__ = ["DEFAULT_MODEL", "load_checkpoint", "load_for_task", "load_tokenizer", "resolve_model_path"]
