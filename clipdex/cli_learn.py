"""clipdex's learn command (imported by clipdex.cli's main group when named, see its LAZY_COMMANDS):
label sets that learn from a column of the user's table or from corrections (:mod:`clipdex.learn`)."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import click

from clipdex.cli import PROBABILITY, _console, _t, index_option, model_choice
from clipdex.learn import RARE_CHOICES

if TYPE_CHECKING:
    from clipdex.learn import Learned, Unsure

MAX_NEXT = 500
MAX_LEVELS = 20
MAX_FOLDS = 20
PRIORS = {"text-encoder": "the set's prompts, encoded again",
          "stored-probabilities": "the stored zero-shot probabilities (the model's weights are not here)"}
ROWS = (("probe", "linear probe"), ("combined", "zero-shot + corrections"), ("zero_shot", "zero-shot"),
        ("baseline", "majority class"), ("selection", "chosen weight (selection)"))


def _edges(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    """--bins 400,800 as numbers."""
    if value is None:
        return None
    try:
        edges = [float(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a list of numbers: write edges such as 400,800") from None
    if not edges or not all(math.isfinite(e) for e in edges):
        raise click.BadParameter(f"{value!r}: give one finite number or more, such as 800 or 400,800")
    return edges


@click.command("learn")
@click.argument("name")
@click.option("--metadata", type=click.Path(exists=True, dir_okay=False),
              help="CSV table whose --target column the set learns to predict.")
@click.option("--key", help="Column of --metadata naming the photo (file stem, name or path).")
@click.option("--target", help="Column of --metadata to learn (text values are classes; numbers are cut into levels).")
@click.option("--bins", callback=_edges, help="Edges cutting a numeric --target into levels, e.g. 800 (low < 800 "
              "<= high) or 400,800 [default: quantile levels when the column has more than 12 values].")
@click.option("--levels", type=click.IntRange(2, MAX_LEVELS),
              help="Cut a numeric --target into this many quantile levels [default: 2, at the median].")
@click.option("--rare", type=click.Choice(RARE_CHOICES), default="error", show_default=True,
              help="Classes with fewer than --min-rows photos: stop and name them, drop them, or merge them "
                   "into one class 'other'.")
@click.option("--min-rows", type=click.IntRange(2, 100_000), default=5, show_default=True,
              help="The fewest photos a class needs to be learned and cross-validated.")
@click.option("--from-corrections", is_flag=True,
              help="Learn from the corrections made in `clipdex serve` of zero-shot set NAME, combined with its "
                   "prompts; stored as NAME-learned (NAME stays zero-shot).")
@click.option("--predict", is_flag=True,
              help="Label every photo (those indexed since too) with learned set NAME's stored model, no retraining.")
@click.option("--next", "next_n", type=click.IntRange(1, MAX_NEXT),
              help="List the N photos NAME is least sure of (corrected ones left out): the ones to correct next.")
@click.option("--min-prob", type=PROBABILITY, help="Below this probability a photo is 'uncertain'.")
@click.option("--save-as", help="Store a set learned from a table under this name [default: NAME, or NAME-learned "
                                "when NAME is a zero-shot set].")
@click.option("--folds", type=click.IntRange(2, MAX_FOLDS), default=5, show_default=True,
              help="Cross-validation folds.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed of the folds.")
@index_option
@model_choice
@click.option("--json", "as_json", is_flag=True,
              help='Print JSON: {"set", "source", "target", "classes", "counts", "levels", "scores": {row: '
                   '{"accuracy", "balanced_accuracy", "macro_f1", "count"}}, "C", "weight", "prior", "photos", '
                   '"predicted", …, "next": [{"id", "path", "label", "prob", "margin", "top"}]}.')
def learn_cmd(name: str, metadata: str | None, key: str | None, target: str | None, bins: list[float] | None,
              levels: int | None, rare: str, min_rows: int, from_corrections: bool, predict: bool,
              next_n: int | None, min_prob: float | None, save_as: str | None, folds: int, seed: int,
              index_dir: str | None, model: str | None, weights: str | None, model_config: str | None,
              as_json: bool) -> None:
    """Teach label set NAME from your table or from corrections; list what to correct next.

    \b
    clipdex learn iso --metadata photos.csv --key photo_id --target exif_iso --bins 800
    clipdex learn taken_time --from-corrections      (stored as taken_time-learned)
    clipdex learn taken_time --next 20               (the photos it is least sure of)
    clipdex learn iso --predict                      (label photos indexed since)

    A linear probe (class-balanced logistic regression, C chosen by cross-validation from 1e-3 to 1e3)
    on the stored vectors; its cross-validated accuracy, balanced accuracy and macro-F1 are printed beside
    the majority-class baseline (and zero-shot, where there is one). The result is a label set: review,
    evaluate, export, search filters and the web pages work on it.
    """
    from clipdex.index import Index
    from clipdex.learn import learn_from_corrections, learn_from_table, least_sure, predict_learned

    modes = [m for m, on in (("--metadata", metadata), ("--from-corrections", from_corrections),
                             ("--predict", predict)) if on]
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} are different ways to learn: give one")
    if not modes and next_n is None:
        raise click.UsageError("say what to learn from: --metadata TABLE --key COLUMN --target COLUMN, "
                               "--from-corrections, --predict (a learned set, again), or --next N (what to correct)")
    if metadata and not (key and target):
        raise click.UsageError("--metadata needs --key COLUMN (naming each photo) and --target COLUMN (to learn)")
    table_only = [o for o, v in (("--key", key), ("--target", target), ("--bins", bins), ("--levels", levels),
                                 ("--save-as", save_as)) if v is not None]
    if table_only and not metadata:
        raise click.UsageError(f"{', '.join(table_only)} go with --metadata TABLE")
    if bins is not None and levels is not None:
        raise click.UsageError("--bins and --levels both say how to cut the target: give one")
    err = _console(stderr=True)
    learned: Learned | None = None
    with Index.open(index_dir, model=model, weights=weights, model_config=model_config) as index:
        model_name = index.model_record().name
        if metadata:
            assert key is not None and target is not None
            if not as_json:
                err.print(f"learning {_t(target)} of {_t(metadata)}: cross-validating…", markup=True)
            learned = learn_from_table(index, name, metadata, key, target, bins=bins, levels=levels, rare=rare,
                                       min_rows=min_rows, folds=folds, min_prob=min_prob, save_as=save_as,
                                       seed=seed)
        elif from_corrections:
            learned = learn_from_corrections(index, name, min_prob=min_prob, folds=folds, seed=seed)
        elif predict:
            result = predict_learned(index, name, min_prob=min_prob)
            if not as_json:
                _console().print(f"labelled {len(result.file_ids)} photos with learned set [bold]{_t(name)}[/] "
                                 f"({_t(model_name)}): " + _t(_counts(result.counts())))
        unsure = least_sure(index, learned.set_name if learned else name, next_n) if next_n else None
    if as_json:
        out: dict[str, Any] = learned.to_dict() if learned else {"set": name}
        out["model"] = model_name
        if predict:
            out.update(photos=len(result.file_ids), predicted=result.counts())
        if unsure is not None:
            out["next"] = [u.to_dict() for u in unsure]
        click.echo(json.dumps(out, indent=2))
        return
    if learned is not None:
        _print_learned(learned, model_name)
    if unsure is not None:
        _print_next(learned.set_name if learned else name, unsure)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{label} {n}" for label, n in counts.items())


def _print_learned(learned: "Learned", model_name: str) -> None:
    out = _console()
    if learned.source == "table":
        where = f"column {learned.target!r} of {learned.table}"
    else:
        where = f"the corrections of {learned.target!r}"
    out.print(f"[bold]{_t(learned.set_name)}[/] ({_t(model_name)}) learned from {_t(where)}: "
              f"{sum(learned.counts.values())} photos, {len(learned.classes)} classes")
    if learned.levels:
        out.print(f"  levels: {learned.levels}", markup=False)
    out.print(f"  photos per class: {_counts(learned.counts)}", markup=False)
    if learned.left_out:
        out.print(f"  left out (fewer than the photos a class needs): {_counts(learned.left_out)}", markup=False)
    if learned.rows_unmatched or learned.rows_without_value:
        out.print(f"  table rows not used: {learned.rows_unmatched} name no indexed photo, "
                  f"{learned.rows_without_value} have no {learned.target!r} value", markup=False)
    if learned.source == "table":
        how = ("C chosen inside each outer fold from 1e-3..1e3 (nested)" if learned.nested
               else "C chosen once on a sample, then fixed (not nested: slightly optimistic)")
        out.print(f"  cross-validated, {learned.folds}-fold, class-balanced; {how}; fold C: "
                  + ", ".join(f"{c:g}" for c in learned.fold_C), markup=False)
    elif learned.nested:
        out.print(f"  cross-validated on the corrected photos (one per content), {learned.folds}-fold, nested: "
                  "C and the probe's weight chosen inside each outer fold (weights "
                  + ", ".join(f"{w:g}" for w in learned.fold_weights) + "); the stored C "
                  f"{learned.C:g} and weight {learned.weight:g} chosen on all of them, whose score on the folds "
                  "it was chosen on is the selection row (optimistic; never below zero-shot there); zero-shot "
                  f"side: {PRIORS.get(learned.prior or '', learned.prior)}", markup=False)
    else:
        out.print(f"  C {learned.C:g} and the probe's weight {learned.weight:g} chosen by {learned.folds}-fold CV "
                  "on the corrected photos (one per content); no nested estimate (see the note): the selection "
                  "row is the choice's score on the folds it was chosen on; zero-shot side: "
                  f"{PRIORS.get(learned.prior or '', learned.prior)}", markup=False)
    out.print(f"  {'':<26}{'accuracy':>9}{'balanced':>10}{'macro-F1':>10}", markup=False)
    for key, label in ROWS:
        s = learned.scores.get(key)
        if s is not None:
            out.print(f"  {label:<26}{s.accuracy:>9.3f}{s.balanced_accuracy:>10.3f}{s.macro_f1:>10.3f}",
                      markup=False)
    for note in learned.notes:
        out.print(f"  note: {note}", markup=False)
    out.print(f"stored as label set [bold]{_t(learned.set_name)}[/] (C {learned.C:g}): {learned.photos} photos: "
              + _t(_counts(learned.predicted)))


def _print_next(name: str, unsure: list["Unsure"]) -> None:
    out = _console()
    out.print(f"[bold]{_t(name)}[/]: the {len(unsure)} photos it is least sure of (correct them in "
              f"`clipdex serve`, /labels/{_t(name)})")
    out.print(f"  {'id':>6}  {'label':<16}{'prob':>6}{'margin':>8}  top labels", markup=False)
    for u in unsure:
        top = ", ".join(f"{label} {p:.2f}" for label, p in u.top)
        out.print(f"  {u.file_id:>6}  {u.label[:16]:<16}{u.prob:>6.2f}{u.margin:>8.3f}  {top}  {u.path}",
                  markup=False)


COMMANDS: list[click.Command] = [learn_cmd]
