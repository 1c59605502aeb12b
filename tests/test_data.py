import json
from collections import Counter

import numpy as np
import pytest

from gentune.data import TASKS, get_task, load_splits, read_file, stratified_subsample
from gentune.errors import GentuneError


def _kshot_files(glue, task):
    folder = glue / "k-shot" / task.dirname / "16-13"
    return sorted(p for p in folder.iterdir() if p.suffix in (".tsv", ".csv"))


@pytest.mark.parametrize("name", list(TASKS))
def test_full_json_loads_every_example(glue, name):
    task = TASKS[name]
    for split in ("train", "dev"):
        path = glue / "full" / task.dirname / f"{split}.json"
        raw = json.loads(path.read_text())
        ds = read_file(task, path)
        assert len(ds) == len(raw)
        first = next(iter(raw.values()))
        assert ds[0]["text_a"] == first["text_a"]
        if task.is_regression:
            assert ds[0]["label"] == pytest.approx(float(first["label"]))
        else:
            assert task.labels[ds[0]["label"]] == str(first["label"])
            # every label of the task's set occurs in its training data
            if split == "train":
                assert set(ds["label"]) == set(range(task.num_labels))


@pytest.mark.parametrize("name", list(TASKS))
def test_kshot_glue_layouts_load(glue, name):
    task = TASKS[name]
    for path in _kshot_files(glue, task):
        lines = [l for l in path.read_text(encoding="utf-8-sig").splitlines() if l.strip()]
        ds = read_file(task, path)
        if task.is_regression:
            assert all(0.0 <= s <= 5.0 for s in ds["label"])
        else:
            counts = Counter(ds["label"])
            # LM-BFF splits hold 16 examples of every class
            assert set(counts.values()) == {16} and len(counts) == task.num_labels
        if task.csv:
            assert len(ds) == len(lines) - sum(1 for l in lines if l.startswith('"') and l.count('"') % 2)
        else:
            assert len(ds) == len(lines) - (1 if task.tsv.header else 0)
        assert all(isinstance(t, str) and t for t in ds["text_a"])
        if task.text_pair:
            assert all(isinstance(t, str) for t in ds["text_b"])


def test_mrpc_bom_and_columns(glue):
    task = get_task("mrpc")
    path = glue / "k-shot/MRPC/16-13/train.tsv"
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    ds = read_file(task, path)
    row = path.read_text(encoding="utf-8-sig").splitlines()[1].split("\t")
    assert ds[0] == {"text_a": row[3], "text_b": row[4], "label": int(row[0])}


def test_cola_headerless_columns(glue):
    path = glue / "k-shot/CoLA/16-13/train.tsv"
    row = path.read_text().splitlines()[0].split("\t")
    ds = read_file(get_task("cola"), path)
    assert ds[0] == {"text_a": row[3], "text_b": None, "label": int(row[1])}


def test_snli_label_is_last_field_even_with_annotator_columns(glue):
    path = glue / "k-shot/SNLI/16-13/dev.tsv"
    lines = path.read_text().splitlines()
    wide = next(i for i, l in enumerate(lines) if len(l.split("\t")) == 15)
    ds = read_file(get_task("snli"), path)
    fields = lines[wide].split("\t")
    assert get_task("snli").labels[ds[wide - 1]["label"]] == fields[-1]
    assert ds[wide - 1]["text_a"] == fields[7]


def test_stsb_score_column(glue):
    path = glue / "k-shot/STS-B/16-13/train.tsv"
    row = path.read_text().splitlines()[1].split("\t")
    ds = read_file(get_task("stsb"), path)
    assert ds[0]["label"] == pytest.approx(float(row[9]))
    assert ds[0]["text_b"] == row[8]


# --- malformed input: one GentuneError naming the file (and line) ---------------------------------------

