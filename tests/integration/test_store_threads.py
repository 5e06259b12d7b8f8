"""Index.search and Index.similar from several threads: catalog reads under the index's lock,
encoding outside it (the web app calls the library instead of copying it)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from clipdex import Index

DEADLOCK_GUARD_S = 60.0  # not a timing assertion: only how long to wait before calling it stuck


def test_searches_encode_side_by_side_while_the_index_answers(
        tmp_path: Path, photos: Path, model_kwargs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        expected = [(h.path, round(h.score, 5)) for h in index.search("a dog", k=5)]
        photo_id = int(index.searchable().ids[0])
        encoder = index.encoder
        real_encode = encoder.encode_texts
        release, inside = threading.Event(), threading.Semaphore(0)

        def slow_encode(texts: Any) -> Any:
            inside.release()
            assert release.wait(DEADLOCK_GUARD_S)
            return real_encode(texts)

        monkeypatch.setattr(encoder, "encode_texts", slow_encode)
        with ThreadPoolExecutor(4) as pool:
            searches = [pool.submit(index.search, "a dog", 5) for _ in range(2)]
            searches.append(pool.submit(index.search, f"a dog + @{photos / 'trip' / 'photo-001.jpg'}", 5))
            for _ in range(3):  # all three are encoding at once: outside the lock
                assert inside.acquire(timeout=DEADLOCK_GUARD_S)
            answered = pool.submit(lambda: (index.photo(photo_id), index.status(),
                                            index.similar(photo_id, 3)))
            record, status, (like, hits) = answered.result(timeout=DEADLOCK_GUARD_S)
            assert record.id == like.id == photo_id and status.indexed == 12 and hits[0].file_id == photo_id
            assert not any(s.done() for s in searches)
            release.set()
            results = [s.result(timeout=DEADLOCK_GUARD_S) for s in searches]
        for hits in results[:2]:
            assert [(h.path, round(h.score, 5)) for h in hits] == expected
        assert len(results[2]) == 5


def test_similar_checks_its_arguments(tmp_path: Path, photos: Path, model_kwargs: dict[str, str]) -> None:
    from clipdex.errors import PhotoNotFound, QueryError

    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as index:
        index.add(photos)
        photo_id = int(index.searchable().ids[0])
        record, hits = index.similar(photo_id, 3, offset=1)
        assert record.id == photo_id
        assert [h.rank for h in hits] == [2, 3, 4] and photo_id not in [h.file_id for h in hits]
        with pytest.raises(PhotoNotFound):
            index.similar(10_000, 3)
        with pytest.raises(QueryError, match="offset must be 0 or more"):
            index.similar(photo_id, 3, offset=-1)
