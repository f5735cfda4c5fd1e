"""Speech recognition with faster-whisper: audio in, segments with word timings out.

Only speech is transcribed (sessions have long silences), with word timestamps (utterances are cut
at pauses between words and at speaker changes, frames and voice features are aligned to words),
greedy at temperature 0 (runs are repeatable).

Where the speech is comes from the caller: the pipeline passes the regions the speaker stage's
segmentation model found (:mod:`models.segmentation`); Silero (Whisper's own filter) is used only when
no regions are given, since it misses shouted and fearful speech, the client's most emotional moments.

Regions closer than ``max_pause_s`` form a *group*: the decoder keeps its context over short pauses
but never reads across a long one. Joining everything within 2 s, as Whisper's own filter does, let it
run one sentence into the next and loop ("kids are talking" written 22 times for 7 sayings). Every
Whisper input costs a full 30 s encoder window, so consecutive groups are *packed* into one input (each
group's audio padded by ``INPUT_PAD_S``, ``PACK_GAP_S`` of digital silence between groups, at most
``MAX_PACK_S`` in all) and each word is mapped back to the group it lies on. Every group of a pack is
decoded alone, as its own input, when a word of the packed decode cannot be told to be one group's or
its neighbour's (it lies on the silence between them or on both) or a group's text is one the audio
cannot hold (too many words per voiced second, a phrase repeated back to back, a high compression
ratio); a group the packed decode left without words, or with fewer than ``MIN_PACKED_WORDS_PER_S`` per
voiced second, is decoded alone. A group whose own text fails is decoded again with Whisper's
temperature fallback under a fixed seed, and flagged.

Whisper's word timings stretch over pauses: the last word before a silence often ends, and the first
word after it often starts, in the middle of the silence. Each word is trimmed to the voiced audio
inside it (:func:`trim_to_voice`) and clipped to the speech region it overlaps; a word over no speech
region is dropped, so every word lies on speech.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import ctranslate2
import numpy as np
from faster_whisper import WhisperModel
from faster_whisper.transcribe import get_compression_ratio
from faster_whisper.vad import VadOptions, get_speech_timestamps

from models.audio import SAMPLE_RATE, to_samples
from models.registry import ResolvedModel
from models.whisper_voice import FRAME_S, INPUT_PAD_S  # the voice features pool this very input's encoder

MAX_INPUT_S = 28.0  # a group fits one 30 s Whisper window with its padding
MAX_PACK_S = MAX_INPUT_S + 2 * INPUT_PAD_S  # a packed input is never longer than the longest single group's
# Silence between two packed groups' padded audio. Whisper reads groups this far apart as separate
# sentences; 0.7 s let it run one into the next ("now, said white" for "now. Set white": 16 of 16 GRID
# sentences on the benchmark session, 2 of 16 at 2 s, none at 3 s).
PACK_GAP_S = 3.0
# In a packed input Whisper sometimes writes only part of a group ("dogs are" for a RAVDESS sentence of 6
# words in 1.7 s); a group's share with fewer words per voiced second is decoded alone instead.
MIN_PACKED_WORDS_PER_S = 2.0
_FRAME_SAMPLES = round(FRAME_S * SAMPLE_RATE)  # groups start on encoder frame edges in a packed input
MAX_WORDS_PER_S = 6.0  # fast speech reaches ~5 words per voiced second; more is text the audio cannot hold
MAX_COMPRESSION_RATIO = 2.4  # Whisper's own sign of a repetition loop
MAX_REPEATS = 3  # a phrase said this many times back to back is a decoding loop
FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)
FALLBACK_SEED = 0


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """One ASR segment; times are seconds from the start of the audio plus ``offset_s``."""

    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...]
    flags: tuple[str, ...] = ()  # what the decoder needed: "redecoded", "implausible_text", ...
    # The encoder output of the Whisper input this segment came from (frames × d, one frame per
    # ``models.whisper_voice.FRAME_S`` from ``encoder_start``); only kept when the Transcriber is asked to.
    # A packed input is shared by several segments: each one's ``encoder_start`` maps its own span onto
    # its own frames (times outside it index other groups' audio).
    encoder: np.ndarray | None = field(default=None, repr=False, compare=False)
    encoder_start: float = 0.0

    def as_record(self) -> dict:
        """Plain dict (words as a list of dicts) for Arrow tables; the encoder output stays behind."""
        record = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("encoder", "encoder_start")}
        record["words"] = [asdict(w) for w in self.words]
        record["flags"] = list(self.flags)
        return record


@dataclass(frozen=True)
class Group:
    """Speech regions close enough to be one Whisper input (seconds)."""

    start: float
    end: float
    regions: tuple[tuple[float, float], ...]

    @property
    def voiced_s(self) -> float:
        return sum(e - s for s, e in self.regions)


@dataclass(frozen=True)
class Piece:
    """A group's padded audio, samples ``[a, b)`` of the transcribed audio, placed at sample ``at`` of a
    packed Whisper input."""

    group: Group
    a: int
    b: int
    at: int = 0

    @property
    def packed_span(self) -> tuple[float, float]:
        """Seconds from the packed input's start."""
        return self.at / SAMPLE_RATE, (self.at + self.b - self.a) / SAMPLE_RATE


