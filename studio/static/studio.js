// The review studio's session page: the media drives the transcript and the timeline, and a click on an
// utterance, a dissonant span or a moment seeks the media. Plain JS, no dependency, no request of its own.
"use strict";

(function () {
  const media = document.getElementById("media");
  const rows = Array.from(document.querySelectorAll("#transcript li.utt[data-start]"));
  if (!rows.length && !media) return;
  const spans = rows.map((r) => ({ row: r, start: parseFloat(r.dataset.start), end: parseFloat(r.dataset.end) }));
  const note = document.getElementById("media-note");
  const XLINK = "http://www.w3.org/1999/xlink";

  function say(text) {
    if (note) { note.textContent = text; note.hidden = false; }
  }

  function seek(t) {
    if (!media || !isFinite(t)) return;
    if (media.readyState === 0) {
      media.addEventListener("loadedmetadata", () => { media.currentTime = t; }, { once: true });
    } else {
      media.currentTime = t;
    }
  }

  function highlight(row, scroll) {
    for (const s of spans) s.row.classList.toggle("playing", s.row === row);
    if (row && scroll) row.scrollIntoView({ block: "nearest" });
  }

  function startOf(uttId) {
    const row = document.getElementById(uttId);
    return row && row.dataset.start !== undefined ? row : null;
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest("a");
    const href = link ? link.getAttribute("href") || link.getAttributeNS(XLINK, "href") : null;
    let row = null;
    if (href && href.startsWith("#utt-")) {
      row = startOf(href.slice(1));
      if (!row) return;
      event.preventDefault();
      history.replaceState(null, "", href);
    } else if (!link) {
      row = event.target.closest("#transcript li.utt[data-start]");
    }
    if (!row) return;
    highlight(row, true);
    seek(parseFloat(row.dataset.start));
  });

  // the playhead: a line across both panels, placed by the axes' extent and the plot's time range
  const svg = document.querySelector("#timeline svg[data-t-end]");
  let playhead = null, axes = null;
  if (svg) {
    const top = svg.querySelector("#axes-valence path"), bottom = svg.querySelector("#axes-arousal path");
    if (top && bottom) {
      const a = top.getBBox(), b = bottom.getBBox();
      axes = { x: a.x, width: a.width, y1: a.y, y2: b.y + b.height, tEnd: parseFloat(svg.dataset.tEnd) };
      playhead = document.createElementNS("http://www.w3.org/2000/svg", "line");
      playhead.setAttribute("class", "playhead");
      playhead.setAttribute("stroke", "#e41a1c");
      playhead.setAttribute("stroke-width", "2");
      playhead.setAttribute("y1", axes.y1);
      playhead.setAttribute("y2", axes.y2);
      svg.appendChild(playhead);
    }
  }

  function follow() {
    const t = media.currentTime;
    const current = spans.find((s) => t >= s.start && t < s.end);
    if (current && !current.row.classList.contains("playing")) highlight(current.row, !media.paused);
    if (playhead && axes.tEnd > 0) {
      const x = axes.x + Math.min(1, Math.max(0, t / axes.tEnd)) * axes.width;
      playhead.setAttribute("x1", x);
      playhead.setAttribute("x2", x);
    }
  }

  if (media) {
    media.addEventListener("timeupdate", follow);
    media.addEventListener("seeked", follow);
    media.addEventListener("loadedmetadata", () => {
      follow();
      if (media.tagName === "VIDEO" && media.videoWidth === 0) {
        media.classList.add("no-picture");
        say("This browser cannot show the picture of this file; the sound plays and the timeline follows it.");
      }
    });
    media.addEventListener("error", () => {
      say("This browser cannot play this file's format. The transcript, timeline and interventions still work.");
    });
    const target = location.hash.startsWith("#utt-") ? startOf(location.hash.slice(1)) : null;
    if (target) { highlight(target, true); seek(parseFloat(target.dataset.start)); }
  }
})();
