"""A real server: slow searches run side by side, off the event loop, and never hold up thumbnails or pages."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlencode

import pytest

from clipdex import Index
from clipdex.web import create_app
from tests.conftest import serving

DEADLOCK_GUARD_S = 60.0  # not a timing assertion: only how long to wait before calling it stuck


@pytest.fixture()
def server(web_index: Index) -> Iterator[str]:
    with serving(create_app(web_index)) as url:
        yield url


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=DEADLOCK_GUARD_S) as response:
        return response.status, response.read()


def test_thumbnails_and_pages_are_served_while_searches_are_busy(server: str, web_index: Index,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = web_index.encoder
    real_encode = encoder.encode_texts
    release = threading.Event()
    inside = threading.Semaphore(0)

    def slow_encode(texts: Any) -> Any:  # a search that takes as long as the test wants
        inside.release()
        assert release.wait(DEADLOCK_GUARD_S)
        return real_encode(texts)

    monkeypatch.setattr(encoder, "encode_texts", slow_encode)
    photo_id = int(web_index.searchable().ids[0])
    with ThreadPoolExecutor(8) as pool:
        searches = [pool.submit(get, f"{server}/api/search?q=dog+{i}&k=3") for i in range(4)]
        searches.append(pool.submit(get, f"{server}/?q=cat"))
        searches.append(pool.submit(get, f"{server}/api/similar/{photo_id}?k=3"))  # queued with the searches
        # two searches are inside the encoder at once: encoding runs outside the index lock
        assert inside.acquire(timeout=DEADLOCK_GUARD_S) and inside.acquire(timeout=DEADLOCK_GUARD_S)
        # ... and while they are stuck there, everything else is still answered
        for path in (f"/thumb/{photo_id}", f"/thumb/{photo_id}?size=1024", f"/photo/{photo_id}", "/api/status",
                     f"/api/photos/{photo_id}", "/labels/taken_space", "/labels", "/api/labels/taken_space"):
            status, _ = get(server + path)
            assert status == 200, path
        assert not any(s.done() for s in searches)
        release.set()
        answers = [s.result(timeout=DEADLOCK_GUARD_S) for s in searches]
    assert all(status == 200 for status, _ in answers)
    assert [len(json.loads(body)["results"]) for _, body in answers[:4] + answers[5:]] == [3, 3, 3, 3, 3]


def test_concurrent_searches_give_the_same_answers_as_one_at_a_time(server: str) -> None:
    queries = ["dog", "beach -people", "2*snow + night", "a photo", "red car"] * 4
    alone = {q: get(f"{server}/api/search?{urlencode({'q': q, 'k': 5})}")[1] for q in set(queries)}
    with ThreadPoolExecutor(10) as pool:
        together = list(pool.map(lambda q: (q, get(f"{server}/api/search?{urlencode({'q': q, 'k': 5})}")[1]),
                                 queries))
    for q, body in together:
        assert json.loads(body) == json.loads(alone[q]), q
