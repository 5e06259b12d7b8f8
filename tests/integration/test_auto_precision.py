"""--precision auto: what it chooses and why, what it records, and vectors of several precisions.

Speed is never measured here: :func:`clipdex.models.auto.measure` is replaced by one that
encodes for real (the cosines are real) and reports fixed times per precision, so a
choice depends on the rules, not on the machine's load. Hosts are simulated by replacing
the CPU's features; bf16 is the real OpenVINO encoder only in the test that says so (the
others wrap fp32's, labelled bf16: what is tested is auto and the index, not OpenVINO).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clipdex import Index
from clipdex.errors import ClipdexError
from clipdex.models import auto, factory
from clipdex.models import devices as device_module
from clipdex.models.precision import CpuFeatures, cpu_features
from clipdex.models.runtimes import openvino
from tests.conftest import run_cli
from tests.images import write_photos

REAL_MEASURE = auto.measure
SECONDS = {"fp32": 1.0, "bf16": 0.5, "fp16": 0.5, "int8": 0.4}  # what the fake clock says
NATIVE_BF16 = CpuFeatures("Test CPU", frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni"}))
AVX2_ONLY = CpuFeatures("Old CPU", frozenset({"avx2"}))


class FakeBf16:
    """fp32's ONNX encoder labelled bf16 through OpenVINO (same vectors: cosine 1)."""

    backend = "openvino"
    precision = "bf16"

    def __init__(self, spec: Any) -> None:
        from clipdex.models.runtimes.onnx import OnnxEncoder

        self._inner = OnnxEncoder(spec, "fp32")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def fake_measure(encoder: Any, batch: np.ndarray, size: int | None = None) -> tuple[np.ndarray, float]:
    return encoder.encode_images(batch), SECONDS[encoder.precision]


def as_host(monkeypatch: pytest.MonkeyPatch, cpu: CpuFeatures, *, fake_bf16: bool = True) -> None:
    """Make this process see ``cpu`` (and, with ``fake_bf16``, bf16 as :class:`FakeBf16`)."""
    monkeypatch.setattr(auto, "cpu_features", lambda: cpu)
    monkeypatch.setattr(openvino, "cpu_features", lambda: cpu)
    if fake_bf16 and cpu.native_bf16:
        monkeypatch.setattr(auto, "_openvino_missing", lambda: None)
        bf16_builder(monkeypatch, FakeBf16)


def bf16_builder(monkeypatch: pytest.MonkeyPatch, build: Any) -> None:
    """Make the factory build bf16 encoders on the CPU with ``build(spec)``."""
    fake = dataclasses.replace(openvino.RUNTIME, build=lambda spec, precision, device: build(spec))
    runtimes = tuple(fake if r.name == "openvino" else r for r in factory.runtimes())
    monkeypatch.setattr(factory, "runtimes", lambda: runtimes)


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fixed times, and the default precision back to auto (tests/conftest.py pins fp32)."""
    monkeypatch.setattr(auto, "measure", fake_measure)
    monkeypatch.delenv("CLIPDEX_PRECISION", raising=False)


@pytest.fixture()
def builds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The precisions of the encoders built for indexing, in order."""
    made: list[str] = []
    real = factory.make_encoder

    def counting(spec: Any, **kwargs: Any) -> Any:
        if not kwargs.get("for_queries"):
            made.append(kwargs.get("precision") or "fp32")
        return real(spec, **kwargs)

    monkeypatch.setattr(factory, "make_encoder", counting)
    yield made


def index_json(photos: Path, index: Path, *args: str) -> dict[str, Any]:
    result = run_cli("index", str(photos), "--index", str(index), "--json", *args)
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def status_json(index: Path) -> dict[str, Any]:
    result = run_cli("status", "--index", str(index), "--json")
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.output)
    return data


