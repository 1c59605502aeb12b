"""Typed configs: YAML files, mappings and --set through one path (OmegaConf structured configs), method options
checked against their method's schema, one-line errors naming the key and where it came from."""

import pytest

from gentune.config import apply_mapping, apply_overrides, dump_yaml, load_yaml, parse_yaml
from gentune.errors import GentuneError
from gentune.tasks.image_classification import ImageClassificationConfig
from gentune.tasks.image_pretraining import ImagePretrainingConfig
from gentune.tasks.text_classification import TextClassificationConfig as TextConfig


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: rte\nout: runs/x\nlr: 1e-4\nregularizer: l2sp\n")  # YAML 1.2: 1e-4 is a number
    cfg = load_yaml(TextConfig(), str(f))
    assert (cfg.task, cfg.lr, cfg.regularizer) == ("rte", 1e-4, ["l2sp"]) and isinstance(cfg.lr, float)
    cfg = apply_overrides(cfg, ["lr=3e-5", "epochs=2", "l2sp.alpha=0.5", "save_model=false", "train_size=100"])
    assert cfg.lr == 3e-5 and cfg.epochs == 2.0 and isinstance(cfg.epochs, float)
    assert cfg.regularizer_options == {"l2sp": {"alpha": 0.5}} and cfg.save_model is False
    assert cfg.train_size == 100 and isinstance(cfg, TextConfig)
    assert apply_overrides(cfg, ["train_size=null"]).train_size is None
    cfg.validate()
    # the dump round-trips
    g = tmp_path / "d.yaml"
    g.write_text(dump_yaml(cfg))
    assert load_yaml(TextConfig(), str(g)) == cfg


