"""``/docs``: the OpenAPI description as one self-contained HTML page.

FastAPI's default page loads Swagger UI from a CDN, which an offline machine cannot
reach; this page needs nothing but the server. ``/openapi.json`` is the full schema.
"""

from __future__ import annotations

import html
from typing import Any


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _type(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(_type(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " | ".join(repr(v) for v in schema["enum"])
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    return str(schema.get("type", "any"))


def render(spec: dict[str, Any]) -> str:
    info = spec.get("info", {})
    out = [f"<h1>{_e(info.get('title', 'API'))} {_e(info.get('version', ''))}</h1>",
           f"<p>{_e(info.get('description', ''))}</p>",
           '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>.</p>']
    for path, ops in spec.get("paths", {}).items():
        for method, op in ops.items():
            out.append(f"<h2><code>{_e(method.upper())} {_e(path)}</code></h2>"
                       f"<p><b>{_e(op.get('summary', ''))}</b> {_e(op.get('description', ''))}"
                       "</p>")
            params = op.get("parameters", [])
            if params:
                rows = "".join(
                    f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p.get('in', ''))}</td>"
                    f"<td>{_e(_type(p.get('schema', {})))}</td>"
                    f"<td>{'yes' if p.get('required') else ''}</td></tr>" for p in params)
                out.append("<table><tr><th>parameter</th><th>in</th><th>type</th>"
                           f"<th>required</th></tr>{rows}</table>")
            body = op.get("requestBody", {}).get("content", {})
            for ctype, c in body.items():
                out.append(f"<p>body ({_e(ctype)}): "
                           f"{_e(c.get('schema', {}).get('description', ''))}</p>")
            codes = ", ".join(f"{_e(k)} {_e(v.get('description', ''))}"
                              for k, v in op.get("responses", {}).items())
            out.append(f"<p>responses: {codes}</p>")
    style = ("body{font:14px/1.4 system-ui,sans-serif;margin:24px;max-width:1000px}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
             "h2{font-size:15px;margin-top:22px}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{_e(info.get('title', 'API'))} API</title><style>{style}</style></head><body>"
            + "".join(out) + "</body></html>\n")
