"""Fine-tune all-MiniLM-L6-v2 on a few hundred SST-2 sentences with SMART, through the Hugging Face Trainer.

A plain Trainer script; the two lines marked ``gentune`` are the whole switch to SMART::

    python examples/hf_trainer_smart.py --data-dir ../shared/data/glue              # 200 steps of 16 sentences
    python examples/hf_trainer_smart.py --data-dir ../shared/data/glue --resume     # continue from the last checkpoint

Without ``--data-dir`` the GLUE folder comes from ``$GENTUNE_DATA`` (else the Hugging Face Hub).
"""

import argparse

import numpy as np
from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

from gentune.data import get_task, load_splits, stratified_subsample
from gentune.integrations import RegularizedTrainer  # gentune (1/2)
from gentune.models.hf import resolve_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="GLUE folder holding full/SST-2 (default: $GENTUNE_DATA)")
    parser.add_argument("--train-size", type=int, default=512, help="training sentences (stratified sample)")
    parser.add_argument("--dev-size", type=int, default=256, help="dev sentences evaluated")
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--out", default="runs/hf-trainer-smart")
    parser.add_argument("--resume", action="store_true", help="resume from the last checkpoint in --out")
    args = parser.parse_args()

    # Data: gentune's SST-2 reader gives columns text_a, text_b (None here) and label.
    task = get_task("sst2")
    train, dev = load_splits(task, args.data_dir)
    train = stratified_subsample(train, args.train_size, seed=0)
    dev = stratified_subsample(dev, args.dev_size, seed=0)

    model_path = resolve_model_path("all-MiniLM-L6-v2")  # the local copy shipped with gentune
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=task.num_labels)

    def tokenize(batch):
        return tokenizer(batch["text_a"], truncation=True, max_length=64)

    train = train.map(tokenize, batched=True, remove_columns=["text_a", "text_b"])
    dev = dev.map(tokenize, batched=True, remove_columns=["text_a", "text_b"])

    def accuracy(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    every = max(args.max_steps // 4, 1)
    training_args = TrainingArguments(
        output_dir=args.out,
        max_steps=args.max_steps,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=5e-5,
        warmup_steps=0.1,  # a fraction of max_steps
        weight_decay=0.01,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        save_total_limit=2,
        logging_steps=max(every // 5, 1),
        report_to=[],
        seed=0,
    )

    trainer = RegularizedTrainer(  # gentune (2/2): was Trainer(
        regularizers=["smart"],  # or {"smart": {"adv_weight": 1.0, "mu": 1.0}}, ["l2sp"], ...
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=dev,
        processing_class=tokenizer,
        compute_metrics=accuracy,
    )
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    print(trainer.evaluate())


if __name__ == "__main__":
    main()
