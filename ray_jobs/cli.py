"""The ``emoguide`` command line.

``emoguide run INPUT... --out DIR`` processes sessions on a local Ray instance (or joins a cluster
with ``--address``) and prints a summary; the exit code is 0 when every session is ok, 1 when some
failed or are partial, 2 for a usage or configuration error. Transcript text never reaches the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from emoguide.dataio.inputs import InputError, SessionInput, collect_sessions
from emoguide.dataio.storage import StorageError, is_uri, staged_output
from emoguide.evaluation.ratings import RatingsError
from emoguide.report.render import ReportError
from models.llm import ENGINES
from models.registry import ModelNotFoundError
from ray_jobs.config import PRESET_NAMES, ConfigError, RunConfig, choose_preset, load_config, preset_overrides
from ray_jobs.runlock import RunLockError, run_lock

if TYPE_CHECKING:  # the pipeline imports Ray: only the commands that run it load it
    from ray_jobs.pipeline import RunSummary

    # argparse's handle on subcommands; argparse names no public type for it
    _Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]  # noqa: SLF001

log = logging.getLogger("emoguide")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emoguide", description=__doc__.splitlines()[0])
    parser.add_argument(*_VERBOSE, action="store_true", help=_VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    _add_submit(sub)
    ev_sub = sub.add_parser("eval", help="measure model accuracy on labelled data").add_subparsers(
        dest="eval_command", required=True
    )
    _add_eval_of_models(ev_sub)
    _add_eval_of_runs(ev_sub)
    _add_report_and_studio(sub)
    _add_models(sub)
    return parser


_VERBOSE = ("-v", "--verbose")
_VERBOSE_HELP = "also show Ray's logs, the workers' progress bars and, on an error, its traceback"


def _add_run(sub: _Subparsers) -> None:
    run = sub.add_parser("run", help="process session videos into emotion-annotated tables")
    run.add_argument("inputs", nargs="+", metavar="INPUT", help="video/audio files, folders, or CSV/Parquet manifests")
    run.add_argument(
        "--out", required=True, help="output folder or object-store URI (s3://, gs://); one per run, re-running resumes"
    )
    run.add_argument("--config", type=Path, help="YAML run config (see README: Configuration)")
    run.add_argument("--address", help="join a Ray cluster: 'auto' or 'ray://HOST:10001' (default: start Ray here)")
    run.add_argument("--force", action="store_true", help="recompute sessions that are already complete")
    run.add_argument(
        "--wait-lock", action="store_true", help="if another run is writing to --out, wait for it instead of refusing"
    )
    run.add_argument("--num-cpus", type=int, help="CPUs for the local Ray instance (default: all)")
    run.add_argument(
        "--object-store-mib",
        type=int,
        default=1024,
        help="object store of the local Ray instance; it bounds the chunks in flight (default 1024)",
    )
    run.add_argument(
        "-q", "--quiet", action="store_true", help="no progress line: failed sessions and the summary only"
    )
    # SUPPRESS: `emoguide -v run` and `emoguide run -v` both work (a default here would undo the first)
    run.add_argument(*_VERBOSE, action="store_true", default=argparse.SUPPRESS, help=_VERBOSE_HELP)
    run.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="auto",
        help="devices and resources per stage (auto: cpu without GPUs, gpu-1 / gpu-n with them)",
    )
    run.add_argument("--redact", action="store_true", help="replace names, places, numbers, e-mails in transcripts")
    run.add_argument(
        "--conditions", help="prompt conditions, comma-separated (default: text,face,voice,multimodal,dissonance)"
    )
    run.add_argument("--no-generate", action="store_true", help="stop after the reducer: no interventions")
    run.add_argument("--num-speakers", type=int, help="known number of speakers per session")
    run.add_argument("--min-speakers", type=int)
    run.add_argument("--max-speakers", type=int)
    run.add_argument("--therapist-speaker", help="speaker label (e.g. S1) to take as the therapist")
    run.add_argument(
        "--log-content",
        action="store_true",
        help="also print each finished session's transcript (off by default: sessions are health data)",
    )


def _add_submit(sub: _Subparsers) -> None:
    submit = sub.add_parser("submit", help="run as a Ray job on a cluster (Ray Jobs API)")
    submit.add_argument("inputs", nargs="+", metavar="INPUT", help="paths every node can read, or s3:// / gs:// URIs")
    submit.add_argument("--out", required=True, help="output folder every node can write, or an object-store URI")
    submit.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    submit.add_argument("--config", type=Path, help="YAML run config, shipped with the job")
    submit.add_argument("--preset", choices=PRESET_NAMES, default="auto")
    submit.add_argument("--redact", action="store_true")
    submit.add_argument("--force", action="store_true")
    submit.add_argument("--wait", action="store_true", help="follow the job's logs until it ends")
    submit.add_argument(
        "--token-file",
        type=Path,
        help="file with the cluster's auth token (default: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, "
        "~/.ray/auth_token, as Ray looks them up)",
    )


def _add_eval_of_models(ev_sub: _Subparsers) -> None:
    """``eval perception | pipeline | roles``: accuracy of the perception models and of the whole run."""
    perception = ev_sub.add_parser("perception", help="voice accuracy on RAVDESS files, face detection on videos")
    perception.add_argument("--ravdess", type=Path, help="folder of RAVDESS-named audio files")
    perception.add_argument("--actors", default="13-18", help="RAVDESS actors to score (default: held-out 13-18)")
    perception.add_argument("--videos", type=Path, nargs="*", default=[], help="videos or folders for the face check")
    perception.add_argument("--fps", type=float, default=2.0)
    perception.add_argument("--json", type=Path, help="also write the full report here")
    pipe = ev_sub.add_parser(
        "pipeline",
        help="end-to-end accuracy of `emoguide run` on sessions built from RAVDESS and GRID",
        description="Builds multi-clip RAVDESS sessions, GRID faces lip-synced to RAVDESS voices and GRID clips, "
        "runs `emoguide run --no-generate` on them and scores utterance boundaries, WER, word times, "
        "voice accuracy and dissonance. RAVDESS actors 1-12 are the train/tune split, 13-18 the "
        "report split: tune on 1-12, report 13-18.",
    )
    pipe.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder with ravdess/ and grid/")
    pipe.add_argument(
        "--actors",
        default="13-18",
        help="RAVDESS actors (default: the report split 13-18; 1-12 is the train/tune split)",
    )
    pipe.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/pipeline"), help="folder for pipeline.json and pipeline.md"
    )
    pipe.add_argument("--config", type=Path, help="YAML run config for the pipeline run")
    pipe.add_argument(
        "--work",
        type=Path,
        default=Path("out/eval_pipeline"),
        help="cache of built sessions and the run folder (default: out/eval_pipeline)",
    )
    pipe.add_argument("--max-clips", type=int, help="clips per RAVDESS session (default: all; fewer for a quick check)")
    roles = ev_sub.add_parser("roles", help="therapist/client assignment on AnnoMI-format transcripts")
    roles.add_argument("--annomi", type=Path, required=True, help="AnnoMI CSV (roles are hidden from the model)")
    roles.add_argument("--json", type=Path, help="also write the full report here")


def _add_eval_of_runs(ev_sub: _Subparsers) -> None:
    """``eval judge | metrics | compare | rating-sheet | import-ratings | agreement | annomi``."""
    judge = ev_sub.add_parser("judge", help="LLM judge: empathy, comprehensiveness, applicability (1-5)")
    judge.add_argument("run_dir", type=Path)
    judge.add_argument("--model", help="judge LLM from the registry (default: the llm slot's default)")
    judge.add_argument("--path", help="judge LLM weights by path")
    judge.add_argument("--limit", type=int, help="judge only the first N client turns (all conditions of each)")
    judge.add_argument("--batch-size", type=int, default=4, help="prompts per forward pass (transformers engine)")
    judge.add_argument("--engine", choices=ENGINES, help="CPU engine (default: llamacpp for a GGUF model)")
    metrics = ev_sub.add_parser("metrics", help="ROUGE-L, embedding similarity, length and form vs the therapist")
    metrics.add_argument("run_dir", type=Path)
    compare = ev_sub.add_parser("compare", help="per-condition means with bootstrap CIs; paired tests vs a baseline")
    compare.add_argument("run_dir", type=Path)
    compare.add_argument("--baseline", default="text")
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--json", type=Path)
    sheet = ev_sub.add_parser("rating-sheet", help="blank, blinded rating sheet for experts (+ its key)")
    sheet.add_argument("run_dir", type=Path)
    sheet.add_argument("--out", type=Path, required=True, help="sheet CSV; the key goes beside it as *.key.csv")
    sheet.add_argument("--seed", type=int, default=0)
    imp = ev_sub.add_parser("import-ratings", help="validate expert ratings and store them in the run folder")
    imp.add_argument("csv", type=Path)
    imp.add_argument("--run", type=Path, required=True, help="run folder to store expert_ratings.parquet in")
    imp.add_argument("--key", type=Path, help="the sheet's key, to check item ids")
    imp.add_argument("--rater", help="rater id for a filled sheet (wide form)")
    agr = ev_sub.add_parser("agreement", help="inter-expert and judge-expert agreement with bootstrap CIs")
    agr.add_argument("run_dir", type=Path)
    agr.add_argument("--key", type=Path, help="the rating sheet's key (maps items to judged replies)")
    agr.add_argument("--seed", type=int, default=0)
    agr.add_argument("--json", type=Path)
    annomi = ev_sub.add_parser("annomi", help="judge real AnnoMI therapist utterances against expert labels")
    annomi.add_argument("file", type=Path)
    annomi.add_argument("--out", type=Path, help="folder for annomi_judge.json")
    annomi.add_argument("--per-transcript", type=int, default=3)
    annomi.add_argument("--model", help="judge LLM from the registry (default: the llm slot's default)")
    annomi.add_argument("--batch-size", type=int, default=4, help="prompts per forward pass (transformers engine)")
    annomi.add_argument("--engine", choices=ENGINES, help="CPU engine (default: llamacpp for a GGUF model)")


def _add_report_and_studio(sub: _Subparsers) -> None:
    report = sub.add_parser("report", help="self-contained HTML report of a run folder")
    report.add_argument("run_dir", type=Path)
    report.add_argument("--session", help="only this session's page (and the index)")
    report.add_argument("--out", type=Path, help="folder for the HTML files (default: RUN_DIR/report)")
    studio = sub.add_parser(
        "studio", add_help=False, help="review app: watch sessions, rate interventions blind (`emoguide studio --help`)"
    )
    studio.add_argument("studio_args", nargs=argparse.REMAINDER)


def _add_models(sub: _Subparsers) -> None:
    models = sub.add_parser("models", help="list or fetch model weights")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    models_sub.add_parser("list", help="each slot's models, where their weights resolve, size and licence")
    fetch = models_sub.add_parser("fetch", help="download a production model into the cache (needs network)")
    fetch.add_argument("name", help="model name from `emoguide models list`")


# A closed loopback port: plain HTTP(S) clients that honour proxy variables (requests, urllib, gRPC)
# fail at once instead of reaching the network. Ray's dashboard, for one, probes the cloud metadata
# address 169.254.169.254 at start-up even with usage stats off.
_BLACKHOLE_PROXY = "http://127.0.0.1:9"


def guard_network() -> None:
    """Keep a run offline: no hub lookups, no Ray usage reporting, no stray HTTP to the network.

    Set before Ray starts, so every Ray process and worker inherits it. Loopback stays reachable.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        os.environ[name] = _BLACKHOLE_PROXY
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "localhost,127.0.0.1,::1"


