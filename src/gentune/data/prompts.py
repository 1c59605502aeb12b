"""Prompts for prompt-based fine-tuning (LM-BFF, Gao, Fisch, Chen, ACL 2021): a template that turns an example into
a cloze with one [MASK], and one label word per class (two poles for regression).

A template is text with the fields ``{text_a}``, ``{text_b}`` and ``{mask}``; a field may take a filter,
``{text_a:nopunct}`` (its final punctuation mark dropped) or ``{text_b:lower}`` (its first letter lowercased), as
LM-BFF's ``*sent-_0*`` and ``*sentl_1*`` do. Every task of :data:`gentune.data.text_tasks.TASKS` has LM-BFF's manual
prompt as data, ``gentune/prompts/<task>.yaml``.

Encoding tokenizes each part on its own (the text fields with a leading space where they follow other text, as
BPE vocabularies need), truncates the text fields, longest first, until the whole fits ``max_length`` (the [MASK]
always survives), and adds the model's special tokens around one segment. A [MASK] inside an example's own text
becomes [UNK], so every encoded example holds exactly one [MASK].
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import GentuneError

PROMPTS = Path(__file__).resolve().parents[1] / "prompts"  # the packaged LM-BFF prompts, one YAML per task
FIELDS = ("text_a", "text_b", "mask")
FILTERS = ("nopunct", "lower")
_FIELD = re.compile(r"\{([a-z_]+)(?::([a-z]+))?\}")
_PUNCT = ".?!,;:"


@dataclass(frozen=True)
class Prompt:
    """A template and its label words, in the task's label order (for regression: the low and the high pole).

    Attributes:
        template: the cloze, with ``{text_a}``, ``{text_b}``, ``{mask}`` (see the module).
        label_words: one word per label (index order); for regression two: (low, high).
        bounds: for regression, the scores the two poles stand for (LM-BFF: STS-B's 0 and 5); else None.
    """

    template: str
    label_words: tuple[str, ...]
    bounds: tuple[float, float] | None = None

    def parts(self) -> list[tuple[str, str]]:
        """The template as (kind, value) parts: ("text", literal), ("field", "text_a[:filter]"), ("mask", "")."""
        return parse_template(self.template)

    @property
    def pair(self) -> bool:
        return any(kind == "field" and value.split(":")[0] == "text_b" for kind, value in self.parts())

    def as_dict(self) -> dict:
        return {"template": self.template, "label_words": list(self.label_words),
                "bounds": list(self.bounds) if self.bounds else None}

    @classmethod
    def from_dict(cls, saved: dict, where: str = "prompt") -> "Prompt":
        """The prompt that :meth:`as_dict` wrote (a checkpoint's gentune.json); a damaged entry names ``where``."""
        try:
            bounds = saved.get("bounds")
            return cls(str(saved["template"]), tuple(str(w) for w in saved["label_words"]),
                       (float(bounds[0]), float(bounds[1])) if bounds else None)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            raise GentuneError(f"{where}: not a saved prompt ({type(e).__name__}: {e})") from None


def parse_template(template: str) -> list[tuple[str, str]]:
    """(kind, value) parts of ``template``; one ``{mask}`` exactly, known fields and filters only."""
    if not isinstance(template, str) or not template.strip():
        raise GentuneError("prompt.template: empty (e.g. '{text_a} It was {mask} .')")
    parts, at, masks = [], 0, 0
    for m in _FIELD.finditer(template):
        if m.start() > at:
            parts.append(("text", template[at:m.start()]))
        name, flt = m.group(1), m.group(2)
        if name not in FIELDS:
            raise GentuneError(f"prompt.template {template!r}: unknown field {{{name}}} (fields: "
                               f"{', '.join('{' + f + '}' for f in FIELDS)})")
        if flt is not None and (name == "mask" or flt not in FILTERS):
            raise GentuneError(f"prompt.template {template!r}: unknown filter {m.group(0)} (the text fields take "
                               f"{', '.join(FILTERS)})")
        if name == "mask":
            masks += 1
            parts.append(("mask", ""))
        else:
            parts.append(("field", name if flt is None else f"{name}:{flt}"))
        at = m.end()
    if at < len(template):
        parts.append(("text", template[at:]))
    stray = [p for kind, p in parts if kind == "text" and ("{" in p or "}" in p)]
    if stray:
        raise GentuneError(f"prompt.template {template!r}: a brace that is not a field ({stray[0].strip()!r})")
    if masks != 1:
        raise GentuneError(f"prompt.template {template!r}: needs exactly one {{mask}}, has {masks}")
    if not any(kind == "field" for kind, _ in parts):
        raise GentuneError(f"prompt.template {template!r}: no {{text_a}}: the example would not be in the prompt")
    return parts


def apply_filter(text: str, flt: str | None) -> str:
    """``text`` with a template filter applied (``nopunct``: the final punctuation dropped; ``lower``: the first
    letter lowercased)."""
    if flt == "nopunct":
        t = text.rstrip()
        return t[:-1].rstrip() if t and t[-1] in _PUNCT else t
    if flt == "lower":
        return text[:1].lower() + text[1:]
    return text


def render(prompt: Prompt, text_a: str, text_b: str | None = None, mask: str = "[MASK]") -> str:
    """The prompt as text, for reading (training encodes it part by part, :func:`encode`)."""
    out = []
    for kind, value in prompt.parts():
        if kind == "text":
            out.append(value)
        elif kind == "mask":
            out.append(mask)
        else:
            name, _, flt = value.partition(":")
            out.append(apply_filter((text_a if name == "text_a" else text_b) or "", flt or None))
    return "".join(out)


def packaged(task: str) -> Prompt | None:
    """LM-BFF's manual prompt for a known task (``gentune/prompts/<task>.yaml``), or None."""
    from ..config import parse_yaml
    from .text_tasks import get_task

    path = PROMPTS / f"{task}.yaml"
    if not path.is_file():
        return None
    raw = parse_yaml(path.read_text())
    spec = get_task(task)
    words = raw["label_words"]
    if spec.is_regression:
        order = ["low", "high"]
    else:
        order = list(spec.labels)
    return Prompt(raw["template"], tuple(str(words[k]) for k in order),
                  tuple(float(b) for b in raw["bounds"]) if raw.get("bounds") else None)


def prompt_for(spec, template: str | None = None, label_words: list[str] | None = None,
               bounds: list[float] | None = None) -> Prompt:
    """The prompt of a task (a :class:`gentune.data.text_tasks.TaskSpec`): its packaged one, with any of template,
    label words (in label order) and bounds replaced; your own data must give template and label words."""
    base = packaged(spec.name)
    if base is None and (template is None or label_words is None):
        raise GentuneError(f"prompt: task {spec.name} has no packaged prompt: give --set prompt.template='{{text_a}} "
                           "It was {mask} .' prompt.label_words=word0,word1,... (one word per label, in label order)")
    words = tuple(label_words) if label_words is not None else base.label_words
    want = 2 if spec.is_regression else spec.num_labels
    if len(words) != want:
        what = "two (the low and the high pole)" if spec.is_regression else \
            f"{want} (one per label: {', '.join(spec.labels)})"
        raise GentuneError(f"prompt.label_words: {len(words)} word(s) {list(words)}, task {spec.name} needs {what}")
    if len(set(words)) != len(words):
        raise GentuneError(f"prompt.label_words: {list(words)} repeats a word")
    if bounds is not None:
        if not spec.is_regression:
            raise GentuneError(f"prompt.bounds: for regression tasks only ({spec.name} has labels)")
        if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
            raise GentuneError(f"prompt.bounds: two scores, low < high, got {bounds}")
        bounds_t = (float(bounds[0]), float(bounds[1]))
    else:
        bounds_t = base.bounds if base is not None else None
    if spec.is_regression and bounds_t is None:
        raise GentuneError("prompt.bounds: a regression prompt needs the scores of its poles (--set "
                           "prompt.bounds=[0,5])")
    prompt = Prompt(template if template is not None else base.template, words,
                    bounds_t if spec.is_regression else None)
    prompt.parts()  # a bad template fails here
    if prompt.pair and not spec.text_pair and spec.name != "text-classification":
        raise GentuneError(f"prompt.template {prompt.template!r}: uses {{text_b}}, but {spec.name} has one text")
    return prompt


def label_word_ids(tokenizer, words) -> list[int]:
    """The vocabulary id of each label word (as it follows a space, the way the template puts it after text);
    a word that is not one token is refused."""
    ids = []
    for w in words:
        pieces = tokenizer.encode(" " + w, add_special_tokens=False)
        if len(pieces) != 1:
            shown = tokenizer.convert_ids_to_tokens(pieces)
            raise GentuneError(f"prompt.label_words: {w!r} is {len(pieces)} tokens for this tokenizer ({shown}): "
                               "label words must be single tokens; give others with --set prompt.label_words=...")
        ids.append(pieces[0])
    if len(set(ids)) != len(ids):
        raise GentuneError(f"prompt.label_words: {list(words)} map to the same token")
    return ids


def special_frame(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after one segment ([CLS] and [SEP] for BERT), read off an
    encoded word (transformers 5 tokenizers have no ``build_inputs_with_special_tokens``)."""
    word = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer("a")["input_ids"]
    for i in range(len(full) - len(word) + 1):
        if full[i:i + len(word)] == word:
            return full[:i], full[i + len(word):]
    raise GentuneError(f"prompt: cannot tell the special tokens of {type(tokenizer).__name__}")


def encode(prompt: Prompt, tokenizer, texts_a: list[str], texts_b: list[str | None] | None,
           max_length: int) -> dict[str, list[list[int]]]:
    """Token ids (and attention masks, token types where the model takes them) of every example in ``prompt``."""
    parts = prompt.parts()
    mask_id, unk_id = tokenizer.mask_token_id, tokenizer.unk_token_id
    if mask_id is None:
        raise GentuneError(f"prompt: the tokenizer {type(tokenizer).__name__} has no mask token")
    n = len(texts_a)
    prefix, suffix = special_frame(tokenizer)
    specials = len(prefix) + len(suffix)
    pieces: list[list | None] = []  # per part: ids (shared literal / mask) or per-example ids (a field)
    for i, (kind, value) in enumerate(parts):
        lead = any(k != "text" or v.strip() for k, v in parts[:i])  # text before it: a space between
        if kind == "mask":
            pieces.append([mask_id])
        elif kind == "text":
            literal = value.strip()
            spaced = (" " if (value[:1].isspace() and i > 0) else "") + literal
            pieces.append(tokenizer.encode(spaced, add_special_tokens=False) if literal else [])
        else:
            name, _, flt = value.partition(":")
            source = texts_a if name == "text_a" else texts_b
            if source is None:
                raise GentuneError(f"prompt.template {prompt.template!r}: uses {{{name}}}, but the data has one text")
            texts = [(" " if lead else "") + apply_filter(t or "", flt or None).strip() for t in source]
            enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
            pieces.append([[unk_id if t == mask_id else t for t in ids] for ids in enc])
    budget = max_length - specials
    fixed = sum(len(p) for (kind, _), p in zip(parts, pieces) if kind != "field")
    if fixed >= budget:
        raise GentuneError(f"prompt.template {prompt.template!r}: its own tokens ({fixed}) leave no room for the "
                           f"text within max_length {max_length}")
    out = {"input_ids": [], "attention_mask": []}
    types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    if types:
        out["token_type_ids"] = []
    fields = [j for j, (kind, _) in enumerate(parts) if kind == "field"]
    for e in range(n):
        own = {j: list(pieces[j][e]) for j in fields}
        over = fixed + sum(len(v) for v in own.values()) - budget
        while over > 0:  # drop the last token of the longest text field, one at a time
            longest = max(fields, key=lambda k: len(own[k]))
            own[longest].pop()
            over -= 1
        body = []
        for j, (kind, _) in enumerate(parts):
            body.extend(own[j] if kind == "field" else pieces[j])
        ids = prefix + body + suffix
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        if types:
            out["token_type_ids"].append([0] * len(ids))
    return out


__all__ = ["FIELDS", "FILTERS", "PROMPTS", "Prompt", "apply_filter", "encode", "label_word_ids", "packaged",
           "parse_template", "prompt_for", "render"]
