"""One checkpoint format for every model gentune saves: a folder with the weights and ``gentune.json``.

``gentune.json`` (schema version 1) always holds:

- ``gentune``: the schema version (1);
- ``kind``: ``text-classifier`` (a Hugging Face ``save_pretrained`` folder with its tokenizer: ``config.json``,
  ``model.safetensors``, tokenizer files), ``text-mlm``, ``image-encoder`` or ``image-classifier``
  (``model.safetensors`` of the module's ``state_dict``), ``ner-tagger``, ``ner-entlm`` (``save_pretrained``
  folders) or ``ner-span`` (FFF-NER: ``encoder/`` and ``heads.safetensors``; :func:`save_ner_model`);
- ``architecture``: ``hf`` for text models, ``vit`` or ``conv`` for image models, with ``config`` (the image
  encoder's constructor arguments) and ``encoder`` (its size name, when it has one);
- what made it: ``task``, ``step``, ``dev`` (the metrics of the saved step), and the kind's own fields: ``labels``,
  ``base_model``, ``max_length`` (text classifiers); ``classes``, ``head``, ``linear_probe``, ``init`` (image
  classifiers); ``objective``, ``objective_options``, ``data`` and the held-out split (image encoders); ``mean``,
  ``std`` and ``image_size`` (both image kinds: the pixel normalisation the model was trained with).

Folders written by earlier versions (no ``kind``; an image classifier's encoder arguments under
``encoder_config``) are read the same way. Every save is atomic: written to ``<dir>.tmp`` and renamed, so a killed
save never leaves a half-written folder where a good one stood.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..errors import GentuneError
from ..fs import atomic_dir, read_json, recover_dir

META = "gentune.json"
WEIGHTS = "model.safetensors"
VERSION = 1
KINDS = ("text-classifier", "text-mlm", "image-encoder", "image-classifier", "ner-tagger", "ner-span", "ner-entlm",
         "point-encoder", "point-classifier")
NER_KINDS = {"token-classification": "ner-tagger", "fffner": "ner-span", "entlm": "ner-entlm"}


def read_meta(path: str | Path) -> dict | None:
    """The checkpoint description of folder ``path`` in the current schema (earlier layouts upgraded), or None
    when it has no ``gentune.json`` (a plain Hugging Face model folder)."""
    folder = recover_dir(Path(path)) or Path(path)
    file = folder / META
    if not file.is_file():
        return None
    meta = read_json(file)
    if "kind" not in meta:  # written before the schema had a version
        arch = meta.get("architecture")
        if arch in ("vit", "conv"):
            if "classes" in meta:
                meta["kind"] = "image-classifier"
                meta.setdefault("config", meta.pop("encoder_config", None))
            else:
                meta["kind"] = "image-encoder"
        elif (folder / "config.json").is_file():
            meta["kind"], meta["architecture"] = "text-classifier", "hf"
    meta.setdefault("gentune", VERSION)
    return meta


def kind_of(path: str | Path) -> str | None:
    """``text-classifier``, ``image-encoder``, ``image-classifier``, ``hf`` (a Hugging Face folder without
    gentune.json) or None (not a model folder)."""
    meta = read_meta(path)
    if meta is not None:
        return meta.get("kind")
    folder = Path(path)
    return "hf" if (folder / "config.json").is_file() else None


def _describe(kind: str, meta: dict, model=None) -> dict:
    info = {"gentune": VERSION, "kind": kind, **meta}
    if kind in ("text-classifier", "text-mlm", *NER_KINDS.values()):
        info["architecture"] = "hf"
    else:
        encoder = model if kind in ("image-encoder", "point-encoder") else model.encoder
        info.update(architecture=encoder.architecture, config=encoder.config,
                    encoder=getattr(encoder, "size_name", None))
    return info


def _save_module(module: torch.nn.Module, directory: Path, info: dict) -> Path:
    from safetensors.torch import save_file

    with atomic_dir(Path(directory)) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp / WEIGHTS),
                  metadata={"format": "pt"})
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")
    return Path(directory)


def save_encoder(encoder: torch.nn.Module, directory: str | Path, meta: dict | None = None) -> Path:
    """An image encoder (``forward_features``, ``architecture``, ``config``) as an ``image-encoder`` folder."""
    return _save_module(encoder, Path(directory), _describe("image-encoder", dict(meta or {}), encoder))


def save_point_encoder(encoder: torch.nn.Module, directory: str | Path, meta: dict | None = None) -> Path:
    """A point encoder (:mod:`gentune.models.points`: ``architecture``, ``config``) as a ``point-encoder``
    folder."""
    return _save_module(encoder, Path(directory), _describe("point-encoder", dict(meta or {}), encoder))


def load_point_encoder(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """(encoder, gentune.json) of a ``point-encoder`` folder (a ``gentune pretrain`` run's ``encoder/``)."""
    from .points import create_point_encoder

    found = recover_dir(Path(path))
    if found is None:
        raise GentuneError(f"point encoder {str(path)!r}: no such directory")
    meta = read_meta(found)
    if meta is None or meta.get("kind") != "point-encoder" or not isinstance(meta.get("config"), dict):
        raise GentuneError(f"{found}: not a point encoder (kind {(meta or {}).get('kind')!r})")
    encoder = create_point_encoder(meta.get("architecture", ""), **meta["config"])
    _load_weights(encoder, found / WEIGHTS)
    return encoder, meta


def save_point_classifier(model: torch.nn.Module, directory: str | Path, meta: dict) -> Path:
    """A :class:`gentune.models.points.PointClassifier` as a ``point-classifier`` folder."""
    return _save_module(model, Path(directory), _describe("point-classifier", {**meta, "head": model.head_kind},
                                                          model))


def load_point_classifier(path: str | Path):
    """(classifier in eval mode, gentune.json) of a ``point-classifier`` folder."""
    from .points import PointClassifier, create_point_encoder

    found = recover_dir(Path(path))
    if found is None:
        raise GentuneError(f"checkpoint {str(path)!r}: no such directory")
    meta = read_meta(found)
    if meta is None or meta.get("kind") != "point-classifier" or not isinstance(meta.get("classes"), list):
        raise GentuneError(f"{found}: not a point classifier checkpoint (kind {(meta or {}).get('kind')!r})")
    model = PointClassifier(create_point_encoder(meta.get("architecture", ""), **meta["config"]),
                            len(meta["classes"]), head=meta.get("head", "linear"))
    _load_weights(model, found / WEIGHTS)
    return model.eval(), meta


def save_image_classifier(model: torch.nn.Module, directory: str | Path, meta: dict) -> Path:
    """An :class:`gentune.models.vision.ImageClassifier` as an ``image-classifier`` folder."""
    return _save_module(model, Path(directory), _describe("image-classifier", dict(meta), model))


def save_text_classifier(model, tokenizer, directory: str | Path, meta: dict, card: str | None = None) -> Path:
    """``save_pretrained`` (safetensors; for a PEFT model its adapter, plus the base model's config with the label
    names) + tokenizer + ``gentune.json`` (+ a model card ``README.md``) as a ``text-classifier`` folder."""
    from .hf import hub_name, quiet_transformers

    if hasattr(model, "peft_config") and meta.get("base_model"):  # where others find the base: its public name
        for adapter in model.peft_config.values():
            adapter.base_model_name_or_path = hub_name(meta["base_model"])
    with atomic_dir(Path(directory)) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        if hasattr(model, "peft_config"):  # an adapter: the labels live in the base model's config
            model.get_base_model().config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META).write_text(json.dumps(_describe("text-classifier", dict(meta)), indent=2))
        if card is not None:
            (tmp / "README.md").write_text(card)
    return Path(directory)


