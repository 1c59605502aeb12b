"""How large are SMART's R_s and R3F's term on real MiniLM, in train mode (dropout on) and eval mode?

Not run by CI. One batch of 32 SST-2 training sentences; prints R_s (K=1, sigma=eps, eta=100*eps) and R3F
(sigma=eps) for several eps. Used to choose the noise scale and the dropout handling of `smart-adv`:

    GENTUNE_DATA=../shared/data/glue python benchmarks/smart_divergence_scale.py
"""

import os

import torch

from gentune.data import get_task, load_splits
from gentune.models.hf import load_for_task, load_tokenizer
from gentune.objectives.classification import Collator, tokenize
from gentune.regularizers.smart import R3F, SmartAdversarial


def main() -> None:
    task = get_task("sst2")
    train, _ = load_splits(task, os.environ.get("GENTUNE_DATA"))
    tok = load_tokenizer("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = load_for_task("all-MiniLM-L6-v2", task)
    batch = Collator(tok, False)(list(tokenize(train.select(range(32)), tok, 128, False)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    print("mode   eps      R_s        R3F")
    for mode in ("train", "eval"):
        getattr(model, mode)()
        for eps in (1e-5, 1e-3, 1e-2, 1e-1):
            torch.manual_seed(1)
            rs = SmartAdversarial(sigma=eps, eps=eps, eta=eps * 100)(model, batch, model(**inputs))["smart_adv"]
            torch.manual_seed(1)
            r3 = R3F(sigma=eps)(model, batch, model(**inputs))["r3f"]
            print(f"{mode:<6} {eps:<8g} {rs.item():<10.3g} {r3.item():.3g}")


if __name__ == "__main__":
    main()