def _start_ray(address: str | None, num_cpus: int | None, verbose: bool, object_store_mib: int = 1024) -> Path | None:
    """Start Ray here (or join ``address``) and return its session folder (None for a Ray Client
    connection). Without ``verbose`` Ray's logs, its workers' output and Ray Data's progress bars stay
    off the console (Ray's log files in the session folder keep them)."""
    import ray

    from ray_jobs.console import quiet_environment, quiet_ray_loggers

    if not verbose:
        quiet_environment()  # before Ray starts: local workers inherit it
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = ctx.print_on_execution_start = verbose
    level = logging.INFO if verbose else logging.ERROR
    if address:
        context = ray.init(address=address, logging_level=level, log_to_driver=verbose)
    else:
        # Loopback only: by default Ray binds and talks on the machine's network address even on one
        # node; this setting (meant for single-node laptops) keeps every Ray connection on 127.0.0.1.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        context = ray.init(
            num_cpus=num_cpus or os.cpu_count(),
            include_dashboard=False,
            logging_level=level,
            log_to_driver=verbose,
            # Ray's default object store is 30% of RAM, and decode may run ahead of ASR into whatever it
            # is given: a fixed store bounds that (Ray Data throttles decode to fit).
            object_store_memory=object_store_mib * 2**20,
            _temp_dir=os.environ.get("RAY_TMPDIR"),
        )
    if not verbose:
        quiet_ray_loggers()
    session_dir = getattr(context, "address_info", {}).get("session_dir")
    return Path(session_dir) if session_dir else None


