"""The web app's guards: hosts it answers to, cross-site writes, uploads that are not what they claim."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipdex import Index
from clipdex.web.app import DEFAULT_ALLOWED_HOSTS, create_app
from clipdex.web.guard import HostPolicy, host_name
from tests.images import png_claiming, write_edge_cases

OWN = "http://127.0.0.1:8000"


@pytest.fixture()
def index(web_index: Index) -> Index:
    return web_index


@pytest.fixture()
def client(index: Index) -> TestClient:
    return TestClient(create_app(index), base_url=OWN)


def jpeg(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, "JPEG")
    return buffer.getvalue()


def uploads(index: Index) -> list[Path]:
    folder = index.path / "uploads"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def is_error_page(response: object, status: int) -> bool:
    r = response  # an httpx.Response
    return (r.status_code == status and r.headers["content-type"].startswith("text/html")  # type: ignore[attr-defined]
            and 'id="error"' in r.text and "Back to search" in r.text)  # type: ignore[attr-defined]


# -- hosts (DNS rebinding) -----------------------------------------------------
def test_only_the_hosts_the_server_was_started_for_are_answered(client: TestClient, index: Index) -> None:
    for host in ("127.0.0.1", "127.0.0.1:8000", "localhost:1234", "LOCALHOST.", "[::1]:8000", "[::1]"):
        assert client.get("/api/status", headers={"Host": host}).status_code == 200, host
    api = client.get("/api/status", headers={"Host": "evil.example"})
    assert api.status_code == 400 and set(api.json()) == {"error", "status"}
    assert "evil.example" in api.json()["error"] and "--allow-host evil.example" in api.json()["error"]
    assert str(index.path) not in api.text
    page = client.get("/", headers={"Host": "evil.example:8000"})
    assert is_error_page(page, 400) and "--allow-host evil.example" in page.text
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost@evil.example", "[::2]:8000", "a b",
                 "127.0.0.1:abc", "[::1"):
        assert client.get("/thumb/1", headers={"Host": host}).status_code == 400, host
        assert client.post("/upload", headers={"Host": host}).status_code == 400, host


def test_hosts_can_be_added_and_a_wildcard_address_accepts_the_machines_own_names(index: Index) -> None:
    added = TestClient(create_app(index, allowed_hosts=(*DEFAULT_ALLOWED_HOSTS, "photos.lan", "[fd00::5]")))
    assert added.get("/api/status", headers={"Host": "photos.lan:8000"}).status_code == 200
    assert added.get("/api/status", headers={"Host": "[fd00::5]:80"}).status_code == 200
    assert added.get("/api/status", headers={"Host": "evil.example"}).status_code == 400

    everywhere = HostPolicy((*DEFAULT_ALLOWED_HOSTS, "0.0.0.0"))
    assert everywhere.allows(socket.gethostname()) and everywhere.allows(f"{socket.gethostname()}:8000")
    assert everywhere.allows("127.0.0.1:80") and not everywhere.allows("evil.example")
    assert not HostPolicy(DEFAULT_ALLOWED_HOSTS).allows(socket.gethostname() + ".evil.example")
    assert HostPolicy(["*"]).allows("anything.example")
    assert "0.0.0.0" not in HostPolicy(["0.0.0.0"]).names  # a wildcard is never a Host name


def test_host_header_parsing() -> None:
    assert host_name("[::1]:8000") == "::1"
    assert host_name("[0:0:0:0:0:0:0:1]") == "::1"
    assert host_name("Example.COM.:80") == "example.com"
    assert host_name("::1") == "::1"
    for bad in ("", "[::1", "[::1]x", "a:b", "user@host", "host/path", "[evil.example]"):
        assert host_name(bad) is None, bad


# -- cross-site writes (CSRF) ----------------------------------------------------
CROSS_SITE = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://127.0.0.1:9999"},  # another server on this machine
    {"Origin": "https://127.0.0.1:8000"},
    {"Referer": "http://evil.example/page.html"},
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": OWN, "Sec-Fetch-Site": "cross-site"},
]


def test_writes_from_other_sites_are_refused(client: TestClient, index: Index) -> None:
    target = client.get("/api/search", params={"q": "dog", "k": 1}).json()["results"][0]
    for headers in CROSS_SITE:
        form = client.post("/upload", files={"file": ("x.jpg", jpeg(), "image/jpeg")}, headers=headers,
                           follow_redirects=False)
        assert is_error_page(form, 403) and "cross-site" in form.text, headers
        api = client.post("/api/labels/taken_space/corrections",
                          json={"file_id": target["id"], "label": "indoor"}, headers=headers)
        assert api.status_code == 403 and api.json() == {"error": api.json()["error"], "status": 403}, headers
        for method in ("PUT", "PATCH", "DELETE"):  # refused before routing: no route can forget the check
            assert client.request(method, "/api/status", headers=headers).status_code == 403, (method, headers)
    assert uploads(index) == []
    assert not any(index.classification("taken_space").truth or [])


def test_writes_from_the_servers_own_pages_and_from_scripts_pass(client: TestClient, index: Index) -> None:
    for headers in ({"Origin": OWN, "Sec-Fetch-Site": "same-origin"}, {"Referer": OWN + "/?q=dog"},
                    {}, {"Origin": "http://127.0.0.1:8000/"}):
        ok = client.post("/upload", files={"file": ("x.jpg", jpeg(), "image/jpeg")}, headers=headers,
                         follow_redirects=False)
        assert ok.status_code == 303, headers
    assert len(uploads(index)) == 1  # one image, stored once under its content hash
    local = TestClient(create_app(index), base_url="http://localhost:5000")
    target = local.get("/api/search", params={"q": "dog", "k": 1}).json()["results"][0]
    saved = local.post("/api/labels/taken_space/corrections", json={"file_id": target["id"], "label": "indoor"},
                       headers={"Origin": "http://localhost:5000"})
    assert saved.status_code == 200
    # reading needs no origin check: a page elsewhere cannot read the answer anyway (no CORS headers)
    read = client.get("/api/status", headers={"Origin": "http://evil.example"})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


# -- uploads ----------------------------------------------------------------------
def test_a_decompression_bomb_is_refused_before_it_is_decoded(client: TestClient, index: Index) -> None:
    bomb = client.post("/upload", files={"file": ("bomb.png", png_claiming(60_000, 60_000), "image/png")})
    assert is_error_page(bomb, 413)
    assert "3,600 megapixels" in bomb.text and "178-megapixel limit" in bomb.text
    huge = client.post("/upload", files={"file": ("huge.png", png_claiming(15_000, 15_000), "image/png")})
    assert is_error_page(huge, 413)  # above clipdex's limit, below Pillow's own error threshold
    assert "225,000,000 pixels (225 megapixels)" in huge.text
    assert uploads(index) == []


def test_every_bad_upload_is_a_4xx_page(client: TestClient, index: Index, tmp_path: Path) -> None:
    cases = write_edge_cases(tmp_path / "edge")
    bad = {name: cases[name].read_bytes() for name in ("truncated.jpg", "empty.jpg", "text.jpg", "bomb.png")}
    png = cases["gray.png"].read_bytes()
    bad.update({
        "signature only": png[:8],
        "header cut": png[:30],
        "bad bit depth": png[:24] + b"\x07" + png[25:],
        "garbage after signature": png[:8] + bytes(range(256)) * 4,
        "gif claiming 65535 square": b"GIF89a\xff\xff\xff\xff\x00\x00\x00;",
        "bmp claiming more": b"BM" + b"\x00" * 16 + (10**6).to_bytes(4, "little") * 2 + b"\x01\x00\x18\x00",
        "tiff header only": b"II*\x00\x08\x00\x00\x00",
    })
    for name, data in bad.items():
        response = client.post("/upload", files={"file": ("x.jpg", data, "image/jpeg")}, follow_redirects=False)
        assert 400 <= response.status_code < 500, name
        assert is_error_page(response, response.status_code), name
    assert uploads(index) == []
    for name in ("ok.jpg", "cmyk.jpg", "sixteen.png", "palette.png", "animated.gif", "rotated.jpg", "pic.webp",
                 "mislabelled.jpg"):
        response = client.post("/upload", files={"file": (name, cases[name].read_bytes(), "image/jpeg")},
                               follow_redirects=False)
        assert response.status_code == 303, name
    assert {p.suffix for p in uploads(index)} == {".jpg", ".png", ".gif", ".webp"}  # the format found, not claimed


def test_upload_bodies_are_bounded_even_when_streamed(client: TestClient, index: Index) -> None:
    declared = client.post("/upload", content=b"x" * (22 * 1024 * 1024),
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert is_error_page(declared, 413)

    def chunks() -> object:
        for _ in range(24):
            yield b"x" * (1024 * 1024)

    streamed = client.post("/upload", content=chunks(),  # type: ignore[arg-type]
                           headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    assert is_error_page(streamed, 413)
    assert uploads(index) == []


def test_an_upload_is_searched_by_its_name_and_no_other_server_file_is(client: TestClient, index: Index) -> None:
    done = client.post("/upload", files={"file": ("x.jpg", jpeg(), "image/jpeg")}, follow_redirects=False)
    page = client.get(done.headers["location"])
    assert page.status_code == 200 and page.text.count('class="card"') == 13
    name = uploads(index)[0].name
    api = client.get("/api/search", params={"q": f"@upload:{name} + dog", "k": 3}).json()
    assert len(api["results"]) == 3
    legacy = client.get("/api/search", params={"q": f"@{uploads(index)[0]}", "k": 3})  # the full path still works
    assert legacy.status_code == 200
    for query in ("@upload:../catalog.sqlite", "@upload:" + "0" * 32 + ".jpg", f"@{index.path / 'catalog.sqlite'}",
                  "@/etc/hostname"):
        refused = client.get("/api/search", params={"q": query})
        assert refused.status_code == 400 and set(refused.json()) == {"error", "status"}, query
