"""RegularizedTrainer: gentune regularizers inside a Hugging Face Trainer (tiny random BERT, CPU, a few steps)."""

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from gentune.errors import GentuneError

SENTENCES = [
    "a fine film", "dull , slow and far too long", "a joy from start to finish", "the plot makes no sense",
    "warm , funny and wise", "i walked out", "beautifully shot", "a mess", "the cast is terrific",
    "flat and lifeless", "smart and moving", "painfully boring", "a small gem", "nothing works here",
    "touching and true", "a waste of time",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster than two, and much faster when other work shares the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tiny_model_nodrop):
    """(tokenizer, tokenized 16-sentence train set with labels)."""
    import datasets

    from gentune.models.hf import load_tokenizer

    tok = load_tokenizer(tiny_model_nodrop)
    ds = datasets.Dataset.from_dict({"text": SENTENCES, "label": [1, 0] * 8})
    ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    return tok, ds


def _model(path, peft=False):
    from gentune.data import get_task
    from gentune.models.hf import load_for_task

    torch.manual_seed(0)  # the new classifier head: the same in every trainer
    model = load_for_task(path, get_task("sst2"))
    if peft:
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                                 target_modules=["query", "value"]))
    return model


def _trainer(path, data, out, regularizers, peft=False, callbacks=None, **args):
    from transformers import TrainingArguments

    from gentune.integrations import RegularizedTrainer

    tok, ds = data
    defaults = dict(max_steps=4, per_device_train_batch_size=4, report_to=[], use_cpu=True, logging_steps=1,
                    save_strategy="no", disable_tqdm=True, seed=0)
    targs = TrainingArguments(output_dir=str(out), **{**defaults, **args})
    return RegularizedTrainer(regularizers=regularizers, model=_model(path, peft), args=targs, train_dataset=ds,
                              processing_class=tok, callbacks=callbacks)


def _train_logs(trainer) -> list[dict]:
    return [r for r in trainer.state.log_history if "loss" in r]


