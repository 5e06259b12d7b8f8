"""Start-up of a search: wall time of a fresh `clipdex search "dog"` process, and what it imports.

    python bench/startup.py                                        # this venv, median of 5
    python bench/startup.py --python /tmp/clipdex-light/bin/python --runs 3   # the light venv
    python bench/startup.py --model-args "--model-config tests/data/clipdex-tiny.json --weights W.pt"

Each run is a new process (``PYTHON -m clipdex search dog``) on an index of a few photos, as a
user's every search is: the interpreter starts, clipdex and what it needs are imported, the
model's text tower is loaded and the query encoded and searched. The disk cache is warm (one
search before the timed ones), so the figure is the imports and the loading, not the disk.
Then one more run under ``-X importtime``: its ten heaviest imports by cumulative time (each a
top-level import, so they add up to the whole) and whether torch, open_clip, Transformers or
pyarrow was among all of them.

The index is made by ``PYTHON -m clipdex index`` (so a light venv makes its own) under --work
(/tmp/clipdex-bench-startup, never the repository), with ``--model onnx:WORK/model-immich``
unless --model-args says otherwise: the test suite's tiny open_clip model written in Immich's
hub layout by this interpreter (which needs torch: run the script with the main venv, and name
the venv to time with --python). A tiny model keeps the model's own loading out of the figure:
what is left is what clipdex costs. Other work on the machine inflates every time: the load
average is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
HEAVY = ("torch", "open_clip", "torchvision", "transformers", "timm", "pyarrow")
PHOTOS = 8


def prepare_model(work: Path) -> Path:
    """The tiny open_clip model in Immich's layout under ``work`` (written once, then reused)."""
    folder = work / "model-immich"
    if (folder / "config.json").exists():
        return folder
    sys.path.insert(0, str(REPO))
    import open_clip
    import torch

    from tests import onnx_layouts

    config = REPO / "tests" / "data" / "clipdex-tiny.json"
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = work / "clipdex-tiny.pt"
    torch.save(open_clip.create_model("clipdex-tiny", pretrained=None).state_dict(), weights)
    return onnx_layouts.write_immich_export((config, weights), folder)


def prepare_photos(work: Path) -> Path:
    folder = work / "photos"
    if not folder.exists():
        sys.path.insert(0, str(REPO))
        from tests.images import write_photos

        write_photos(folder, PHOTOS)
    return folder


def run(python: str, args: list[str], env: dict[str, str], flags: tuple[str, ...] = ()
        ) -> subprocess.CompletedProcess[str]:
    """``python [flags] -m clipdex ARGS``, failing loudly (a broken run would time nothing)."""
    done = subprocess.run([python, *flags, "-m", "clipdex", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        sys.exit(f"`clipdex {' '.join(args)}` failed with {python}:\n{done.stdout}\n{done.stderr}")
    return done


def import_times(stderr: str) -> list[tuple[str, int, bool]]:
    """(module, cumulative microseconds, top-level) for each line ``-X importtime`` wrote."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _own, cumulative, name = line.split("|")
        rows.append((name.strip(), int(cumulative), not name[1:].startswith(" ")))  # nested: indented
    return rows


def describe_python(python: str) -> str:
    """'Python 3.11.7 in /venv; torch 2.14.1' or '… no torch' (asked of that interpreter)."""
    code = ("import sys, importlib.util, importlib.metadata as m\n"
            "t = importlib.util.find_spec('torch') and m.version('torch')\n"
            "print(f'Python {sys.version.split()[0]} in {sys.prefix}; ' + (f'torch {t}' if t else 'no torch'))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the interpreter to time (a venv's bin/python)")
    parser.add_argument("--runs", type=int, default=5, help="fresh processes timed (the median is shown)")
    parser.add_argument("--model-args", help="options that pick the model for `clipdex index` "
                        "[default: --model onnx:WORK/model-immich]")
    parser.add_argument("--name-model", action="store_true",
                        help="give the search the same model options (as a user who names the model does); "
                        "default: the search uses the index's own model, as `clipdex search` alone does")
    parser.add_argument("--work", type=Path, default=Path("/tmp/clipdex-bench-startup"))
    args = parser.parse_args()
    from _machine import cpu_line

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    photos = prepare_photos(work)
    model_args = shlex.split(args.model_args) if args.model_args else ["--model", f"onnx:{prepare_model(work)}"]
    tag = hashlib.sha256(f"{args.python}\0{model_args}".encode()).hexdigest()[:12]
    index = work / f"index-{tag}"
    env = dict(os.environ, CLIPDEX_HOME=str(work / f"home-{tag}"), HF_HUB_OFFLINE="1", NO_COLOR="1")
    env.pop("PYTHONPATH", None)

    print(f"machine: {cpu_line()}; load average {os.getloadavg()[0]:.2f}")
    print(f"timed:   {describe_python(args.python)}")
    print(f"model:   {' '.join(model_args)}")
    if not index.exists():
        run(args.python, ["index", str(photos), "--index", str(index), *model_args], env)
    search = ["search", "dog", "--index", str(index), "-n", "5", *(model_args if args.name_model else [])]
    run(args.python, search, env)  # the disk cache warm, any first-use file written
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        run(args.python, search, env)
        times.append(time.perf_counter() - started)
    print(f"cold `clipdex search dog` ({args.runs} fresh processes): median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f})")

    rows = import_times(run(args.python, search, env, flags=("-X", "importtime")).stderr)
    top = sorted((r for r in rows if r[2]), key=lambda r: -r[1])
    total = sum(r[1] for r in top)
    print(f"imports: {len(rows)} modules, {total / 1e6:.2f} s in all (-X importtime; it inflates them a little)")
    print("heaviest top-level imports (cumulative):")
    for name, micros, _ in top[:10]:
        print(f"  {micros / 1e6:7.3f} s  {name}")
    heavy = sorted({name.partition(".")[0] for name, _, _ in rows} & set(HEAVY))
    print(f"heavy packages imported: {', '.join(heavy) if heavy else 'none'} (of {', '.join(HEAVY)})")


if __name__ == "__main__":
    main()