def test_yaml_and_set_read_a_value_alike(tmp_path):
    """The same text means the same value in a file and after --set: numbers with exponents, and text fields
    that YAML 1.1 would read as booleans."""
    f = tmp_path / "c.yaml"
    f.write_text("lr: 3e-5\nmixed_precision: no\nsave_model: no\nmodel: 1\nclasses: [cat, dog]\n")
    a = load_yaml(ImageClassificationConfig(), str(f))
    b = apply_overrides(ImageClassificationConfig(), ["lr=3e-5", "mixed_precision=no", "save_model=no", "model=1",
                                                      "classes=cat,dog"])
    assert a == b
    assert (a.lr, a.mixed_precision, a.save_model, a.model, a.classes) == (3e-5, "no", False, "1", ["cat", "dog"])
    assert parse_yaml("x: 1e-4\ny: 1.5\nz: off\nw: true\nv: .inf") == {"x": 1e-4, "y": 1.5, "z": "off", "w": True,
                                                                      "v": float("inf")}


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["nope=1"], "--set nope: unknown config key 'nope'"),
        (["lr"], "expected key=value"),
        (["lr=fast"], "--set lr: expected a number, got 'fast'"),
        (["save_model=3"], "--set save_model: expected true/false, got 3"),
        (["train_size=abc"], "--set train_size: expected an integer or null, got 'abc'"),
        (["l2sp.gamma=1"], "--set l2sp.gamma: regularizer 'l2sp' has no option 'gamma'"),
        (["smartish.eps=1"], "unknown config key 'smartish.eps'"),
        # options whose default is None are typed by their annotation ("auto" is not a bool)
        (["smart.regression=auto"], "--set smart.regression: expected true/false or null, got 'auto'"),
        (["radreg.image_size=abc"], "--set radreg.image_size: expected an integer or null, got 'abc'"),
        (["l2sp.alpha=abc"], "--set l2sp.alpha: expected a number, got 'abc'"),
        (["data=x"], "--set data: unknown config key 'data'"),  # an image field, not a text one
    ],
)
def test_bad_overrides(overrides, needle):
    with pytest.raises(GentuneError) as e:
        apply_overrides(TextConfig(), overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_text_fields_keep_the_text_and_optional_options_parse_by_annotation():
    cfg = apply_overrides(ImageClassificationConfig(), ["model=1", "mixed_precision=no", "smart.regression=true",
                                                        "exclude_split_seed=0", "radreg.mean=0.5,0.4,0.3"])
    assert cfg.model == "1" and cfg.mixed_precision == "no" and cfg.exclude_split_seed == 0
    assert cfg.regularizer_options == {"smart": {"regression": True}, "radreg": {"mean": [0.5, 0.4, 0.3]}}


@pytest.mark.parametrize("text,needle", [
    ("lr: abc\n", "c.yaml: lr: expected a number, got 'abc'"),
    ("epochs: three\n", "c.yaml: epochs: expected a number"),
    ("regularizer: 5\n", "c.yaml: regularizer: expected a list"),
    ("regularizer_options: 5\n", "c.yaml: regularizer_options: expected a mapping"),
    ("save_model: 2\n", "c.yaml: save_model: expected true/false"),
    ("regularizer: [l2sp]\nregularizer_options: {l2sp: {alpha: abc}}\n",
     "c.yaml: regularizer_options.l2sp.alpha: expected a number, got 'abc'"),
    ("regularizer_options: {l2sp: {gamma: 1}}\n", "c.yaml: regularizer 'l2sp' has no option 'gamma'"),
    ("regularizer_options: {nope: {a: 1}}\n", "c.yaml: regularizer_options: unknown regularizer 'nope'"),
])
def test_yaml_values_are_type_checked(tmp_path, text, needle):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(GentuneError) as e:
        load_yaml(TextConfig(), str(f))
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_objective_options_are_typed_by_their_objective():
    cfg = apply_overrides(ImagePretrainingConfig(), ["mae.mask_ratio=0.5", "context-encoder.mask=regions"])
    assert cfg.objective_options == {"mae": {"mask_ratio": 0.5}, "context-encoder": {"mask": "regions"}}
    with pytest.raises(GentuneError, match="--set mae.mask_ratio: expected a number, got 'half'"):
        apply_overrides(ImagePretrainingConfig(), ["mae.mask_ratio=half"])
    with pytest.raises(GentuneError, match="objective 'mae' has no option 'ratio'"):
        apply_overrides(ImagePretrainingConfig(), ["mae.ratio=0.5"])


def test_bad_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: rte\nbogus: 1\n")
    with pytest.raises(GentuneError, match="c.yaml: unknown config key 'bogus'"):
        load_yaml(TextConfig(), str(f))
    f.write_text("task: [rte\n")
    with pytest.raises(GentuneError, match=r"c.yaml:\d+: malformed YAML"):
        load_yaml(TextConfig(), str(f))
    with pytest.raises(GentuneError, match="no such config file"):
        load_yaml(TextConfig(), str(tmp_path / "missing.yaml"))
    f.write_bytes(b"task: \xff\xfe\n")
    with pytest.raises(GentuneError, match="c.yaml: not UTF-8 text"):
        load_yaml(TextConfig(), str(f))
    f.write_text("- a\n- b\n")
    with pytest.raises(GentuneError, match="c.yaml: expected a mapping"):
        load_yaml(TextConfig(), str(f))


def test_validate():
    cfg = apply_mapping(TextConfig(), {"task": "rte", "out": "x"}, "t")
    cfg.validate()
    for key, value, needle in [("batch_size", 0, "batch_size"), ("warmup_ratio", 1.5, "warmup_ratio"),
                               ("mixed_precision", "fp8", "mixed_precision"), ("task", "", "task is required")]:
        bad = apply_mapping(TextConfig(), {"task": "rte", "out": "x", key: value}, "t")
        with pytest.raises(GentuneError, match=needle):
            bad.validate()
    bad = apply_mapping(TextConfig(), {"task": "rte", "out": "x", "regularizer_options": {"l2sp": {}}}, "t")
    with pytest.raises(GentuneError, match="not in regularizer"):
        bad.validate()
    with pytest.raises(GentuneError, match="needs --data"):
        apply_mapping(ImageClassificationConfig(), {"out": "x"}, "t").validate()


def test_every_recipe_loads_and_validates(tmp_path):
    """The packaged recipes (gentune/recipes/**.yaml): known keys, valid values for their task once the data they
    ask for is given, a first line that is the command that runs it (by name), a second that says what it is; each
    is found by name, and `configs/` (the repository's link to them) holds the same files."""
    from pathlib import Path

    import gentune
    from gentune.config import read_yaml, recipe_path
    from gentune.tasks import for_name, for_objective

    root = Path(gentune.__file__).parent / "recipes"
    recipes = sorted(root.rglob("*.yaml"))
    assert len(recipes) >= 6 and any("lora" in p.name for p in recipes)
    link = Path(__file__).resolve().parents[1] / "configs"
    assert sorted(p.relative_to(link) for p in link.rglob("*.yaml")) == [p.relative_to(root) for p in recipes]
    for path in recipes:
        first, second = path.read_text().splitlines()[:2]
        assert first.startswith(f"# gentune {path.parent.name} --config {path.stem} "), path
        assert second.startswith("# ") and len(second) > 20, path
        assert recipe_path(path.stem) == path
        data = read_yaml(path.stem)
        assert data == read_yaml(path)
        task = for_objective(data.get("objective", "mae")) if path.parent.name == "pretrain" \
            else for_name(data["task"])
        needs = {"out": str(tmp_path / "x")}
        if "--data " in first:  # the image recipes name no data path: the command gives it
            needs["data"] = str(tmp_path)
            assert "data" not in data, path
        cfg = apply_mapping(load_yaml(task.config(), str(path)), needs, "test")
        cfg.validate()