def save_masked_lm(model, tokenizer, directory: str | Path, meta: dict) -> Path:
    """A masked-LM ``save_pretrained`` folder (what ``AutoModelForMaskedLM.from_pretrained`` loads) with its tokenizer
    and ``gentune.json`` (kind ``text-mlm``)."""
    from .hf import quiet_transformers

    with atomic_dir(Path(directory)) as tmp, quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / META).write_text(json.dumps(_describe("text-mlm", dict(meta)), indent=2))
    return Path(directory)


def _image_folder(path: str | Path, want: str) -> tuple[Path, dict]:
    found = recover_dir(Path(path))
    if found is None:
        raise GentuneError(f"{want} {str(path)!r}: no such directory")
    meta = read_meta(found)
    if meta is None:
        raise GentuneError(f"{found / META}: missing (not a gentune {want} directory)")
    from .vision import ARCHITECTURES

    if meta.get("architecture") not in ARCHITECTURES or not isinstance(meta.get("config"), dict):
        raise GentuneError(f"{found / META}: not an {want} description (needs 'architecture' in "
                           f"{sorted(ARCHITECTURES)} and a 'config' object)")
    return found, meta


def _load_weights(module: torch.nn.Module, file: Path, prefix: str = "") -> None:
    """Weights from a safetensors file; with ``prefix``, only the tensors under it (the encoder of a classifier)."""
    from safetensors.torch import load_file

    if not file.is_file():
        raise GentuneError(f"{file}: missing")
    try:
        state = load_file(str(file))
        if prefix:
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(state)
    except Exception as e:  # safetensors header errors, or weights that do not fit the config
        raise GentuneError(f"{file}: cannot load ({str(e).splitlines()[0]})") from None


