"""`emoguide report`: HTML pages from a run folder (hand-built tables, a real run, a headless browser)."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from emoguide.report.render import (
    ReportError,
    build_report,
    page_names,
    timeline_svg,
    top_label,
)
from conftest import XSS, fake_interventions, fake_utterances, write_fake_run
from emoguide.dataio.tables import write_atomic
from emoguide.prompts.conditions import CONDITIONS

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    run = tmp_path_factory.mktemp("synthetic") / "run"
    data = write_fake_run(run)
    paths = build_report(run)
    return run, data, paths


def _page(paths, name: str) -> str:
    return next(p for p in paths if p.name == name).read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# the renderer on hand-built tables


def test_writes_one_page_per_session_and_an_index(synthetic):
    run, _, paths = synthetic
    assert [p.name for p in paths] == ["s01.html", "s02-broken.html", "index.html"]
    for p in paths:
        assert p.parent == run / "report"
        assert stat.S_IMODE(p.stat().st_mode) == 0o600  # health data: owner only
    assert not list((run / "report").glob(".*.tmp"))


def test_untrusted_text_is_escaped(synthetic):
    _, _, paths = synthetic
    for p in paths:
        html = p.read_text(encoding="utf-8")
        assert (
            "<script" not in html.lower()
        )  # the page has no script at all, injected or ours
    page = _page(paths, "s01.html")
    assert (
        "I am fine &lt;script&gt;alert(1)&lt;/script&gt; really" in page
    )  # transcript
    assert (
        "yet &lt;script&gt;alert(1)&lt;/script&gt; you look worried" in page
    )  # generation
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt; acknowledges feelings" in page
    )  # judge rationale
    index = _page(paths, "index.html")
    assert "not a readable media container &lt;script&gt;" in index  # error message


def test_page_is_self_contained(synthetic):
    _, _, paths = synthetic
    for p in paths:
        html = p.read_text(encoding="utf-8")
        assert not re.search(r"<(link|img|iframe|object|embed)\b", html, re.IGNORECASE)
        assert not re.search(
            r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.IGNORECASE
        )
        assert "@import" not in html and not re.search(
            r"url\(\s*['\"]?(https?:)?//", html
        )
        assert "Content-Security-Policy" in html and "default-src 'none'" in html


def test_transcript_rows(synthetic):
    _, data, paths = synthetic
    page = _page(paths, "s01.html")
    for u in data["utts"]:
        row = re.search(
            rf'<tr id="utt-{u["utt_id"]}" class="([^"]*)">(.*?)</tr>', page, re.DOTALL
        )
        assert row, u["utt_id"]
        assert ("dissonant" in row.group(1)) == bool(u["dissonance"])
        assert f">{u['role']}<" in row.group(2)
    first = re.search(r'<tr id="utt-s01-u00000".*?</tr>', page, re.DOTALL).group(0)
    assert (
        "neutral 80%" in first and "neutral 70%" in first and "0:02.0–0:08.0" in first
    )
    dissonant = re.search(r'<tr id="utt-s01-u00004".*?</tr>', page, re.DOTALL).group(0)
    assert (
        "happiness 80%" in dissonant
        and "sadness 70%" in dissonant
        and "happy face, distressed voice" in dissonant
    )
    no_face = re.search(r'<tr id="utt-s01-u00016".*?</tr>', page, re.DOTALL).group(0)
    assert "no face" in no_face and "n/a" in no_face


def test_timeline_links_dissonant_spans_to_the_transcript(synthetic):
    _, data, paths = synthetic
    page = _page(paths, "s01.html")
    fig = re.search(
        r'<figure class="timeline" id="timeline">(.*?)</figure>', page, re.DOTALL
    ).group(1)
    assert (
        fig.strip().startswith("<svg")
        and "<?xml" not in fig
        and 'target="_blank"' not in fig
    )
    spans = re.findall(
        r'<g id="dissonant-(\d+)-(valence|arousal)">\s*<a xlink:href="#utt-([^"]+)"',
        fig,
    )
    dissonant = [
        u["utt_id"] for u in data["utts"] if u["dissonance"] and u["role"] == "client"
    ]
    assert sorted({s[2] for s in spans}) == sorted(dissonant)
    assert len(spans) == 2 * len(dissonant)  # shaded in both panels
    for gid in (
        "face-valence-points",
        "voice-valence-points",
        "face-arousal-points",
        "voice-arousal-points",
    ):
        assert f'id="{gid}"' in fig
    # every point links to its utterance; the face-less utterance has a voice point only
    assert fig.count('xlink:href="#utt-s01-u00016"') == 2
    assert fig.count('xlink:href="#utt-s01-u00002"') == 4
    assert fig.count('xlink:href="#utt-s01-u00001"') == 0  # therapist: not plotted


def test_summary(synthetic):
    _, data, paths = synthetic
    page = _page(paths, "s01.html")
    summary = re.search(
        r'<section class="summary-grid" id="summary">(.*?)</section>', page, re.DOTALL
    ).group(1)
    assert (
        "cafe0123deadbeef" in summary
        and "whisper-tiny.en" in summary
        and "fer-mini-xception" in summary
    )
    assert "2 consecutive dissonant utterances, 13.0 s" in summary
    rate = data["sessions"][0]["dissonance_rate"]
    assert f"{100 * rate:.0f}%" in summary
    for m in data["sessions"][0]["dissonance_top"]:
        assert f'<a class="moment" href="#utt-{m["utt_id"]}">' in summary


def test_interventions_side_by_side_with_reference_and_scores(synthetic):
    _, data, paths = synthetic
    page = _page(paths, "s01.html")
    turn = re.search(
        r'<div class="turn[^"]*" id="turn-s01-u00000">(.*?)\n</div>', page, re.DOTALL
    ).group(1)
    cards = re.findall(r'<div class="gen cond-(\w+)">', turn)
    assert cards == list(CONDITIONS)
    assert (
        '<div class="gen reference">' in turn
        and "utterance 1 from the therapist" in turn
    )
    assert "[dissonance] It sounds like" in turn
    assert (
        turn.count('<table class="scores">') == 5
        and "judge-a" in turn
        and "judge-b" in turn
    )
    assert turn.count("no-score") == 1  # a null score is shown as such, not as a number
    # the transcript links the turn to its interventions, and back
    assert 'href="#turn-s01-u00000"' in page and 'href="#utt-s01-u00000"' in turn
    n_turns = len({iv["utt_id"] for iv in data["interventions"]})
    assert page.count('<div class="turn') == n_turns
    # mean judge score per condition × criterion
    table = re.search(r'<table id="judge-summary".*?</table>', page, re.DOTALL).group(0)
    scores = [
        j["score"]
        for j in data["judgements"]
        if j["condition"] == "text" and j["criterion"] == "empathy"
    ]
    assert (
        f'{sum(scores) / len(scores):.2f} <span class="muted">(n={len(scores)})'
        in table
    )


def test_index_lists_sessions_and_failures(synthetic):
    _, _, paths = synthetic
    index = _page(paths, "index.html")
    assert (
        '<a href="s01.html">s01</a>' in index
        and '<a href="s02-broken.html">s02-broken</a>' in index
    )
    assert "1 ok, 0 partial, 1 failed" in index
    broken = re.search(
        r'<tr class="session status-row-failed">(.*?)</tr>', index, re.DOTALL
    ).group(1)
    assert "[decode] s02.mp4: not a readable media container" in broken
    failed_page = _page(paths, "s02-broken.html")
    assert (
        "not a readable media container" in failed_page
        and "No utterances (the session failed)" in failed_page
    )


def test_without_interventions_or_judgements(tmp_path):
    write_fake_run(tmp_path, with_interventions=False)
    paths = build_report(tmp_path, out=tmp_path / "html")
    page = _page(paths, "s01.html")
    assert (
        "This run has no interventions.parquet." in page and 'class="turn' not in page
    )
    # interventions without judgements
    write_atomic(
        pa.Table.from_pylist(fake_interventions(fake_utterances("s01"))),
        tmp_path / "interventions.parquet",
    )
    page = _page(build_report(tmp_path, out=tmp_path / "html"), "s01.html")
    assert (
        "This run has no judgements.parquet." in page
        and '<table class="scores">' not in page
    )
    assert page.count('<div class="gen reference">') == 20  # one per client turn


def test_one_session_and_errors(tmp_path):
    write_fake_run(tmp_path)
    paths = build_report(tmp_path, session_id="s01", out=tmp_path / "one")
    assert [p.name for p in paths] == ["s01.html", "index.html"]
    index = paths[-1].read_text()
    assert (
        '<a href="s01.html">' in index and 'href="s02-broken.html"' not in index
    )  # no page, no link
    with pytest.raises(ReportError, match="nope"):
        build_report(tmp_path, session_id="nope")
    with pytest.raises(ReportError, match="no sessions.parquet"):
        build_report(tmp_path / "missing")


def test_helpers():
    assert page_names(["a", "index", "a b", "a_b", "../x"]) == {
        "a": "a.html",
        "index": "index_2.html",
        "a b": "a_b.html",
        "a_b": "a_b_2.html",
        "../x": "x.html",
    }
    assert (
        top_label(None) is None
        and top_label([0.1, 0.6, 0.1, 0.1, 0.1, 0, 0, 0]) == "happiness 60%"
    )
    assert timeline_svg([]) is None
    assert (
        timeline_svg([{"utt_id": "x", "start_s": 0.0, "end_s": 1.0}]) is None
    )  # nothing measured


# ----------------------------------------------------------------------------------------------------
# a real run folder


@pytest.fixture(scope="module")
def real_run(grid_run, tmp_path_factory):
    """The shared GRID run (conftest.py) and its report of bbaf2n, written outside the run folder."""
    out = grid_run[1]
    return out, build_report(out, "bbaf2n", out=tmp_path_factory.mktemp("realreport"))


@pytest.mark.slow
def test_real_run(real_run):
    out, paths = real_run
    assert [p.name for p in paths] == ["bbaf2n.html", "index.html"]
    import pyarrow.parquet as pq

    (session,) = [s for s in pq.read_table(out / "sessions.parquet").to_pylist() if s["session_id"] == "bbaf2n"]
    utts = [u for u in pq.read_table(out / "utterances.parquet").to_pylist() if u["session_id"] == "bbaf2n"]
    assert utts
    page = paths[0].read_text()
    assert '<figure class="timeline" id="timeline">' in page and "<svg" in page
    assert "no utterance is attributed to the client" in page  # GRID: roles are unknown
    for u in utts:
        assert f'<tr id="utt-{u["utt_id"]}"' in page
    spans = set(
        re.findall(
            r'<g id="dissonant-\d+-valence">\s*<a xlink:href="#utt-([^"]+)"', page
        )
    )
    assert spans == {u["utt_id"] for u in utts if u["dissonance"]}
    for m in session["dissonance_top"]:
        assert f'<a class="moment" href="#utt-{m["utt_id"]}">' in page
    assert session["config_hash"] in page and "whisper-tiny.en" in page
    # one speaker: no client turn answered by a therapist, so the run's interventions table is empty
    assert "a client turn gets interventions only when a therapist turn follows it" in page
    assert '<a href="bbaf2n.html">bbaf2n</a>' in paths[-1].read_text()


# ----------------------------------------------------------------------------------------------------
# headless Chromium (Debian's chromium package, driven by Playwright)


def _open(browser, path: Path):
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    events = {"console": [], "requests": [], "dialogs": []}
    page.on(
        "console",
        lambda m: (
            events["console"].append(f"{m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: events["console"].append(f"pageerror: {e}"))
    page.on(
        "request",
        lambda r: (
            events["requests"].append(r.url)
            if not r.url.startswith(("file:", "data:", "about:"))
            else None
        ),
    )
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, events


def _row_in_view(page, utt_id: str) -> bool:
    return page.evaluate(
        """id => { const r = document.getElementById(id).getBoundingClientRect();
                   return r.top >= 0 && r.bottom <= window.innerHeight; }""",
        f"utt-{utt_id}",
    )


def _assert_clean(events):
    assert events["console"] == []
    assert events["requests"] == []  # nothing but file:// and data:
    assert events["dialogs"] == []  # the injected <script> never ran


def test_browser_click_shaded_span_opens_the_utterance(browser, synthetic, tmp_path):
    _, data, paths = synthetic
    page, events = _open(browser, next(p for p in paths if p.name == "s01.html"))
    timeline = page.locator("#timeline svg")
    assert timeline.count() == 1 and timeline.bounding_box()["height"] > 200
    assert page.locator("#transcript tbody tr").count() == len(data["utts"])
    assert (
        XSS in page.locator("#utt-s01-u00010 td.text").inner_text()
    )  # rendered as text
    # the third dissonant span in the arousal panel (lines drawn over it must not take the click)
    span = page.locator('#timeline g[id="dissonant-2-arousal"] a')
    target = span.get_attribute("xlink:href")
    assert target == "#utt-s01-u00012"
    assert page.evaluate("window.scrollY") == 0
    span.click()
    page.wait_for_function("location.hash === '#utt-s01-u00012'")
    assert page.evaluate("window.scrollY") > 0
    assert page.evaluate("document.getElementById('utt-s01-u00012').matches(':target')")
    assert _row_in_view(page, "s01-u00012")
    # a top-moment link too
    page.locator("#top-moments a.moment").first.click()
    first = data["sessions"][0]["dissonance_top"][0]["utt_id"]
    page.wait_for_function(f"location.hash === '#utt-{first}'")
    assert _row_in_view(page, first)
    _assert_clean(events)
    page.evaluate("window.scrollTo(0, 0)")
    shot = tmp_path / "s01.png"
    page.screenshot(path=str(shot), full_page=False)
    assert (
        shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    )
    page.close()


def test_browser_index_links_to_sessions(browser, synthetic, tmp_path):
    _, _, paths = synthetic
    page, events = _open(browser, paths[-1])
    assert page.locator("#sessions tbody tr").count() == 2
    page.click("text=s01")
    page.wait_for_url(re.compile(r".*/s01\.html$"))
    assert page.locator("#timeline svg").count() == 1
    _assert_clean(events)
    page.close()


@pytest.fixture(scope="module")
def dubbed_report(dubbed_run, tmp_path_factory):
    """The report of a real run with real dissonance (calm GRID face, emotional RAVDESS voice): the
    bundled GRID clips have none, since their neutral voices now read as neutral."""
    out = tmp_path_factory.mktemp("dubbedreport") / "out"
    shutil.copytree(dubbed_run[0], out)
    return build_report(out)


@pytest.mark.slow
def test_browser_real_run_top_moment(browser, dubbed_report, tmp_path):
    page, events = _open(browser, next(p for p in dubbed_report if p.name != "index.html"))
    assert page.locator("#top-moments a.moment").count() >= 1
    link = page.locator("#top-moments a.moment").first
    href = link.get_attribute("href")
    link.click()
    page.wait_for_function(f"location.hash === {json.dumps(href)}")
    assert page.evaluate(
        f"document.getElementById({json.dumps(href[1:])}).matches(':target')"
    )
    # and the shaded span in the plot
    page.evaluate("location.hash = ''")
    span = page.locator('#timeline g[id="dissonant-0-valence"] a')
    span_href = span.get_attribute("xlink:href")
    span.click(position={"x": 2, "y": 4})  # its edge: the utterance's own point covers its middle
    page.wait_for_function(f"location.hash === {json.dumps(span_href)}")
    assert page.evaluate(
        f"document.getElementById({json.dumps(span_href[1:])}).matches(':target')"
    )
    _assert_clean(events)
    shot = tmp_path / "dubbed.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    page.close()
