"""The web app and videos: results are moments, frames are thumbnails, a moment's page plays the
video (served by id only, with range requests) beside a timeline of its other moments."""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageChops, ImageStat

from clipdex import Index
from clipdex.indexer import IndexSettings
from clipdex.video import format_time
from clipdex.web.app import create_app
from clipdex.web.video import MEDIA_TYPES, media_type, playability
from tests.images import write_photos
from tests.videos import slideshow_images, write_video

OWN = "http://127.0.0.1:8000"
SECONDS_EACH = 3.0
INTERVAL = 1.0
PICTURES = 5
# One short clip per container the walk indexes (the Content-Type each is served with).
FORMATS = (".mov", ".m4v", ".mkv", ".webm", ".avi")


@pytest.fixture()
def media(tmp_path: Path) -> Path:
    """Three photos, a slideshow of five other pictures (3 s each) and a short clip per container,
    one of them MPEG-4 Part 2 (a codec no browser plays) in an mkv."""
    folder = tmp_path / "media"
    write_photos(folder, 3, start=40)
    write_video(folder / "clips" / "party.mp4", slideshow_images(PICTURES, 192, 144), seconds_each=SECONDS_EACH)
    for n, suffix in enumerate(FORMATS):
        write_video(folder / "formats" / f"clip{suffix}", slideshow_images(1, 96, 64, start=20 + n),
                    seconds_each=1.0)
    write_video(folder / "formats" / "divx.mkv", slideshow_images(1, 96, 64, start=30), seconds_each=1.0,
                codec="mpeg4")
    return folder


@pytest.fixture()
def index(tmp_path: Path, media: Path, model_kwargs: dict[str, str]) -> Iterator[Index]:
    with Index.open(tmp_path / "idx", create=True, **model_kwargs) as idx:
        report = idx.add(media, settings=IndexSettings(video_interval=INTERVAL))
        assert report.videos == 2 + len(FORMATS) and not report.failed, report
        yield idx


@pytest.fixture()
def client(index: Index) -> TestClient:
    return TestClient(create_app(index), base_url=OWN)


def video_id(index: Index, name: str) -> int:
    record = next(r for r in index.store.files_under(str(index.store.roots()[0])).values() if r.path.endswith(name))
    return record.id


def frame_ids(index: Index, name: str) -> list[tuple[int, float]]:
    return [(f.id, f.frame_t or 0.0) for f in index.store.video_frames(video_id(index, name))]


def upload(client: TestClient, picture: Image.Image) -> str:
    """Upload ``picture`` through the search page's form; the query it redirects to."""
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    response = client.post("/upload", files={"file": ("p.png", buffer.getvalue(), "image/png")},
                           follow_redirects=False)
    assert response.status_code == 303, response.text
    found = re.search(r"q=([^&]+)", response.headers["location"])
    assert found is not None
    from urllib.parse import unquote_plus

    return unquote_plus(found.group(1))


def in_span(t: float, picture: int) -> bool:
    """Whether ``t`` lies in picture ``picture``'s span of the slideshow (± the sampling interval)."""
    return picture * SECONDS_EACH - INTERVAL <= t < (picture + 1) * SECONDS_EACH + INTERVAL


# -- results are moments -------------------------------------------------------
def test_a_search_by_example_lists_the_moment_with_its_time(client: TestClient, index: Index) -> None:
    pictures = slideshow_images(PICTURES, 192, 144)
    party = video_id(index, "party.mp4")
    for i in (1, 3):
        query = upload(client, pictures[i])
        best = client.get("/api/search", params={"q": query, "k": 5}).json()["results"][0]
        assert best["name"] == "party.mp4" and best["video_id"] == party and in_span(best["t"], i), best
        assert best["moment"] == f"party.mp4 @ {format_time(best['t'])}"
        assert best["id"] in {f for f, _ in frame_ids(index, "party.mp4")}  # the frame's id: its thumbnail
        page = client.get("/", params={"q": query})
        card = re.search(r'<a class="card moment" href="(/photo/\d+\?[^"]+)"[^>]*data-t="([\d.]+)" '
                         r'data-video="(\d+)">', page.text)
        assert card is not None, page.text
        assert card.group(1).startswith(f"/photo/{best['id']}?q=") and int(card.group(3)) == party
        assert f"party.mp4 @ {format_time(best['t'])}</span>" in page.text
        assert f'<span class="when">{format_time(best["t"])}</span>' in page.text  # over the frame
        assert re.search(rf"3 photos and {2 + len(FORMATS)} videos \(\d+ moments\) searched", page.text)
    photo = client.get("/api/search", params={"q": "a photo", "k": 50}).json()["results"]
    assert any("t" not in r for r in photo)  # photos keep their shape


