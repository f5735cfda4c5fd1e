"""The review studio's web app (Starlette): sessions, a session against its emotions, blinded rating.

Pages are Jinja2 templates (``studio/templates``, with the report's macros and filters), styled by
the report's CSS plus ``static/studio.css``; ``static/studio.js`` syncs the media with the transcript
and the timeline. Every page works without JavaScript except the syncing itself.

Access: on a loopback bind the clinician's pages are open and rating needs a rater's sign-in; on any
other bind every page needs a signed-in rater (401 with the sign-in form otherwise). A signed-in rater
never sees the interventions with their conditions (that would unblind the items). Nothing from the
transcript, the replies or the comments is logged.
"""

from __future__ import annotations

import logging
import mimetypes
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from emoguide.dataio.storage import is_uri
from emoguide.evaluation.judge import CRITERIA
from emoguide.report.render import ASSETS, read_run, template_env
from emoguide.report.render import CSP as REPORT_CSP
from studio import security
from studio.store import LOGIN_TTL_S, MAX_COMMENT_CHARS, Store, StudioError, parse_answer

HERE = Path(__file__).resolve().parent
STATIC = {
    "studio.css": HERE / "static" / "studio.css",
    "studio.js": HERE / "static" / "studio.js",
    "report.css": ASSETS / "report.css",
}
AUDIO_SUFFIXES = (".wav", ".mp3", ".m4a", ".flac", ".ogg", ".opus", ".aac")
SCORE_LABELS = {1: "very poor", 2: "poor", 3: "fair", 4: "good", 5: "very good"}
log = logging.getLogger("emoguide.studio")


class Studio:
    """One run folder served: its tables (read once), its ratings store and the access rule."""

    def __init__(self, run_dir: Path, require_login: bool) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.run = read_run(self.run_dir)
        self.sessions = {s.get("session_id"): s for s in self.run.sessions}
        self.store = Store(self.run_dir)
        self.csrf_key = self.store.meta("csrf_key") or ""
        self.require_login = require_login
        self.env = template_env(HERE / "templates")

    def render(self, request: Request, name: str, code: int = 200, **ctx: Any) -> HTMLResponse:
        seed = request.state.csrf_seed
        html = self.env.get_template(name).render(
            rater=request.state.rater,
            csrf=security.csrf_token(self.csrf_key, seed),
            require_login=self.require_login,
            **ctx,
        )
        return HTMLResponse(html, code, headers={"Content-Security-Policy": security.content_security_policy(html)})

    def media_file(self, session: dict[str, Any]) -> tuple[Path | None, str | None]:
        """(the session's source file, None) when it can be served, else (None, why not)."""
        source = session.get("source_path")
        if not source:
            return None, "the run did not record a source file for this session"
        if is_uri(source):
            return None, f"the source is in an object store ({source}); the studio plays local files only"
        path = Path(source)
        if not path.is_file():
            return None, f"the source file {source} is missing (or not a regular file)"
        try:
            with open(path, "rb") as fh:
                fh.read(1)
        except OSError as exc:
            return None, f"the source file {source} is unreadable ({exc.strerror or type(exc).__name__})"
        return path, None

    def rater_of(self, request: Request) -> str:
        if request.state.rater is None:
            raise StudioError("sign in with your rater token to rate", 401)
        return request.state.rater

    # ------------------------------------------------------------------------------------------------
    # pages (each a Starlette endpoint)

    async def sessions_page(self, request: Request) -> Response:
        progress = self.store.progress()
        rows = [
            {"s": s, "progress": progress.get(s.get("session_id") or "", {"items": 0, "ratings": 0})}
            for s in self.run.sessions
        ]
        has_report = security.contained_file(self.run_dir, "report/index.html") is not None
        return self.render(
            request,
            "sessions.html.j2",
            rows=rows,
            n_raters=len(self.store.raters()),
            run_name=self.run_dir.name,
            has_report=has_report,
        )

    async def session_page(self, request: Request) -> Response:
        s = self.sessions.get(request.path_params["sid"])
        if s is None:
            raise HTTPException(404)
        path, problem = self.media_file(s)
        kind = "audio" if path is not None and path.suffix.lower() in AUDIO_SUFFIXES else "video"
        return self.render(
            request,
            "session.html.j2",
            **self.run.session_page(s),
            media_problem=problem,
            media_kind=kind,
            blinded=request.state.rater is not None,
        )

    async def media(self, request: Request) -> Response:
        s = self.sessions.get(request.path_params["sid"])
        path = self.media_file(s)[0] if s is not None else None
        if path is None:
            raise HTTPException(404)
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind)  # answers Range requests with 206 / 416

    async def static(self, request: Request) -> Response:
        path = STATIC.get(request.path_params["name"])
        if path is None:
            raise HTTPException(404)
        return FileResponse(path, headers={"Cache-Control": "no-cache"})

    async def report(self, request: Request) -> Response:
        if request.state.rater is not None:
            raise StudioError(
                "the static report shows the prompt conditions: not while you are signed in as a rater", 403
            )
        path = security.contained_file(self.run_dir / "report", request.path_params["path"])
        if path is None:
            raise HTTPException(404)
        return FileResponse(path, headers={"Content-Security-Policy": REPORT_CSP})

    async def signin(self, request: Request) -> Response:
        if request.method == "GET":
            return self.render(request, "signin.html.j2", message=None)
        form = await checked_form(self, request)
        try:
            _, login = self.store.sign_in(form.get("token", ""))
        except StudioError as exc:
            return self.render(request, "signin.html.j2", exc.status, message=str(exc))
        response = RedirectResponse("/rate", 303)
        response.set_cookie(security.LOGIN_COOKIE, login, httponly=True, samesite="strict", max_age=LOGIN_TTL_S)
        return response

    async def signout(self, request: Request) -> Response:
        await checked_form(self, request)
        if request.cookies.get(security.LOGIN_COOKIE):
            self.store.sign_out(request.cookies[security.LOGIN_COOKIE])
        response = RedirectResponse("/", 303)
        response.delete_cookie(security.LOGIN_COOKIE)
        return response

    async def rate_next(self, request: Request) -> Response:
        """Resume: the rater's first unrated item in their order (or the end)."""
        rater = self.rater_of(request)
        order, done = self.store.order(rater), self.store.rated(rater)
        first = next((n for n, item in enumerate(order, start=1) if item not in done), None)
        if first is None:
            return self.render(request, "done.html.j2", n_items=len(order))
        return RedirectResponse(f"/rate/{first}", 303)

    async def rate(self, request: Request) -> Response:
        rater = self.rater_of(request)
        order, n = self.store.order(rater), request.path_params["n"]
        if not 1 <= n <= len(order):
            raise StudioError(f"there is no item {n} (you have {len(order)})", 404)
        item = order[n - 1]
        if request.method == "POST":
            return await self.save(request, rater, n, item)
        return self.render(
            request,
            "rate.html.j2",
            n=n,
            total=len(order),
            n_done=len(self.store.rated(rater)),
            item=self.store.item(item),
            answer=self.store.answer(rater, item),
            criteria=CRITERIA,
            labels=SCORE_LABELS,
        )

    async def save(self, request: Request, rater: str, n: int, item: str) -> Response:
        """Commit one answer (CSRF-checked, validated, on top of the revision the form was made from)."""
        form = await checked_form(self, request)
        if form.get("item") != item:
            raise StudioError(f"item {form.get('item')!r} is not item {n} of your list", 404)
        revision = form.get("revision", "")
        if not revision.isdigit():
            raise StudioError("the form has no valid revision: reload the page", 400)
        self.store.save(rater, item, parse_answer(form), int(revision))
        log.info("rating saved: rater=%s item=%s", rater, item)
        return RedirectResponse("/rate", 303)

    def routes(self) -> list[Route]:
        return [
            Route("/", self.sessions_page),
            Route("/session/{sid}", self.session_page),
            Route("/media/{sid}", self.media),
            Route("/static/{name}", self.static),
            Route("/report/{path:path}", self.report),
            Route("/signin", self.signin, methods=["GET", "POST"]),
            Route("/signout", self.signout, methods=["POST"]),
            Route("/rate", self.rate_next),
            Route("/rate/{n:int}", self.rate, methods=["GET", "POST"]),
        ]