def _build_encoder(meta: dict, where: Path, **overrides) -> torch.nn.Module:
    from .vision import ARCHITECTURES

    try:
        encoder = ARCHITECTURES[meta["architecture"]](**{**meta["config"], **overrides})
    except (TypeError, ValueError) as e:
        raise GentuneError(f"{where}: bad encoder config ({e})") from None
    if meta.get("encoder"):
        encoder.size_name = meta["encoder"]
    return encoder


def load_encoder(path: str | Path, **overrides) -> tuple[torch.nn.Module, dict]:
    """(encoder, gentune.json) from an ``image-encoder`` folder, or the encoder of an ``image-classifier``
    folder; ``overrides`` change arguments that do not change the weights (``pool``, ``drop_path``)."""
    found, meta = _image_folder(path, "encoder")
    encoder = _build_encoder(meta, found / META, **overrides)
    _load_weights(encoder, found / WEIGHTS, prefix="encoder." if meta["kind"] == "image-classifier" else "")
    return encoder, meta


def load_image_classifier(path: str | Path):
    """(classifier in eval mode, gentune.json) from an ``image-classifier`` folder."""
    from .vision import ImageClassifier

    found, meta = _image_folder(path, "image classifier")
    if meta.get("kind") != "image-classifier" or "classes" not in meta:
        raise GentuneError(f"{found / META}: not an image classifier checkpoint (kind {meta.get('kind')!r})")
    try:
        model = ImageClassifier(_build_encoder(meta, found / META), len(meta["classes"]), head=meta["head"])
    except (KeyError, ValueError, TypeError) as e:
        raise GentuneError(f"{found / META}: not an image classifier checkpoint ({e})") from None
    _load_weights(model, found / WEIGHTS)
    return model.eval(), meta


