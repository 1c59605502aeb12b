"""Training objectives. Each returns a dict with ``loss`` and the model ``output`` (timm's task contract); each
file registers its objective(s) with ``@register("objective", name)``."""

import importlib
import pkgutil

# every module of this package registers itself on import: a new file is found without a line here
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