# -- thumbnails ------------------------------------------------------------------
def image_of(response: object) -> Image.Image:
    r = response  # an httpx.Response
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r  # type: ignore[attr-defined]
    return Image.open(io.BytesIO(r.content)).convert("RGB")  # type: ignore[attr-defined]


def difference(a: Image.Image, b: Image.Image) -> float:
    b = b.convert("RGB").resize(a.size)
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def test_a_frame_thumbnail_is_decoded_from_its_video_and_a_video_has_a_poster(client: TestClient,
                                                                                index: Index) -> None:
    pictures = slideshow_images(PICTURES, 192, 144)
    frames = frame_ids(index, "party.mp4")
    for frame, t in frames:
        shown = image_of(client.get(f"/thumb/{frame}"))
        assert max(shown.size) <= 256
        shown_as = min(range(PICTURES), key=lambda i: difference(shown, pictures[i]))
        assert in_span(t, shown_as), (t, shown_as)
    record = index.store.file_by_id(frames[2][0])
    assert record is not None and record.content_hash
    key = record.content_hash  # the frame's own key: its video's content and its time
    assert (index.path / "thumbs" / "256" / key[:2] / f"{key}.jpg").is_file()
    poster = image_of(client.get(f"/thumb/{video_id(index, 'party.mp4')}?size=1024"))
    assert min(range(PICTURES), key=lambda i: difference(poster, pictures[i])) == 0  # its first frame
    image_of(client.get(f"/thumb/{video_id(index, 'clip.avi')}"))  # a video no browser plays has one too
    os.remove(index.store.file_by_id(video_id(index, "clip.mkv")).path)  # type: ignore[union-attr]
    gone = client.get(f"/thumb/{frame_ids(index, 'clip.mkv')[0][0]}")
    assert gone.status_code == 404 and gone.headers["content-type"] == "image/svg+xml"
    assert b"frame unreadable" in gone.content


# -- the file, by id, with range requests ----------------------------------------
def test_a_video_is_served_by_id_with_range_requests(client: TestClient, index: Index, media: Path) -> None:
    path = media / "clips" / "party.mp4"
    data = path.read_bytes()
    url = f"/video/{video_id(index, 'party.mp4')}"
    whole = client.get(url)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["content-type"] == "video/mp4" and whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-disposition"] == 'inline; filename="party.mp4"'
    assert whole.headers["x-content-type-options"] == "nosniff"
    part = client.get(url, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == data[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(data)}"
    tail = client.get(url, headers={"Range": "bytes=-64"})  # what a player asks for an mp4's index
    assert tail.status_code == 206 and tail.content == data[-64:]
    past = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(data)}"
    head = client.head(url)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data)) and not head.content


def test_each_container_is_served_with_its_content_type(client: TestClient, index: Index) -> None:
    expected = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
                ".mkv": "video/x-matroska", ".avi": "video/x-msvideo"}
    assert expected == MEDIA_TYPES and media_type("/a/B.MOV") == "video/quicktime"
    for suffix in FORMATS:
        response = client.get(f"/video/{video_id(index, 'clip' + suffix)}", headers={"Range": "bytes=0-15"})
        assert response.status_code == 206 and response.headers["content-type"] == expected[suffix], suffix


