"""``emoguide studio``: serve a run folder for review, register raters, export their ratings.

emoguide studio RUN_DIR [--host 127.0.0.1] [--port 8000]
emoguide studio add-rater NAME RUN_DIR [--reissue]
emoguide studio export RUN_DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studio.security import is_loopback
from studio.store import DB_NAME, Store, StudioError

NETWORK_WARNING = (
    "WARNING: emoguide studio is bound to {host}, not to loopback: anyone who can reach this machine on port "
    "{port} can try to connect. Every page requires a rater's sign-in, but the traffic is plain HTTP: put it "
    "behind TLS (or an SSH tunnel) before using it across a network. Therapy recordings are health data."
)


def _run_dir(value: str) -> Path:
    path = Path(value)
    if not (path / "sessions.parquet").is_file():
        raise argparse.ArgumentTypeError(f"{path} has no sessions.parquet: not an emoguide run folder")
    return path


def _parsers() -> dict[str, argparse.ArgumentParser]:
    serve = argparse.ArgumentParser(
        prog="emoguide studio",
        description="Review a run in the browser (subcommands: add-rater NAME RUN_DIR, export RUN_DIR)",
    )
    serve.add_argument("run_dir", type=_run_dir, metavar="RUN_DIR")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    serve.add_argument("--port", type=int, default=8000)
    add = argparse.ArgumentParser(
        prog="emoguide studio add-rater",
        description="register a rater; prints their token once (only its hash is stored)",
    )
    add.add_argument("name")
    add.add_argument("run_dir", type=_run_dir, metavar="RUN_DIR")
    add.add_argument(
        "--reissue", action="store_true", help="give an existing rater a new token (the old one stops working)"
    )
    export = argparse.ArgumentParser(
        prog="emoguide studio export",
        description="write expert_ratings.parquet (the `eval import-ratings` schema), its key and the comments",
    )
    export.add_argument("run_dir", type=_run_dir, metavar="RUN_DIR")
    return {"serve": serve, "add-rater": add, "export": export}


def serve(run_dir: Path, host: str, port: int) -> int:
    import uvicorn

    from studio.app import create_app

    if not is_loopback(host):
        print(NETWORK_WARNING.format(host=host, port=port), file=sys.stderr, flush=True)
    app = create_app(run_dir, host)
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, date_header=False)
    return 0


def main(argv: list[str]) -> int:
    """Run one studio command; ``argv`` is what follows ``emoguide studio``."""
    parsers = _parsers()
    command = argv[0] if argv and argv[0] in parsers and argv[0] != "serve" else "serve"
    args = parsers[command].parse_args(argv[1:] if command != "serve" else argv)
    if command == "add-rater":
        try:
            token = Store(args.run_dir).add_rater(args.name, reissue=args.reissue)
        except StudioError as exc:
            print(f"emoguide studio: error: {exc}", file=sys.stderr)
            return 2
        print(f"rater {args.name.strip()!r} added to {args.run_dir / 'ratings.sqlite'}")
        print(f"token (shown once, only its hash is stored; give it to the rater privately): {token}")
        return 0
    if command == "export":
        if not (args.run_dir / DB_NAME).exists():
            print(
                f"emoguide studio: error: {args.run_dir / DB_NAME} does not exist: no rater has been added",
                file=sys.stderr,
            )
            return 2
        written = Store(args.run_dir).export()
        print(
            f"expert ratings: {written['ratings']}\nkey (keep away from raters): {written['key']}\n"
            f"comments: {written['comments']}"
        )
        return 0
    return serve(args.run_dir, args.host, args.port)
