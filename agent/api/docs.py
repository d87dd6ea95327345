"""The API's description: the OpenAPI document at /openapi.json and a small page for people at /docs.

The document itself is built from the route table (agent/api/openapi.py); the app holds it.
"""

from __future__ import annotations

import html

from aiohttp import web

from agent.api.spec import ANYONE, OBJ, STRING, Route

DOCUMENT = web.AppKey("openapi_document", dict)


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[DOCUMENT])


async def docs(request: web.Request) -> web.Response:
    rows = []
    for path, methods in request.app[DOCUMENT]["paths"].items():
        for method, op in methods.items():
            who = op.get("description", "For: anyone.")
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op['summary'])}</td><td>{html.escape(who)}</td></tr>")
    page = ("<!doctype html><meta charset=utf-8><title>Edge API</title>"
            "<style>body{font-family:sans-serif;margin:2em}td{padding:.2em .8em;border-bottom:1px solid #ddd}</style>"
            "<h1>Edge API</h1><p>Machine-readable: <a href=/openapi.json>/openapi.json</a> (OpenAPI 3.1)."
            " Authenticate with <code>Authorization: Bearer &lt;token&gt;</code>.</p><table>"
            + "".join(rows) + "</table>")
    return web.Response(text=page, content_type="text/html")


ROUTES = (
    Route("GET", "/openapi.json", openapi_json, ANYONE, "This document", "device",
          {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": OBJ}}}}),
    Route("GET", "/docs", docs, ANYONE, "This document for people", "device",
          {"200": {"description": "HTML", "content": {"text/html": {"schema": STRING}}}}),
)
