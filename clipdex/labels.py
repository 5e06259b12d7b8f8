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

Optional per set: ``multi_label = true``, ``threshold = 0.5``,
``background = [...]`` (multi-label), ``min_prob = 0.4``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
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
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
SET_KEYS = {"labels", "templates", "synonyms", "prompts", "multi_label", "threshold",
            "background", "min_prob"}


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

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    def to_json(self) -> str:
        return json.dumps({
            "name": self.name, "templates": list(self.templates),
            "labels": {lab.name: list(lab.prompts) for lab in self.labels},
            "multi_label": self.multi_label, "threshold": self.threshold,
            "background": list(self.background), "min_prob": self.min_prob,
        })


def label_set_from_json(text: str) -> LabelSet:
    """The inverse of :meth:`LabelSet.to_json` (label sets stored in an index)."""
    data = json.loads(text)
    return LabelSet(name=data["name"],
                    labels=tuple(Label(k, tuple(v)) for k, v in data["labels"].items()),
                    templates=tuple(data["templates"]), multi_label=data["multi_label"],
                    threshold=data["threshold"], background=tuple(data["background"]),
                    min_prob=data["min_prob"])


def expand_templates(templates: str | Sequence[str], where: str) -> tuple[str, ...]:
    """Template strings, with built-in list names (``imagenet``) expanded."""
    items = [templates] if isinstance(templates, str) else list(templates)
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise LabelSetError(where, f"template {item!r} is not a string",
                                'Write templates as strings such as "a photo of {}".')
        if item in builtin_templates():
            out.extend(builtin_templates()[item])
        elif "{}" not in item:
            names = ", ".join(builtin_templates())
            raise LabelSetError(where, f"template {item!r} has no {{}} where the label goes",
                                f'Write it like "a photo taken at {{}}", or use a built-in list: {names}.')
        else:
            out.append(item)
    if not out:
        raise LabelSetError(where, "no templates", 'Give at least one, e.g. "a photo of {}".')
    return tuple(dict.fromkeys(out))


def make_label_set(
    name: str,
    labels: Sequence[str],
    templates: str | Sequence[str] = DEFAULT_TEMPLATES,
    *,
    synonyms: Mapping[str, Sequence[str]] | None = None,
    prompts: Mapping[str, Sequence[str]] | None = None,
    multi_label: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    background: Sequence[str] | None = None,
    min_prob: float | None = None,
    where: str | None = None,
) -> LabelSet:
    """Build and check a label set; errors name the set, the label and the problem."""
    where = where or f"label set {name!r}"
    if not isinstance(name, str) or not NAME.match(name):
        raise LabelSetError(where, f"name {name!r} is not usable as a column name",
                            "Use letters, digits, '_' and '-', starting with a letter.")
    names = [str(label).strip() for label in labels]
    if any(not n for n in names):
        raise LabelSetError(where, "a label is empty", "Remove the empty label (check for ',,').")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LabelSetError(where, f"label {duplicates[0]!r} appears more than once",
                            "Give each label once; put alternative words in its synonyms.")
    if len(names) < 2 and not multi_label:
        raise LabelSetError(where, f"only one label ({', '.join(names) or 'none'})",
                            "A zero-shot choice needs at least two labels, or use multi-label mode.")
    if not 0.0 < threshold < 1.0:
        raise LabelSetError(where, f"threshold {threshold} is not between 0 and 1", "Use e.g. 0.5.")
    expanded = expand_templates(templates, where)
    synonyms = dict(synonyms or {})
    prompts = dict(prompts or {})
    for extra in (synonyms, prompts):
        unknown = sorted(set(extra) - set(names))
        if unknown:
            raise LabelSetError(f"{where}, label {unknown[0]!r}", "is not one of the set's labels "
                                f"({', '.join(names)})", "Fix the spelling or add it to labels.")
    built = []
    for label in names:
        words = _strings(synonyms.get(label) or [label], f"{where}, label {label!r} synonyms")
        own = _strings(prompts.get(label) or [], f"{where}, label {label!r} prompts")
        filled = [t.replace("{}", w) for w in words for t in expanded] if not own or label in synonyms else []
        built.append(Label(label, tuple(dict.fromkeys(filled + own))))
    back = tuple(background) if background else tuple(
        t.replace("{}", DEFAULT_BACKGROUND_WORD) for t in expanded)
    return LabelSet(name=name, labels=tuple(built), templates=expanded, multi_label=multi_label,
                    threshold=threshold, background=back, min_prob=min_prob)