def _session_lines(out_dir: Path, log_content: bool) -> Callable[[dict], list[str]]:
    """What a finished session prints above the progress line: a failed or partial one, a line saying
    why; with ``--log-content`` every session, and its transcript read back from its part file."""
    import pyarrow.parquet as pq

    from emoguide.dataio.tables import part_paths
    from ray_jobs.console import failure_line

    def lines(row: dict) -> list[str]:
        if not log_content:
            return [line] if (line := failure_line(row)) else []
        path = part_paths(out_dir, row["session_id"])["utterances"]
        utts = pq.read_table(path, columns=["start_s", "role", "text"]).to_pylist() if path.exists() else []
        return [
            failure_line(row) or f"{row['session_id']}: ok ({row['n_utterances']} utterances)",
            *(f"    {u['start_s']:8.2f} {u['role']:<9} {u['text']}" for u in utts),
        ]

    return lines


def run_overrides(args: argparse.Namespace) -> dict:
    """Config settings given as command-line flags (they win over the config file)."""
    speakers = {
        k: v
        for k, v in (
            ("num_speakers", args.num_speakers),
            ("min_speakers", args.min_speakers),
            ("max_speakers", args.max_speakers),
            ("therapist_speaker", args.therapist_speaker),
        )
        if v is not None
    }
    generation: dict[str, object] = {}
    if args.no_generate:
        generation["enabled"] = False
    if args.conditions:
        generation["conditions"] = [c.strip() for c in args.conditions.split(",") if c.strip()]
    overrides: dict = {"speakers": speakers, "generation": generation}
    if args.redact:
        overrides["redact"] = True
    return overrides