def test_only_a_video_of_the_index_is_served_never_a_path(client: TestClient, index: Index, media: Path,
                                                           tmp_path: Path) -> None:
    photo = next(r for r in index.store.files_under(str(media)).values() if r.path.endswith(".jpg"))
    frame = frame_ids(index, "party.mp4")[1][0]
    for url in (f"/video/{photo.id}", f"/video/{frame}", "/video/999999"):
        response = client.get(url)
        assert response.status_code == 404 and 'id="error"' in response.text, url
        assert "not a video of this index" in response.text
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"not for the web")
    for url in ("/video/abc", "/video/0", "/video/-1", "/video/1.5", f"/video/{secret}",
                "/video/..%2F..%2Fsecret.mp4", "/video/%2e%2e/%2e%2e/secret.mp4", "/video/1/../../secret.mp4",
                f"/video/{video_id(index, 'party.mp4')}/..%2F..%2Fsecret.mp4"):
        response = client.get(url)
        assert response.status_code in (404, 405) and b"not for the web" not in response.content, url
    assert client.post(f"/video/{video_id(index, 'party.mp4')}").status_code == 405  # read-only

    party = video_id(index, "party.mp4")
    hidden = media / "clips" / ".private"  # a hidden folder below the index's folder: never served
    hidden.mkdir()
    os.rename(media / "clips" / "party.mp4", hidden / "party.mp4")
    with index.store.transaction() as c:
        c.execute("UPDATE files SET path = ? WHERE id = ?", (str(hidden / "party.mp4"), party))
    response = client.get(f"/video/{party}")
    assert response.status_code == 404 and "hidden folder" in response.text

    clip = media / "formats" / "clip.mov"  # replaced since indexing (or a link pointed elsewhere): not served
    clip.write_bytes(b"not the indexed video")
    response = client.get(f"/video/{video_id(index, 'clip.mov')}")
    assert response.status_code == 404 and "changed since it was indexed" in response.text
    assert b"not the indexed video" not in response.content

    os.rename(media, tmp_path / "moved")  # the index's folder is gone: its files are hidden from search
    response = client.get(f"/video/{video_id(index, 'clip.webm')}")
    assert response.status_code == 404 and "no folder of the index that is there now" in response.text


# -- the player page ------------------------------------------------------------
def test_a_moment_page_plays_the_video_from_its_second_beside_the_timeline(client: TestClient,
                                                                           index: Index) -> None:
    query = upload(client, slideshow_images(PICTURES, 192, 144)[3])
    best = client.get("/api/search", params={"q": query, "k": 1}).json()["results"][0]
    page = client.get(f"/photo/{best['id']}", params={"q": query})
    assert page.status_code == 200
    party = video_id(index, "party.mp4")
    assert f'<video id="video" controls preload="auto" playsinline src="/video/{party}#t={best["t"]:.3f}"' in page.text
    assert f'<h1 id="moment">party.mp4 @ {format_time(best["t"])}</h1>' in page.text
    marks = re.findall(r'<a class="mark([^"]*)" href="/photo/(\d+)\?q=[^"]+" data-t="([\d.]+)"', page.text)
    frames = frame_ids(index, "party.mp4")
    assert len(marks) == len(frames) >= PICTURES  # every kept frame, by time
    assert [float(t) for _, _, t in marks] == sorted(t for _, t in frames)
    assert [int(i) for c, i, _ in marks if "current" in c] == [best["id"]]
    assert 'id="unplayable" hidden' in page.text and 'id="still"' in page.text
    assert "darker where they match <q>the photo you dropped</q>" in page.text and 'id="more-like-this"' in page.text
    assert "/static/video.js" in page.text

    plain = client.get(f"/photo/{best['id']}")  # opened without a query: the frames by time
    assert plain.status_code == 200 and "by time" in plain.text
    own = client.get(f"/photo/{party}")  # the video's own page plays it from the start
    assert own.status_code == 200 and f'src="/video/{party}#t=0.000"' in own.text
    assert 'id="more-like-this"' not in own.text and f'poster="/thumb/{party}?size=1024"' in own.text
    facts = client.get(f"/api/photos/{best['id']}").json()
    assert facts["video_id"] == party and facts["t"] == best["t"] and facts["exists"] is True


