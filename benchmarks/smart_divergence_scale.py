"""How large are SMART's R_s and R3F's term on real MiniLM, in train mode (dropout on) and eval mode?

Not run by CI. One batch of 32 SST-2 training sentences; prints R_s (K=1, sigma=eps, eta=100*eps) and R3F
(sigma=eps) for several eps, in four settings:

- train / independent: dropout on, the perturbed forward draws its own masks (the paper's code, our default);
- train / shared: dropout on, the perturbed forward replays the clean forward's masks (`dropout="shared"`);
- eval: dropout off (what the perturbation alone does);
- eval / bf16: dropout off under CPU bfloat16 autocast (what survives half-precision rounding).

Used to choose the noise scale and the dropout handling of `smart-adv`; writes
benchmarks/results/smart_divergence_scale.json:

    GENTUNE_DATA=../shared/data/glue python benchmarks/smart_divergence_scale.py
"""

import argparse
import contextlib
import datetime as dt
import os

import torch

from gentune.data import get_task, load_splits
from gentune.models.hf import load_for_task, load_tokenizer
from gentune.objectives.classification import Collator, tokenize
from gentune.regularizers.smart import R3F, SmartAdversarial

from _lib import cells
from _lib.paths import RESULTS


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    task = get_task("sst2")
    train, _ = load_splits(task, os.environ.get("GENTUNE_DATA"))
    tok = load_tokenizer("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = load_for_task("all-MiniLM-L6-v2", task)
    batch = Collator(tok, False)(list(tokenize(train.select(range(32)), tok, 128, False)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    settings = {"train / independent": ("train", "independent", False), "train / shared": ("train", "shared", False),
                "eval": ("eval", "independent", False), "eval / bf16": ("eval", "independent", True)}
    rows = []
    print(f"{'setting':<20} {'eps':<8} {'R_s':<10} R3F")
    for name, (mode, dropout, bf16) in settings.items():
        getattr(model, mode)()
        for eps in (1e-5, 1e-4, 1e-3, 1e-2, 1e-1):
            values = []
            for reg in (SmartAdversarial(sigma=eps, eps=eps, eta=eps * 100, dropout=dropout),
                        R3F(sigma=eps, dropout=dropout)):
                ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
                with ctx:
                    reg(model, batch, model(**inputs))  # the first call attaches the shared-mask recorder
                    torch.manual_seed(1)
                    values.append(next(iter(reg(model, batch, model(**inputs)).values())).item())
            rows.append({"setting": name, "eps": eps, "smart_adv": values[0], "r3f": values[1]})
            print(f"{name:<20} {eps:<8g} {values[0]:<10.3g} {values[1]:.3g}")
    cells.write_json(RESULTS / "smart_divergence_scale.json", {
        "command": "python benchmarks/smart_divergence_scale.py", "batch": 32, "model": "all-MiniLM-L6-v2",
        "date": dt.date.today().isoformat(), "rows": rows})


if __name__ == "__main__":
    main()