# ----------------------------------------------------------------------------------------------------
# middleware: who is asking, the access rule, CSRF cookie, security headers


def _middleware(studio: Studio) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    async def dispatch(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        seed = request.cookies.get(security.CSRF_COOKIE)
        request.state.csrf_seed = seed if seed and len(seed) <= 64 else secrets.token_urlsafe(24)
        request.state.rater = studio.store.rater_for_login(request.cookies.get(security.LOGIN_COOKIE))
        open_path = request.url.path.startswith("/static/") or (request.url.path, request.method) == ("/signin", "POST")
        if studio.require_login and request.state.rater is None and not open_path:
            response: Response = studio.render(request, "signin.html.j2", 401, message="Sign in with your rater token.")
        else:
            response = await call_next(request)
        if request.state.csrf_seed != seed:
            response.set_cookie(security.CSRF_COOKIE, request.state.csrf_seed, httponly=True, samesite="strict")
        for key, value in security.HEADERS.items():
            response.headers.setdefault(key, value)
        response.headers.setdefault("Content-Security-Policy", security.content_security_policy())
        return response

    return dispatch


async def checked_form(studio: Studio, request: Request) -> dict[str, str]:
    """The posted form, or 403 when its CSRF token does not belong to this browser's cookie."""
    form = await request.form(max_files=0, max_fields=20, max_part_size=MAX_COMMENT_CHARS * 4)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    if not security.csrf_ok(studio.csrf_key, request.cookies.get(security.CSRF_COOKIE), fields.get("csrf")):
        raise StudioError("the form's security token is missing or stale: reload the page and try again", 403)
    return fields


def create_app(run_dir: Path, host: str = "127.0.0.1") -> Starlette:
    """The app for ``run_dir`` as served on ``host`` (a non-loopback host requires sign-in everywhere)."""
    loopback = security.is_loopback(host)
    studio = Studio(run_dir, require_login=not loopback)

    async def studio_error(request: Request, exc: Exception) -> Response:
        status = exc.status if isinstance(exc, StudioError) else getattr(exc, "status_code", 500)
        message = str(exc) if isinstance(exc, StudioError) else getattr(exc, "detail", "error")
        return studio.render(request, "error.html.j2", status, status=status, message=message)

    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=list(security.LOOPBACK_NAMES) if loopback else ["*"]),
        Middleware(BaseHTTPMiddleware, dispatch=_middleware(studio)),
    ]
    return Starlette(
        routes=studio.routes(),
        middleware=middleware,
        exception_handlers={StudioError: studio_error, HTTPException: studio_error},
    )
