"""The studio's defences, kept apart from the pages so each can be read and tested on its own.

* CSRF: a random ``egs_c`` cookie (HttpOnly, SameSite=Strict) per browser; every form carries
  HMAC(key, cookie) and every POST is refused without a match. The key lives in ratings.sqlite.
* Content-Security-Policy: scripts, styles, media and images from the server itself only, nothing
  else; inline style attributes are allowed (the matplotlib SVG draws with them) and the SVG's own
  ``<style>`` element by its hash. No request can leave the server.
* Files: only names inside a fixed root, resolved (symlinks followed) and still inside it; anything
  else is "not found", never "forbidden", so probing learns nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
from pathlib import Path, PurePosixPath

CSRF_COOKIE = "egs_c"
LOGIN_COOKIE = "egs"
_STYLE_ELEMENT = re.compile(r"<style[^>]*>(.*?)</style>", re.S)

HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",  # health data: never kept in a shared cache or the browser's
}


def csrf_token(key: str, seed: str) -> str:
    """The form token that belongs to the browser's CSRF cookie ``seed``."""
    return hmac.new(key.encode(), seed.encode(), hashlib.sha256).hexdigest()


def csrf_ok(key: str, seed: str | None, token: object) -> bool:
    if not seed or not isinstance(token, str):
        return False
    return hmac.compare_digest(csrf_token(key, seed), token)


def content_security_policy(html: str = "") -> str:
    """The policy for a page: ``'self'`` only, plus the hash of each ``<style>`` element in ``html``."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"
        for css in _STYLE_ELEMENT.findall(html)
    )
    return (
        "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self' data:; media-src 'self'; "
        f"style-src-elem 'self' {hashes}".rstrip()
        + "; style-src-attr 'unsafe-inline'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    )


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")  # Host headers a loopback server answers


def contained_file(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it is a regular file inside ``root`` after resolving symlinks, else None."""
    parts = PurePosixPath(relative).parts
    if not relative or "\x00" in relative or relative.startswith("/") or ".." in parts or "\\" in relative:
        return None
    base = root.resolve()
    try:
        path = (base / relative).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    return path if path.is_relative_to(base) and path.is_file() else None