@pytest.fixture(scope="module")
def smart_run(tiny_model_nodrop, data, tmp_path_factory):
    """One uninterrupted 4-step SMART run, with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("smart-run")
    trainer = _trainer(tiny_model_nodrop, data, out, ["smart"], save_strategy="steps", save_steps=2)
    trainer.train()
    return trainer, out


def test_compute_loss_is_parent_loss_plus_terms(tiny_model_nodrop, data, tmp_path):
    from transformers import Trainer

    trainer = _trainer(tiny_model_nodrop, data, tmp_path, {"l2sp": {"alpha": 0.5, "beta": 0.1}})
    model = trainer.model
    model.train()
    batch = trainer.data_collator([data[1][i] for i in range(4)])
    trainer.compute_loss(model, batch)  # the first call takes L2-SP's anchor
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))

    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    head = {n for n in start if n.startswith("classifier.")}
    assert head
    penalty = sum(0.5 * 0.5 * (p - start[n]).pow(2).sum() for n, p in model.named_parameters() if n not in head)
    penalty = penalty + sum(0.5 * 0.1 * p.pow(2).sum() for n, p in model.named_parameters() if n in head)
    ce = F.cross_entropy(outputs.logits, batch["labels"])
    assert penalty.item() > 1e-3 * ce.item()  # a term that matters, not a zero
    torch.testing.assert_close(Trainer.compute_loss(trainer, model, batch), ce)
    torch.testing.assert_close(loss, ce + penalty)
    plain = trainer.compute_loss(model, batch)  # same shape of result as the parent: a tensor
    assert isinstance(plain, torch.Tensor) and plain.ndim == 0
    torch.testing.assert_close(plain, ce + penalty)

    # num_items_in_batch goes to the parent unchanged. A BERT classifier takes **kwargs but its loss ignores it:
    # the Trainer then neither divides the loss by the micro-batch count nor expects the model to, so the terms
    # are not divided either (they keep their weight relative to the task loss)
    n = torch.tensor(4)
    trainer.current_gradient_accumulation_steps = 2
    assert trainer.model_accepts_loss_kwargs
    parent = Trainer.compute_loss(trainer, model, batch, num_items_in_batch=n)
    torch.testing.assert_close(trainer.compute_loss(model, batch, num_items_in_batch=n), parent + penalty)
    assert trainer._model_uses_num_items is False
    # a model whose loss is normalised by num_items_in_batch (a share of the accumulated batch): terms / k
    trainer._model_uses_num_items = None
    real_forward = type(model).forward

    def normalised(self, *a, num_items_in_batch=None, **kw):
        out = real_forward(self, *a, **kw)
        if num_items_in_batch is not None:
            out.loss = out.loss * kw["labels"].numel() / num_items_in_batch
        return out

    model.forward = normalised.__get__(model)
    try:
        parent = Trainer.compute_loss(trainer, model, batch, num_items_in_batch=2 * n)
        torch.testing.assert_close(parent, ce / 2)
        torch.testing.assert_close(trainer.compute_loss(model, batch, num_items_in_batch=2 * n),
                                   parent + penalty / 2)
        assert trainer._model_uses_num_items is True
    finally:
        del model.forward
    # the user's statement wins, as in Trainer.training_step
    trainer.loss_is_scaled_for_ga = True
    torch.testing.assert_close(trainer.compute_loss(model, batch, num_items_in_batch=n), parent * 2 + penalty / 2)
    trainer.loss_is_scaled_for_ga = None

    # evaluation (eval mode, no grad): the parent's loss alone
    model.eval()
    with torch.no_grad():
        loss, _ = trainer.compute_loss(model, batch, return_outputs=True)
        torch.testing.assert_close(loss, Trainer.compute_loss(trainer, model, batch))


def test_bad_regularizers_are_user_errors(tiny_model_nodrop, data, tmp_path):
    with pytest.raises(GentuneError, match="unknown regularizer 'smrat'"):
        _trainer(tiny_model_nodrop, data, tmp_path, ["smrat"])
    with pytest.raises(GentuneError, match="unknown option smart.sigmaa"):
        _trainer(tiny_model_nodrop, data, tmp_path, {"smart": {"sigmaa": 1e-5}})
    with pytest.raises(GentuneError, match="expected a name"):
        _trainer(tiny_model_nodrop, data, tmp_path, ["l2sp", 3])


class Counting:
    """A regularizer that counts its calls and its after_step calls."""

    def __init__(self):
        self.calls = 0
        self.after = 0

    def __call__(self, model, batch, outputs):
        self.calls += 1
        return {"count_term": 0.0 * outputs.logits.sum() + 0.25}

    def after_step(self, model):
        self.after += 1


def test_after_step_once_per_optimizer_step(tiny_model_nodrop, data, tmp_path):
    counting, twin = Counting(), Counting()
    trainer = _trainer(tiny_model_nodrop, data, tmp_path, ["l2sp", counting, twin], gradient_accumulation_steps=2,
                       max_steps=3)
    assert trainer.regularizer_names == ["l2sp", "Counting", "Counting"]
    trainer.train()
    assert trainer.state.global_step == 3
    assert counting.after == twin.after == 3  # optimizer steps
    assert counting.calls == twin.calls == 6  # micro-batches
    logs = _train_logs(trainer)
    assert len(logs) == 3
    # two terms of one name: both in the loss, each logged (the second under its regularizer's name, as in the loop)
    assert all(r["count_term"] == pytest.approx(0.25) and r["Counting/count_term"] == pytest.approx(0.25)
               and "l2sp" in r for r in logs)


def test_total_steps_filled_at_train_begin(tiny_model_nodrop, data, tmp_path, smart_run):
    from gentune import registry

    trainer, _ = smart_run
    assert trainer.regularizers[0].bregman.total_steps == 4  # "smart", max_steps 4

    own = registry.create("regularizer", "bregman")  # built by the caller, total_steps left at 0
    fixed = registry.create("regularizer", "bregman", total_steps=10)
    smart = registry.create("regularizer", "smart")
    trainer = _trainer(tiny_model_nodrop, data, tmp_path,
                       ["bregman", {"bregman": {"total_steps": 7}}, own, fixed, smart], max_steps=2)
    assert trainer.regularizers[0].total_steps == 0
    trainer.train()
    assert trainer.regularizers[0].total_steps == 2  # a name: built at train begin with max_steps
    assert trainer.regularizers[1].total_steps == 7  # set by the user: kept
    assert own.total_steps == 2 and smart.bregman.total_steps == 2  # objects: the attribute left at 0 is set
    assert fixed.total_steps == 10
    assert trainer.regularizers[2:] == [own, fixed, smart]  # caller-built objects are used as they are
    assert own.step == fixed.step == smart.bregman.step == 2


def test_smart_trains_and_logs_its_terms(smart_run):
    trainer, out = smart_run
    logs = _train_logs(trainer)
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    for r in logs:
        assert {"loss", "smart_adv", "bregman"} <= set(r)
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss", "smart_adv", "bregman"))
    assert logs[0]["bregman"] == 0.0  # the teacher starts as the model
    assert all(r["smart_adv"] > 0 for r in logs) and logs[1]["bregman"] > 0
    reg = trainer.regularizers[0]
    assert reg.adversarial.step == 4 and reg.bregman.step == 4
    assert all(not k.startswith("smart_adv") for k in trainer.state.log_history[-1])  # the final summary


def _same_state(a: dict, b: dict) -> None:
    assert a["adversarial"] == b["adversarial"]
    assert a["bregman"]["step"] == b["bregman"]["step"]
    ta, tb = a["bregman"]["teacher"], b["bregman"]["teacher"]
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=1e-6)


def test_resume_restores_regularizer_state(tiny_model_nodrop, data, tmp_path, smart_run):
    from gentune.integrations import REGULARIZER_STATE_NAME, read_regularizer_state
    from transformers import TrainerCallback

    full, out = smart_run
    saved = read_regularizer_state(out / "checkpoint-2")
    assert saved["names"] == ["smart"]
    assert saved["states"][0]["adversarial"]["step"] == 2 and saved["states"][0]["bregman"]["step"] == 2
    final = read_regularizer_state(out / "checkpoint-4")
    _same_state(final["states"][0], full.regularizers[0].state_dict())

    class Probe(TrainerCallback):
        seen = None

        def on_step_begin(self, args, state, control, **kwargs):
            if self.seen is None:
                reg = trainer.regularizers[0]
                self.seen = (state.global_step, reg.adversarial.step, reg.bregman.step)

    # resume_from_checkpoint=True: the last (only) checkpoint of a fresh output dir holding checkpoint-2
    shutil.copytree(out / "checkpoint-2", tmp_path / "a" / "checkpoint-2")
    probe = Probe()
    trainer = _trainer(tiny_model_nodrop, data, tmp_path / "a", ["smart"], callbacks=[probe],
                       save_strategy="steps", save_steps=2)
    trainer.train(resume_from_checkpoint=True)
    assert probe.seen == (2, 2, 2)  # counters restored before the first resumed step
    # the teacher too: the resumed run ends where the uninterrupted one did (the data order and RNG state are
    # restored by the Trainer; the model has no dropout)
    _same_state(trainer.regularizers[0].state_dict(), full.regularizers[0].state_dict())
    assert os.path.isfile(tmp_path / "a" / "checkpoint-4" / REGULARIZER_STATE_NAME)

    # control: the same resume (from a path) without the regularizer file starts a fresh teacher at step 2,
    # which does not end where the uninterrupted run did
    shutil.copytree(out / "checkpoint-2", tmp_path / "b" / "checkpoint-2")
    for name in (REGULARIZER_STATE_NAME, "gentune_regularizers.safetensors"):
        os.remove(tmp_path / "b" / "checkpoint-2" / name)
    trainer = _trainer(tiny_model_nodrop, data, tmp_path / "b", ["smart"])
    trainer.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    with pytest.raises(AssertionError):
        _same_state(trainer.regularizers[0].state_dict(), full.regularizers[0].state_dict())

    # a checkpoint of other regularizers is an error, not a silent fresh start
    trainer = _trainer(tiny_model_nodrop, data, tmp_path / "a", ["bregman"])
    with pytest.raises(GentuneError, match=r"holds regularizers \['smart'\]"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_peft_lora_model(tiny_model_nodrop, data, tmp_path):
    pytest.importorskip("peft")
    from gentune.integrations import REGULARIZER_STATE_NAME

    trainer = _trainer(tiny_model_nodrop, data, tmp_path, ["smart"], peft=True, max_steps=2,
                       save_strategy="steps", save_steps=2, learning_rate=1e-2)
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    logs = _train_logs(trainer)
    assert len(logs) == 2 and all({"smart_adv", "bregman"} <= set(r) for r in logs)
    assert logs[1]["bregman"] > 0
    reg = trainer.regularizers[0]
    assert reg.bregman.step == 2 and type(reg.bregman.teacher) is type(trainer.model)  # a PeftModel teacher
    for n, p in trainer.model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])  # SMART's perturbation never touched the frozen weights
    ckpt = tmp_path / "checkpoint-2"
    assert (ckpt / "adapter_model.safetensors").is_file() and (ckpt / REGULARIZER_STATE_NAME).is_file()

    resumed = _trainer(tiny_model_nodrop, data, tmp_path, ["smart"], peft=True, max_steps=3, learning_rate=1e-2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.regularizers[0].bregman.step == 3 and resumed.regularizers[0].adversarial.step == 3


def test_doc_shows_the_example_script():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "integrations" / "hf_trainer.md").read_text()
    marker = "<!-- the block below is examples/hf_trainer_smart.py verbatim"
    block = doc[doc.index(marker):].split("```python\n", 1)[1].split("```\n", 1)[0]
    assert block == (root / "examples" / "hf_trainer_smart.py").read_text()


def test_smart_shared_dropout_sees_the_trainer_forward(tiny_model, data, tmp_path):
    # dropout="shared" replays the dropout masks of the forward the Trainer ran, found by the identity of the
    # input_ids tensor: the integration must hand the regularizers the very tensors the model saw
    adv = {}
    for mode in ("independent", "shared"):
        trainer = _trainer(tiny_model, data, tmp_path / mode, {"smart": {"dropout": mode, "mu": 0}}, max_steps=2)
        trainer.train()
        adv[mode] = max(r["smart_adv"] for r in _train_logs(trainer))
    assert adv["shared"] < 1e-7 < adv["independent"]  # masks replayed: R_s sees the eps = 1e-5 perturbation alone


def test_after_step_waits_for_an_optimizer_step_that_happened(tiny_model_nodrop, data, tmp_path, monkeypatch):
    """A step the fp16 grad scaler skipped moved no weights: after_step (the teacher, step counters) waits."""
    import accelerate

    class Counting:
        steps = 0

        def __call__(self, model, batch, outputs):
            return {}

        def after_step(self, model):
            self.steps += 1

    reg = Counting()
    trainer = _trainer(tiny_model_nodrop, data, tmp_path, [reg])
    trainer._after_optimizer_step()
    assert reg.steps == 1
    monkeypatch.setattr(accelerate.Accelerator, "optimizer_step_was_skipped", property(lambda self: True))
    trainer._after_optimizer_step()
    assert reg.steps == 1
