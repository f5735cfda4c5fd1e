"""Object-store inputs and outputs against a real S3 API: moto's server on loopback, offline.

pyarrow's S3 client talks HTTP to it exactly as to a bucket, so listing, streaming, atomic uploads,
resume across runs and the network guard are tested for real; only AWS itself is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import emoguide
from emoguide.dataio import storage
from emoguide.dataio.inputs import MEDIA_SUFFIXES, collect_sessions, fingerprint
from emoguide.dataio.media import MediaError
from ray_jobs import cli
from ray_jobs.stages import iter_source_chunks
from emoguide.dataio.storage import (
    StorageError,
    is_uri,
    list_media,
    local_path,
    localize,
    staged_output,
)

moto_server = pytest.importorskip("moto.server")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "grid"
BUCKET = "emo"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
               "AWS_EC2_METADATA_DISABLED": "true"}  # no credential lookup on the (unreachable) metadata service


class Bucket:
    """The moto bucket: URIs that carry the endpoint in their query, and a pyarrow handle on it."""

    def __init__(self, port: int) -> None:
        self.endpoint = f"127.0.0.1:{port}"
        self.fs = pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", region="us-east-1",
                                    allow_bucket_creation=True)

    def uri(self, key: str) -> str:
        return f"s3://{BUCKET}/{key}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def put(self, key: str, data: bytes) -> str:
        with self.fs.open_output_stream(f"{BUCKET}/{key}") as out:
            out.write(data)
        return self.uri(key)

    def keys(self, prefix: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True))
        return sorted(i.path.removeprefix(f"{BUCKET}/{prefix}") for i in infos if i.type == pafs.FileType.File)


@pytest.fixture(scope="module")
def bucket():
    env = pytest.MonkeyPatch()
    for name, value in CREDENTIALS.items():
        env.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        b = Bucket(server.get_host_and_port()[1])
        b.fs.create_dir(BUCKET)
        yield b
    finally:
        server.stop()
        env.undo()


def _clip(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def test_uri_or_local_path():
    assert is_uri("s3://b/k.mp4") and is_uri("gs://b/") and is_uri("abfs://c@acct.dfs.core.windows.net/x")
    assert not is_uri("/data/x.mp4") and not is_uri("rel/x.mp4") and not is_uri("C://x") and not is_uri("file:///x")
    assert local_path("file:///data/a%20b.mp4") == "/data/a b.mp4" and local_path("/data/x") == "/data/x"


def test_prefix_lists_media_recursively_and_sessions_keep_uris(bucket):
    a = bucket.put("list/in/bbaf2n.mpg", _clip("bbaf2n.mpg"))
    b = bucket.put("list/in/sub/lbax4n.mpg", _clip("lbax4n.mpg"))
    bucket.put("list/in/notes.txt", b"not media")
    assert list_media(bucket.uri("list/in/"), MEDIA_SUFFIXES) == [a, b]  # the query travels with each object
    assert list_media(bucket.uri("list/in"), MEDIA_SUFFIXES) == [a, b]
    assert list_media(a, MEDIA_SUFFIXES) == [a]
    missing = bucket.uri("list/in/nope.mp4")
    assert list_media(missing, MEDIA_SUFFIXES) == [missing]  # kept: becomes a failed session, as a missing file

    sessions = collect_sessions([bucket.uri("list/in/"), a])  # the same object twice is one session
    assert [(s.session_id, s.path) for s in sessions] == [("bbaf2n", a), ("lbax4n", b)]


def test_manifests_list_uris_and_may_live_in_the_bucket(bucket, tmp_path):
    clip = bucket.put("man/clips/bbaf2n.mpg", _clip("bbaf2n.mpg"))
    other = bucket.put("man/lbax4n.mpg", _clip("lbax4n.mpg"))
    # a manifest in the bucket: relative entries are relative to its prefix
    remote = bucket.put("man/list.csv", f"path,session_id\nclips/bbaf2n.mpg,first\n{other},\n".encode())
    assert [(s.session_id, s.path) for s in collect_sessions([remote])] == [("first", clip), ("lbax4n", other)]
    # a local manifest may name objects
    local = tmp_path / "list.csv"
    local.write_text(f"path\n{clip}\n")
    assert [(s.session_id, s.path) for s in collect_sessions([str(local)])] == [("bbaf2n", clip)]


def test_fingerprint_follows_the_object(bucket):
    uri = bucket.put("fp/x.mpg", b"one")
    first = fingerprint(uri)
    assert first == fingerprint(uri) and first != "unreadable"
    bucket.put("fp/x.mpg", b"other bytes")
    assert fingerprint(uri) != first
    assert fingerprint(bucket.uri("fp/missing.mpg")) == "unreadable"


def test_localize_streams_to_a_private_temp_file_and_removes_it(bucket, tmp_path, monkeypatch):
    data = _clip("sbia1a.mpg")
    uri = bucket.put("loc/sbia1a.mpg", data)
    monkeypatch.setattr(storage, "BLOCK", 64 << 10)  # many blocks: the copy is streamed, not read at once
    with localize(uri, tmp_path) as local:
        assert local.parent == tmp_path and local.suffix == ".mpg" and local.read_bytes() == data
        assert local.stat().st_mode & 0o077 == 0
    assert not local.exists()
    with pytest.raises(RuntimeError), localize(uri, tmp_path) as local:
        raise RuntimeError("decoder crashed")
    assert list(tmp_path.iterdir()) == []
    missing = bucket.uri("loc/missing.mpg")
    with pytest.raises(StorageError, match="object does not exist") as err, localize(missing, tmp_path):
        pass
    assert str(err.value).startswith(missing) and list(tmp_path.iterdir()) == []


def test_decoding_an_object_names_the_uri_and_leaves_no_temp_file(bucket, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    uri = bucket.put("dec/bbaf2n.mpg", _clip("bbaf2n.mpg"))
    chunks = list(iter_source_chunks(uri, fps=1.0, chunk_s=30.0, max_side=64))
    assert 2.9 < chunks[-1].end_s < 3.1 and chunks[-1].is_last
    assert list(tmp_path.iterdir()) == []
    broken = bucket.put("dec/broken.mp4", os.urandom(8192))
    missing = bucket.uri("dec/missing.mp4")
    for uri, reason in ((broken, "not a readable media container"), (missing, "object does not exist")):
        with pytest.raises(MediaError) as err:
            list(iter_source_chunks(uri, fps=1.0, chunk_s=30.0, max_side=64))
        assert str(err.value).startswith(f"{uri}: {reason}") and str(tmp_path) not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def _write(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"v": [value]}), path)


def test_staged_output_uploads_results_and_resumes_from_earlier_parts(bucket):
    out = bucket.uri("run/out")
    with staged_output(out) as stage:
        assert not is_uri(str(stage)) and stage.is_dir()
        _write(stage / "parts" / "a.utterances.parquet", "a-utt")
        _write(stage / "parts" / "a.interventions.parquet", "a-int")
        _write(stage / "parts" / "a.sessions.parquet", "a")
        _write(stage / "sessions.parquet", "merged")
        (stage / "parts" / ".b.sessions.parquet.123.tmp").write_bytes(b"half")  # open_atomic's temp file
    assert not stage.exists()  # the staging folder is gone
    assert bucket.keys("run/out/") == ["parts/a.interventions.parquet", "parts/a.sessions.parquet",
                                       "parts/a.utterances.parquet", "sessions.parquet"]
    assert pq.read_table(f"{BUCKET}/run/out/sessions.parquet", filesystem=bucket.fs)["v"][0].as_py() == "merged"

    # a second run sees the first one's parts; what it removes or adds is mirrored, also when it fails
    with pytest.raises(RuntimeError), staged_output(out) as stage:
        assert sorted(p.name for p in (stage / "parts").iterdir()) == [
            "a.interventions.parquet", "a.sessions.parquet", "a.utterances.parquet"]
        assert pq.read_table(stage / "parts" / "a.sessions.parquet")["v"][0].as_py() == "a"
        (stage / "parts" / "a.interventions.parquet").unlink()  # a redone session's stale interventions
        _write(stage / "parts" / "b.sessions.parquet", "b")
        raise RuntimeError("run failed half-way")
    assert bucket.keys("run/out/parts/") == ["a.sessions.parquet", "a.utterances.parquet", "b.sessions.parquet"]


def test_an_unusable_output_fails_before_the_run(bucket):
    out = bucket.uri("run/out").replace(f"s3://{BUCKET}/", "s3://no-such-bucket/")
    with pytest.raises(StorageError, match="cannot use as the output"), staged_output(out):
        pytest.fail("the run must not start")


def test_staged_output_of_a_local_folder_is_the_folder(tmp_path):
    with staged_output(str(tmp_path / "out")) as stage:
        assert stage == tmp_path / "out"
    with staged_output(f"file://{tmp_path}/out") as stage:
        assert stage == tmp_path / "out"


def test_the_network_guard_keeps_loopback_buckets_reachable(bucket, monkeypatch):
    """``emoguide run`` points HTTP(S)_PROXY at a closed port; the S3 client must still reach 127.0.0.1."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY",
                 "no_proxy", "HF_HUB_OFFLINE", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.setenv(name, "")  # recorded, so the guard's values are undone after the test
    cli.guard_network()
    uri = bucket.put("guard/x.mpg", b"x")
    assert list_media(bucket.uri("guard/"), MEDIA_SUFFIXES) == [uri]


