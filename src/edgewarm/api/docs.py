"""The /docs page: Swagger UI of a version named exactly, its files checked by the browser against their hashes.

FastAPI's page loads `swagger-ui-dist@5` (whatever 5.x the CDN serves that day) without Subresource Integrity,
so a CDN serving another script would run it on the API's own origin, where a user types a signature into "Try
it out" (a security tester's). The hashes are those of the files in the npm package of SWAGGER_UI_VERSION
(`npm pack swagger-ui-dist@VERSION`, then `openssl dgst -sha384 -binary FILE | base64`); jsDelivr serves them
unchanged. Without internet access the page is blank; /openapi.json needs none.
"""

from __future__ import annotations

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import HTMLResponse

SWAGGER_UI_VERSION = "5.32.0"
_CDN = f"https://cdn.jsdelivr.net/npm/swagger-ui-dist@{SWAGGER_UI_VERSION}"
SWAGGER_JS = (f"{_CDN}/swagger-ui-bundle.js", "sha384-7xcoc6ZKDFF7Ek627QTC3Bg/K+5Y36NJ8MWAE43D2m6+3Sh9XO3tdsfHhrS8gNIQ")
SWAGGER_CSS = (f"{_CDN}/swagger-ui.css", "sha384-3nuX7df3EaAoiqLBeyS1Ola0Gpg9ryJKVtarubwfnA1cOH8AWHUdbPSIvEqPZ9VH")


def docs_page(openapi_url: str, title: str) -> HTMLResponse:
    """FastAPI's Swagger UI page, its script and style of SWAGGER_UI_VERSION with their integrity, no favicon
    fetched from elsewhere."""
    page = bytes(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=SWAGGER_JS[0],
            swagger_css_url=SWAGGER_CSS[0],
            swagger_favicon_url="data:,",
        ).body
    ).decode()
    for tag, (url, integrity) in (
        (f'<script src="{SWAGGER_JS[0]}"', SWAGGER_JS),
        (f'href="{SWAGGER_CSS[0]}"', SWAGGER_CSS),
    ):
        if page.count(tag) != 1:  # FastAPI's page changed: no page rather than one without the check
            raise RuntimeError(f"the Swagger UI page does not load {url} once")
        page = page.replace(tag, f'{tag} integrity="{integrity}" crossorigin="anonymous"')
    return HTMLResponse(page)
