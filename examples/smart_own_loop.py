"""SMART in your own PyTorch training loop: three added lines around an ordinary Hugging Face fine-tuning loop.

    python examples/smart_own_loop.py --data-dir ../shared/data/glue               # MiniLM, 100 steps on SST-2
    python examples/smart_own_loop.py --data-dir ../shared/data/glue --steps 5     # a smoke run

Without ``--data-dir`` the GLUE folder comes from ``$GENTUNE_DATA`` (else the Hugging Face Hub).
"""

import argparse

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from gentune import registry
from gentune.data import get_task, load_splits, stratified_subsample
from gentune.models.hf import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="GLUE folder holding full/SST-2 (default: $GENTUNE_DATA)")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a Hugging Face model name or folder")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()

    torch.manual_seed(0)
    train, _ = load_splits(get_task("sst2"), args.data_dir)
    train = stratified_subsample(train, 16 * args.steps, seed=0)
    path = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    encoded = train.map(lambda b: tokenizer(b["text_a"], truncation=True, max_length=64), batched=True,
                        remove_columns=["text_a", "text_b"]).rename_column("label", "labels")
    loader = torch.utils.data.DataLoader(encoded, batch_size=16, shuffle=True,
                                         collate_fn=DataCollatorWithPadding(tokenizer))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)

    smart = registry.create("regularizer", "smart", total_steps=args.steps)  # SMART (1/3)
    model.train()
    for step, batch in enumerate(loader):
        outputs = model(**batch)  # the loss of a HF model given labels: cross-entropy
        terms = smart(model, batch, outputs)  # SMART (2/3): {"smart_adv": ..., "bregman": ...}
        loss = outputs.loss + sum(terms.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        smart.after_step(model)  # SMART (3/3): moves the momentum teacher
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step}: task {outputs.loss.item():.4f} "
                  + " ".join(f"{k} {v.item():.2e}" for k, v in terms.items()))


if __name__ == "__main__":
    main()