@pytest.mark.parametrize(
    "task,name,content,needle",
    [
        ("rte", "bad.tsv", "index\tsentence1\tsentence2\tlabel\n1\ta\tb\tentailment\n2\ta\tentailment\n",
         "bad.tsv:3: expected 4 tab-separated fields, found 3"),
        ("rte", "bad.tsv", "index\tsentence1\tsentence2\tlabel\n1\ta\tb\tmaybe\n", "bad.tsv:2: label 'maybe'"),
        ("rte", "bad.tsv", "index\tsentence1\tsentence2\n1\ta\tb\n", "bad.tsv:1: header has no column 'label'"),
        ("rte", "empty.tsv", "", "empty.tsv: empty file"),
        ("rte", "hdr.tsv", "index\tsentence1\tsentence2\tlabel\n", "hdr.tsv: no examples"),
        ("cola", "bad.tsv", "src\t1\t\tok sentence\nsrc\t7\t*\tbad label\n", "bad.tsv:2: label '7'"),
        ("sst2", "bad.tsv", "sentence\tlabel\ngood\t1\textra\n", "bad.tsv:2: expected 2 tab-separated fields"),
        ("stsb", "bad.tsv", "\t".join(["c"] * 7 + ["sentence1", "sentence2", "score"]) + "\n"
         + "\t".join(["x"] * 9 + ["high"]) + "\n", "bad.tsv:2: label 'high' is not a number"),
        ("mr", "bad.csv", "0,fine\n1,fine,too many\n", "bad.csv:2: expected 2 comma-separated fields"),
        ("mr", "bad.csv", "0,fine\n3,not a class\n", "bad.csv:2: label '3'"),
        ("rte", "bad.json", '{"0": {"text_a": "a", "text_b": "b", "label": "entailment"},\n "1": ',
         "bad.json:2: malformed JSON"),
        ("rte", "bad.json", '{"0": {"text_a": "a", "label": "entailment"}}', "example 0: task rte needs text_b"),
        ("rte", "bad.json", '{"0": {"text_a": "a", "text_b": "b", "label": "yes"}}', "example 0: label 'yes'"),
        ("rte", "bad.txt", "hello", "unknown file type '.txt'"),
    ],
)
def test_malformed_files_name_file_and_line(tmp_path, task, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(GentuneError) as err:
        read_file(get_task(task), path)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "task,name,content,texts",
    [
        ("sst2", "test.tsv", "index\tsentence\n0\tgood film\n1\tbad film\n", [("good film", None), ("bad film", None)]),
        ("sst2", "dev.tsv", "sentence\tlabel\ngood film\t1\n", [("good film", None)]),  # a label is ignored
        ("rte", "test.tsv", "index\tsentence1\tsentence2\n0\ta\tb\n", [("a", "b")]),
        ("cola", "test.tsv", "src\t\t\tfirst\nsrc\t\t\tsecond\n", [("first", None), ("second", None)]),
        ("stsb", "test.json", '[{"text_a": "a", "text_b": "b"}]', [("a", "b")]),
        ("mr", "test.csv", "just a sentence\n1,with a label\n", [("just a sentence", None), ("with a label", None)]),
    ],
)
def test_unlabelled_files_read_texts_only(tmp_path, task, name, content, texts):
    path = tmp_path / name
    path.write_text(content)
    ds = read_file(get_task(task), path, labelled=False)
    assert list(zip(ds["text_a"], ds["text_b"])) == texts
    labels = np.asarray(ds["label"], dtype=float)
    assert np.isnan(labels).all() if get_task(task).is_regression else (labels == -1).all()
    if name.startswith("test"):  # the same file is an error when labels are required
        with pytest.raises(GentuneError):
            read_file(get_task(task), path)


def test_unlabelled_reading_still_checks_texts(tmp_path):
    path = tmp_path / "test.tsv"
    path.write_text("index\tsentence1\n0\ta\n")
    with pytest.raises(GentuneError, match="header has no column 'sentence2'"):
        read_file(get_task("rte"), path, labelled=False)


def test_non_utf8_file_is_one_line_error(tmp_path):
    for name in ("bin.tsv", "bin.json", "bin.csv"):
        path = tmp_path / name
        path.write_bytes(b"\xff\xfe\x00garbage\n")
        with pytest.raises(GentuneError, match=f"{name}: not UTF-8 text"):
            read_file(get_task("sst2"), path)


def test_missing_file(tmp_path):
    with pytest.raises(GentuneError, match="no such file"):
        read_file(get_task("rte"), tmp_path / "nope.tsv")


def test_unknown_task():
    with pytest.raises(GentuneError, match="unknown task 'foo'"):
        get_task("foo")
    assert get_task("SST-2").name == "sst2" and get_task("sts-b").name == "stsb"


def test_load_splits_precedence_and_every_place_named(glue, tmp_path, monkeypatch):
    task = get_task("rte")
    monkeypatch.delenv("GENTUNE_DATA", raising=False)
    train, dev = load_splits(task, data_dir=str(glue))
    assert (len(train), len(dev)) == (2240, 249)
    monkeypatch.setenv("GENTUNE_DATA", str(glue))
    assert len(load_splits(task)[0]) == 2240
    # an explicit --data-dir that lacks the task is an error even when $GENTUNE_DATA has it
    with pytest.raises(GentuneError, match="--data-dir="):
        load_splits(task, data_dir=str(tmp_path))
    # nothing local and the Hub unreachable (offline): one error names every place tried
    monkeypatch.setenv("GENTUNE_DATA", str(tmp_path))
    with pytest.raises(GentuneError) as err:
        load_splits(task)
    msg = str(err.value)
    assert "--data-dir (not set)" in msg and f"$GENTUNE_DATA={tmp_path}" in msg and "Hugging Face Hub" in msg
    # explicit files
    kshot = glue / "k-shot/RTE/16-13"
    train, dev = load_splits(task, train_file=str(kshot / "train.tsv"), dev_file=str(kshot / "dev.tsv"))
    assert len(train) == len(dev) == 32
    with pytest.raises(GentuneError, match="give both"):
        load_splits(task, train_file=str(kshot / "train.tsv"))