@pytest.mark.slow
def test_run_reads_from_and_writes_to_a_bucket(bucket):
    """One run, bucket to bucket. A second run resuming from the bucket's parts is the same resume as on
    disk (test_run_e2e) over the staging tested above: not run again here."""
    for name in ("bbaf2n.mpg", "lbax4n.mpg"):
        bucket.put(f"e2e/in/{name}", _clip(name))
    bucket.put("e2e/in/notes.txt", b"not media")
    # the endpoint from the environment, as on a cluster: plain URIs, inherited by every Ray worker
    env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{bucket.endpoint}"}
    args = ("run", f"s3://{BUCKET}/e2e/in/", "--out", f"s3://{BUCKET}/e2e/out", "--no-generate", "-q")
    proc = emoguide(*args, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sessions: 2 ok, 0 failed" in proc.stdout
    sessions = pq.read_table(f"{BUCKET}/e2e/out/sessions.parquet", filesystem=bucket.fs).to_pylist()
    utterances = pq.read_table(f"{BUCKET}/e2e/out/utterances.parquet", filesystem=bucket.fs).to_pylist()
    assert {(s["session_id"], s["status"]) for s in sessions} == {("bbaf2n", "ok"), ("lbax4n", "ok")}
    assert {s["source_path"] for s in sessions} == {f"s3://{BUCKET}/e2e/in/{sid}.mpg" for sid in ("bbaf2n", "lbax4n")}
    assert {u["session_id"] for u in utterances} == {"bbaf2n", "lbax4n"}
    assert {f"parts/{sid}.sessions.parquet" for sid in ("bbaf2n", "lbax4n")} <= set(bucket.keys("e2e/out/"))