class Transcriber:
    """A faster-whisper model loaded once; :meth:`transcribe` takes 16 kHz mono float32 audio."""

    def __init__(
        self,
        model: ResolvedModel,
        device: str = "auto",
        compute_type: str = "default",
        cpu_threads: int = 0,
        language: str | None = None,
        beam_size: int = 5,
        keep_encoder: bool = False,
    ) -> None:
        self.model_info = model
        self._model = WhisperModel(str(model.path), device=device, compute_type=compute_type, cpu_threads=cpu_threads)
        # English-only checkpoints (".en") reject a language argument other than English.
        self.language = "en" if not self._model.model.is_multilingual else language
        self.beam_size = beam_size
        self._encoded: list[np.ndarray] = []
        if keep_encoder:
            self._model.encode = self._capturing(self._model.encode)

    def _capturing(
        self, encode: Callable[[np.ndarray], ctranslate2.StorageView]
    ) -> Callable[[np.ndarray], ctranslate2.StorageView]:
        """``WhisperModel.encode`` that also keeps the first window's output of each input: an input is
        at most ``MAX_PACK_S`` long, so that window holds all of it, and the voice channel reuses it
        instead of encoding the audio a second time."""

        def encode_and_keep(features: np.ndarray) -> ctranslate2.StorageView:
            output = encode(features)
            if not self._encoded:
                on_cpu = output if output.device == "cpu" else output.to_device(ctranslate2.Device.cpu)
                self._encoded.append(np.array(on_cpu)[0])
            return output

        return encode_and_keep

    def transcribe(
        self,
        audio: np.ndarray,
        offset_s: float = 0.0,
        speech: Sequence[tuple[float, float]] | None = None,
        *,
        max_pause_s: float,
    ) -> list[Segment]:
        """One segment per speech group (regions at most ``max_pause_s`` apart), in time order.

        ``speech``: where people speak, (start, end) in seconds shifted by ``offset_s``; only that audio
        is transcribed, consecutive groups packed into one Whisper input with silence between them (a
        group is decoded alone where its share of the packed result cannot be trusted), so the decoder
        never carries text across a long pause. None: Silero voice activity (Whisper's own filter) decides.
        """
        if audio.size < 1600:  # under 0.1 s: nothing a model can transcribe
            return []
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if speech is None:
            speech = [
                (t["start"] / SAMPLE_RATE + offset_s, t["end"] / SAMPLE_RATE + offset_s)
                for t in get_speech_timestamps(audio, VadOptions())
            ]
        voiced = voiced_frames(audio)
        pieces = padded_pieces(speech_groups(speech, max_pause_s, MAX_INPUT_S), offset_s, len(audio))
        segments = [s for pack in packs(pieces) for s in self._transcribe_pack(audio, offset_s, pack, voiced)]
        return [s for s in segments if s is not None]

    def _transcribe_pack(
        self, audio: np.ndarray, offset_s: float, pack: Sequence[Piece], voiced: np.ndarray
    ) -> list[Segment | None]:
        """Decode the pack's groups as one input. A decode that went wrong anywhere (a word on the silence
        between groups or on two of them, a group's text the audio cannot hold) is not trusted for any
        group: a loop over one group is the decoder derailed for the whole input (RAVDESS's repeated
        sentence looped over six). Every group is then decoded alone, as is one the decode gave (almost)
        nothing."""
        if len(pack) == 1:
            return [self._transcribe_alone(audio, offset_s, pack[0], voiced)]
        packed = np.zeros(pack[-1].at + pack[-1].b - pack[-1].a, np.float32)
        for piece in pack:
            packed[piece.at : piece.at + piece.b - piece.a] = audio[piece.a : piece.b]
        segments = self._decode(packed, fallback=False)
        encoder = self._encoded[0] if self._encoded else None
        shares = _shares(segments, pack)
        if shares is None or any(
            implausible("".join(w.word for _, w, _ in share), piece.group.voiced_s)
            for piece, share in zip(pack, shares, strict=True)
        ):
            return [self._transcribe_alone(audio, offset_s, piece, voiced) for piece in pack]
        out = []
        for piece, share in zip(pack, shares, strict=True):
            segment = _segment(share, piece, offset_s, voiced, [], encoder)
            if segment is None or len(segment.words) < MIN_PACKED_WORDS_PER_S * piece.group.voiced_s:
                segment = self._transcribe_alone(audio, offset_s, piece, voiced)
            out.append(segment)
        return out

    def _transcribe_alone(self, audio: np.ndarray, offset_s: float, piece: Piece, voiced: np.ndarray) -> Segment | None:
        """Decode one group as its own input; a transcript the audio cannot hold is decoded again with
        seeded temperature fallback."""
        piece = replace(piece, at=0)
        segments = self._decode(audio[piece.a : piece.b], fallback=False)
        flags: list[str] = []
        if implausible(_text(segments), piece.group.voiced_s):
            segments = self._decode(audio[piece.a : piece.b], fallback=True)
            flags.append("redecoded")
            if implausible(_text(segments), piece.group.voiced_s):
                flags.append("implausible_text")
        share = [(s, w, i == 0) for s in segments for i, w in enumerate(s.words or [])]
        return _segment(share, piece, offset_s, voiced, flags, self._encoded[0] if self._encoded else None)

    def _decode(self, audio: np.ndarray, fallback: bool) -> list[Any]:
        """Whisper's segments for one input. Greedy-repeatable by default; with ``fallback`` the
        temperature schedule runs with a fixed seed, so the same input always gives the same text."""
        temperature: float | tuple[float, ...] = FALLBACK_TEMPERATURES if fallback else 0.0
        if fallback:
            ctranslate2.set_random_seed(FALLBACK_SEED)
        self._encoded.clear()
        segments, _ = self._model.transcribe(
            audio,
            language=self.language,
            beam_size=self.beam_size,
            temperature=temperature,
            word_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        return list(segments)  # decoding runs here (the generator is lazy), filling self._encoded


# A word of a decode: its Whisper segment, the word, and whether it is the first of its segment or of its
# group's share (the word whose start Whisper pulls early into the silence before it).
_Share = list[tuple[Any, Any, bool]]


def padded_pieces(groups: Sequence[Group], offset_s: float, n_samples: int) -> list[Piece]:
    """Each group's audio, padded by up to ``INPUT_PAD_S`` (never past half the gap to its neighbours, nor
    the audio's ends); groups under 0.1 s of audio are left out."""
    pieces = []
    for i, group in enumerate(groups):
        previous_end = groups[i - 1].end if i else -np.inf
        next_start = groups[i + 1].start if i + 1 < len(groups) else np.inf
        first = max(group.start - INPUT_PAD_S, (previous_end + group.start) / 2, offset_s)
        last = min(group.end + INPUT_PAD_S, (group.end + next_start) / 2, offset_s + n_samples / SAMPLE_RATE)
        a, b = to_samples(first - offset_s, n_samples), to_samples(last - offset_s, n_samples)
        if b - a >= 1600:
            pieces.append(Piece(group, a, b))
    return pieces


def packs(pieces: Sequence[Piece], max_s: float = MAX_PACK_S, gap_s: float = PACK_GAP_S) -> list[list[Piece]]:
    """Consecutive pieces packed into inputs of at most ``max_s``, each placed ``gap_s`` after the one
    before, on an encoder frame edge (so its frames are those of the source times its words map to); a
    piece that would not fit starts the next input."""
    out: list[list[Piece]] = []
    end = 0
    for piece in pieces:
        at = -(-(end + round(gap_s * SAMPLE_RATE)) // _FRAME_SAMPLES) * _FRAME_SAMPLES
        if out and at + piece.b - piece.a <= max_s * SAMPLE_RATE:
            out[-1].append(replace(piece, at=at))
        else:
            at = 0
            out.append([replace(piece, at=0)])
        end = at + piece.b - piece.a
    return out


def _shares(segments: Sequence[Any], pack: Sequence[Piece]) -> list[_Share] | None:
    """The words of a packed decode, each with the piece it lies on; None when a word lies on the silence
    between pieces or on more than one (either could be its group)."""
    spans = [p.packed_span for p in pack]
    shares: list[_Share] = [[] for _ in pack]
    for s in segments:
        for i, w in enumerate(s.words or []):
            hits = [k for k, (a, b) in enumerate(spans) if w.start <= b and w.end >= a]
            if len(hits) != 1:
                return None
            shares[hits[0]].append((s, w, i == 0 or not shares[hits[0]]))
    return shares


def _segment(
    share: _Share, piece: Piece, offset_s: float, voiced: np.ndarray, flags: list[str], encoder: np.ndarray | None
) -> Segment | None:
    """The group's segment from its share of a decode; None when no word lies on its speech.

    ``encoder_start`` is the session time of the input's first frame as this group's audio maps to it
    (the group's own start less where it was packed), so its words' times index their own frames."""
    input_start = offset_s + (piece.a - piece.at) / SAMPLE_RATE
    words, dropped = _words_in_speech(share, piece, input_start, offset_s, voiced)
    if dropped:
        flags = [*flags, "words_outside_speech_dropped"]
    if not words:
        return None
    segments = list({id(s): s for s, _, _ in share}.values())  # the Whisper segments behind its words
    return Segment(
        start=words[0].start,
        end=words[-1].end,
        text=words_text(words),
        avg_logprob=float(np.mean([s.avg_logprob for s in segments])),
        no_speech_prob=float(np.mean([s.no_speech_prob for s in segments])),
        words=tuple(words),
        flags=tuple(flags),
        encoder=encoder,
        encoder_start=input_start,
    )


def _text(segments: Sequence[Any]) -> str:
    return " ".join(s.text.strip() for s in segments)


def words_text(words: Sequence[Word]) -> str:
    """faster-whisper words carry their leading space."""
    return " ".join("".join(w.word for w in words).split())


def _words_in_speech(
    share: _Share, piece: Piece, input_start: float, offset_s: float, voiced: np.ndarray
) -> tuple[list[Word], int]:
    """The words in session seconds, each cut to its group's audio (a packed word may reach into the
    silence after it), trimmed to the voiced audio inside it and clipped to the speech region it overlaps
    most; words that overlap no region (Whisper wrote them over silence) are dropped. Returns the words
    and how many were dropped."""
    lo, hi = offset_s + piece.a / SAMPLE_RATE, offset_s + piece.b / SAMPLE_RATE
    regions = piece.group.regions
    kept: list[Word] = []
    dropped = 0
    for _, w, first in share:
        a, b = (min(max(t + input_start, lo), hi) - offset_s for t in (w.start, w.end))
        a, b = (t + offset_s for t in trim_to_voice(a, b, voiced, first_in_segment=first))
        region = max(regions, key=lambda r: min(b, r[1]) - max(a, r[0]))
        if min(b, region[1]) - max(a, region[0]) <= 0:
            dropped += 1
            continue
        kept.append(Word(max(a, region[0]), min(b, region[1]), w.word, w.probability))
    return kept, dropped


def implausible(text: str, voiced_s: float) -> bool:
    """Text the audio cannot hold: more words than ``MAX_WORDS_PER_S`` per voiced second, a phrase
    looping back to back, or Whisper's own compression-ratio sign of repetition."""
    words = re.findall(r"[\w']+", text.lower())
    if not words:
        return False
    if len(words) > MAX_WORDS_PER_S * max(voiced_s, 0.5):
        return True
    if len(text) > 40 and get_compression_ratio(text) > MAX_COMPRESSION_RATIO:
        return True
    return longest_repeat(words) >= MAX_REPEATS


def longest_repeat(words: Sequence[str], max_n: int = 4) -> int:
    """Most back-to-back copies of any phrase of 2..``max_n`` words ("kids are talking kids are talking")."""
    best = 1
    for n in range(2, max_n + 1):
        for start in range(len(words) - n):
            copies = 1
            while words[start + copies * n : start + (copies + 1) * n] == words[start : start + n]:
                copies += 1
            best = max(best, copies)
    return best


def speech_groups(regions: Sequence[tuple[float, float]], max_pause_s: float, max_group_s: float) -> list[Group]:
    """Join regions whose gap is at most ``max_pause_s`` into groups no longer than ``max_group_s``.

    A region longer than ``max_group_s`` (continuous speech) stays one group on its own.
    """
    groups: list[list[tuple[float, float]]] = []
    for s, e in sorted((float(s), float(e)) for s, e in regions if e > s):
        if groups and s - groups[-1][-1][1] <= max_pause_s and e - groups[-1][0][0] <= max_group_s:
            groups[-1].append((s, e))
        else:
            groups.append([(s, e)])
    return [Group(g[0][0], g[-1][1], tuple(g)) for g in groups]


HOP_S = 0.01  # voicing is decided per 10 ms (25 ms windows)
_WIN = 400


def voiced_frames(
    audio: np.ndarray, sr: int = SAMPLE_RATE, below_peak_db: float = 35.0, above_noise_db: float = 10.0
) -> np.ndarray:
    """Per 10 ms hop: is there speech energy? Louder than both ``below_peak_db`` under the loud end of
    the audio (its 99th percentile, so one click does not set it) and ``above_noise_db`` over its
    noise floor (10th percentile): digital silence and room noise are both left out."""
    hop = round(HOP_S * sr)
    if len(audio) < _WIN:
        return np.zeros(0, dtype=bool)
    power = np.concatenate([[0.0], np.cumsum(np.asarray(audio, np.float64) ** 2)])
    starts = np.arange(0, len(audio) - _WIN + 1, hop)
    db = 10 * np.log10((power[starts + _WIN] - power[starts]) / _WIN + 1e-12)
    threshold = max(np.percentile(db, 99) - below_peak_db, np.percentile(db, 10) + above_noise_db)
    return db > threshold


def trim_to_voice(
    start: float,
    end: float,
    voiced: np.ndarray,
    first_in_segment: bool = False,
    pause_s: float = 0.3,
    pad_s: float = 0.03,
) -> tuple[float, float]:
    """``(start, end)`` (seconds into the audio) shrunk to the voiced audio inside it, with ``pad_s`` of
    margin for soft onsets; unchanged when nothing inside is voiced (a quiet word is still a word).

    A word that spans a pause of ``pause_s`` or more is in one of the voiced stretches around it, and
    Whisper's habit says which: a word stretched over a pause is almost always the last one before it,
    so the first stretch is kept, except for a segment's first word, whose start is the one pulled
    early into the preceding silence.
    """
    first, last = max(int(np.floor(start / HOP_S)), 0), max(int(np.ceil(end / HOP_S)), 0)
    inside = np.flatnonzero(voiced[first:last])
    if not len(inside):
        return start, end
    breaks = np.flatnonzero(np.diff(inside) * HOP_S >= pause_s)
    islands = np.split(inside, breaks + 1)
    keep = islands[-1] if first_in_segment else islands[0]
    a = (first + keep[0]) * HOP_S - pad_s
    b = (first + keep[-1]) * HOP_S + _WIN / SAMPLE_RATE + pad_s
    return max(start, a), min(end, b)