def test_stratified_subsample_keeps_label_shares_and_is_seeded(glue):
    task = get_task("cola")
    ds = read_file(task, glue / "full/CoLA/train.json")
    sub = stratified_subsample(ds, 1000, seed=13)
    again = stratified_subsample(ds, 1000, seed=13)
    other = stratified_subsample(ds, 1000, seed=21)
    assert len(sub) == 1000 and sub["text_a"] == again["text_a"] and sub["text_a"] != other["text_a"]
    full_share = np.mean(ds["label"])
    assert abs(np.mean(sub["label"]) - full_share) <= 1 / 1000 + 1e-9
    # shuffled, not grouped by label
    assert sub["label"][:20] != sorted(sub["label"][:20]) or sub["label"][20:40] != sorted(sub["label"][20:40])
    # every class represented even when tiny; regression stratifies by score quintile
    trec = read_file(get_task("trec"), glue / "full/trec/train.json")
    assert set(stratified_subsample(trec, 12, seed=1)["label"]) == set(range(6))
    stsb = read_file(get_task("stsb"), glue / "full/STS-B/train.json")
    s = stratified_subsample(stsb, 100, seed=1, regression=True)
    assert len(s) == 100
    edges = np.quantile(stsb["label"], [0.2, 0.4, 0.6, 0.8])
    strata = Counter(np.searchsorted(edges, stsb["label"], side="right"))
    taken = Counter(np.searchsorted(edges, s["label"], side="right"))
    for k, n in strata.items():  # each score quintile keeps its share (ties make them unequal)
        assert abs(taken[k] - 100 * n / len(stsb)) < 1
    assert len(stratified_subsample(ds, 10**6, seed=1)) == len(ds)


def test_tsv_rows_end_at_newlines_only(tmp_path):
    """U+2028, U+0085 and a form feed are characters of a sentence, not row ends (str.splitlines would split
    there and reject the row); \\r\\n ends a row like \\n."""
    path = tmp_path / "dev.tsv"
    text = "sentence\tlabel\r\nline\u2028sep\t1\r\nnext\u0085line\t0\nform\x0cfeed\t1\n"
    path.write_bytes(text.encode("utf-8"))
    ds = read_file(get_task("sst2"), path)
    assert ds["text_a"] == ["line\u2028sep", "next\u0085line", "form\x0cfeed"] and ds["label"] == [1, 0, 1]


def test_a_folder_given_as_a_file_says_so(tmp_path):
    with pytest.raises(GentuneError, match="a folder, not a data file"):
        read_file(get_task("sst2"), tmp_path)


def test_tokenized_fingerprint_follows_everything_the_tokenization_reads(tok, tmp_path):
    """map_quietly computes the cache key itself (datasets would pickle the tokenizer to hash it): the key is ours;
    the same inputs give the same key; another max_length, pairing, dataset, vocabulary or truncation side gives
    another; and a dataset with cache files on disk (load_dataset) never returns the rows of another tokenizer's
    settings from its cache."""
    import copy

    import datasets

    from gentune.objectives.classification import _fingerprint, tokenize

    ds = datasets.Dataset.from_dict({"text_a": ["a fine film", "dull"], "text_b": ["yes", "no"], "label": [1, 0]})
    other = datasets.Dataset.from_dict({"text_a": ["a fine film", "dull!"], "text_b": ["yes", "no"], "label": [1, 0]})
    key = tokenize(ds, tok, 16, True)._fingerprint
    assert tokenize(ds, tok, 16, True)._fingerprint == key
    grown, left = copy.deepcopy(tok), copy.deepcopy(tok)
    grown.add_tokens(["<brand-new-token>"])
    left.truncation_side = "left"
    keys = {key, tokenize(ds, tok, 8, True)._fingerprint, tokenize(ds, tok, 16, False)._fingerprint,
            tokenize(other, tok, 16, True)._fingerprint, tokenize(ds, grown, 16, True)._fingerprint,
            tokenize(ds, left, 16, True)._fingerprint}
    assert len(keys) == 6
    enc = tokenize(ds, tok, 16, True)
    assert enc["input_ids"] == tok(["a fine film", "dull"], ["yes", "no"], truncation=True, max_length=16)["input_ids"]
    assert enc["labels"] == [1, 0]
    # the key is map_quietly's, not datasets' own hash
    fn_key = _fingerprint(ds, lambda b: b, tok, {})
    assert fn_key is not None and len(fn_key) == 32 and fn_key != _fingerprint(ds, lambda b: b, left, {})
    # on disk: the same file tokenized with right, then left truncation gives each its own rows
    csv = tmp_path / "t.csv"
    csv.write_text("text_a,text_b,label\n" + "".join(f"first words then the last words {i},,1\n" for i in range(4)))
    disk = datasets.load_dataset("csv", data_files=str(csv), split="train", cache_dir=str(tmp_path / "cache"))
    right_rows = tokenize(disk, tok, 5, False)["input_ids"]
    left_rows = tokenize(disk, left, 5, False)["input_ids"]
    assert right_rows[0] == tok("first words then the last words 0", truncation=True, max_length=5)["input_ids"]
    assert left_rows[0] == left("first words then the last words 0", truncation=True, max_length=5)["input_ids"]
    assert right_rows != left_rows
