"""Input collection (files, folders, manifests) and config parsing, including fuzzing of both parsers."""

from __future__ import annotations

import string

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from emoguide.dataio.inputs import InputError, collect_sessions, read_manifest
from ray_jobs.config import ConfigError, load_config


def test_folder_manifest_and_duplicates(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "s1.mp4").write_bytes(b"x")
    (tmp_path / "a" / "notes.txt").write_text("not media")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,session_id\na/s1.mp4,\nb/s1.mp4,client 7\n")
    sessions = collect_sessions([str(tmp_path / "a"), str(manifest), str(tmp_path / "a" / "s1.mp4")])
    # a/s1.mp4 appears three times but is one session; b/s1.mp4 has its own id from the manifest
    assert [s.path for s in sessions] == [str(tmp_path / "a" / "s1.mp4"), str(tmp_path / "b" / "s1.mp4")]
    assert [s.session_id for s in sessions] == ["s1", "client_7"]
    # two unnamed files with the same name get distinct, stable ids
    both = collect_sessions([str(tmp_path / "a"), str(tmp_path / "b")])
    assert len({s.session_id for s in both}) == 2 and all(s.session_id.startswith("s1-") for s in both)
    assert both == collect_sessions([str(tmp_path / "a"), str(tmp_path / "b")])


def test_parquet_manifest_and_missing_files_are_kept(tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"path": ["gone.mp4"], "session_id": ["x"]}), manifest)
    sessions = collect_sessions([str(manifest)])
    assert sessions[0].session_id == "x" and sessions[0].path.endswith("gone.mp4")


def test_manifest_without_path_column(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file\na.mp4\n")
    with pytest.raises(InputError, match="'path' column"):
        read_manifest(manifest)


def test_unicode_and_spaces_in_paths(tmp_path):
    f = tmp_path / "séance 1 – client.mp4"
    f.write_bytes(b"x")
    (s,) = collect_sessions([str(f)])
    assert s.path == str(f) and s.session_id == "s_ance_1_client"


def test_config_overrides_and_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"decode": {"fps": 5, "resources": {"num_cpus": 1}}, "asr": {"beam_size": 1}}))
    config = load_config(cfg)
    assert config.decode.fps == 5.0 and config.asr.beam_size == 1
    # resources do not change results, so they do not change the hash; fps does
    base = load_config(None)
    assert load_config(None, {"decode": {"resources": {"num_cpus": 2}}}).config_hash() == base.config_hash()
    assert config.config_hash() != base.config_hash()
    for bad, message in [
        ({"decode": {"fsp": 2}}, "unknown setting 'decode.fsp'"),
        ({"decode": {"fps": "fast"}}, "expected float"),
        ({"decode": {"fps": -1}}, "decode.fps"),
        ({"asr": {"resources": {"min_actors": 3, "max_actors": 1}}}, "min_actors"),
        ({"allow_network": "yes"}, "true/false"),
        ({"speakers": {"distance_threshold": 2.5}}, "speakers.distance_threshold"),
        ({"generation": {"context_contrast": -0.5}}, "context_contrast must be >= 0"),
        ({"generation": {"engine": "vllm", "context_contrast": 0.5}}, "0 with the vllm engine"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, bad)


_text = st.text(alphabet=string.printable + "éü–\x00", max_size=200)


@settings(max_examples=150, deadline=None)
@given(doc=st.one_of(_text, st.dictionaries(st.sampled_from(["decode", "asr", "fps", "x"]), st.one_of(
    _text, st.integers(), st.floats(allow_nan=True), st.none(), st.booleans(),
    st.dictionaries(st.sampled_from(["fps", "chunk_s", "model", "resources", "beam_size"]),
                    st.one_of(st.integers(), st.floats(allow_nan=True), _text, st.none())),
))))
def test_config_parser_fuzz(tmp_path_factory, doc):
    """Any file gives a RunConfig or a ConfigError, never another exception."""
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc), encoding="utf-8")
    try:
        load_config(path)
    except ConfigError:
        pass


@settings(max_examples=150, deadline=None)
@given(body=st.text(alphabet=string.printable + "é", max_size=300))
def test_manifest_parser_fuzz(tmp_path_factory, body):
    """Any CSV gives sessions or an InputError, never another exception."""
    path = tmp_path_factory.mktemp("man") / "m.csv"
    path.write_text(body, encoding="utf-8")
    try:
        collect_sessions([str(path)])
    except InputError:
        pass
