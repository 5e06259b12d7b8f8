"""CI's proof of the light install: the base package, in a virtual environment without torch,
indexes, searches and classifies a few generated photos with a tiny model in the hub's layouts.

Two steps, two interpreters:

    .venv/bin/python .ci/light_smoke.py prepare WORK          # the main venv (torch): the inputs
    /tmp/clipdex-light/bin/python .ci/light_smoke.py run WORK  # the light venv: clipdex itself

``prepare`` writes WORK/photos (tests/images.py) and the tiny open_clip model of the test suite
written as an ONNX export in Immich's layout and in the one ``clipdex models export`` writes
(tests/onnx_layouts.py). ``run`` uses only the standard library and the light venv's installed
clipdex (``python -m clipdex``, started from WORK so that the repository's sources are not on
its path), and fails on the first thing that is not as a user would expect.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = 8
LAYOUTS = ("immich", "clipdex")


def prepare(work: Path) -> None:
    """Photos and the tiny model in both export layouts, made with the main venv's torch."""
    sys.path.insert(0, str(REPO))
    from tests import onnx_layouts
    from tests.images import write_photos

    write_photos(work / "photos", PHOTOS)
    model = onnx_layouts.make_tiny_model(work / "weights")
    onnx_layouts.write_immich_export(model, work / "model-immich")
    onnx_layouts.write_clipdex_export(model, work / "model-clipdex", home=work / "export-home")
    print(f"prepared {PHOTOS} photos and the tiny model in {', '.join(LAYOUTS)} layouts under {work}")


def clipdex(work: Path, *args: str) -> str:
    """``python -m clipdex ARGS`` with this interpreter, offline, from ``work``; its stdout.
    Exits with its output where it fails."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(work / "hf-home"), CLIPDEX_HOME=str(work / "home"),
               NO_COLOR="1", COLUMNS="200")
    env.pop("PYTHONPATH", None)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "clipdex", *args], check=False, cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    print(f"  clipdex {' '.join(args[:1])}: exit {done.returncode}, {time.perf_counter() - started:.1f} s")
    if done.returncode != 0 or "Traceback" in done.stderr:
        sys.exit(f"light smoke: `clipdex {' '.join(args)}` failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def check(condition: bool, what: str) -> None:
    if not condition:
        sys.exit(f"light smoke: {what}")


def run(work: Path) -> None:
    """Index, search, classify and status with each layout, in this (torch-free) interpreter."""
    import importlib.util

    for name in ("torch", "open_clip", "torchvision", "transformers", "pyarrow"):
        check(importlib.util.find_spec(name) is None, f"{name} is installed in {sys.prefix}: not a light venv")
    import clipdex as package

    check(not Path(package.__file__).resolve().is_relative_to(REPO),
          f"clipdex was imported from the repository ({package.__file__}), not the light venv's install")
    photos = work / "photos"
    for layout in LAYOUTS:
        print(f"{layout} layout:")
        idx = str(work / f"index-{layout}")
        model = f"onnx:{work / f'model-{layout}'}"
        out = clipdex(work, "index", str(photos), "--index", idx, "--model", model)
        # The summary's lines: "  indexed         8  photos in this folder", "  new             8".
        check(re.search(rf"^\s*indexed\s+{PHOTOS}\s+photos in this folder\s*$", out, re.M) is not None
              and re.search(rf"^\s*new\s+{PHOTOS}\s*$", out, re.M) is not None,
              f"index did not report {PHOTOS} photos indexed, all new:\n{out}")
        results = json.loads(clipdex(work, "search", "a dog in the snow", "--index", idx, "-n", "3",
                                     "--json"))["results"]
        check(len(results) == 3 and all(Path(r["path"]).is_relative_to(photos) for r in results),
              f"search gave {results}")
        table = work / f"place-{layout}.csv"
        clipdex(work, "classify", "--index", idx, "--name", "place", "--labels", "indoor,outdoor",
                "--template", "a photo taken {}", "--out", str(table))
        rows = table.read_text().splitlines()
        check(len(rows) == PHOTOS + 1, f"classify wrote {len(rows) - 1} rows, not {PHOTOS}")
        status = clipdex(work, "status", "--index", idx)
        check(f"{PHOTOS} indexed, 0 failed" in status, f"status says:\n{status}")
    print(f"light smoke: index, search, classify and status passed in {sys.prefix} (no torch)")


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("prepare", "run"):
        sys.exit(f"usage: {sys.argv[0]} prepare|run WORK")
    work = Path(sys.argv[2]).resolve()
    work.mkdir(parents=True, exist_ok=True)
    (prepare if sys.argv[1] == "prepare" else run)(work)


if __name__ == "__main__":
    main()