def no_choice(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("auto checked the precisions again")


def test_a_fresh_index_defaults_to_auto_which_takes_native_bf16(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    report = index_json(photos, tmp_path / "idx", *model_args)
    assert report["precision"] == "bf16"
    note = report["precision_note"]
    # FakeBf16 is fp32 itself: its cosine is 1 up to rounding (0.99999 or 1.00000).
    assert re.match(r"auto: bf16 through OpenVINO: this CPU computes bf16 natively \(avx512_bf16\); "
                    r"cosine to fp32 >= (0\.9999\d|1\.00000)", note), note
    assert note.endswith(" on 8 of your photos; 2.0x fp32")

    model = status_json(tmp_path / "idx")["models"][0]
    assert model["precisions"] == {"bf16": 12}
    [choice] = model["auto"]
    assert choice["this_host"] is True and choice["host"] == auto.cpu_host_key()
    assert (choice["precision"], choice["runtime"], choice["photos"], choice["min_cosine"]) == \
        ("bf16", "OpenVINO", 8, 0.999)
    assert choice["cosine"] >= 0.999 and choice["speedup"] == 2.0
    assert choice["reason"] == report["precision_note"].removeprefix("auto: ")
    assert choice["chosen_at"][:4].isdigit()

    text = run_cli("status", "--index", str(tmp_path / "idx")).output
    assert "vectors  12, all bf16" in text
    assert "auto     bf16 (OpenVINO) on this machine (chosen " in text


def test_the_library_defaults_to_auto_and_clipdex_precision_overrides_it(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:  # CLIPDEX_PRECISION unset
        report = index.add(photos)
    assert report.precision == "bf16" and report.precision_note.startswith("auto: bf16 through OpenVINO")
    monkeypatch.setenv("CLIPDEX_PRECISION", "fp32")
    with Index.open(tmp_path / "pinned", create=True, **model_kwargs) as index:
        report = index.add(photos)
    assert (report.precision, report.precision_note) == ("fp32", "asked for (CLIPDEX_PRECISION=fp32)")
    monkeypatch.setenv("CLIPDEX_PRECISION", "fp64")
    with Index.open(tmp_path / "bad", create=True, **model_kwargs) as index, \
            pytest.raises(ClipdexError, match="CLIPDEX_PRECISION='fp64' is not a precision"):
        index.add(photos)


def test_the_summary_says_which_precision_and_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                  photos: Path, model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    result = run_cli("index", str(photos), "--index", str(tmp_path / "idx"), *model_args)
    assert result.exit_code == 0, result.output
    assert "precision bf16 — auto: bf16 through OpenVINO: this CPU computes bf16 natively" in \
        " ".join(result.output.split())


def test_without_native_bf16_auto_stays_fp32_and_names_int8(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_args: list[str],
        builds: list[str]) -> None:
    as_host(monkeypatch, AVX2_ONLY)
    report = index_json(photos, tmp_path / "idx", *model_args)
    assert report["precision"] == "fp32"
    note = report["precision_note"]
    assert note == ("auto: fp32: this CPU has no native bf16 (AVX2 only); int8 is typically 1.7-2.4x fp32 "
                    "at cosine ~0.9997: allow it with --min-cosine 0.99")
    assert builds == ["fp32"]  # nothing can win: no reference built, nothing decoded or timed
    assert "bf16" not in builds  # never the emulated path, not even to measure it
    refused = run_cli("index", str(photos), "--index", str(tmp_path / "other"), "--precision", "bf16",
                      *model_args, catch_exceptions=True)
    assert refused.exit_code != 0
    assert "no native bf16" in refused.output and "--precision int8" in refused.output


def test_the_choice_is_recorded_and_reused_without_a_new_check(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_args: list[str],
        builds: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    index_json(photos, tmp_path / "idx", *model_args)
    assert builds == ["fp32", "bf16"]  # the check built both; indexing used bf16's
    write_photos(photos / "later", 3, start=50)
    monkeypatch.setattr(auto, "choose", no_choice)
    builds.clear()
    report = index_json(photos, tmp_path / "idx")
    assert builds == ["bf16"]
    assert (report["precision"], report["new"], report["encoded"]) == ("bf16", 3, 3)
    assert report["precision_note"].startswith("auto: bf16 through OpenVINO: ")
    assert report["precision_note"].endswith(", recorded in the index)")
    assert status_json(tmp_path / "idx")["models"][0]["precisions"] == {"bf16": 15}


def test_another_bar_checks_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path,
                                  model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    index_json(photos, tmp_path / "idx", *model_args)
    write_photos(photos / "later", auto.MIN_RECORDED_PHOTOS, start=50)  # enough to keep a check
    report = index_json(photos, tmp_path / "idx", "--min-cosine", "0.9999")
    assert "recorded in the index" not in report["precision_note"]
    [choice] = status_json(tmp_path / "idx")["models"][0]["auto"]
    assert choice["min_cosine"] == 0.9999  # the new bar replaced the old choice on this host


def test_a_lower_bar_takes_int8_on_a_fresh_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 photos: Path, model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    report = index_json(photos, tmp_path / "idx", "--min-cosine", "0.99", *model_args)
    assert report["precision"] == "int8", report["precision_note"]
    assert report["precision_note"].startswith("auto: int8 through ONNX Runtime: this CPU has 8-bit dot "
                                               "products (avx512_vnni); cosine to fp32 >= 0.99")
    [model] = status_json(tmp_path / "idx")["models"]
    assert model["key"].endswith("#int8") and model["precisions"] == {"int8": 12}
    assert model["auto"][0]["precision"] == "int8"
    for precision in ([], ["--precision", "auto"]):
        found = run_cli("search", "a photo", "-n", "12", "--index", str(tmp_path / "idx"), "--json", *precision)
        assert found.exit_code == 0, found.output
        assert json.loads(found.output)["count"] == 12


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.2", "nan"])
def test_min_cosine_is_checked(tmp_path: Path, photos: Path, model_args: list[str], bad: str) -> None:
    result = run_cli("index", str(photos), "--index", str(tmp_path / "idx"), "--min-cosine", bad, *model_args)
    assert result.exit_code == 2 and "--min-cosine" in result.output


def test_an_explicit_fp32_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path,
                                      model_args: list[str], builds: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    monkeypatch.setattr(auto, "choose", no_choice)
    report = index_json(photos, tmp_path / "idx", "--precision", "fp32", *model_args)
    assert (report["precision"], report["precision_note"]) == ("fp32", "asked for (--precision fp32)")
    assert builds == ["fp32"]
    model = status_json(tmp_path / "idx")["models"][0]
    assert model["precisions"] == {"fp32": 12} and model["auto"] == []


def test_full_precisions_share_one_vector_set_and_are_searched_together(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_kwargs: dict[str, str],
        model_args: list[str]) -> None:
    """An index made with fp32, continued on a machine with native bf16: one model, one
    vector set holding both, every photo searched; auto there never starts int8 vectors."""
    as_host(monkeypatch, NATIVE_BF16)
    with Index.open(tmp_path / "idx", create=True, precision="fp32", **model_kwargs) as index:
        index.add(photos)
    more = tmp_path / "more"
    write_photos(more, 3, start=60)
    with Index.open(tmp_path / "idx", precision="bf16") as index:  # "another machine"
        report = index.add(more)
    assert (report.precision, report.encoded) == ("bf16", 3)
    newest = tmp_path / "newest"
    write_photos(newest, 2, start=70)
    report = index_json(newest, tmp_path / "idx", "--min-cosine", "0.5")  # int8 would pass this bar
    assert report["precision"] == "bf16"  # but the index holds full-precision vectors: no int8

    [model] = status_json(tmp_path / "idx")["models"]
    assert model["precisions"] == {"fp32": 12, "bf16": 5} and model["photos"] == 17
    text = run_cli("status", "--index", str(tmp_path / "idx")).output
    assert "vectors 17: 12 fp32, 5 bf16 (one vector set, searched together)" in " ".join(text.split())
    for precision in ([], ["--precision", "auto"], ["--precision", "bf16"], ["--precision", "fp32"]):
        found = run_cli("search", "a photo", "-n", "20", "--index", str(tmp_path / "idx"), "--json", *precision)
        assert found.exit_code == 0, found.output
        paths = {r["path"] for r in json.loads(found.output)["results"]}
        assert len(paths) == 17
        assert any(p.startswith(str(more)) for p in paths) and any(p.startswith(str(photos)) for p in paths)


def test_another_host_keeps_its_own_choice(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path,
                                           model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    index_json(photos, tmp_path / "idx", *model_args)
    [first] = status_json(tmp_path / "idx")["models"][0]["auto"]
    as_host(monkeypatch, AVX2_ONLY)  # the index, carried to an older machine
    monkeypatch.setattr(auto, "cpu_host_key", lambda: "cpu avx2")
    write_photos(photos / "later", 2, start=50)
    report = index_json(photos, tmp_path / "idx")
    assert report["precision"] == "fp32"
    assert "no native bf16 (AVX2 only)" in report["precision_note"]
    assert "int8" not in report["precision_note"]  # the index holds full-precision vectors
    model = status_json(tmp_path / "idx")["models"][0]
    assert model["precisions"] == {"bf16": 12, "fp32": 2}
    # fp32 was the only candidate there: a rule, checked on no photo, so not recorded
    assert [(c["host"], c["precision"], c["this_host"]) for c in model["auto"]] == [
        (first["host"], "bf16", False)]


def test_an_int8_index_stays_int8(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path,
                                  model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    index_json(photos, tmp_path / "idx", "--precision", "int8", *model_args)
    write_photos(photos / "later", 2, start=50)
    report = index_json(photos, tmp_path / "idx")
    assert report["precision"] == "int8"
    assert "never mixes them with full-precision ones" in report["precision_note"]
    [model] = status_json(tmp_path / "idx")["models"]
    assert model["key"].endswith("#int8") and model["precisions"] == {"int8": 14}
    assert model["auto"] == []  # a rule, not a measurement: nothing to record


def test_no_decodable_photo_means_fp32_chosen_again_next_time(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.jpg").write_text("not a photo")
    report = index_json(broken, tmp_path / "idx", *model_args)
    assert report["precision"] == "fp32" and "no photo could be decoded" in report["precision_note"]
    assert status_json(tmp_path / "idx")["models"][0]["auto"] == []
    write_photos(broken, auto.MIN_RECORDED_PHOTOS, start=80)
    report = index_json(broken, tmp_path / "idx")  # photos now: the check runs, and is recorded
    assert report["precision"] == "bf16" and report["encoded"] == auto.MIN_RECORDED_PHOTOS
    assert [c["precision"] for c in status_json(tmp_path / "idx")["models"][0]["auto"]] == ["bf16"]


def test_an_unchanged_folder_decides_nothing_and_builds_no_encoder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_args: list[str],
        builds: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    index_json(photos, tmp_path / "idx", *model_args)
    builds.clear()
    monkeypatch.setattr(auto, "choose", no_choice)
    report = index_json(photos, tmp_path / "idx")
    assert (report["unchanged"], report["encoded"], report["precision"]) == (12, 0, None)
    assert builds == []


def test_an_unchanged_folder_imports_neither_torch_nor_openvino(tmp_path: Path, photos: Path,
                                                                model_args: list[str]) -> None:
    index_json(photos, tmp_path / "idx", "--precision", "fp32", *model_args)
    script = ("import json, sys\nfrom clipdex.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "print(json.dumps([m for m in ('torch', 'openvino', 'onnxruntime') if m in sys.modules]))")
    done = subprocess.run([sys.executable, "-c", script, "index", str(photos), "--index", str(tmp_path / "idx"),
                           "--json"], capture_output=True, text=True, env=dict(os.environ), timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_auto_with_openvino_on_this_cpu(tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    """The real bf16 encoder, where this CPU computes bf16 natively (timing still fixed)."""
    if not cpu_features().native_bf16:
        pytest.skip(f"this CPU ({cpu_features().describe()}) has no native bf16")
    if auto._openvino_missing():
        pytest.skip("OpenVINO is not installed")
    report = index_json(photos, tmp_path / "idx", *model_args)
    assert report["precision"] == "bf16", report["precision_note"]
    [choice] = status_json(tmp_path / "idx")["models"][0]["auto"]
    assert choice["runtime"] == "OpenVINO" and choice["cosine"] >= 0.999


def test_a_candidate_that_raises_anything_is_skipped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     photos: Path, model_args: list[str]) -> None:
    """OpenVINO's compile raises RuntimeError, not ModelError: auto still indexes, in fp32."""
    as_host(monkeypatch, NATIVE_BF16)

    def broken(spec: Any) -> Any:
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:112:\ncompile failed")

    bf16_builder(monkeypatch, broken)
    report = index_json(photos, tmp_path / "idx", *model_args)
    assert report["precision"] == "fp32" and report["encoded"] == 12
    assert "bf16 could not be used (RuntimeError: Exception from src/inference/src/cpp/core.cpp:112:)" in \
        report["precision_note"]


def test_where_nothing_can_win_no_photo_is_decoded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   photos: Path, model_args: list[str]) -> None:
    as_host(monkeypatch, AVX2_ONLY)

    def no_sample(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("photos decoded for a check nothing could win")

    monkeypatch.setattr(auto, "sample_photos", no_sample)
    report = index_json(photos, tmp_path / "idx", *model_args)
    assert report["precision"] == "fp32" and report["encoded"] == 12


def test_an_int8_export_on_disk_is_timed_for_the_offer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       photos: Path, model_args: list[str]) -> None:
    as_host(monkeypatch, AVX2_ONLY)
    index_json(photos, tmp_path / "int8", "--precision", "int8", *model_args)  # exports the int8 tower
    note = index_json(photos, tmp_path / "idx", *model_args)["precision_note"]
    assert note.startswith("auto: fp32: this CPU has no native bf16 (AVX2 only); int8 is 2.5x fp32 at cosine >= ")
    assert note.endswith(": allow it with --min-cosine 0.99")


def test_the_fastest_that_passes_wins_and_the_runner_up_is_named(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    monkeypatch.setitem(SECONDS, "int8", 0.8)  # slower than bf16 here, though listed first
    report = index_json(photos, tmp_path / "idx", "--min-cosine", "0.99", *model_args)
    assert report["precision"] == "bf16", report["precision_note"]
    assert report["precision_note"].endswith("; 2.0x fp32 (runner-up: int8 through ONNX Runtime, 1.2x)")
    monkeypatch.setitem(SECONDS, "int8", 0.5)  # a tie: the full-precision one
    report = index_json(photos, tmp_path / "tie", "--min-cosine", "0.99", *model_args)
    assert report["precision"] == "bf16", report["precision_note"]


def test_timing_runs_at_the_indexers_batch() -> None:
    from clipdex.indexer import CPU_BATCH

    sizes: list[int] = []

    class Counting:
        def encode_images(self, batch: np.ndarray) -> np.ndarray:
            sizes.append(len(batch))
            return batch.reshape(len(batch), -1)

    sample = np.arange(3 * 4, dtype=np.float32).reshape(3, 4)
    vectors, _ = REAL_MEASURE(Counting(), sample, auto.timing_batch("cpu"))  # type: ignore[arg-type]
    assert np.array_equal(vectors, sample)  # the sample's own vectors, for the cosine
    assert sizes == [CPU_BATCH] * (1 + auto.TIMED_RUNS)
    assert auto.timing_batch("cuda") == auto.GPU_TIMING_BATCH == 64


def test_messages_where_the_os_does_not_report_cpu_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    as_host(monkeypatch, CpuFeatures("Unknown CPU", frozenset()), fake_bf16=False)
    monkeypatch.setattr(auto, "_openvino_missing", lambda: None)
    assert auto._why_fast("cpu", "bf16") == "the OS did not report this CPU's features; OpenVINO decided"
    assert auto._no_bf16("cpu") == ""
    monkeypatch.setattr(auto, "_openvino_missing", lambda: "openvino is not installed")
    assert "did not report this CPU's features" in auto._no_bf16("cpu")
    assert "no native bf16" not in auto._no_bf16("cpu")


def test_an_int8_index_on_a_gpu_machine_is_encoded_on_the_cpu(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_args: list[str]) -> None:
    """No GPU needed: the int8 path never touches torch's device."""
    as_host(monkeypatch, NATIVE_BF16)
    index_json(photos, tmp_path / "idx", "--precision", "int8", *model_args)
    devices: list[str | None] = []
    real = factory.make_encoder

    def recording(spec: Any, **kwargs: Any) -> Any:
        devices.append(kwargs.get("device"))
        return real(spec, **kwargs)

    monkeypatch.setattr(factory, "make_encoder", recording)
    for module in (factory, device_module):
        monkeypatch.setattr(module, "pick_device", lambda requested=None: requested or "cuda")
    monkeypatch.setattr(auto, "host_key", lambda device=None: "cuda Test GPU")
    write_photos(photos / "later", 2, start=50)
    report = index_json(photos, tmp_path / "idx")
    assert (report["precision"], report["encoded"]) == ("int8", 2)
    assert report["precision_note"].endswith("; this index holds int8 vectors: encoded on the CPU; "
                                             "`--precision fp16 --add-model` starts a GPU set")
    assert devices == ["cpu"]


def test_a_recorded_choice_that_no_longer_builds_is_made_again(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_args: list[str],
        caplog: pytest.LogCaptureFixture) -> None:
    as_host(monkeypatch, NATIVE_BF16)
    index_json(photos, tmp_path / "idx", *model_args)

    def broken(spec: Any) -> Any:
        raise RuntimeError("openvino: compile failed")

    bf16_builder(monkeypatch, broken)  # OpenVINO broken since
    write_photos(photos / "later", 2, start=50)
    report = index_json(photos, tmp_path / "idx")
    assert (report["precision"], report["encoded"]) == ("fp32", 2)
    assert "bf16 could not be used (RuntimeError: openvino: compile failed)" in report["precision_note"]
    assert "can no longer be used (RuntimeError: openvino: compile failed); checking again" in caplog.text
    [choice] = status_json(tmp_path / "idx")["models"][0]["auto"]
    # fp32, forced by a runtime that failed, is this run's only: the record stays for when it works again
    assert choice["precision"] == "bf16"


def test_min_cosine_with_an_explicit_precision_warns(tmp_path: Path, photos: Path, model_args: list[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    report = index_json(photos, tmp_path / "idx", "--precision", "fp32", "--min-cosine", "0.99", *model_args)
    assert report["precision"] == "fp32"
    assert "--min-cosine 0.99 applies only to --precision auto" in caplog.text


def test_a_choice_made_on_a_broken_runtime_or_a_few_photos_is_not_kept(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    """A candidate that fails to run (OpenVINO broken for a while) makes fp32 this run's choice
    only; a folder of 2 photos is too few to keep a timing: the next run checks again."""
    def bad_install(self: FakeBf16) -> None:
        raise RuntimeError("bad install")

    as_host(monkeypatch, NATIVE_BF16)
    with monkeypatch.context() as broken:
        broken.setattr(FakeBf16, "load", bad_install, raising=False)
        with Index.open(tmp_path / "idx", create=True, precision="auto", **model_kwargs) as index:
            report = index.add(photos)
            assert report.precision == "fp32" and "bf16 could not be used (RuntimeError: bad install)" in \
                report.precision_note
            assert index.status().models[0].choices == ()
    with Index.open(tmp_path / "idx", precision="auto", **model_kwargs) as index:  # repaired: checked again
        write_photos(photos / "more", 6, start=40)
        report = index.add(photos)
        assert report.precision == "bf16" and "recorded in the index" not in report.precision_note
        assert [c.precision for c in index.status().models[0].choices] == ["bf16"]

    few = tmp_path / "few"
    write_photos(few, auto.MIN_RECORDED_PHOTOS - 1)
    with Index.open(tmp_path / "small", create=True, precision="auto", **model_kwargs) as index:
        assert index.add(few).precision == "bf16"
        assert index.status().models[0].choices == ()
