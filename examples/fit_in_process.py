"""Many short fine-tunings in one process with ``gentune.train.fit``: a learning-rate sweep on a 16-shot SST-2
split, each rate scored on the split's dev file. ``fit`` trains in process, writes no files and releases what it
prepared, so the loop can be called as often as a search needs (``gentune finetune`` is ``run`` on top of it).

    python examples/fit_in_process.py --data-dir ../shared/data/glue                  # MiniLM, 3 rates, 5 epochs
    python examples/fit_in_process.py --data-dir ../shared/data/glue --epochs 1 --lrs 1e-4   # a smoke run
"""

import argparse
from pathlib import Path

from accelerate.utils import set_seed

from gentune.config import apply_mapping
from gentune.tasks.text_classification import TextClassificationConfig, build
from gentune.train import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True, help="a GLUE/LM-BFF tree holding k-shot/SST-2/16-13")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a Hugging Face model name or folder")
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 1e-4, 3e-4])
    args = parser.parse_args()

    split = Path(args.data_dir) / "k-shot" / "SST-2" / "16-13"
    scores = {}
    for lr in args.lrs:
        cfg = apply_mapping(TextClassificationConfig(), {
            "task": "sst2", "out": "unused", "model": args.model, "train": str(split / "train.tsv"),
            "dev": str(split / "dev.tsv"), "lr": lr, "epochs": args.epochs, "batch_size": 8, "seed": 13}, "sweep")
        set_seed(cfg.seed)  # each fit starts from the same model initialisation and data order
        result = fit(build(cfg), cfg)
        scores[lr] = result.final_dev["accuracy"]
        print(f"lr {lr:g}: {result.state.step} steps, dev accuracy {scores[lr]:.3f}", flush=True)
    best = max(scores, key=scores.get)
    print(f"best lr {best:g} (dev accuracy {scores[best]:.3f})")


if __name__ == "__main__":
    main()