def test_a_video_browsers_cannot_play_says_so_and_still_shows_its_moments(client: TestClient,
                                                                          index: Index) -> None:
    for name, reason in (("clip.avi", "browsers do not play AVI files"),
                         ("divx.mkv", "browsers do not play mpeg4 video")):
        frame = frame_ids(index, name)[0][0]
        page = client.get(f"/photo/{frame}")
        assert page.status_code == 200, name
        assert "<video" not in page.text and f'<img id="still" src="/thumb/{frame}?size=1024"' in page.text
        assert re.search(r'<p class="note" id="unplayable">This browser cannot play ' + re.escape(name), page.text)
        assert reason in page.text and 'class="mark best current"' in page.text
    assert playability("a.mp4", "hevc").check.startswith('video/mp4; codecs="hvc1')  # the browser decides
    assert playability("a.webm", "vp9").playable is True and playability("a.mov", None).playable is True


def test_a_query_on_the_player_page_reads_no_file_outside_the_index(client: TestClient, index: Index,
                                                                   tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    slideshow_images(1, 96, 72, start=3)[0].save(outside)
    frame = frame_ids(index, "party.mp4")[0][0]
    page = client.get(f"/photo/{frame}", params={"q": f"@{outside}"})
    assert page.status_code == 200 and 'id="query-error"' in page.text and "not a photo of the index" in page.text
    assert "by time" in page.text  # the timeline still shows the frames
    api = client.get(f"/api/videos/{video_id(index, 'party.mp4')}/moments", params={"q": f"@{outside}"})
    assert api.status_code == 400 and "not a photo of the index" in api.json()["error"]
    # A moment of an indexed video is a kept frame's stored vector; the server decodes no other one.
    kept = client.get("/api/search", params={"q": "@party.mp4@3", "k": 1})
    assert kept.status_code == 200 and kept.json()["results"]
    between = client.get("/api/search", params={"q": "@party.mp4@3.4", "k": 1})
    assert between.status_code == 400 and "the nearest is @party.mp4@3" in between.json()["error"]
    moments = client.get("/api/search", params={"q": "a photo", "k": 50, "only": "videos", "per_video": 1}).json()
    assert moments["filters"]["only"] == "videos" and moments["results"]
    assert all("t" in r for r in moments["results"])
    assert len({r["video_id"] for r in moments["results"]}) == len(moments["results"])  # one moment a video
    assert client.get("/api/search", params={"q": "a photo", "only": "sounds"}).status_code == 400
    page = client.get("/", params={"q": "a photo", "only": "videos"})  # the search page's own menu
    assert page.status_code == 200 and 'id="only"' in page.text and 'value="videos" selected' in page.text
    assert "moments of videos only" in page.text and " @ 0:00:" in page.text


# -- the moments API ---------------------------------------------------------------
def test_the_moments_of_a_video_as_json(client: TestClient, index: Index) -> None:
    party = video_id(index, "party.mp4")
    query = upload(client, slideshow_images(PICTURES, 192, 144)[2])
    found = client.get(f"/api/videos/{party}/moments", params={"q": query}).json()
    assert found["video"]["id"] == party and found["video"]["src"] == f"/video/{party}"
    assert found["video"]["duration"] == pytest.approx(PICTURES * SECONDS_EACH, abs=0.5)
    assert found["video"]["playable"] is True and found["video"]["media_type"] == "video/mp4"
    scores = [m["score"] for m in found["moments"]]
    assert scores == sorted(scores, reverse=True) and in_span(found["moments"][0]["t"], 2)
    assert found["count"] == len(frame_ids(index, "party.mp4"))
    assert found["moments"][0]["time"] == format_time(found["moments"][0]["t"])
    by_time = client.get(f"/api/videos/{party}/moments", params={"limit": 2}).json()
    assert by_time["query"] is None and [m["t"] for m in by_time["moments"]] == sorted(
        t for _, t in frame_ids(index, "party.mp4"))[:2]
    photo = next(r for r in index.store.files_under(str(index.store.roots()[0])).values() if r.path.endswith(".jpg"))
    missing = client.get(f"/api/videos/{photo.id}/moments")
    assert missing.status_code == 404 and set(missing.json()) == {"error", "status"}
    assert "/api/videos/{video_id}/moments" in client.get("/api").text