def cmd_submit(args: argparse.Namespace) -> int:
    from ray_jobs.submit import SubmitError, submit

    if args.config is not None:
        load_config(args.config)  # a bad config fails here, not on the cluster
    extra = [flag for flag, on in (("--redact", args.redact), ("--force", args.force)) if on]
    try:
        job = submit(args.address, args.inputs, args.out, args.preset, args.config, extra, args.wait, args.token_file)
    except SubmitError as exc:
        print(f"emoguide: error: {exc}", file=sys.stderr)
        return 2
    print(f"submitted job {job.job_id} to {args.address}")
    if job.status is None:
        return 0
    print(f"job {job.job_id}: {job.status}")
    if job.status == "SUCCEEDED":
        return 0
    print(f"{job.message}\nlast lines of the job's log:\n{job.log_tail}", file=sys.stderr)
    if job.hint():
        print(f"hint: {job.hint()}", file=sys.stderr)
    print(f"whole log: ray job logs {job.job_id} --address {args.address}", file=sys.stderr)
    return 1


def _process(
    args: argparse.Namespace, sessions: list[SessionInput], overrides: dict, out_dir: Path
) -> tuple[RunSummary, RunConfig]:
    """Start (or join) Ray, choose the preset from its GPUs and run under the progress line; Ray is
    shut down whatever happens. Without -v the driver's own stderr goes to Ray's log folder."""
    from ray_jobs.console import Progress, logging_to, native_stderr_to
    from ray_jobs.pipeline import run_pipeline

    session_dir = _start_ray(args.address, args.num_cpus, args.verbose, args.object_store_mib)
    import ray

    logs = session_dir / "logs" if session_dir is not None else None  # none on a Ray Client connection
    driver_log = logs / "emoguide-driver.err" if logs is not None and logs.is_dir() and not args.verbose else None
    with native_stderr_to(driver_log) as console:
        try:
            num_gpus = ray.cluster_resources().get("GPU", 0.0)
            preset, reason = choose_preset(args.preset, num_gpus)
            print(reason, file=console)
            config = load_config(args.config, overrides, preset=preset_overrides(preset, num_gpus))
            # with -v Ray's own output shares the console: plain lines, never redrawn in place over it
            progress = Progress(
                console,
                show_line=not args.quiet,
                interactive=False if args.verbose else None,
                describe=_session_lines(out_dir, args.log_content),
            )
            with progress, logging_to(progress):
                return run_pipeline(sessions, out_dir, config, force=args.force, events=progress), config
        finally:
            ray.shutdown()


