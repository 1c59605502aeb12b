"""The registry: every registered method's options are its constructor's (one source for each default), unknown
names and options are user errors, and a factory's own bugs keep their traceback."""

import dataclasses
import inspect

import pytest

from gentune import registry
from gentune.errors import GentuneError

KINDS = ("objective", "regularizer")


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_options_are_its_constructor_arguments(kind):
    """Fields, annotations and defaults of each registered config equal the positional-or-keyword parameters of
    its factory; keyword-only parameters (code: embed_fn, generator, images) are not options."""
    assert registry.list_methods(kind)
    for entry in registry.entries(kind):
        params = [p for p in inspect.signature(entry.factory.__init__).parameters.values() if p.name != "self"]
        options = {p.name: p.default for p in params if p.kind is p.POSITIONAL_OR_KEYWORD}
        code = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        fields = {f.name: f for f in dataclasses.fields(entry.config)} if entry.config else {}
        assert list(fields) == list(options), entry.name
        assert not code & set(fields), entry.name
        for name, f in fields.items():
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            assert default == options[name], (entry.name, name)
        assert entry.factory.Config is entry.config
        # building from the config's own defaults is building with no options
        built = registry.create(kind, entry.name, **{k: getattr(entry.config(), k) for k in fields}) \
            if entry.name != "radreg" else None
        if built is not None:
            assert type(built) is entry.factory


def test_a_config_that_disagrees_with_its_constructor_is_refused():
    @dataclasses.dataclass
    class WrongDefault:
        alpha: float = 2.0

    class Method:
        def __init__(self, alpha: float = 1.0):
            self.alpha = alpha

    with pytest.raises(TypeError, match="'alpha' defaults to 2.0 in WrongDefault but 1.0"):
        registry.register("regularizer", "test-wrong", WrongDefault)(Method)
    assert "test-wrong" not in registry.list_methods("regularizer")

    class NoDefault:
        def __init__(self, alpha):
            self.alpha = alpha

    with pytest.raises(TypeError, match="needs a default"):
        registry.register("regularizer", "test-nodefault")(NoDefault)


def test_registry_errors():
    with pytest.raises(GentuneError, match="unknown regularizer 'nope'"):
        registry.create("regularizer", "nope")
    with pytest.raises(GentuneError, match="unknown option l2sp.gamma"):
        registry.create("regularizer", "l2sp", gamma=1.0)
    with pytest.raises(GentuneError, match="regularizer 'l2sp': l2sp: alpha and beta must be >= 0"):
        registry.create("regularizer", "l2sp", alpha=-1.0)


def test_a_factory_bug_is_not_a_user_error():
    """Only ValueError (a bad option value) becomes a GentuneError; a TypeError in the factory is a bug."""
    class Buggy:
        def __init__(self, x: int = 1):
            raise TypeError("a bug")

    registry.register("regularizer", "test-buggy")(Buggy)
    try:
        with pytest.raises(TypeError, match="a bug"):
            registry.create("regularizer", "test-buggy")
    finally:
        registry.unregister("regularizer", "test-buggy")
