"""clipdex without torch: the light install (`pip install clipdex`) indexes, searches and classifies
with ONNX exports, and says which extra to install for what it cannot do.

Each case runs the real command line (``python -m clipdex``) in a subprocess whose imports of
torch, open_clip, torchvision, Transformers, timm and pyarrow fail as they do where those packages are not
installed: a ``sitecustomize`` on PYTHONPATH puts a finder first on ``sys.meta_path`` that refuses
them. CI also installs the base package in a second, torch-free virtual environment
(``.ci/light_smoke.py``); these tests keep the same promise checked on every run of the suite.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "open_clip", "torchvision", "transformers", "timm", "pyarrow")  # none is in the base install
HEAVY = BLOCKED

# Installed first thing in the subprocess (Python imports ``sitecustomize`` at start-up): a
# finder that answers for the blocked packages before any other, as an absent package would.
BLOCKER = f'''\
import sys

BLOCKED = {BLOCKED!r}


class TorchFreeBlocker:
    """Refuses the packages a light install lacks, as Python does for a package that is not there."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: a torch-free install)", name=name)
        return None


sys.meta_path.insert(0, TorchFreeBlocker())
'''


@pytest.fixture()
def torch_free_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess without torch and friends, offline, with an empty Hugging
    Face cache of its own (nothing a download could have left)."""
    site = tmp_path / "torch-free-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf-home"), NO_COLOR="1", COLUMNS="200")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    return env


def clipdex(env: dict[str, str], *args: str, timeout: float = 120, python_flags: tuple[str, ...] = ()
            ) -> subprocess.CompletedProcess[str]:
    """``python -m clipdex ARGS`` in a subprocess with ``env``; its exit code and output."""
    return subprocess.run([sys.executable, *python_flags, "-m", "clipdex", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def index_counts(stdout: str) -> dict[str, int]:
    """The counts ``clipdex index`` states, one a line (``  indexed        12  photos in this folder``,
    ``  new            12``…), by what each counts."""
    found = re.findall(r"^ +(indexed|new|changed|reused|unchanged|removed|skipped) +(\d+)\b", stdout, re.MULTILINE)
    return {what: int(count) for what, count in found}


def status_lines(stdout: str) -> dict[str, str]:
    """``clipdex status``'s lines by their first word (``photos   12 indexed, 0 failed`` → ``photos``)."""
    return dict(line.split(None, 1) for line in stdout.splitlines() if len(line.split(None, 1)) == 2)


def models_here(stdout: str) -> dict[str, str]:
    """The "here" column of ``clipdex models list``'s table by model name (without " (default)"):
    each row is name, sources, here, description, apart by two spaces or more; a source's second
    line (its name cell empty) is no row."""
    here = {}
    for line in stdout.splitlines():
        cells = re.split(r" {2,}", line.strip())
        if len(cells) == 4 and cells[0] != "name":
            here[cells[0].removesuffix(" (default)")] = cells[2]
    return here


def files_under(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its size: what a download would add to or change."""
    return {str(f.relative_to(folder)): f.stat().st_size for f in folder.rglob("*") if f.is_file()}


INDEXED_12 = {"indexed": 12, "new": 12, "changed": 0, "reused": 0, "unchanged": 0, "removed": 0, "skipped": 0}


def test_the_blocker_refuses_what_a_light_install_lacks(torch_free_env: dict[str, str]) -> None:
    """The stand-in is faithful: each package fails to import and counts as not installed, and
    clipdex's own check agrees, while the base install's packages still import."""
    code = ("import importlib, clipdex.models.optional as o\n"
            f"for name in {BLOCKED!r}:\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except ImportError:\n"
            "        pass\n"
            "    else:\n"
            "        raise SystemExit(name + ' imported')\n"
            "    assert not o.installed(name), name\n"
            "assert not o.has_torch() and not o.has_open_clip() and not o.has_transformers()\n"
            "import onnxruntime, tokenizers, huggingface_hub, faiss, PIL\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], env=torch_free_env, cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_devices_and_the_clip_tokenizer_say_what_to_install(torch_free_env: dict[str, str]) -> None:
    """The library's own answers without torch: the CPU by default, a GPU by name refused with the
    extra to install, and open_clip's tokenizer (for exports without a tokenizer.json) likewise."""
    code = ("from clipdex.errors import ModelError\n"
            "from clipdex.models.devices import pick_device\n"
            "from clipdex.models.tokenizer import ClipTokenizer\n"
            "assert pick_device() == 'cpu' and pick_device('cpu') == 'cpu'\n"
            "for make in (lambda: pick_device('cuda:1'), lambda: pick_device('mps'), ClipTokenizer):\n"
            "    try:\n"
            "        make()\n"
            "    except ModelError as e:\n"
            "        print(e)\n"
            "    else:\n"
            "        raise SystemExit('no error')\n")
    done = subprocess.run([sys.executable, "-c", code], env=dict(torch_free_env, CLIPDEX_DEVICE=""), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    cuda, mps, tokenizer = done.stdout.splitlines()
    assert cuda.startswith("device 'cuda:1' needs torch and open_clip: pip install 'clipdex[torch]'"), cuda
    assert mps.startswith("device 'mps' needs torch and open_clip: pip install 'clipdex[torch]'"), mps
    assert "needs torch and open_clip: pip install 'clipdex[torch]'" in tokenizer
    assert "not installed here: open_clip" in tokenizer and "tokenizer.json" in tokenizer


@pytest.mark.parametrize("layout", ["immich", "clipdex"])
def test_index_search_classify_status_without_torch(layout: str, request: pytest.FixtureRequest,
                                                     torch_free_env: dict[str, str], tmp_path: Path,
                                                     photos: Path) -> None:
    """The whole round of a new user on a light install, with the tiny model written in the
    hub's layout (Immich's) and in the one ``clipdex models export`` writes."""
    export = request.getfixturevalue(f"{layout}_export_dir")
    model = f"onnx:{export}"
    idx = str(tmp_path / "idx")

    indexed = clipdex(torch_free_env, "index", str(photos), "--index", idx, "--model", model)
    assert indexed.returncode == 0, indexed.stdout + indexed.stderr
    assert index_counts(indexed.stdout) == INDEXED_12, indexed.stdout

    found = clipdex(torch_free_env, "search", "a dog in the snow", "--index", idx, "-n", "3", "--json")
    assert found.returncode == 0, found.stdout + found.stderr
    results = json.loads(found.stdout)["results"]
    assert len(results) == 3 and all(-1 <= r["score"] <= 1 for r in results)
    assert all(Path(r["path"]).is_relative_to(photos) for r in results)

    classified = clipdex(torch_free_env, "classify", "--index", idx, "--name", "place", "--labels",
                         "indoor,outdoor", "--template", "a photo taken {}", "--out", str(tmp_path / "place.csv"))
    assert classified.returncode == 0, classified.stdout + classified.stderr
    rows = (tmp_path / "place.csv").read_text().splitlines()
    assert len(rows) == 13 and all(("indoor" in r or "outdoor" in r) for r in rows[1:])

    status = clipdex(torch_free_env, "status", "--index", idx)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status_lines(status.stdout)
    assert lines["photos"] == "12 indexed, 0 failed", status.stdout
    assert lines["model"].endswith(", 32-d: 12 photos"), status.stdout

    for done in (indexed, found, classified, status):
        assert "Traceback" not in done.stderr, done.stderr


def test_an_onnx_hub_repo_from_the_offline_cache_without_torch(torch_free_env: dict[str, str], tmp_path: Path,
                                                               photos: Path, immich_export_dir: Path) -> None:
    """``--model onnx:OWNER/REPO``: the tiny model's export laid into the Hugging Face cache as the hub
    client leaves a download, used offline for the whole round; the cache is only read."""
    from tests.hf_checkpoints import cache_repo

    hf_home = Path(torch_free_env["HF_HOME"])
    cache_repo(hf_home / "hub", "someone/ViT-T__tiny", immich_export_dir)
    before = files_under(hf_home)
    idx = str(tmp_path / "idx")

    indexed = clipdex(torch_free_env, "index", str(photos), "--index", idx, "--model", "onnx:someone/ViT-T__tiny")
    assert indexed.returncode == 0, indexed.stdout + indexed.stderr
    assert index_counts(indexed.stdout) == INDEXED_12, indexed.stdout

    found = clipdex(torch_free_env, "search", "a dog in the snow", "--index", idx, "-n", "3", "--json")
    assert found.returncode == 0, found.stdout + found.stderr
    results = json.loads(found.stdout)["results"]
    assert len(results) == 3 and all(Path(r["path"]).is_relative_to(photos) for r in results)

    classified = clipdex(torch_free_env, "classify", "--index", idx, "--name", "place", "--labels",
                         "indoor,outdoor", "--out", str(tmp_path / "place.csv"))
    assert classified.returncode == 0, classified.stdout + classified.stderr
    rows = (tmp_path / "place.csv").read_text().splitlines()
    assert len(rows) == 13 and all(r.split(",")[2] in ("indoor", "outdoor") for r in rows[1:]), rows

    status = clipdex(torch_free_env, "status", "--index", idx)
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status_lines(status.stdout)
    assert lines["photos"] == "12 indexed, 0 failed", status.stdout
    assert lines["model"].startswith("onnx:someone/ViT-T__tiny ("), status.stdout
    assert lines["model"].endswith(", 32-d: 12 photos"), status.stdout

    for done in (indexed, found, classified, status):
        assert "Traceback" not in done.stderr, done.stderr
    assert files_under(hf_home) == before  # nothing downloaded, nothing added beside it


def test_the_default_model_runs_from_its_cached_ready_export_without_torch(
        torch_free_env: dict[str, str], photos: Path, immich_export_dir: Path) -> None:
    """The registry's path: with no --model (nor --index) at all, ViT-B-32 is taken from the ready export
    the registry names for it (``immich-app/ViT-B-32__openai``), found in the offline cache. The tiny
    model stands in for it there (its vectors are 32-d): what is checked is the way to it."""
    from tests.hf_checkpoints import cache_repo

    assert "CLIPDEX_HOME" in torch_free_env  # the default index lands in this test's home, not the user's
    hf_home = Path(torch_free_env["HF_HOME"])
    listed = clipdex(torch_free_env, "models", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert models_here(listed.stdout)["ViT-B-32"] == "download", listed.stdout

    cache_repo(hf_home / "hub", "immich-app/ViT-B-32__openai", immich_export_dir)
    before = files_under(hf_home)

    indexed = clipdex(torch_free_env, "index", str(photos))
    assert indexed.returncode == 0, indexed.stdout + indexed.stderr
    assert index_counts(indexed.stdout) == INDEXED_12, indexed.stdout
    assert " with ViT-B-32/openai -> " in indexed.stdout.splitlines()[0], indexed.stdout

    found = clipdex(torch_free_env, "search", "dog", "-n", "3", "--json")
    assert found.returncode == 0, found.stdout + found.stderr
    results = json.loads(found.stdout)["results"]
    assert len(results) == 3 and all(Path(r["path"]).is_relative_to(photos) for r in results)

    status = clipdex(torch_free_env, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    lines = status_lines(status.stdout)
    assert lines["photos"] == "12 indexed, 0 failed", status.stdout
    assert lines["model"] == "ViT-B-32 (ViT-B-32/openai), 32-d: 12 photos", status.stdout

    listed = clipdex(torch_free_env, "models", "list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    here = models_here(listed.stdout)
    assert here["ViT-B-32"] == "ONNX", listed.stdout  # the ready export, in the cache; no export of clipdex's
    assert here["ViT-B-16"] == "download", listed.stdout

    for done in (indexed, found, status, listed):
        assert "Traceback" not in done.stderr, done.stderr
    assert files_under(hf_home) == before


def test_a_registry_model_offline_with_nothing_cached_fails_fast_and_says_what_to_download(
        torch_free_env: dict[str, str], tmp_path: Path, photos: Path) -> None:
    """ViT-B-32 comes as Immich's export on a light install: offline and not cached, the command
    names the repository to fetch at once instead of hanging, exporting or failing on an import."""
    started = time.perf_counter()
    done = clipdex(torch_free_env, "index", str(photos), "--index", str(tmp_path / "idx"), "--model", "ViT-B-32",
                   timeout=60)
    took = time.perf_counter() - started
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and "ModuleNotFoundError" not in output, output
    assert "immich-app/ViT-B-32__openai" in output, output
    assert took < 30, f"{took:.1f} s to fail"
    assert not (tmp_path / "idx").exists()  # a first index whose model cannot be had is taken back


def test_a_gpu_asked_for_without_torch_says_which_extra_brings_it(torch_free_env: dict[str, str],
                                                                  tmp_path: Path, photos: Path,
                                                                  immich_export_dir: Path) -> None:
    done = clipdex(torch_free_env, "index", str(photos), "--index", str(tmp_path / "idx"),
                   "--model", f"onnx:{immich_export_dir}", "--device", "cuda")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output, output
    assert "device 'cuda' needs torch and open_clip: pip install 'clipdex[torch]'" in " ".join(output.split())


def test_parquet_without_pyarrow_says_which_extra_brings_it(torch_free_env: dict[str, str], tmp_path: Path) -> None:
    """Checked before the index is opened: no index is needed to be told."""
    done = clipdex(torch_free_env, "classify", "--index", str(tmp_path / "idx"), "--name", "place", "--labels",
                   "indoor,outdoor", "--out", str(tmp_path / "place.parquet"))
    output = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 1, output
    assert "writing Parquet needs pyarrow" in output and "pip install 'clipdex[parquet]'" in output, output
    assert not (tmp_path / "idx").exists()


def test_a_cold_search_imports_nothing_heavy(torch_free_env: dict[str, str], tmp_path: Path, photos: Path,
                                             immich_export_dir: Path) -> None:
    """``-X importtime`` lists every module a fresh ``clipdex search`` imports; on an index of an ONNX
    export none of torch, open_clip, Transformers or pyarrow is among them, even where they are
    installed (this run has no blocker). Module names, not times: times vary by machine."""
    idx = str(tmp_path / "idx")
    indexed = clipdex(torch_free_env, "index", str(photos), "--index", idx, "--model", f"onnx:{immich_export_dir}")
    assert indexed.returncode == 0, indexed.stdout + indexed.stderr

    env = dict(torch_free_env, PYTHONPATH=str(ROOT))  # everything installed can be imported
    done = clipdex(env, "search", "a dog in the snow", "--index", idx, "-n", "3", python_flags=("-X", "importtime"))
    assert done.returncode == 0, done.stdout + done.stderr
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "clipdex.cli" in imported and "onnxruntime" in imported  # the listing is read right
    heavy = sorted(name for name in imported if name.partition(".")[0] in HEAVY)
    assert not heavy, f"a cold search imported {heavy}"