def cmd_run(args: argparse.Namespace) -> int:
    overrides = run_overrides(args)
    if args.config is not None:
        args.config = args.config.resolve()  # joining a cluster may change the working directory
    config = load_config(args.config, overrides)  # fail fast on a bad config, before Ray starts
    sessions = collect_sessions(args.inputs)  # and on a path that does not exist
    if not config.allow_network:
        guard_network()
    started = time.monotonic()
    # a URI: local staging, synced to the bucket on exit; the lock is taken before Ray starts
    with staged_output(args.out) as out_dir, run_lock(out_dir, wait=args.wait_lock):
        summary, config = _process(args, sessions, overrides, out_dir)
    _print_summary(args.out, summary, config, time.monotonic() - started)
    return 0 if summary.count("failed") == 0 and summary.count("partial") == 0 else 1


def _print_summary(out: str, summary: RunSummary, config: RunConfig, wall: float) -> None:
    """Where the tables are, and what the run did."""
    ok, failed, partial = summary.count("ok"), summary.count("failed"), summary.count("partial")
    media_h = summary.media_s / 3600
    print(f"\nresults: {out if is_uri(out) else Path(out).resolve()}")
    tables = "sessions.parquet, utterances.parquet" + (", interventions.parquet" if config.generation.enabled else "")
    print(f"  {tables}  ({len(summary.sessions)} sessions)")
    print(f"sessions: {ok} ok, {failed} failed, {partial} partial ({summary.skipped} already complete, skipped)")
    print(f"utterances: {summary.n_utterances}   media: {media_h:.3f} h   wall time: {wall:.1f} s")
    if summary.media_s > 0:
        print(
            f"real-time factor: {wall / summary.media_s:.3f} s per media second "
            f"({summary.media_s / wall:.2f}x real time)"
        )
    if summary.n_interventions:
        rate = summary.generated_tokens / summary.generation_s if summary.generation_s else 0.0
        print(
            f"interventions: {summary.n_interventions} generated, {summary.generated_tokens} tokens "
            f"in {summary.generation_s:.1f} s ({rate:.1f} tokens/s)"
        )


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def cmd_models(args: argparse.Namespace) -> int:
    from models import registry

    if args.models_command == "fetch":
        path = registry.fetch(args.name)
        print(f"{args.name}: {path} ({_size(path) / 2**20:.1f} MiB)")
        return 0
    defaults = {spec.slot: registry.default_model(spec.slot) for spec in registry.SPECS.values()}
    print(f"{'slot':<20} {'model':<28} {'where':<9} {'MiB':>8}  licence / location")
    for spec in registry.SPECS.values():
        try:
            found = registry.resolve(spec.slot, spec.name)
            where, size, location = found.source, f"{_size(found.path) / 2**20:.1f}", str(found.path)
        except registry.ModelNotFoundError:
            where, size, location = "missing", "-", f"`emoguide models fetch {spec.name}`"
        mark = "*" if defaults[spec.slot] == spec.name else " "
        print(f"{spec.slot:<20} {mark}{spec.name:<27} {where:<9} {size:>8}  {spec.licence}; {location}")
    print("\n* offline default of its slot")
    return 0


def _judge_generator(model: str | None, path: str | None, batch_size: int, engine: str | None = None):
    """The judge LLM: llama.cpp for a GGUF file (its replies constrained to the rubric's line format),
    transformers otherwise, unless ``engine`` says which."""
    from emoguide.evaluation.judge import JUDGE_MAX_NEW_TOKENS, judge_grammar
    from models.llm import load_generator
    from models.registry import resolve

    resolved = resolve("llm", model, path)
    engine = engine or ("llamacpp" if Path(resolved.path).suffix == ".gguf" else "transformers")
    settings: dict = {"grammar": judge_grammar()} if engine == "llamacpp" else {"batch_size": batch_size}
    return load_generator(engine, resolved, max_new_tokens=JUDGE_MAX_NEW_TOKENS, **settings), resolved.name