def load_prompt_classifier(path, meta: dict):
    """A prompt-based checkpoint (``objective: prompt`` in ``meta``, its gentune.json): the masked LM wrapped as a
    :class:`~gentune.models.prompting.PromptClassifier` over its saved label words, and its
    :class:`~gentune.data.prompts.Prompt`."""
    from transformers import AutoModelForMaskedLM

    from ..data.prompts import Prompt
    from .hf import load_error, load_errors, quiet_transformers
    from .prompting import PromptClassifier

    path = Path(path)
    saved = meta.get("prompt")
    if not isinstance(saved, dict) or not {"label_ids", "mask_token_id"} <= set(saved):
        raise GentuneError(f"{path / META}: a prompt checkpoint without its prompt (label_ids, mask_token_id)")
    prompt = Prompt.from_dict(saved, f"{path / META}: prompt")
    try:
        with quiet_transformers():
            mlm = AutoModelForMaskedLM.from_pretrained(path)
    except load_errors() as e:
        raise load_error(f"{path}: cannot load checkpoint", e) from None
    return PromptClassifier(mlm, saved["label_ids"], saved["mask_token_id"], prompt.bounds), prompt


def load_text_classifier(path: str | os.PathLike, task, trainable: bool = False):
    """(model, gentune.json) of a ``text-classifier`` folder (or any ``save_pretrained`` sequence classifier),
    checked against ``task``'s label set (a :class:`gentune.data.text_tasks.TaskSpec`); a PEFT adapter comes on
    its base model (``trainable``: its adapter weights train on).

    Raises:
        GentuneError: missing directory, not a model, or a head that does not fit the task.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from .hf import load_error, load_errors, quiet_transformers, resolve_model_path

    from .pooling import ENCODER, load_mean_pooled

    path = Path(path)
    meta = read_meta(path) or {}
    mean = meta.get("pooling") == "mean"
    where = path / ENCODER if mean else path  # a mean-pooled classifier: its encoder folder holds the config
    if not (where / "config.json").is_file():
        raise GentuneError(f"{path}: not a checkpoint directory (no {'encoder/' if mean else ''}config.json)")
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(where)
    except load_errors() as e:
        raise load_error(f"{path / 'config.json'}: not a model config", e) from None
    want = list(task.labels) if task.labels else None
    have = meta.get("labels", "unknown") if meta else None
    if meta.get("objective") == "prompt":  # a masked LM read through its prompt's label words
        if have != want:
            raise GentuneError(f"{path}: checkpoint does not fit task {task.name} (a prompt over labels {have}; the "
                               f"task needs " + (f"labels {want})" if want else "regression)"))
        return load_prompt_classifier(path, meta)[0], meta
    if config.num_labels != task.num_labels or (meta and have != want):
        desc = f"{config.num_labels} output(s)" + (f", labels {have}" if meta else "")
        raise GentuneError(
            f"{path}: checkpoint does not fit task {task.name} ({desc}; the task needs "
            f"{task.num_labels} output(s)" + (f", labels {want})" if want else ", regression)")
        )
    try:
        with quiet_transformers():
            if mean:
                model = load_mean_pooled(path, config)
            elif (path / "adapter_config.json").is_file():  # a PEFT adapter on its base model
                from peft import PeftModel

                base = AutoModelForSequenceClassification.from_pretrained(
                    resolve_model_path(meta.get("base_model") or config.name_or_path), config=config)
                model = PeftModel.from_pretrained(base, path, is_trainable=trainable)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(path)
    except ImportError:
        raise GentuneError(f"{path}: a PEFT adapter; loading it needs the peft package (pip install peft)") from None
    except load_errors() as e:
        raise load_error(f"{path}: cannot load checkpoint", e) from None
    return model, meta


def save_ner_model(model, tokenizer, directory: str | Path, meta: dict, card: str | None = None) -> Path:
    """A few-shot NER model by its ``meta["objective"]``: ``ner-tagger`` (an ``AutoModelForTokenClassification``
    folder) and ``ner-entlm`` (an ``AutoModelForMaskedLM`` folder, label tokens included) are ``save_pretrained``
    folders with their tokenizer; ``ner-span`` (FFF-NER) is ``encoder/`` (an ``AutoModel`` folder and the tokenizer
    with its marker tokens) and the two heads in ``heads.safetensors``. Each with ``gentune.json``."""
    from safetensors.torch import save_file

    from .hf import quiet_transformers

    kind = NER_KINDS[meta["objective"]]
    with atomic_dir(Path(directory)) as tmp, quiet_transformers():
        if kind == "ner-span":
            model.encoder.save_pretrained(tmp / "encoder")
            tokenizer.save_pretrained(tmp / "encoder")
            heads = {f"{name}.{k}": v.detach().cpu().contiguous() for name in ("entity_head", "type_head")
                     for k, v in getattr(model, name).state_dict().items()}
            save_file(heads, str(tmp / "heads.safetensors"), metadata={"format": "pt"})
        else:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        (tmp / META).write_text(json.dumps(_describe(kind, dict(meta)), indent=2))
        if card is not None:
            (tmp / "README.md").write_text(card)
    return Path(directory)


def load_ner_model(path: str | Path):
    """(model in eval mode, tokenizer, gentune.json) of a folder :func:`save_ner_model` wrote."""
    from safetensors.torch import load_file
    from transformers import AutoModelForMaskedLM, AutoModelForTokenClassification

    from .hf import load_error, load_errors, quiet_transformers
    from .ner import HEADS, SpanNer, load_encoder

    found = recover_dir(Path(path))
    if found is None:
        raise GentuneError(f"checkpoint {str(path)!r}: no such directory")
    meta = read_meta(found)
    if meta is None or meta.get("kind") not in NER_KINDS.values():
        raise GentuneError(f"{found}: not a gentune NER checkpoint (kind {(meta or {}).get('kind')!r}; NER models "
                           f"are {', '.join(NER_KINDS.values())})")
    if not isinstance(meta.get("types"), list) or not meta["types"]:
        raise GentuneError(f"{found / META}: no entity types")
    kind = meta["kind"]
    where = found / "encoder" if kind == "ner-span" else found
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(where)
            if kind == "ner-tagger":
                model = AutoModelForTokenClassification.from_pretrained(where)
            elif kind == "ner-entlm":
                model = AutoModelForMaskedLM.from_pretrained(where)
            else:
                model = SpanNer(load_encoder(str(where)), len(meta["types"]))
                heads = load_file(str(found / HEADS))
                for name in ("entity_head", "type_head"):
                    getattr(model, name).load_state_dict({k[len(name) + 1:]: v for k, v in heads.items()
                                                          if k.startswith(name + ".")})
    except load_errors() as e:
        raise load_error(f"{found}: cannot load checkpoint", e) from None
    except RuntimeError as e:  # heads that do not fit
        raise GentuneError(f"{found / 'heads.safetensors'}: cannot load ({str(e).splitlines()[0]})") from None
    return model.eval(), tokenizer, meta


def resolve_init(path: str | Path) -> Path:
    """The encoder folder that ``--init PATH`` names: PATH itself, or PATH/encoder when PATH is the folder of a
    ``gentune pretrain`` run."""
    p = Path(path)
    if read_meta(p) is not None or recover_dir(p) is None:
        return p
    for sub in ("encoder",):
        if read_meta(p / sub) is not None:
            return p / sub
    if (p / "summary.json").is_file() or (p / "config.yaml").is_file():
        raise GentuneError(f"--init {p}: a run folder without a saved encoder ({p / 'encoder'} is missing: was the "
                           "run finished, with save_model true?)")
    return p


__all__ = ["KINDS", "META", "NER_KINDS", "VERSION", "WEIGHTS", "kind_of", "load_encoder", "load_image_classifier",
           "load_ner_model", "load_point_classifier", "load_point_encoder", "load_text_classifier", "read_meta",
           "resolve_init", "save_encoder", "save_image_classifier", "save_ner_model", "save_point_classifier",
           "save_point_encoder", "save_text_classifier"]
