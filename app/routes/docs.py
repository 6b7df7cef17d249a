"""The OpenAPI explorer, with Swagger UI's assets served from the installed package (no CDN)."""

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from app.routes.limited_route import LimitedRoute

ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"

router = APIRouter(include_in_schema=False, route_class=LimitedRoute)


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    """Swagger UI; Authorize logs in through the password flow at /auth/login."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="chatgate API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        oauth2_redirect_url=OAUTH2_REDIRECT_URL,
        # validatorUrl None: Swagger UI would otherwise send the schema to validator.swagger.io.
        swagger_ui_parameters={"persistAuthorization": True, "validatorUrl": None},
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page."""
    return get_swagger_ui_oauth2_redirect_html()


def mount_docs(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        _errors_as_json(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _errors_as_json(schema: dict[str, Any]) -> None:
    """Errors are JSON everywhere, also on /chat/send, whose success is an event stream
    (FastAPI files every declared response under the route's media type)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status[0] in "45" and "application/json" not in content and content:
                    response["content"] = {"application/json": next(iter(content.values()))}
