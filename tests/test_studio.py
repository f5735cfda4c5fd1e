"""`emoguide studio`: the ratings store on hand-built tables, the HTTP rules against a real uvicorn server,
and the pages in Debian's Chromium against a real run of the bundled dialogue (shared fixture)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from emoguide.evaluation import agreement
from emoguide.evaluation.judge import CRITERIA, REFERENCE
from emoguide.evaluation.ratings import RATINGS
from emoguide.report.render import build_report
from studio.store import Answer, Store, StudioError, parse_answer
from conftest import emoguide, write_fake_run

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')
ITEM_FIELD = re.compile(r'name="item" value="([^"]+)"')


# ----------------------------------------------------------------------------------------------------
# helpers: a real server in a subprocess, a raw HTTP client (exact paths, its own cookies)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``emoguide studio RUN_DIR`` in a subprocess on a free port; its log (stdout + stderr) in a file."""

    def __init__(self, run_dir: Path, log: Path, host: str = "127.0.0.1") -> None:
        self.run_dir, self.log, self.host = run_dir, log, host
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        exe = Path(sys.executable).with_name("emoguide")
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([str(exe), "studio", str(self.run_dir), "--host", self.host, "--port",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if Client(self.base).get("/static/studio.css")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"studio did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when the machine dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


class Client:
    """http.client with a cookie jar: sends paths exactly as given (no normalisation of ``..``)."""

    def __init__(self, base: str) -> None:
        self.host, self.port = base.removeprefix("http://").split(":")
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict | None = None,
                headers: dict | None = None) -> tuple[int, dict[str, str], str]:  # fmt: skip
        from urllib.parse import urlencode

        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        hdrs = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
        body = None
        if form is not None:
            body = urlencode(form)
            hdrs["Content-Type"] = "application/x-www-form-urlencoded"
        hdrs.update(headers or {})
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        for name, value in resp.getheaders():
            if name.lower() == "set-cookie":
                key, _, rest = value.partition("=")
                val = rest.split(";")[0]
                if "max-age=0" in value.lower() or 'expires=thu, 01 jan 1970' in value.lower():
                    self.cookies.pop(key, None)
                else:
                    self.cookies[key] = val
        out = resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode(errors="replace")
        conn.close()
        return out

    def get(self, path: str) -> tuple[int, dict[str, str], str]:
        return self.request("GET", path)

    def csrf(self, path: str = "/signin") -> str:
        return CSRF_FIELD.search(self.get(path)[2]).group(1)

    def sign_in(self, token: str) -> None:
        status, headers, _ = self.request("POST", "/signin", {"token": token, "csrf": self.csrf()})
        assert status == 303 and headers["location"] == "/rate"


def _add_rater(run_dir: Path, name: str) -> str:
    proc = emoguide("studio", "add-rater", name, str(run_dir))
    assert proc.returncode == 0, proc.stderr
    return re.search(r"token \(shown once.*\): (\S+)", proc.stdout).group(1)


def _db_bytes(run_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in run_dir.glob("ratings.sqlite*"))


# ----------------------------------------------------------------------------------------------------
# the store, on hand-built tables


@pytest.fixture
def synthetic_run(tmp_path) -> tuple[Path, dict]:
    run = tmp_path / "run"
    return run, write_fake_run(run)


def test_items_are_blinded_with_the_real_reply_mixed_in(synthetic_run):
    run, data = synthetic_run
    store = Store(run)
    turns = {r["utt_id"] for r in data["interventions"]}
    with store._db() as db:
        rows = db.execute("SELECT item, condition, model FROM items").fetchall()
    assert len(rows) == len(data["interventions"]) + len(turns)
    assert sum(1 for _, c, m in rows if c == REFERENCE == m) == len(turns)
    assert all(re.fullmatch(r"I[0-9a-f]{8}", i) for i, _, _ in rows)
    assert set(store.item(rows[0][0])) == {"item", "context", "response"}  # no condition, model, session
    assert Store(run).meta("item_seed") == store.meta("item_seed")  # made once, kept


def test_tokens_are_stored_only_as_hashes_and_each_rater_has_an_order(synthetic_run):
    run, _ = synthetic_run
    store = Store(run)
    alice, bob = store.add_rater("alice"), store.add_rater("bob")
    raw = _db_bytes(run)
    assert alice.encode() not in raw and bob.encode() not in raw
    assert store.sign_in(alice)[0] == "alice"
    with pytest.raises(StudioError) as bad:
        store.sign_in("not-a-token")
    assert bad.value.status == 401
    with pytest.raises(StudioError) as again:
        store.add_rater("alice")
    assert again.value.status == 409
    a, b = store.order("alice"), Store(run).order("alice")
    assert a == b and sorted(a) == sorted(store.order("bob")) and a != store.order("bob")
    assert {r["name"] for r in store.raters()} == {"alice", "bob"} and all(r["seed"] for r in store.raters())
    new = store.add_rater("alice", reissue=True)
    assert store.sign_in(new)[0] == "alice"
    with pytest.raises(StudioError):
        store.sign_in(alice)  # the old token stops working


def test_answers_are_validated_and_a_stale_form_changes_nothing(synthetic_run):
    run, _ = synthetic_run
    store = Store(run)
    store.add_rater("alice")
    item = store.order("alice")[0]
    for bad in ({"empathy": "7", "comprehensiveness": "3", "applicability": "3"},
                {"empathy": "3", "comprehensiveness": "2.5", "applicability": "3"},
                {"empathy": "3", "comprehensiveness": "3"}):  # fmt: skip
        with pytest.raises(StudioError) as exc:
            parse_answer(bad)
        assert exc.value.status == 422
    answer = parse_answer({"empathy": "4", "comprehensiveness": " 2 ", "applicability": "5", "comment": " ok "})
    assert answer == Answer({"empathy": 4, "comprehensiveness": 2, "applicability": 5}, "ok")
    assert store.save("alice", item, answer, 0) == 1
    with pytest.raises(StudioError) as twice:
        store.save("alice", item, Answer(dict.fromkeys(CRITERIA, 1), "x"), 0)  # the same form posted again
    assert twice.value.status == 409
    assert store.answer("alice", item) == {**answer.scores, "comment": "ok", "revision": 1}
    assert store.save("alice", item, Answer(dict.fromkeys(CRITERIA, 1), ""), 1) == 2  # a deliberate change
    with pytest.raises(StudioError) as unknown:
        store.save("alice", "Ideadbeef", answer, 0)
    assert unknown.value.status == 404


def test_export_has_the_import_ratings_schema(synthetic_run):
    run, _ = synthetic_run
    store = Store(run)
    for name in ("alice", "bob"):
        store.add_rater(name)
    items = sorted(store.order("alice"))[:4]
    for k, item in enumerate(items):
        store.save("alice", item, Answer({c: 1 + (k + j) % 5 for j, c in enumerate(CRITERIA)}, "fine"), 0)
        store.save("bob", item, Answer({c: 1 + (k + j + 1) % 5 for j, c in enumerate(CRITERIA)}, ""), 0)
    written = store.export()
    table = pq.read_table(written["ratings"])
    assert table.schema.remove_metadata() == RATINGS
    assert table.num_rows == 2 * 4 * len(CRITERIA)
    assert sorted(table.column("source_row").to_pylist()) == list(range(1, table.num_rows + 1))
    assert pq.read_table(written["comments"]).to_pylist() == [{"rater": "alice", "item": i, "comment": "fine"}
                                                              for i in items]  # fmt: skip
    report = agreement.agreement(table, n_boot=200)
    assert set(report["criteria"]) == set(CRITERIA)
    assert all(c["n_items_multiply_rated"] == 4 for c in report["criteria"].values())


# ----------------------------------------------------------------------------------------------------
# HTTP rules, against a real server on hand-built tables


@pytest.fixture
def network_server(synthetic_run, tmp_path):
    run, data = synthetic_run
    token = _add_rater(run, "alice")
    server = Server(run, tmp_path / "server.log", host="0.0.0.0").start()
    yield server, token, data
    server.kill()


def test_network_bind_needs_a_token_for_every_page(network_server, tmp_path):
    server, token, _ = network_server
    assert "WARNING" in server.log.read_text() and "not to loopback" in server.log.read_text()
    pages = ["/", "/session/s01", "/media/s01", "/rate", "/rate/1", "/signin", "/report/index.html", "/nope"]
    anonymous = Client(server.base)
    for path in pages:
        status, _, body = anonymous.get(path)
        assert status == 401, path
        assert 'id="signin"' in body and "utterance 1 from" not in body
    assert anonymous.get("/static/studio.js")[0] == 200  # no data in it
    assert anonymous.request("POST", "/signin", {"token": token})[0] == 403  # no CSRF token: refused
    assert anonymous.request("POST", "/signin", {"token": "wrong", "csrf": anonymous.csrf()})[0] == 401
    anonymous.sign_in(token)
    assert anonymous.get("/")[0] == 200
    assert anonymous.get("/report/index.html")[0] == 403  # the static report would unblind a rater
    status, _, body = anonymous.get("/session/s01")
    assert status == 200 and 'id="blinded"' in body and "[dissonance]" not in body  # a rater is never unblinded
    assert "/data/s01.mp4 is missing" in body and 'id="media-problem"' in body and 'id="transcript"' in body
    assert anonymous.get("/media/s01")[0] == 404


def test_traversal_and_symlinks_outside_the_run_are_not_found(synthetic_run, tmp_path):
    run, _ = synthetic_run
    (run / "report").mkdir()
    (run / "report" / "index.html").write_text("<p>report</p>")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    (run / "report" / "leak.html").symlink_to(outside)
    (run / "report" / "alias.html").symlink_to(run / "report" / "index.html")
    server = Server(run, tmp_path / "server.log").start()
    client = Client(server.base)
    try:
        assert client.get("/report/index.html")[0] == 200
        assert client.get("/report/alias.html")[0] == 200  # a link that stays inside is fine
        for path in ["/report/leak.html", "/report/../sessions.parquet", "/report/..%2fsessions.parquet",
                     "/report/%2e%2e/%2e%2e/etc/passwd", "/report//etc/passwd", "/report/..\\sessions.parquet",
                     "/static/../app.py", "/static/..%2fapp.py", "/media/..%2f..%2fetc%2fpasswd",
                     "/session/..%2fsessions.parquet", "/report/%00"]:  # fmt: skip
            status, _, body = client.get(path)
            assert status == 404, path
            assert "secret" not in body and "PAR1" not in body
    finally:
        server.kill()


def test_posts_need_the_csrf_token_and_bad_input_changes_nothing(network_server):
    server, token, _ = network_server
    client = Client(server.base)
    client.sign_in(token)
    page = client.get("/rate/1")[2]
    item, csrf = ITEM_FIELD.search(page).group(1), CSRF_FIELD.search(page).group(1)
    good = {"item": item, "revision": "0", "empathy": "4", "comprehensiveness": "3", "applicability": "5"}
    assert client.request("POST", "/rate/1", good)[0] == 403  # no CSRF token
    assert client.request("POST", "/rate/1", {**good, "csrf": "0" * 64})[0] == 403
    other = Client(server.base)  # another browser's token does not fit this browser's cookie
    assert client.request("POST", "/rate/1", {**good, "csrf": other.csrf()})[0] == 403
    assert client.request("POST", "/rate/1", {**good, "csrf": csrf, "empathy": "7"})[0] == 422
    assert client.request("POST", "/rate/1", {**good, "csrf": csrf, "item": "Ideadbeef"})[0] == 404
    assert client.request("POST", "/rate/999", {**good, "csrf": csrf})[0] == 404
    assert Store(server.run_dir).answer("alice", item) is None  # nothing stored so far
    assert client.request("POST", "/rate/1", {**good, "csrf": csrf})[0] == 303
    status, _, body = client.request("POST", "/rate/1", {**good, "csrf": csrf, "empathy": "1"})  # posted twice
    assert status == 409 and "already saved" in body
    assert Store(server.run_dir).answer("alice", item)["empathy"] == 4
    assert client.request("POST", "/signout", {})[0] == 403


def test_loopback_bind_opens_the_clinician_pages_only_to_local_host_names(synthetic_run, tmp_path):
    run, _ = synthetic_run
    server = Server(run, tmp_path / "server.log").start()
    try:
        client = Client(server.base)
        status, headers, body = client.get("/session/s01")
        assert status == 200 and "[dissonance]" in body  # the clinician sees the conditions
        assert "default-src 'none'" in headers["content-security-policy"]
        assert client.get("/rate")[0] == 401  # rating needs a rater
        assert client.request("GET", "/", headers={"Host": "evil.example"})[0] == 400  # DNS rebinding
        assert "WARNING" not in server.log.read_text()
    finally:
        server.kill()


# ----------------------------------------------------------------------------------------------------
# the real run in a real browser


@pytest.fixture(scope="module")
def real_studio(dialogue_run, tmp_path_factory):
    """A copy of the shared dialogue run (the studio writes ratings.sqlite into its run folder)."""
    run = tmp_path_factory.mktemp("studio") / "run"
    shutil.copytree(dialogue_run[0], run)
    build_report(run)  # served under /report/
    return run


def _watch(page, base: str) -> dict[str, list[str]]:
    events: dict[str, list[str]] = {"outside": [], "console": []}
    page.on("request", lambda r: None if r.url.startswith((base + "/", "data:")) else events["outside"].append(r.url))
    page.on("console", lambda m: events["console"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: events["console"].append(str(e)))
    return events


def _seek_check(page, utts: dict, locator, attribute: str, position: dict | None = None) -> None:
    """Click ``locator`` (a link to an utterance): the media jumps to that utterance's start and it lights up.
    ``position``: where in the element (a span's edge: the utterance's own point sits over its middle)."""
    utt_id = locator.get_attribute(attribute).removeprefix("#utt-")
    locator.click(position=position)
    start = utts[utt_id]["start_s"]
    page.wait_for_function(f"Math.abs(document.getElementById('media').currentTime - {start}) < 0.3")
    assert page.evaluate(f"document.getElementById('utt-{utt_id}').classList.contains('playing')")


def _open_session(browser, server, session_id: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    events = _watch(page, server.base)
    page.goto(f"{server.base}/session/{session_id}")
    page.wait_for_function("document.getElementById('media').readyState >= 1")
    return page, events


@pytest.fixture(scope="module")
def dubbed_studio(dubbed_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("studio-dubbed") / "run"
    shutil.copytree(dubbed_run[0], run)
    return run, dubbed_run[1]["session_id"]


@pytest.mark.slow
def test_browser_seeks_to_dissonant_spans_and_top_moments(browser, dubbed_studio, tmp_path):
    run, session_id = dubbed_studio
    utts = {u["utt_id"]: u for u in pq.read_table(run / "utterances.parquet").to_pylist()}
    assert sum(bool(u["dissonance"]) for u in utts.values()) >= 1, "no dissonance found in the dubbed session"
    server = Server(run, tmp_path / "server.log").start()
    try:
        page, events = _open_session(browser, server, session_id)
        spans = page.locator('#timeline g[id^="dissonant-"][id$="-arousal"] a')
        assert spans.count() == sum(1 for u in utts.values() if u["dissonance"])
        _seek_check(page, utts, spans.last, "xlink:href", position={"x": 2, "y": 4})
        _seek_check(page, utts, spans.first, "xlink:href", position={"x": 2, "y": 4})
        _seek_check(page, utts, page.locator("#top-moments a.moment").first, "href")
        assert events == {"outside": [], "console": []}
        page.close()
    finally:
        server.kill()


@pytest.mark.slow
def test_browser_seeks_to_utterances_and_shows_interventions(browser, real_studio, tmp_path):
    utts = {u["utt_id"]: u for u in pq.read_table(real_studio / "utterances.parquet").to_pylist()}
    server = Server(real_studio, tmp_path / "server.log").start()
    try:
        page, events = _open_session(browser, server, "dialogue")
        spans = page.locator('#timeline g[id^="dissonant-"][id$="-arousal"] a')
        assert spans.count() == sum(1 for u in utts.values() if u["dissonance"] and u["role"] == "client")
        _seek_check(page, utts, page.locator("#transcript a.time").first, "href")
        _seek_check(page, utts, page.locator("#transcript a.time").last, "href")
        # playing moves the highlight and the playhead
        page.evaluate("const m = document.getElementById('media'); m.muted = true; m.currentTime = 4.6; m.play()")
        therapist = next(u for u in utts.values() if u["start_s"] <= 4.6 < u["end_s"])
        page.wait_for_function(f"document.getElementById('utt-{therapist['utt_id']}').classList.contains('playing')")
        assert float(page.locator("#timeline line.playhead").get_attribute("x1")) > 0
        page.evaluate("document.getElementById('media').pause()")
        # five conditions and the therapist's reply side by side, the prompt on demand
        turn = page.locator(".turn").first
        assert turn.locator(".gen").count() == 6 and turn.locator(".gen.reference").count() == 1
        prompt = turn.locator(".gen.cond-dissonance details").last
        assert not prompt.locator("pre").is_visible()
        prompt.locator("summary").click()
        assert prompt.locator("pre").is_visible()
        assert events == {"outside": [], "console": []}
        status, headers, _ = Client(server.base).request("GET", "/media/dialogue", headers={"Range": "bytes=100-199"})
        assert status == 206 and headers["content-range"].startswith("bytes 100-199/")
        page.close()
    finally:
        server.kill()


def _rate_three(browser, base: str, token: str, scores: list[int]) -> list[str]:
    context = browser.new_context()
    page = context.new_page()
    events = _watch(page, base)
    page.goto(base + "/signin")
    page.fill("#token", token)
    page.click("#signin button")
    page.wait_for_url(re.compile(r".*/rate/1$"))
    seen = []
    for n, score in enumerate(scores, start=1):
        assert page.url.endswith(f"/rate/{n}")
        html = page.content()
        assert "smollm2" not in html and "dialogue-u0" not in html  # no model, no session or utterance id
        seen.append(page.locator('input[name="item"]').get_attribute("value"))
        for c in CRITERIA:
            page.check(f'#scale-{c} input[value="{score}"]')
        page.fill("#comment", f"comment {n}")
        page.click("#save")
        page.wait_for_url(re.compile(rf".*/rate/{n + 1}$"))
    assert events == {"outside": [], "console": []}
    context.close()
    return seen


@pytest.mark.slow
def test_browser_raters_survive_a_killed_server_and_export(browser, real_studio, tmp_path):
    tokens = {name: _add_rater(real_studio, name) for name in ("alice", "bob")}
    server = Server(real_studio, tmp_path / "server.log").start()
    seen = {"alice": _rate_three(browser, server.base, tokens["alice"], [4, 5, 3]),
            "bob": _rate_three(browser, server.base, tokens["bob"], [2, 4, 4])}  # fmt: skip
    server.kill()
    store = Store(real_studio)
    with store._db() as db:
        conditions = dict(db.execute("SELECT item, condition FROM items").fetchall())
    assert REFERENCE in conditions.values() and len(set(conditions.values())) == 6  # the real reply is mixed in
    server.start()  # same port, same folder
    try:
        for name, scores in (("alice", [4, 5, 3]), ("bob", [2, 4, 4])):
            client = Client(server.base)
            client.sign_in(tokens[name])
            assert client.get("/rate")[1]["location"] == "/rate/4"  # resumes after the three it rated
            for n, (item, score) in enumerate(zip(seen[name], scores), start=1):
                body = client.get(f"/rate/{n}")[2]
                assert f'value="{item}"' in body and f"comment {n}" in body
                assert re.search(rf'name="empathy" value="{score}" required checked', body)
    finally:
        server.kill()
    log = server.log.read_text()
    texts = [u["text"] for u in pq.read_table(real_studio / "utterances.parquet").to_pylist()]
    replies = [r["generation"] for r in pq.read_table(real_studio / "interventions.parquet").to_pylist()]
    assert not [t for t in texts + replies + ["comment 1"] if t and t.strip() in log]  # nothing said is logged
    assert "rating saved: rater=alice" in log

    export = emoguide("studio", "export", str(real_studio))
    assert export.returncode == 0, export.stderr
    table = pq.read_table(real_studio / "expert_ratings.parquet")
    assert table.schema.remove_metadata() == RATINGS and table.num_rows == 2 * 3 * len(CRITERIA)
    got = {(r["rater"], r["item"], r["criterion"]): r["score"] for r in table.to_pylist()}
    assert got[("alice", seen["alice"][1], "empathy")] == 5 and got[("bob", seen["bob"][0], "applicability")] == 2
    agreed = emoguide("eval", "agreement", str(real_studio), "--key", str(real_studio / "expert_ratings.key.csv"))
    assert agreed.returncode == 0, agreed.stderr
    report = json.loads(agreed.stdout)
    assert set(report["criteria"]) == set(CRITERIA)
    assert all(c["n_raters"] == 2 for c in report["criteria"].values())


@pytest.mark.slow
def test_browser_makes_no_request_outside_the_server(browser, real_studio, tmp_path):
    token = _add_rater(real_studio, "carol")
    server = Server(real_studio, tmp_path / "server.log").start()
    try:
        context = browser.new_context()
        requests: list[str] = []
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        for path in ["/", "/session/dialogue", "/signin", "/report/index.html", "/report/dialogue.html"]:
            page.goto(server.base + path)
            page.wait_for_load_state("load")
        page.goto(server.base + "/session/dialogue")
        page.evaluate("const m = document.getElementById('media'); m.muted = true; m.play()")
        page.wait_for_timeout(1500)
        page.goto(server.base + "/signin")
        page.fill("#token", token)
        page.click("#signin button")
        page.wait_for_url(re.compile(r".*/rate/1$"))
        assert len(requests) > 8 and any("/media/dialogue" in r for r in requests)
        assert [r for r in requests if not r.startswith((server.base + "/", "data:"))] == []  # data: is no fetch
        context.close()
    finally:
        server.kill()
