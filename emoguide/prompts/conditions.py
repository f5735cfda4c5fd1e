"""The experimental conditions, defined once: which emotion cues an intervention prompt carries.

``text`` (no cues), ``face``, ``voice``, ``multimodal`` (face and voice) and ``dissonance`` (face and
voice plus whether they disagree). The prompt builder produces them, the config accepts a subset of
them, the report orders its cards by them. No imports, so the config can read it cheaply.
"""

from __future__ import annotations

CONDITIONS: tuple[str, ...] = ("text", "face", "voice", "multimodal", "dissonance")
