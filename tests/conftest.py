import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLUE = Path(os.environ.get("GENTUNE_DATA", ROOT.parent / "shared" / "data" / "glue"))

# No test may reach for the Hub: a missing local file must fail fast, as it does offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Under pytest-xdist (make test: -n 2 on 2 cores) each worker computes on one thread, and so do the processes it
# starts: two workers of two threads each would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


SHARED = ROOT.parent / "shared"


def shared_data(path: Path, what: str) -> Path:
    """A data set of the workplace's shared folder, which CI provides: a test that needs it fails (never skips)
    when it is missing, naming where it looked."""
    if not path.exists():
        pytest.fail(f"{what} not found at {path}: this test needs the shared data (../shared, or set GENTUNE_DATA)")
    return path


@pytest.fixture(scope="session")
def glue() -> Path:
    """The GLUE/LM-BFF tree (real data: CI provides ../shared/data/glue)."""
    return shared_data(GLUE / "full", "GLUE data").parent


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random BERT (hidden 32, 2 layers) with the real MiniLM WordPiece tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from gentune.models.hf import resolve_model_path

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tok():
    from gentune.models.hf import load_tokenizer

    return load_tokenizer("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def tiny_mlm(tmp_path_factory, tok):
    """A tiny random BertForMaskedLM (its own head, untied bias) with the MiniLM vocabulary, dropout off."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    path = tmp_path_factory.mktemp("tiny-mlm")
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForMaskedLM(cfg)
    with torch.no_grad():
        model.cls.predictions.bias.normal_(0, 0.5)  # a non-zero bias, so that leaving it out would show
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_nodrop(tmp_path_factory, tiny_model) -> str:
    """The tiny BERT without dropout: runs on 1 and 2 processes must then agree to float precision."""
    import json

    path = tmp_path_factory.mktemp("tiny-bert-nodrop")
    for f in Path(tiny_model).iterdir():
        shutil.copy(f, path / f.name)
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


def run_cli(*args, env=None, cwd=None, timeout=600):
    """Run ``python -m gentune ARGS`` in a subprocess; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "gentune", *map(str, args)], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=timeout)


@pytest.fixture()
def tiny(tiny_model_nodrop):
    """(model, batch): the dropout-free tiny BERT as an SST-2 classifier in float64, and a padded 2-sentence batch."""
    import torch

    from gentune.data import get_task
    from gentune.models.hf import load_for_task, load_tokenizer

    torch.manual_seed(0)
    model = load_for_task(tiny_model_nodrop, get_task("sst2")).double()
    tok = load_tokenizer(tiny_model_nodrop)
    batch = dict(tok(["a fine film", "dull , slow and far too long"], padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0])
    return model, batch


# A CLI with a regularizer that adds nothing and sleeps after each step, so a test can kill a run part-way.
SLOW_CLI = '''
import sys, time
from gentune import registry
from gentune.cli import main

@registry.register("regularizer", "test-slow")
class Slow:
    """Adds no loss; sleeps after each step so a test can kill the run part-way."""
    def __call__(self, model, batch, outputs):
        return {}
    def after_step(self, model):
        time.sleep(0.3)

sys.exit(main(sys.argv[1:]))
'''


def one_line_error(r, needle: str) -> None:
    """The CLI's user-error contract on a CompletedProcess: exit 2 and one line ``error: ...`` naming ``needle``."""
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines


def cli(capsys, *args) -> tuple[int, str, str]:
    """``gentune ARGS`` in this process (``cli.main``): (exit status, stdout, stderr)."""
    from gentune.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_ok(capsys, *args) -> str:
    """Runs ``gentune ARGS`` in process and asserts it succeeded; returns its stdout."""
    code, out, err = cli(capsys, *args)
    assert code == 0, err[-2000:]
    return out


def cli_error(capsys, needle: str, *args) -> str:
    """The CLI's user-error contract in process: exit 2 and one line ``error: ...`` naming ``needle``."""
    code, _, err = cli(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    return lines[0]


def write_images(root: Path, classes, per_class: int, size: int, noise: float | None = None, seed: int = 0) -> Path:
    """An image folder ``root/<class>/<i>.png``: each class a dominant colour plus Gaussian ``noise`` (separable
    classes), or, with ``noise`` None, uniform random pixels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            if noise is None:
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            else:
                base = np.zeros((size, size, 3))
                base[..., ci % 3] = 170
                pixels = (base + rng.normal(0, noise, (size, size, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i:03d}.png")
    return root