def _strings(value: Any, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise LabelSetError(where, f"{value!r} is not a list of words", 'Write e.g. ["dusk", "sunset"].')
    return [v.strip() for v in items]


def parse_labels_arg(text: str) -> list[str]:
    """``"dawn,day,dusk,night"`` -> labels (commas separate; spaces around them are trimmed)."""
    return [part.strip() for part in text.split(",")]


def load_label_sets(path: str | Path, only: Iterable[str] | None = None) -> list[LabelSet]:
    """Every label set in a TOML, YAML or JSON file (or just those named in ``only``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LabelSetError(str(path), f"cannot be read ({e.strerror or e})",
                            "Check the path of the label file.") from None
    if not text.strip():
        raise LabelSetError(str(path), "the file is empty",
                            "Define at least one label set (see `clipdex classify --help`).")
    data = _parse(path, text)
    if not isinstance(data, dict) or not data:
        raise LabelSetError(str(path), "no label sets found",
                            "The file maps set names to tables with labels and templates.")
    sets = []
    for name, table in data.items():
        where = f"{path}, label set {name!r}"
        if not isinstance(table, dict):
            raise LabelSetError(where, "is not a table", "Give it labels = [...] and templates = [...].")
        unknown = sorted(set(table) - SET_KEYS)
        if unknown:
            raise LabelSetError(where, f"unknown key {unknown[0]!r}",
                                f"Known keys: {', '.join(sorted(SET_KEYS))}.")
        labels = table.get("labels")
        if isinstance(labels, dict):  # labels = { dusk = ["dusk", "sunset"], day = "day" }
            synonyms = {k: v for k, v in labels.items() if v}
            labels = list(labels)
        else:
            synonyms = table.get("synonyms", {})
        if not isinstance(labels, list):
            raise LabelSetError(where, "has no list of labels", 'Add labels = ["a", "b", ...].')
        sets.append(make_label_set(
            name, labels, table.get("templates", DEFAULT_TEMPLATES), synonyms=synonyms,
            prompts=table.get("prompts"), multi_label=bool(table.get("multi_label", False)),
            threshold=float(table.get("threshold", DEFAULT_THRESHOLD)),
            background=table.get("background"), min_prob=table.get("min_prob"), where=where))
    if only:
        wanted = list(only)
        by_name = {s.name: s for s in sets}
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise LabelSetError(str(path), f"has no label set {missing[0]!r}",
                                f"Sets in the file: {', '.join(by_name)}.")
        sets = [by_name[w] for w in wanted]
    return sets


def _parse(path: Path, text: str) -> Any:
    suffix = path.suffix.lower()
    fix = "Fix the syntax at that line."
    if suffix == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise LabelSetError(str(path), f"is not valid TOML: {e}", fix) from None
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise LabelSetError(str(path), "YAML needs the pyyaml package",
                                "pip install 'clipdex[yaml]', or write the file as TOML or JSON.") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark else ""
            raise LabelSetError(str(path), f"is not valid YAML{line}: "
                                f"{getattr(e, 'problem', e)}", fix) from None
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise LabelSetError(str(path), f"is not valid JSON at line {e.lineno}: {e.msg}", fix) from None
    raise LabelSetError(str(path), f"unknown label file type {suffix!r}",
                        "Use a .toml, .yaml/.yml or .json file.")
