"""Label sets and prompt templates, from the command line or from files.

A label set is a name, its labels, and templates such as ``"a photo taken at {}"``.
Each label expands into prompts: every template filled with each of the label's
synonyms, plus prompts it spells out in full. A file (TOML, YAML or JSON) holds
several sets::

    [taken_time]
    templates = ["a photo taken at {}", "a photo taken during the {}"]
    labels = ["dawn", "day", "dusk", "night"]

    [taken_time.synonyms]
    dusk = ["dusk", "sunset", "twilight"]

    [taken_space]
    templates = "imagenet"              # a built-in list (see templates.toml)
    labels = ["indoor", "outdoor"]
    prompts = { indoor = ["a photo taken inside a building"] }

Optional per set: ``min_prob = 0.4`` (single-label sets: below it a photo is
``uncertain``), ``multi_label = true`` with ``threshold = 0.5`` and
``background = [...]`` (prompts for "none of the labels", for softmax models).

Everything is checked when the file is loaded, before any model is: unknown
keys (with the nearest known one), wrong types, probabilities outside [0, 1],
empty or repeated labels, templates without ``{}``. YAML plain scalars used as
labels or prompts stay the text that was written (``[yes, no]`` are the labels
``yes`` and ``no``, not booleans).
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from clipdex.errors import LabelSetError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TEMPLATES_FILE = Path(__file__).with_name("templates.toml")
DEFAULT_TEMPLATES = ("a photo of {}.",)
DEFAULT_BACKGROUND_WORD = "something"
DEFAULT_THRESHOLD = 0.5
UNCERTAIN = "uncertain"  # the prediction of a single-label set below its min_prob
MULTI_SEPARATOR = ";"  # joins the labels of a multi-label prediction in one cell
RESERVED_SET_NAMES = ("path", "photo_id")  # columns of every predictions table
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
SET_KEYS = ("background", "labels", "min_prob", "multi_label", "prompts", "synonyms", "templates",
            "threshold")
MULTI_LABEL_KEYS = ("background", "threshold")  # meaningful only with multi_label = true


@lru_cache(maxsize=1)
def builtin_templates() -> dict[str, list[str]]:
    """Named template lists shipped with clipdex (``imagenet``: CLIP's 80)."""
    return tomllib.loads(TEMPLATES_FILE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Label:
    """One class: its name and the prompts that describe it."""

    name: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class LabelSet:
    """A named set of mutually exclusive labels (or independent ones, if ``multi_label``)."""

    name: str
    labels: tuple[Label, ...]
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    multi_label: bool = False
    threshold: float = DEFAULT_THRESHOLD
    background: tuple[str, ...] = field(default=())
    min_prob: float | None = None
    # Where the labels came from when not from prompts: None for a zero-shot set; else a
    # JSON-serialisable dict with a "kind" ("topics", "learned", ...) and what that kind
    # needs to tell its story (how it was made, its measured quality, its weights).
    origin: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def to_json(self) -> str:
        return json.dumps({
            "name": self.name, "templates": list(self.templates),
            "labels": {lab.name: list(lab.prompts) for lab in self.labels},
            "multi_label": self.multi_label, "threshold": self.threshold,
            "background": list(self.background), "min_prob": self.min_prob,
            **({"origin": self.origin} if self.origin is not None else {}),
        })

    @property
    def kind(self) -> str:
        """``zero-shot`` (labels from prompts), or the ``kind`` of its :attr:`origin`."""
        return str(self.origin.get("kind", "other")) if self.origin else "zero-shot"


def label_set_from_json(text: str) -> LabelSet:
    """The inverse of :meth:`LabelSet.to_json` (label sets stored in an index)."""
    data = json.loads(text)
    return LabelSet(name=data["name"],
                    labels=tuple(Label(k, tuple(v)) for k, v in data["labels"].items()),
                    templates=tuple(data["templates"]), multi_label=data["multi_label"],
                    threshold=data["threshold"], background=tuple(data["background"]),
                    min_prob=data["min_prob"], origin=data.get("origin"))


# -- checks shared by files, the CLI and Python callers ---------------------------
def check_probability(value: Any, what: str, where: str, *, open_interval: bool = False) -> float:
    """``value`` as a float in [0, 1] (or (0, 1)); a :class:`LabelSetError` otherwise.

    ``what`` names the setting as the user wrote it (``threshold``, ``--min-prob``).
    Booleans and strings are refused, not converted: ``threshold = "0.5"`` is a typo.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LabelSetError(where, f"{what} {value!r} is not a number",
                            f"Write a probability without quotes, e.g. {what} = 0.5.")
    number = float(value)
    low_ok = number > 0.0 if open_interval else number >= 0.0
    high_ok = number < 1.0 if open_interval else number <= 1.0
    if not (math.isfinite(number) and low_ok and high_ok):
        bounds = "between 0 and 1 (exclusive)" if open_interval else "between 0 and 1"
        hint = f" ({number / 100:g} if you meant {number:g}%)" if 10.0 <= number <= 100.0 else ""
        raise LabelSetError(where, f"{what} {value!r} is not a probability {bounds}",
                            f"Use a value such as 0.5{hint}.")
    return number


def check_min_prob(value: float | None, where: str = "--min-prob") -> float | None:
    """A ``min_prob`` (None: no minimum) checked to lie in [0, 1]."""
    return None if value is None else check_probability(value, "min_prob", where)


def _words(value: Any, what: str, where: str, example: str) -> list[str]:
    """A string or a list of non-empty strings, as a list (a lone string is ONE item)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise LabelSetError(where, f"{what} must be a string or a list of strings, not "
                            f"{_type_name(value)} {value!r}", f"Write e.g. {what} = {example}.")
    out = []
    for item in items:
        if not isinstance(item, str):
            raise LabelSetError(where, f"{what}: {item!r} is {_type_name(item)}, not text",
                                f'Quote it: "{item}".')
        if not item.strip():
            raise LabelSetError(where, f"{what} has an empty entry", "Remove it.")
        out.append(item.strip())
    if not out:
        raise LabelSetError(where, f"{what} is empty", f"Give at least one, e.g. {what} = {example}, "
                            "or leave the key out for the default.")
    return out


def _type_name(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), ((int, float), "a number"), (str, "a string"),
                       (list, "a list"), (dict, "a table"), (type(None), "empty (null)")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def expand_templates(templates: str | Sequence[str], where: str) -> tuple[str, ...]:
    """Template strings, with built-in list names (``imagenet``) expanded."""
    out: list[str] = []
    for item in _words(templates, "templates", where, '["a photo of {}"]'):
        if item in builtin_templates():
            out.extend(builtin_templates()[item])
        elif "{}" not in item:
            names = ", ".join(builtin_templates())
            raise LabelSetError(where, f"template {item!r} has no {{}} where the label goes",
                                f'Write it like "a photo taken at {{}}", or use a built-in list: {names}.')
        else:
            out.append(item)
    return tuple(dict.fromkeys(out))


def _label_names(labels: Any, where: str) -> list[str]:
    if isinstance(labels, str):
        parts = [part for part in parse_labels_arg(labels) if part]
        example = json.dumps(parts if len(parts) > 1 else [labels.strip(), "..."])
        raise LabelSetError(where, f"labels is one string ({labels!r}), not a list",
                            f"Write labels = {example} (on the command line: --labels a,b,c).")
    if not isinstance(labels, (list, tuple)):
        raise LabelSetError(where, f"labels must be a list of strings, not {_type_name(labels)}",
                            'Write labels = ["a", "b", ...].')
    if not labels:
        raise LabelSetError(where, "labels is empty", 'Give at least two, e.g. labels = ["indoor", "outdoor"].')
    names = []
    for label in labels:
        if not isinstance(label, str):
            raise LabelSetError(where, f"label {label!r} is {_type_name(label)}, not text",
                                f'Quote it: "{label}".')
        name = label.strip()
        if not name:
            raise LabelSetError(where, "a label is empty", "Remove the empty label (check for ',,').")
        if MULTI_SEPARATOR in name or "\n" in name:
            raise LabelSetError(where, f"label {name!r} contains {MULTI_SEPARATOR!r} or a line break",
                                f"Labels are table cells, and {MULTI_SEPARATOR!r} separates the labels of a "
                                "multi-label prediction; choose another name (put the words in synonyms).")
        if name.casefold() == UNCERTAIN:
            raise LabelSetError(where, f"label {name!r} is reserved",
                                f"{UNCERTAIN!r} is what clipdex predicts below min_prob; choose another name.")
        names.append(name)
    seen: dict[str, str] = {}
    for name in names:
        folded = " ".join(name.split()).casefold()
        if folded in seen:
            same = f"label {name!r} appears more than once" if seen[folded] == name else \
                f"labels {seen[folded]!r} and {name!r} differ only in case or spacing"
            raise LabelSetError(where, same,
                                "Give each label once; put alternative words in its synonyms.")
        seen[folded] = name
    return names


def _per_label(value: Any, what: str, names: list[str], where: str) -> dict[str, list[str]]:
    """``synonyms`` / ``prompts``: a table from a label to a string or a list of strings."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise LabelSetError(where, f"{what} must be a table from label to words, not {_type_name(value)}",
                            f'Write e.g. {what} = {{ {names[0]} = ["…", "…"] }}.')
    out = {}
    for label, words in value.items():
        if label not in names:
            close = difflib.get_close_matches(str(label), names, n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise LabelSetError(where, f"label {label!r} in {what} is not one of the set's labels "
                                f"({', '.join(names)})", f"{hint}Fix the spelling or add it to labels.")
        out[label] = _words(words, f"{what} of {label!r}", where, '["…", "…"]')
    return out


Locate = Callable[[str | None], str]  # a key of the set -> "file line N, label set 'x'"


def make_label_set(
    name: str,
    labels: Sequence[str],
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
    *,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    prompts: Mapping[str, Sequence[str]] | None = None,
    multi_label: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    background: str | Sequence[str] | None = None,
    min_prob: float | None = None,
    where: str | None = None,
) -> LabelSet:
    """Build and check a label set; errors name the set, the label and the problem.

    ``background`` is one prompt (a string) or a list of prompts; ``threshold``
    must lie in (0, 1) and ``min_prob`` in [0, 1].
    """
    shown = where or f"label set {name!r}"
    return _build(name, labels, templates, synonyms, prompts, multi_label, threshold, background,
                  min_prob, lambda _key: shown)


def _build(name: Any, labels: Any, templates: Any, synonyms: Any, prompts: Any, multi_label: Any,
           threshold: Any, background: Any, min_prob: Any, at: Locate) -> LabelSet:
    if not isinstance(name, str) or not NAME.match(name):
        raise LabelSetError(at(None), f"name {name!r} is not usable as a column name",
                            "Use letters, digits, '_' and '-', starting with a letter.")
    if name in RESERVED_SET_NAMES:
        raise LabelSetError(at(None), f"the name {name!r} is a column every predictions table has",
                            f"Choose another name (not {' or '.join(RESERVED_SET_NAMES)}).")
    if not isinstance(multi_label, bool):
        raise LabelSetError(at("multi_label"), f"multi_label {multi_label!r} is not true or false",
                            "Write multi_label = true (without quotes).")
    names = _label_names(labels, at("labels"))
    if len(names) < 2 and not multi_label:
        raise LabelSetError(at("labels"), f"only one label ({', '.join(names)})",
                            "A zero-shot choice needs at least two labels, or use multi-label mode.")
    threshold = check_probability(threshold, "threshold", at("threshold"), open_interval=True)
    min_prob = None if min_prob is None else check_probability(min_prob, "min_prob", at("min_prob"))
    expanded = expand_templates(templates, at("templates"))
    synonym_words = _per_label(synonyms, "synonyms", names, at("synonyms"))
    own_prompts = _per_label(prompts, "prompts", names, at("prompts"))
    built = []
    for label in names:
        words = synonym_words.get(label) or [label]
        own = own_prompts.get(label, [])
        filled = [t.replace("{}", w) for w in words for t in expanded] \
            if not own or label in synonym_words else []
        built.append(Label(label, tuple(dict.fromkeys(filled + own))))
    if background is None:
        back = tuple(dict.fromkeys(t.replace("{}", DEFAULT_BACKGROUND_WORD) for t in expanded))
    else:
        back = tuple(_words(background, "background", at("background"), '["a photo of something"]'))
    return LabelSet(name=name, labels=tuple(built), templates=expanded, multi_label=multi_label,
                    threshold=threshold, background=back, min_prob=min_prob)


def parse_labels_arg(text: str) -> list[str]:
    """``"dawn,day,dusk,night"`` -> labels (commas separate; spaces around them are trimmed)."""
    return [part.strip() for part in text.split(",")]


# -- files -----------------------------------------------------------------------
def read_label_text(path: Path, what: str) -> str:
    """The text of a file of labels (``what``: how the fix names it, e.g. "the label file"), or a
    :class:`LabelSetError` saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise LabelSetError(str(path), f"cannot be read ({e.strerror or e})",
                            f"Check the path of {what}.") from None
    except UnicodeDecodeError as e:
        raise LabelSetError(str(path), f"is not UTF-8 text (byte {e.start})", f"Save {what} as UTF-8.") from None


def load_label_sets(path: str | Path, only: Iterable[str] | None = None) -> list[LabelSet]:
    """Every label set in a TOML, YAML or JSON file (or just those named in ``only``).

    The whole file is checked; the first problem raises a :class:`LabelSetError`
    naming the file, the set, the line where it can be found, and the fix.
    """
    path = Path(path)
    text = read_label_text(path, "the label file")
    if not text.strip():
        raise LabelSetError(str(path), "the file is empty",
                            "Define at least one label set (see `clipdex classify --help`).")
    data = _parse(path, text)
    if not isinstance(data, dict) or not data:
        raise LabelSetError(str(path), "no label sets found",
                            "The file maps set names to tables with labels and templates.")
    locate = _Locator(text, [str(name) for name in data])
    sets = [_set_from_table(path, locate, str(name), table) for name, table in data.items()]
    if only:
        wanted = list(only)
        by_name = {s.name: s for s in sets}
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise LabelSetError(str(path), f"has no label set {missing[0]!r}",
                                f"Sets in the file: {', '.join(by_name)}.")
        sets = [by_name[w] for w in wanted]
    return sets


def _set_from_table(path: Path, locate: _Locator, name: str, table: Any) -> LabelSet:
    def at(key: str | None = None) -> str:
        line = locate.line(name, key)
        return f"{path}{f' line {line}' if line else ''}, label set {name!r}"

    if not isinstance(table, dict):
        raise LabelSetError(at(), f"is {_type_name(table)}, not a table",
                            "Give it labels = [...] and templates = [...].")
    for key in table:
        if key not in SET_KEYS:
            close = difflib.get_close_matches(str(key), SET_KEYS, n=1, cutoff=0.6)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            raise LabelSetError(at(str(key)), f"unknown key {key!r}",
                                f"{hint}Known keys: {', '.join(SET_KEYS)}.")
    multi_label = _yaml_value(table.get("multi_label", False))
    if not isinstance(multi_label, bool):
        raise LabelSetError(at("multi_label"), f"multi_label {multi_label!r} is not true or false",
                            "Write multi_label = true (without quotes).")
    if not multi_label:
        for key in MULTI_LABEL_KEYS:
            if key in table:
                raise LabelSetError(at(key), f"{key} applies only to multi-label sets",
                                    "Add multi_label = true, or remove it (a single-label set picks its best "
                                    "label; use min_prob to call low-probability photos uncertain).")
    elif "min_prob" in table:
        raise LabelSetError(at("min_prob"), "min_prob applies only to single-label sets",
                            "A multi-label set turns a label on at its threshold; use threshold instead.")
    labels = table.get("labels")
    if labels is None:
        raise LabelSetError(at(), "has no labels", 'Add labels = ["a", "b", ...].')
    synonyms = table.get("synonyms")
    if isinstance(labels, dict):  # labels = { dusk = ["dusk", "sunset"], day = "day" }
        if synonyms is not None:
            raise LabelSetError(at("synonyms"), "gives synonyms both in labels = { ... } and in synonyms",
                                "Keep one of the two.")
        synonyms = {k: v for k, v in labels.items() if v not in ("", [], None)}
        labels = list(labels)
    return _build(name, labels, table.get("templates", DEFAULT_TEMPLATES), synonyms, table.get("prompts"),
                  multi_label, _yaml_value(table.get("threshold", DEFAULT_THRESHOLD)),
                  table.get("background"), _yaml_value(table.get("min_prob")), at)


class _Locator:
    """Finds the line of a set's key in the file's text, where one stands out.

    TOML (``[name]``, ``key =``), YAML (``name:``, ``key:``) and JSON
    (``"name":``, ``"key":``) spell a set and its keys differently; a set's
    section runs from its header to the next set's header, and a key's line is
    the first line of the section that starts with it. None when not found.
    """

    def __init__(self, text: str, names: Iterable[str]) -> None:
        self.lines = text.splitlines()
        self.starts: dict[str, int] = {}
        for name in names:
            quoted = rf"""["']?{re.escape(name)}["']?"""
            header = re.compile(rf"^\s*(\{{\s*)?(\[\s*{quoted}\s*\]|{quoted}\s*:)")
            start = next((i for i, line in enumerate(self.lines) if header.match(line)), None)
            if start is not None:
                self.starts[name] = start
        self.order = sorted(self.starts.values()) + [len(self.lines)]

    def line(self, name: str, key: str | None) -> int | None:
        start = self.starts.get(name)
        if start is None:
            return None
        if key is None:
            return start + 1
        end = next(i for i in self.order if i > start)
        quoted = rf"""["']?{re.escape(key)}["']?"""
        own_line = re.compile(rf"^\s*(\[\s*[^\]]*\.\s*{quoted}\s*\]|{quoted}\s*[:=])")
        inline = re.compile(rf"[{{,]\s*{quoted}\s*[:=]")
        for i in range(start, end):
            if own_line.match(self.lines[i]) or inline.search(self.lines[i]):
                return i + 1
        return None


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    fix = "Fix the syntax at that line."
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            at_end = "at end of document" in str(e)
            where = f" (the file has {len(text.splitlines())} lines)" if at_end else ""
            raise LabelSetError(str(path), f"is not valid TOML: {e}{where}",
                                "Close the last list or string." if at_end else fix) from None
    if suffix in (".yaml", ".yml"):
        return _parse_yaml(path, text, fix)
    if suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise LabelSetError(str(path), f"is not valid JSON at line {e.lineno}: {e.msg}", fix) from None
        except _DuplicateKey as e:
            line = _find_key_line(text, e.key)
            raise LabelSetError(str(path) + (f" line {line}" if line else ""),
                                f"key {e.key!r} appears twice in one table",
                                "Give it once (merge the two).") from None
    raise LabelSetError(str(path), f"unknown label file type {suffix!r}",
                        "Use a .toml, .yaml/.yml or .json file.")


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.line = line


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _find_key_line(text: str, key: str) -> int | None:
    pattern = re.compile(rf'"{re.escape(key)}"\s*:')
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if pattern.search(line)]
    return hits[1] if len(hits) > 1 else None


class _PlainScalar(str):
    """A YAML plain (unquoted) scalar, kept as the text the user wrote.

    Labels and prompts use the text (``yes`` stays ``"yes"``); settings that
    take a boolean or a number resolve it as YAML would (:func:`_yaml_value`).
    """


def _yaml_value(value: Any) -> Any:
    """A plain YAML scalar resolved the way YAML's SafeLoader would; anything else as is."""
    if isinstance(value, _PlainScalar):
        import yaml

        try:
            return yaml.safe_load(str(value))
        except yaml.YAMLError:  # pragma: no cover - a plain scalar always parses
            return str(value)
    return value


def _parse_yaml(path: Path, text: str, fix: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise LabelSetError(str(path), "YAML needs the pyyaml package",
                            "pip install 'clipdex[yaml]', or write the file as TOML or JSON.") from None

    class TextLoader(yaml.SafeLoader):
        """SafeLoader whose plain scalars stay text (no yes->True, 1.0->float, null->None)."""

    kept = {"tag:yaml.org,2002:merge"}
    TextLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag in kept]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def construct_str(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
        value = loader.construct_scalar(node)
        return _PlainScalar(value) if node.style is None else str(value)

    def construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        loader.flatten_mapping(node)
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if key in out:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            out[key] = loader.construct_object(value_node, deep=True)
        return out

    TextLoader.add_constructor("tag:yaml.org,2002:str", construct_str)
    TextLoader.add_constructor("tag:yaml.org,2002:map", construct_mapping)
    try:
        return yaml.load(text, Loader=TextLoader)  # a SafeLoader subclass: safe
    except _DuplicateKey as e:
        raise LabelSetError(f"{path} line {e.line}", f"key {e.key!r} appears twice in one mapping",
                            "Give it once (merge the two).") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise LabelSetError(str(path), f"is not valid YAML{line}: "
                            f"{getattr(e, 'problem', e)}", fix) from None
