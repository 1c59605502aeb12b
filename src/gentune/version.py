"""The version of gentune: one place, read by `gentune --version`, the model cards and the package metadata."""

__version__ = "0.1.0"
