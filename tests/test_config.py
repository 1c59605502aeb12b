import pytest

from gentune.config import FinetuneConfig, apply_mapping, apply_overrides, dump_yaml, load_yaml
from gentune.errors import GentuneError


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: rte\nout: runs/x\nlr: 1.0e-4\nregularizer: l2sp\n")
    cfg = load_yaml(FinetuneConfig(), str(f))
    assert (cfg.task, cfg.lr, cfg.regularizer) == ("rte", 1e-4, ["l2sp"])
    cfg = apply_overrides(cfg, ["lr=3e-5", "epochs=2", "l2sp.alpha=0.5", "save_model=false", "train_size=100"])
    assert cfg.lr == 3e-5 and cfg.epochs == 2.0 and isinstance(cfg.epochs, float)
    assert cfg.regularizer_options == {"l2sp": {"alpha": 0.5}} and cfg.save_model is False
    assert cfg.train_size == 100
    assert apply_overrides(cfg, ["train_size=null"]).train_size is None
    cfg.train_size = 100
    cfg.validate()
    # the dump round-trips
    g = tmp_path / "d.yaml"
    g.write_text(dump_yaml(cfg))
    assert load_yaml(FinetuneConfig(), str(g)) == cfg


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["nope=1"], "unknown config key 'nope'"),
        (["lr"], "expected key=value"),
        (["lr=fast"], "--set lr: expected a number"),
        (["save_model=3"], "expected true/false"),
        (["train_size=abc"], "--set train_size: expected an integer"),
        (["l2sp.gamma=1"], "regularizer 'l2sp' has no option 'gamma'"),
        (["smartish.eps=1"], "unknown config key 'smartish.eps'"),
        # options whose default is None are parsed by their annotation ("auto" is not a bool)
        (["smart.regression=auto"], "--set smart.regression: expected true/false, got 'auto'"),
        (["radreg.image_size=abc"], "--set radreg.image_size: expected an integer"),
        (["exclude_split_seed=x"], "--set exclude_split_seed: expected an integer"),
    ],
)
def test_bad_overrides(overrides, needle):
    with pytest.raises(GentuneError, match=needle.replace("(", r"\(")):
        apply_overrides(FinetuneConfig(), overrides)


def test_text_fields_keep_the_text_and_optional_options_parse_by_annotation():
    cfg = apply_overrides(FinetuneConfig(), ["model=1", "mixed_precision=no", "smart.regression=true",
                                             "exclude_split_seed=0"])
    assert cfg.model == "1" and cfg.mixed_precision == "no" and cfg.exclude_split_seed == 0
    assert cfg.regularizer_options == {"smart": {"regression": True}}


@pytest.mark.parametrize("data,needle", [
    ({"lr": "abc"}, "c.yaml: lr: expected float, got 'abc'"),
    ({"epochs": "3"}, "c.yaml: epochs: expected float"),
    ({"regularizer": 5}, "c.yaml: regularizer: expected list"),
    ({"regularizer_options": 5}, "c.yaml: regularizer_options: expected dict"),
    ({"save_model": "yes"}, "c.yaml: save_model: expected bool"),
])
def test_yaml_values_are_type_checked(tmp_path, data, needle):
    import yaml

    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(GentuneError, match=needle):
        load_yaml(FinetuneConfig(), str(f))


def test_bad_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: rte\nbogus: 1\n")
    with pytest.raises(GentuneError, match="c.yaml: unknown config key 'bogus'"):
        load_yaml(FinetuneConfig(), str(f))
    f.write_text("task: [rte\n")
    with pytest.raises(GentuneError, match=r"c.yaml:\d+: malformed YAML"):
        load_yaml(FinetuneConfig(), str(f))
    with pytest.raises(GentuneError, match="no such config file"):
        load_yaml(FinetuneConfig(), str(tmp_path / "missing.yaml"))
    f.write_bytes(b"task: \xff\xfe\n")
    with pytest.raises(GentuneError, match="c.yaml: not UTF-8 text"):
        load_yaml(FinetuneConfig(), str(f))


def test_validate():
    cfg = apply_mapping(FinetuneConfig(), {"task": "rte", "out": "x"}, "t")
    cfg.validate()
    for key, value, needle in [("batch_size", 0, "batch_size"), ("warmup_ratio", 1.5, "warmup_ratio"),
                               ("mixed_precision", "fp8", "mixed_precision"), ("task", "", "task is required")]:
        bad = apply_mapping(FinetuneConfig(), {"task": "rte", "out": "x", key: value}, "t")
        with pytest.raises(GentuneError, match=needle):
            bad.validate()
    bad = apply_mapping(FinetuneConfig(), {"task": "rte", "out": "x", "regularizer_options": {"l2sp": {}}}, "t")
    with pytest.raises(GentuneError, match="not in regularizer"):
        bad.validate()


def test_every_recipe_loads_and_validates():
    """configs/**.yaml: known keys, valid values, and a first line that is the command that runs it."""
    from pathlib import Path

    from gentune.config import PretrainConfig

    root = Path(__file__).resolve().parents[1] / "configs"
    recipes = sorted(root.rglob("*.yaml"))
    assert len(recipes) >= 4
    for path in recipes:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# gentune ") and f"--config configs/{path.relative_to(root)}" in first, path
        cls = PretrainConfig if path.parent.name == "pretrain" else FinetuneConfig
        cfg = load_yaml(cls(), str(path))
        cfg.out = "runs/x"
        cfg.validate()
