"""Nothing the web app serves reaches the internet: no CDN, no external font, script or link."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from clipdex import Index
from clipdex.web import create_app

STATIC = Path(__file__).resolve().parents[2] / "clipdex" / "web" / "static"
TEMPLATES = STATIC.parent / "templates"
EXTERNAL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}|@import|url\(\s*['"]?(?:https?:)?//""", re.I)
SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched


def external_references(text: str) -> list[str]:
    return [m.group(0) for m in EXTERNAL.finditer(text.replace(SVG_NAMESPACE, ""))]


def test_no_served_page_script_or_style_references_another_host(web_index: Index) -> None:
    client = TestClient(create_app(web_index), base_url="http://127.0.0.1:8000")
    photo_id = client.get("/api/search", params={"q": "dog", "k": 1}).json()["results"][0]["id"]
    pages = ["/", "/?q=dog", f"/?like={photo_id}", "/?set=taken_space&label=indoor", f"/photo/{photo_id}",
             "/labels", "/labels/taken_space", "/api", "/photo/abc", "/no/such/page"]
    served = {path: client.get(path).text for path in pages}
    assets = set()
    for text in served.values():
        assets.update(re.findall(r"""(?:src|href)=["'](/static/[^"']+)["']""", text))
    assert "/static/app.js" in assets and "/static/style.css" in assets
    assets.update(f"/static/{p.name}" for p in STATIC.iterdir())
    for path in sorted(assets):
        response = client.get(path)
        assert response.status_code == 200, path
        served[path] = response.text
    for path, text in served.items():
        assert external_references(text) == [], path
    for template in TEMPLATES.iterdir():
        assert external_references(template.read_text()) == [], template.name
    assert client.get("/api/docs").status_code == 404  # Swagger UI would load from a CDN
    assert client.get("/api/openapi.json").status_code == 200


def test_the_check_sees_what_it_is_looking_for() -> None:
    for text in ('<script src="https://cdn.jsdelivr.net/x.js">', "<link href='//fonts.googleapis.com/css'>",
                 "body { background: url(http://example.com/a.png) }", "@import 'x.css';"):
        assert external_references(text), text
    assert external_references(f'<svg xmlns="{SVG_NAMESPACE}">') == []