def _print_json(report: dict, out: Path | None) -> None:
    import json

    text = json.dumps(report, indent=2, default=str)
    print(text)
    if out is not None:
        from emoguide.dataio.tables import open_atomic

        with open_atomic(out, "w") as fh:
            fh.write(text)


def cmd_eval_results(args: argparse.Namespace) -> int:
    """The evaluation commands that work on a run folder (judge, metrics, compare, ratings, agreement)."""
    import pyarrow.parquet as pq

    from emoguide.evaluation import agreement, judge, ratings, reference

    cmd = args.eval_command
    if cmd == "judge":
        generator, name = _judge_generator(args.model, args.path, args.batch_size, args.engine)
        print(f"judgements: {judge.judge_run(args.run_dir, generator, name, limit=args.limit)}")
    elif cmd == "metrics":
        reference.reference_metrics(args.run_dir)
        print(f"reference metrics: {args.run_dir / 'reference_metrics.parquet'}")
    elif cmd == "compare":
        report = {}
        if (args.run_dir / "judgements.parquet").exists():
            report["judge"] = agreement.compare_judgements(
                pq.read_table(args.run_dir / "judgements.parquet"), baseline=args.baseline, seed=args.seed
            )
        if (args.run_dir / "reference_metrics.parquet").exists():
            rows = pq.read_table(args.run_dir / "reference_metrics.parquet")
            report["metrics"] = {
                v: agreement.compare_conditions(rows, v, baseline=args.baseline, seed=args.seed)
                for v in ("rouge_l_f", "embedding_cosine", "n_words")
            }
        if not report:
            raise InputError(f"{args.run_dir}: run `emoguide eval judge` and/or `emoguide eval metrics` first")
        _print_json(report, args.json)
    elif cmd == "rating-sheet":
        sheet_csv, key_csv = ratings.export_rating_sheet(args.run_dir, args.out, seed=args.seed)
        print(f"rating sheet: {sheet_csv}\nkey (keep away from raters): {key_csv}")
    elif cmd == "import-ratings":
        table = ratings.import_ratings(args.csv, items=args.key, rater=args.rater)
        from emoguide.dataio.tables import write_atomic

        print(f"{table.num_rows} ratings: {write_atomic(table, args.run / 'expert_ratings.parquet')}")
    elif cmd == "agreement":
        path = args.run_dir / "expert_ratings.parquet"
        if not path.exists():
            raise InputError(f"{path} is missing: run `emoguide eval import-ratings` first")
        judged = args.run_dir / "judgements.parquet"
        report = agreement.agreement(
            pq.read_table(path),
            pq.read_table(judged) if judged.exists() else None,
            ratings.read_key(args.key) if args.key else None,
            seed=args.seed,
        )
        _print_json(report, args.json)
    return 0


