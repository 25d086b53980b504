"""The review page: recent verdicts with filters and sorting, and one verdict's faces on its timeline.

Rendered on the server by Jinja2 with autoescaping on, so every user-controlled string (URI,
metadata, request id, reason) reaches the browser as text; the pages carry no script at all
and a Content-Security-Policy that forbids any, as a second wall.
"""


import json
import time
from pathlib import Path as FsPath
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Path, Query
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from worker.types import LABELS, Verdict

SCAN_MAX = 2000  # newest index entries a list page looks at before filtering
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

_env = Environment(
    loader=FileSystemLoader(FsPath(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["pathquote"] = lambda s: quote(str(s), safe="")
_env.filters["utc"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else ""
_env.filters["pretty"] = lambda d: json.dumps(d, indent=2, ensure_ascii=False, sort_keys=True)
_env.filters["compact"] = lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True) if d else ""
_env.filters["score"] = lambda s: "" if s is None else f"{s:.3f}"


def model_name(v: Verdict) -> str:
    return f"{v.model.name} {v.model.version}" if v.model else ""


def select(
    verdicts: list[Verdict], label: str | None, model: str | None, sort: str, limit: int
) -> list[Verdict]:
    """The list page's rows: filtered by label and model, sorted (scoreless verdicts last), cut to `limit`."""
    rows = [v for v in verdicts if (not label or v.label == label) and (not model or model_name(v) == model)]
    if sort == "score_desc":
        rows.sort(key=lambda v: (v.score is None, -(v.score or 0.0)))
    elif sort == "score_asc":
        rows.sort(key=lambda v: (v.score is None, v.score or 0.0))
    else:
        rows.sort(key=lambda v: v.created_at, reverse=True)
    return rows[:limit]


def timeline(v: Verdict) -> dict:
    """Per-face marks along the video (percent of the last sampled time) and each frame's mean score."""
    end = max((f.time_s for f in v.faces), default=0.0) or 1.0
    frames: dict[int, list[float]] = {}
    for f in v.faces:
        frames.setdefault(f.frame_index, []).append(f.fake_score)
    return {
        "end_s": end,
        "faces": [min(100.0, 100.0 * f.time_s / end) for f in v.faces],
        "frames": [
            {"index": i, "time_s": next(f.time_s for f in v.faces if f.frame_index == i), "score": sum(s) / len(s)}
            for i, s in sorted(frames.items())
        ],
    }


def install(app: FastAPI, services, reader) -> None:

    def page(template: str, status: int = 200, **context) -> HTMLResponse:
        html = _env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=HEADERS)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/review")

    @app.get("/review", response_class=HTMLResponse, tags=["review"])
    async def review_list(
        _: Annotated[object, reader],
        label: Annotated[Literal["", "fake", "real", "no_face", "error"], Query()] = "",
        model: Annotated[str, Query(max_length=300)] = "",
        since_hours: Annotated[float, Query(ge=0, le=24 * 366)] = 24.0,
        sort: Annotated[Literal["newest", "score_desc", "score_asc"], Query()] = "newest",
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> HTMLResponse:
        """Recent verdicts (from dfd-api's index), filtered by label, model and age, sorted by time or score."""
        since = time.time() - since_hours * 3600 if since_hours > 0 else 0
        verdicts = await run_in_threadpool(services.index.recent, since, SCAN_MAX)
        rows = select(verdicts, label or None, model or None, sort, limit)
        models = sorted({model_name(v) for v in verdicts if v.model})
        return page(
            "list.html", rows=rows, models=models, labels=LABELS, total=len(verdicts),
            f={"label": label, "model": model, "since_hours": since_hours, "sort": sort, "limit": limit},
            model_name=model_name,
        )

    @app.get("/review/{request_id:path}", response_class=HTMLResponse, tags=["review"], responses={404: {"description": "no such verdict"}})
    async def review_detail(
        request_id: Annotated[str, Path(max_length=256)], _: Annotated[object, reader]
    ) -> HTMLResponse:
        """One verdict: its faces (thumbnails, boxes, scores) along the video's timeline, threshold, model, notice."""
        verdict = await run_in_threadpool(services.cache.get, request_id)
        if verdict is None and services.cache.in_outage():
            raise HTTPException(503, "the verdict cache is unavailable; try again")
        if verdict is None:
            raise HTTPException(404, "no verdict for this request id")
        thumbs = await run_in_threadpool(services.cache.thumbnail_count, request_id)
        return page(
            "detail.html", v=verdict, thumbs=thumbs if thumbs == len(verdict.faces) else 0,
            line=timeline(verdict), model_name=model_name(verdict),
        )