def cmd_eval_pipeline(args: argparse.Namespace) -> int:
    """``emoguide eval pipeline``: build the sessions, run the pipeline, write the report."""
    from emoguide.evaluation import pipeline_eval
    from emoguide.evaluation.perception import parse_actors

    actors = sorted(parse_actors(args.actors))
    if not (args.data / "ravdess").is_dir() or not (args.data / "grid").is_dir():
        raise InputError(f"{args.data}: needs ravdess/ and grid/ (see ../shared/data/README.md)")
    report = pipeline_eval.evaluate_pipeline(args.data, actors, args.actors, args.work, args.config, args.max_clips)
    json_path, md_path = pipeline_eval.write_report(report, args.out)
    print(pipeline_eval.to_markdown(report))
    print(f"report: {json_path}, {md_path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    if args.eval_command in ("judge", "metrics", "compare", "rating-sheet", "import-ratings", "agreement"):
        return cmd_eval_results(args)
    if args.eval_command == "annomi":
        from emoguide.evaluation.annomi import evaluate_judge

        generator, name = _judge_generator(args.model, None, args.batch_size, args.engine)
        report = evaluate_judge(args.file, generator, name, per_transcript=args.per_transcript)
        _print_json(report, args.out / "annomi_judge.json" if args.out else None)
        return 0
    if args.eval_command == "pipeline":
        return cmd_eval_pipeline(args)
    if args.eval_command == "perception":
        from emoguide.dataio.inputs import collect_sessions
        from emoguide.evaluation import perception as evaluation

        report = {}
        if args.ravdess:
            files = evaluation.ravdess_files(args.ravdess, evaluation.parse_actors(args.actors))
            if not files:
                raise InputError(f"no RAVDESS files for actors {args.actors} under {args.ravdess}")
            report["voice"] = evaluation.evaluate_voice(files)
        if args.videos:
            videos = [Path(s.path) for s in collect_sessions([str(v) for v in args.videos])]
            report["face"] = evaluation.evaluate_face(videos, fps=args.fps)
        if not report:
            raise InputError("give --ravdess and/or --videos")
        print(evaluation.format_perception(report))
    else:
        from emoguide.evaluation.annomi import evaluate_roles

        report = evaluate_roles(args.annomi)
        print(
            f"sessions {report['sessions']}: session accuracy {report['session_accuracy']:.3f}, "
            f"utterance accuracy {report['utterance_accuracy']:.3f}, abstained {report['abstained']:.3f}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from emoguide.report.render import build_report

    pages = build_report(args.run_dir, args.session, args.out)
    for page in pages[:-1]:
        print(f"session report: {page}")
    print(f"report: {pages[-1]}")
    return 0


# The commands' own errors, whose messages are written for users, and what to do about each.
_HINTS: dict[type[Exception], str] = {
    ConfigError: "the config's keys and values are listed in README.md, Configuration",
    InputError: "`emoguide {command} --help` says what it expects",
    ModelNotFoundError: "`emoguide models list` shows where each model's weights are looked for",
    RunLockError: "--wait-lock waits for the other run; a different --out runs beside it",
    StorageError: "check the URI, and the object store's endpoint and credentials in the environment",
    ReportError: "give the folder an `emoguide run` wrote (its --out)",
    RatingsError: "a sheet and its key come from `emoguide eval rating-sheet`",
}


def _ray_cause(exc: BaseException) -> BaseException | None:
    """The worker's error a Ray task error carries (None for any other error)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it wraps, outermost first (Ray's ``cause``, Python's ``__cause__``)."""
    chain: list[BaseException] = []
    inner: BaseException | None = exc
    while inner is not None and all(inner is not seen for seen in chain):
        chain.append(inner)
        inner = _ray_cause(inner) or inner.__cause__
    return chain


def error_lines(exc: BaseException, command: str) -> tuple[list[str], int]:
    """(lines, exit code) of an error as the console shows it: the error and a hint, no traceback.

    The commands' own errors are usage errors (exit 2), shown as written (a list of problems in a file
    keeps its lines); anything else is named by its type, its first line only, with the hint to run
    again with -v (exit 1); an interrupt says how to go on (exit 130).
    """
    if isinstance(exc, KeyboardInterrupt):
        return ["emoguide: interrupted", "hint: the same command again resumes: finished sessions are kept"], 130
    chain = _chain(exc)
    for inner in chain:  # one of ours, even raised in a Ray worker
        for kind, hint in _HINTS.items():
            if isinstance(inner, kind):
                return [f"emoguide: error: {inner}", f"hint: {hint.format(command=command)}"], 2
    shown = next(inner for inner in chain if _ray_cause(inner) is None)  # the worker's error, not Ray's wrapper
    return [
        f"emoguide: error: {type(shown).__name__}: {_first_line(shown)}",
        f"hint: `emoguide -v {command} ...` shows the full traceback and Ray's logs",
    ], 1


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "(no message)")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        return cmd_run(args)
    if args.command == "models":
        return cmd_models(args)
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "submit":
        return cmd_submit(args)
    if args.command == "report":
        return cmd_report(args)
    from studio.cli import main as studio_main

    return studio_main(args.studio_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["studio"]:  # its own parser (it has subcommands and a positional RUN_DIR)
        args = argparse.Namespace(command="studio", studio_args=argv[1:], verbose=False)
    else:
        args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command != "run" else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return _dispatch(args)
    except (Exception, KeyboardInterrupt) as exc:  # noqa: BLE001 - every error ends as one line and a hint
        if args.verbose:
            traceback.print_exception(exc)
        lines, code = error_lines(exc, args.command)
        print("\n".join(lines), file=sys.stderr, flush=True)
        return code


if __name__ == "__main__":
    sys.exit(main())
