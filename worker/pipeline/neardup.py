"""Near-duplicate reuse: PDQ hashes of a grid of frames and of faces, a multi-index in Redis, banks of known fakes.

Re-uploads (re-encoded, resized, cropped, trimmed, watermarked) defeat the content-hash cache.
PDQ (Meta's perceptual hash, 256 bits) survives those edits, so a new video whose frames lie
within a Hamming distance of an earlier video's frames is a near-duplicate of it. The frames
hashed are a grid at fixed times from the start of the stream (GRID_STEP_S, GRID_MAX), hashed
while decoding (GridHasher, worker/media/loader.py), so a trimmed copy lines up with the original.

Reuse only what flags: a lip-synced fake of a real video is a near-duplicate of the real one,
faces included, so a match with a `real` verdict is only recorded and the video is scanned; a
match with a `fake` verdict of the same model (or with an operator's bank of known fakes) is
answered `fake` at once, without detection or classification.

The video rule (`video_match`): a query frame matches a candidate video when one of that
video's hashes is within `neardup_max_distance` bits; the video matches when at least
max(1, min(neardup_min_frames, usable frames), ceil(neardup_min_fraction * usable frames))
of the query's usable frames match (usable: PDQ quality >= neardup_min_quality; the query is
at most QUERY_MAX grid frames, VideoHashes.query).

The Redis index is multi-index hashing: each 256-bit hash is cut into 16 chunks of 16 bits and
its id is appended to one posting list per (chunk position, chunk value). Two hashes within 14
bits share at least two chunks exactly (pigeonhole), so a lookup reads the 16 lists of each
query hash (one Lua script, one round trip), keeps the ids found in two of them, fetches those
candidates' full hashes and verdict summaries (one MGET) and keeps the ones
within the distance; beyond 14 bits a match is found only if two chunks are untouched, which
the benchmark measures (benchmarks/neardup.py). Lists of MAX_BUCKET ids are full (no longer
appended to) and skipped, so the 14-bit guarantee assumes the shared chunks are not such values.
Keys (prefix from settings.redis_key_prefix; the model's hash tag keeps one model's index in
one cluster slot, which the lookup script relies on, and one model's verdicts never answer for
another model):
    {prefix}:nd:{model16}:seq            counter of indexed videos
    {prefix}:nd:{model16}:vh:{video}     the video's raw PDQ hashes, 32 bytes per slot, end to end
                                         (hash id = video * 256 + slot), with the cache TTL
    {prefix}:nd:{model16}:p:{i}:{value}  posting list: the ids (8 bytes, little-endian, end to end)
                                         of the hashes whose chunk i is `value` (4 hex digits);
                                         its TTL is renewed at every append
    {prefix}:nd:{model16}:v:{video}      the indexed verdict's summary (JSON), with the cache TTL
    {prefix}:nd:{model16}:r:{request}    the video number a request was indexed under, with the TTL
Nothing but the counter outlives the cache TTL, so the index does not grow without bound: a
video's hashes and summary expire with it, a posting list no longer appended to expires a TTL
after its last id, and a list that reaches MAX_BUCKET ids first drops its expired ids (ids
only grow and share one TTL, so those are a prefix of the list, found by binary search) and
is full only if it still holds MAX_BUCKET live ones.
    {prefix}:nd:{model16}:r:{request_id} marks a request as indexed (redelivery writes once)
Hash ids of expired videos stay in the lists and are skipped at lookup (their summary is gone).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import redis
import structlog

from worker.service.cache import OutageBackoff
from worker.settings import Settings
from worker.types import LABEL_FAKE, LABEL_REAL, FaceResult, Frame, Verdict

log = structlog.get_logger(__name__)

HASH_BYTES = 32
CHUNKS = 16  # 16 chunks of 16 bits
SLOTS_PER_VIDEO = 256  # hash ids are video * 256 + slot: at most 256 frame hashes indexed per video
# The frames hashed are not the sampled ones (centres of equal segments of each video's own
# duration, which a trim moves) but a grid at fixed times from the start of the stream:
# 0, s, 2s, ... with s = GRID_STEP_S, doubled until at most GRID_MAX points cover the video
# (16 s at 0.5 s; a 10-minute video gets 19 points 32 s apart). A copy trimmed by a multiple
# of the step shares its grid frames with the original exactly (a 2 s trim at steps up to
# 2 s); any other trim lands within half a step of them. Steps are powers of two times
# GRID_STEP_S, so two grids of different steps still share their coarser points.
GRID_STEP_S = 0.5
GRID_MAX = 32
# A lookup sends the usable grid frames at a coarser power-of-two step, at most QUERY_MAX of
# them (its cost grows with the count); the index stores every usable grid frame (and its crop).
QUERY_MAX = 16
# Frames are downscaled before hashing: PDQ reduces every image to 64x64 anyway, and its
# full-resolution filter costs ~300 ms on a 1080p frame here (about 1 ms at this size).
HASH_LONG_SIDE = 128
# Grid frames are scaled to GRID_SIDE x GRID_SIDE by the decoder's scaler (never converted at
# full size), then to HASH_LONG_SIDE by hash_image. Square: PDQ reduces every image to 64x64
# whatever its shape, so the aspect ratio changes no hash, and 5% of 160 is a whole 8 pixels,
# so the centre crop below is exact. (Cut from a 128 px image of the frame's shape it was off
# by a rounded pixel, 5.6% of 72 rows instead of 5%, which moved 5% crops by a median of 18
# bits instead of 4 on the benchmark's footage; 480 px squares hash the same as 160 px ones
# there, at 2.4 times the cost; 120 px squares lose the crops again.)
GRID_SIDE = 160
# Each indexed frame is also indexed as its centre crop without this fraction of the width and
# height: PDQ does not survive crops (a 5% crop moves a hash by 26-60 bits here), and cropping
# the frame is the commonest re-upload edit after re-encoding. Queries are hashed as they come.
INDEX_CROP = 0.05
# A chunk value held by this many hash ids (flat, dark or title frames; a video indexed again
# and again) is skipped at lookup: it would turn one query into a scan of thousands of
# unrelated hashes. Its posting list stops growing there, so a lookup never reads more than
# MAX_BUCKET ids per list (a list, unlike the sets before it, is read whole to learn its size).
MAX_BUCKET = 4096
# A candidate must share this many whole chunks with a query hash. Two hashes within 14 bits
# share at least 2 of the 16 chunks (d flipped bits touch at most d chunks). With one shared
# chunk (complete to 15 bits) 1,000,000 random hashes give ~2,400 chance candidates per
# 10-frame lookup to fetch and verify (150+ ms here under load); with two, almost none.
MIN_CHUNK_HITS = 2
OUTAGE_BACKOFF_S = 2.0

try:  # pdqhash builds from source (no wheel): optional, in the `neardup` extra
    import pdqhash
except ImportError:  # pragma: no cover - depends on the install
    pdqhash = None


@dataclass
class PdqHash:
    """One PDQ hash: 32 bytes, PDQ's quality (0-100; under ~50 the image is too flat to trust)."""

    bits: bytes
    quality: int
    frame_index: int

    @property
    def hex(self) -> str:
        return self.bits.hex()


@dataclass
class VideoHashes:
    """The hashes of one video: its grid frames (frame_index = grid position) with their
    centre crops' hashes (None where the frame is not usable), and its faces once known."""

    frames: list[PdqHash]
    crops: list[bytes | None] = field(default_factory=list)
    faces: list[PdqHash] = field(default_factory=list)

    def __post_init__(self):
        self.crops = list(self.crops) + [None] * (len(self.frames) - len(self.crops))

    def usable(self, min_quality: int) -> list[PdqHash]:
        return [h for h in self.frames if h.quality >= min_quality]

    def query(self, min_quality: int) -> list[PdqHash]:
        """The usable grid frames a lookup sends: every m-th grid point, m the smallest power
        of two that leaves at most QUERY_MAX points of the whole grid."""
        points = max((h.frame_index for h in self.frames), default=-1) + 1
        m = 1
        while math.ceil(points / m) > QUERY_MAX:
            m *= 2
        return [h for h in self.usable(min_quality) if h.frame_index % m == 0]

    @classmethod
    def from_info(cls, info) -> "VideoHashes":
        """The grid hashes decoding left in a VideoInfo (`pdq`)."""
        rows = sorted(info.pdq, key=lambda r: r[0])
        return cls([PdqHash(bytes(bits), int(q), int(k)) for k, _, bits, q, _ in rows],
                   [bytes(c) if c is not None else None for *_, c in rows])


@dataclass
class Match:
    """A near-duplicate found: in the index (a request's verdict) or in a bank."""

    source: str  # "index" or "bank:NAME"
    distances: list[int]  # per usable query frame, the distance to the nearest hash of the match
    matched_frames: int
    request_id: str | None = None  # the matched request (index matches)
    label: str = LABEL_FAKE  # the matched verdict's label (banks hold fakes)
    score: float | None = None  # the matched verdict's score (index matches)

    @property
    def flags(self) -> bool:
        """Only a match with a fake may answer for a video (see the module doc)."""
        return self.label == LABEL_FAKE

    def to_dict(self, reused: bool) -> dict:
        return {
            "source": self.source,
            "request_id": self.request_id,
            "label": self.label,
            "distances": self.distances,
            "matched_frames": self.matched_frames,
            "reused": reused,
        }


# -- hashing ------------------------------------------------------------------------------
def available() -> bool:
    return pdqhash is not None


def hash_image(image: np.ndarray) -> tuple[bytes, int]:
    """PDQ of an RGB uint8 image: (32 bytes, quality)."""
    h, w = image.shape[:2]
    scale = HASH_LONG_SIDE / max(h, w)
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    bits, quality = pdqhash.compute(np.ascontiguousarray(image))
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(quality)


def grid_times(duration_s: float) -> tuple[float, list[float]]:
    """(step, times) of the hash grid of a video of `duration_s` (see GRID_STEP_S)."""
    if duration_s <= 0:
        return GRID_STEP_S, [0.0]
    step = GRID_STEP_S
    while math.ceil(duration_s / step - 1e-9) > GRID_MAX:
        step *= 2
    return step, [k * step for k in range(max(1, math.ceil(duration_s / step - 1e-9)))]


class GridHasher:
    """Hashes the grid frames as the decoder reaches them (worker.media.decode.Grid).

    Each frame is converted straight to a small RGB image (GRID_SIDE square) by the
    decoder's scaler, never to full size; usable frames also get their centre crop hashed."""

    def __init__(self, min_quality: int):
        self.min_quality = min_quality
        self.step_s = GRID_STEP_S
        self.rows: dict[int, tuple] = {}
        self.ms = 0.0
        self._scaler = None  # one scaler for the video: frame.reformat() would set one up per frame

    def times(self, duration_s: float) -> list[float]:
        self.step_s, times = grid_times(duration_s)
        return times

    def add(self, position: int, time_s: float, frame, rotation: int) -> None:
        t0 = time.perf_counter()
        if self._scaler is None:
            from av.video.reformatter import VideoReformatter

            self._scaler = VideoReformatter()
        small = self._scaler.reformat(frame, width=GRID_SIDE, height=GRID_SIDE, format="rgb24",
                                      interpolation="AREA").to_ndarray()
        if rotation:
            small = np.rot90(small, k=-rotation // 90)
        self._hash(position, time_s, small)
        self.ms += (time.perf_counter() - t0) * 1000

    def add_image(self, image: np.ndarray) -> None:
        """A still image (RGB): one grid point, scaled to the same square as video frames."""
        t0 = time.perf_counter()
        self._hash(0, 0.0, cv2.resize(image, (GRID_SIDE, GRID_SIDE), interpolation=cv2.INTER_AREA))
        self.ms += (time.perf_counter() - t0) * 1000

    def _hash(self, position: int, time_s: float, image: np.ndarray) -> None:
        bits, quality = hash_image(image)
        crop = hash_image(centre_crop(image, INDEX_CROP))[0] if quality >= self.min_quality else None
        self.rows[position] = (position, time_s, bits, quality, crop)

    def entries(self) -> list[tuple]:
        return [self.rows[k] for k in sorted(self.rows)]


def hash_video(path: str | Path, settings: Settings) -> tuple[VideoHashes, list[Frame]]:
    """A video's grid hashes (and its sampled frames), decoded the way the worker decodes it."""
    from worker.media.decode import decode_frames

    grid = GridHasher(settings.neardup_min_quality)
    frames, info = decode_frames(path, settings, grid=grid)
    info.pdq = grid.entries()
    return VideoHashes.from_info(info), frames


def centre_crop(image: np.ndarray, fraction: float) -> np.ndarray:
    h, w = image.shape[:2]
    dy, dx = int(round(h * fraction / 2)), int(round(w * fraction / 2))
    return image[dy : h - dy, dx : w - dx]


def hash_faces(frames: Sequence[Frame], faces: Sequence[FaceResult]) -> list[PdqHash]:
    """PDQ of each scored face's box, cut from the frame it was found in."""
    by_index = {f.index: f.image for f in frames}
    out = []
    for face in faces:
        image = by_index.get(face.frame_index)
        if image is None:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        crop = image[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)]
        if crop.shape[0] >= 8 and crop.shape[1] >= 8:
            out.append(PdqHash(*hash_image(crop), face.frame_index))
    return out


def indexed_hashes(hashes: VideoHashes, min_quality: int) -> list[bytes]:
    """What the index stores of a video: its usable grid frames' hashes, then their centre crops'."""
    usable = [(h, c) for h, c in zip(hashes.frames, hashes.crops) if h.quality >= min_quality]
    return [h.bits for h, _ in usable] + [c for _, c in usable if c is not None]


def parse_hex(text: str) -> bytes:
    """A PDQ hash written as 64 hex digits; ValueError for anything else."""
    text = text.strip()
    if len(text) != 2 * HASH_BYTES:
        raise ValueError(f"a PDQ hash is {2 * HASH_BYTES} hex digits, got {len(text)}")
    return bytes.fromhex(text)


def as_matrix(hashes: Sequence[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, HASH_BYTES) if hashes else np.zeros((0, HASH_BYTES), np.uint8)


_POPCOUNT8 = np.array([bin(i).count("1") for i in range(256)], np.uint8)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distances between every row of a [N, 32] and of b [M, 32] (uint8): [N, M] int."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        x = a.view(np.uint64)[:, None, :] ^ b.view(np.uint64)[None, :, :]
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    return _POPCOUNT8[a[:, None, :] ^ b[None, :, :]].sum(axis=-1, dtype=np.int64)


def required_frames(usable: int, min_frames: int, min_fraction: float) -> int:
    return max(1, min(min_frames, usable), math.ceil(min_fraction * usable - 1e-9))


def video_match(
    query: np.ndarray, candidate: np.ndarray, max_distance: int, min_frames: int, min_fraction: float
) -> tuple[list[int], int] | None:
    """(per query frame nearest distance, frames within max_distance) when the rule holds, else None."""
    if len(query) == 0 or len(candidate) == 0:
        return None
    nearest = hamming(query, candidate).min(axis=1)
    matched = int((nearest <= max_distance).sum())
    if matched < required_frames(len(query), min_frames, min_fraction):
        return None
    return [int(d) for d in nearest], matched


# -- banks --------------------------------------------------------------------------------
@dataclass
class Bank:
    """Hashes of known fakes loaded from an operator's file: one 64-digit hex PDQ per line."""

    name: str
    hashes: np.ndarray  # [N, 32] uint8

    @classmethod
    def load(cls, name: str, path: str | Path) -> "Bank":
        rows = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                text = line.split("#", 1)[0].strip()
                if not text:
                    continue
                # ThreatExchange exports write "hash,quality" or "hash quality": the hash is the first field
                text = text.replace(",", " ").split()[0]
                try:
                    rows.append(parse_hex(text))
                except ValueError as exc:
                    raise ValueError(f"bank {name!r} ({path}) line {n}: {exc}") from None
        return cls(name, as_matrix(rows))


def parse_banks(entries: Sequence[str]) -> list[Bank]:
    """`NAME=PATH` entries (settings.neardup_banks) as loaded banks; ValueError on a bad entry or file."""
    banks = []
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"bank entry {entry!r} is not NAME=PATH")
        banks.append(Bank.load(name.strip(), path.strip()))
    return banks


# -- the Redis index ----------------------------------------------------------------------
# One round trip for the posting lists of every chunk of every query hash. KEYS[1] is the
# namespace's counter ({ns}:seq); the posting-list keys ({ns}:p:{i}:{value}) are
# derived here from ARGV[2], the query hashes end to end, so a lookup sends 32 bytes per hash
# instead of 16 key names (packing those in redis-py cost more than the lookup itself).
# They carry the namespace's hash tag, so they lie in KEYS[1]'s slot: Redis Cluster runs the
# script on the node that serves KEYS[1] and refuses keys another node serves
# (tests/worker/pipeline/test_neardup.py runs it on a two-node cluster). Lists missing, not
# ours (not a string, not whole 8-byte ids) or full (ARGV[1] bytes or more: a crowded chunk
# value, see _ADD_LUA) count as empty. The reply: one string of little-endian 4-byte lengths,
# 16 per query hash, and one string of the lists end to end. Counting the ids is left to the
# client (numpy): done in Lua it costs more server time than the second round trip it would
# save (docs/benchmarks.md).
_POSTINGS_LUA = """
local ns = string.sub(KEYS[1], 1, -5)
local cap, q = tonumber(ARGV[1]), ARGV[2]
local keys = {}
for h = 0, #q / 32 - 1 do
  for i = 0, 15 do
    local a, b = string.byte(q, 32 * h + 2 * i + 1, 32 * h + 2 * i + 2)
    keys[#keys + 1] = string.format('%s:p:%d:%02x%02x', ns, i, a, b)
  end
end
if #keys == 0 then return {'', ''} end
local parts = redis.call('MGET', unpack(keys))
local lens = {}
for i = 1, #keys do
  local p = parts[i]
  if type(p) ~= 'string' or #p >= cap or #p % 8 ~= 0 then p = '' end
  parts[i] = p
  lens[i] = struct.pack('<I4', #p)
end
return {table.concat(lens), table.concat(parts)}
"""
# Index writes, keys derived the same way, in one script so that a video is indexed whole or
# not at all: ARGV[1] the list cap in bytes, ARGV[2] the video's hashes end to end, ARGV[3] the
# request id, ARGV[4] the summary, ARGV[5] the TTL, ARGV[6] SLOTS_PER_VIDEO. A request indexed
# before answers 0 and changes nothing. Otherwise it takes the next video number, its summary and
# its hashes (one string per video) are stored with the TTL, and each hash's id (video number *
# slots + slot, 8 bytes little-endian) is appended to its 16 posting lists, whose TTL is then
# renewed. A list at the cap first drops its expired ids (those whose video's hashes are gone):
# ids grow with the video counter and every video has the same TTL, so they form a prefix, and
# a binary search over EXISTS finds its end. The id is appended only if the list is then under
# the cap. A foreign value is left alone.
_ADD_LUA = """
local ns = string.sub(KEYS[1], 1, -5)
local cap, q, ttl, slots = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[5]), tonumber(ARGV[6])
local request = ns .. ':r:' .. ARGV[3]
if redis.call('EXISTS', request) == 1 then return 0 end
local video = redis.call('INCR', KEYS[1])
local number = string.format('%.0f', video)
redis.call('SET', request, number, 'EX', ttl)
redis.call('SET', ns .. ':v:' .. number, ARGV[4], 'EX', ttl)
if #q == 0 then return 1 end
redis.call('SET', ns .. ':vh:' .. number, q, 'EX', ttl)
local function live(list, k)  -- is the k-th id (0-based) of `list` a video whose hashes are kept?
  local lo, hi = struct.unpack('<I4I4', list, 8 * k + 1)
  return redis.call('EXISTS', string.format('%s:vh:%.0f', ns, math.floor((hi * 4294967296 + lo) / slots))) == 1
end
for h = 0, #q / 32 - 1 do
  local n_id = video * slots + h
  local id = struct.pack('<I4I4', n_id % 4294967296, math.floor(n_id / 4294967296))
  for i = 0, 15 do
    local a, b = string.byte(q, 32 * h + 2 * i + 1, 32 * h + 2 * i + 2)
    local key = string.format('%s:p:%d:%02x%02x', ns, i, a, b)
    local n = redis.pcall('STRLEN', key)
    if type(n) == 'number' and n >= cap and n % 8 == 0 and redis.call('TYPE', key).ok == 'string' then
      local list = redis.call('GET', key)
      local first, last = 0, n / 8  -- the first live id lies in [first, last]
      while first < last do
        local mid = math.floor((first + last) / 2)
        if live(list, mid) then last = mid else first = mid + 1 end
      end
      if first > 0 then
        redis.call('SET', key, string.sub(list, 8 * first + 1), 'EX', ttl)
        n = n - 8 * first
      end
    end
    if type(n) == 'number' and n < cap then
      redis.call('APPEND', key, id)
      redis.call('EXPIRE', key, ttl)
    end
  end
end
return 1
"""
_ID = np.dtype("<u8")
MAX_QUERY_HASHES = 64  # the counting below packs the query number into 6 bits


class HashIndex:
    """The near-duplicate index of one model's verdicts in Redis (see the module doc)."""

    def __init__(self, client: redis.Redis, prefix: str, model_sha256: str, ttl_s: int):
        self.client = client
        self.ns = f"{prefix}:nd:{{{model_sha256[:16]}}}"
        self.ttl_s = ttl_s
        self._postings = client.register_script(_POSTINGS_LUA)
        self._add = client.register_script(_ADD_LUA)

    def chunk_keys(self, bits: bytes) -> list[str]:
        """The posting-list keys of a hash's 16 chunks."""
        return [f"{self.ns}:p:{i}:{bits[2 * i : 2 * i + 2].hex()}" for i in range(CHUNKS)]

    def candidate_ids(self, hashes: Sequence[bytes]) -> np.ndarray:
        """Ids (sorted) that share at least MIN_CHUNK_HITS chunks with one of `hashes`: one round trip."""
        if not hashes:
            return np.zeros(0, np.int64)
        if len(hashes) > MAX_QUERY_HASHES:
            raise ValueError(f"at most {MAX_QUERY_HASHES} hashes per lookup, got {len(hashes)}")
        if any(len(h) != HASH_BYTES for h in hashes):
            raise ValueError(f"a PDQ hash is {HASH_BYTES} bytes")
        lens, blob = self._postings(keys=[f"{self.ns}:seq"], args=[MAX_BUCKET * _ID.itemsize, b"".join(hashes)])
        counts = np.frombuffer(lens, "<u4") // _ID.itemsize
        ids = np.frombuffer(blob, _ID)
        query = np.repeat(np.arange(len(counts), dtype=np.uint64) // CHUNKS, counts)
        # one entry per (id, query hash) found in MIN_CHUNK_HITS of that hash's 16 lists
        pairs, hits = np.unique((ids << np.uint64(6)) | query, return_counts=True)
        return np.unique(pairs[hits >= MIN_CHUNK_HITS] >> np.uint64(6)).astype(np.int64)

    def fetch(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, dict]]:
        """(ids, [K, 32] hashes, {video: summary}) for candidate ids, in one round trip; ids
        without a hash (not ours) and videos without a summary (expired, not ours) are left out."""
        if len(ids) == 0:
            return np.zeros(0, np.int64), as_matrix([]), {}
        videos = sorted({int(i) // SLOTS_PER_VIDEO for i in ids})
        replies = self.client.mget([f"{self.ns}:vh:{v}" for v in videos] + [f"{self.ns}:v:{v}" for v in videos])
        stored, summaries = dict(zip(videos, replies[: len(videos)])), {}
        for video, body in zip(videos, replies[len(videos) :]):
            try:
                summary = json.loads(body) if body else None
            except (ValueError, TypeError):
                summary = None  # a foreign value under our key: not a match
            if isinstance(summary, dict):
                summaries[video] = summary
        keep = []
        for i in ids:
            blob, slot = stored.get(int(i) // SLOTS_PER_VIDEO), int(i) % SLOTS_PER_VIDEO
            if isinstance(blob, bytes) and len(blob) % HASH_BYTES == 0 and len(blob) >= HASH_BYTES * (slot + 1):
                keep.append((int(i), blob[HASH_BYTES * slot : HASH_BYTES * (slot + 1)]))
        return np.array([i for i, _ in keep], np.int64), as_matrix([h for _, h in keep]), summaries

    def candidates(self, hashes: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(hash ids, [K, 32] hashes) sharing at least MIN_CHUNK_HITS chunks with one of `hashes`."""
        ids, found, _ = self.fetch(self.candidate_ids(hashes))
        return ids, found

    def add(self, request_id: str, summary: dict, hashes: Sequence[bytes]) -> bool:
        """Index one video's hashes under a new video number, in one round trip; False if the
        request was indexed already. Bad hashes are refused before anything is written."""
        hashes = list(hashes)[:SLOTS_PER_VIDEO]
        if any(not isinstance(h, bytes) or len(h) != HASH_BYTES for h in hashes):
            raise ValueError(f"a PDQ hash is {HASH_BYTES} bytes")
        return bool(self._add(keys=[f"{self.ns}:seq"], args=[MAX_BUCKET * _ID.itemsize, b"".join(hashes), request_id,
                                                             json.dumps(summary), self.ttl_s, SLOTS_PER_VIDEO]))


# -- what the Scanner calls -----------------------------------------------------------------
class NearDuplicates:
    """Hash a decoded video, look it up in banks and the index, record fresh verdicts.

    Redis failing never stops a scan: the lookup answers None (the video is scanned), the
    write is skipped, both are logged, and calls fail fast for OUTAGE_BACKOFF_S afterwards.
    """

    def __init__(self, settings: Settings, banks: list[Bank], index: HashIndex | None):
        self.max_distance = settings.neardup_max_distance
        self.min_quality = settings.neardup_min_quality
        self.min_frames = settings.neardup_min_frames
        self.min_fraction = settings.neardup_min_fraction
        self.banks = banks
        self.index = index
        self._backoff = OutageBackoff(OUTAGE_BACKOFF_S)

    @classmethod
    def from_settings(cls, settings: Settings, model_sha256: str, client: redis.Redis | None = None) -> "NearDuplicates | None":
        """None when the feature is off or PDQ is not installed; the index is off when Redis does not answer."""
        if not settings.neardup_enabled:
            return None
        if not available():
            log.warning("neardup_off", reason="pdqhash is not installed (pip install '.[neardup]')")
            return None
        banks = parse_banks(settings.neardup_banks)  # a bad bank is an operator error: refuse to start
        index = None
        if settings.neardup_index:
            if client is None:
                from worker.service.cache import connect

                client = connect(settings)
            try:
                client.ping()
                index = HashIndex(client, settings.redis_key_prefix, model_sha256, settings.redis_ttl_s)
            except redis.RedisError as exc:
                log.warning("neardup_index_off", reason=f"Redis does not answer: {exc}", redis_url=settings.redis_url)
        log.info(
            "neardup_ready",
            index=index is not None,
            banks={b.name: len(b.hashes) for b in banks},
            max_distance=settings.neardup_max_distance,
        )
        return cls(settings, banks, index)

    def hashes_of(self, info) -> VideoHashes:
        """The grid hashes decoding left in a video's VideoInfo (empty if it was decoded without)."""
        return VideoHashes.from_info(info)

    def lookup(self, hashes: VideoHashes) -> Match | None:
        """The best near-duplicate of a video: a flagging match (bank, or fake in the index) first.
        Its query is `hashes.query()`: the usable grid frames, at most QUERY_MAX of them."""
        usable = hashes.query(self.min_quality)
        if not usable:
            return None
        query = as_matrix([h.bits for h in usable])
        for bank in self.banks:
            hit = video_match(query, bank.hashes, self.max_distance, self.min_frames, self.min_fraction)
            if hit is not None:
                return Match(f"bank:{bank.name}", hit[0], hit[1])
        if self.index is None or self._in_outage():
            return None
        try:
            return self._index_lookup(query)
        except redis.RedisError as exc:
            self._outage()
            log.warning("neardup_lookup_failed", error=str(exc))
            return None

    def _index_lookup(self, query: np.ndarray) -> Match | None:
        ids, cands, summaries = self.index.fetch(self.index.candidate_ids([bytes(q) for q in query]))
        if len(ids) == 0:
            return None
        close = hamming(query, cands).min(axis=0) <= self.max_distance
        best = None
        for video in sorted({int(i) // SLOTS_PER_VIDEO for i in ids[close]}):
            summary = summaries.get(video)
            if summary is None or summary.get("label") not in (LABEL_FAKE, LABEL_REAL):
                continue  # expired, or not ours
            hit = video_match(query, cands[ids // SLOTS_PER_VIDEO == video], self.max_distance, self.min_frames, self.min_fraction)
            if hit is None:
                continue
            distances, matched = hit
            match = Match("index", distances, matched, summary.get("request_id"), summary["label"], summary.get("score"))
            # a fake outranks a real; then more matched frames, then closer
            rank = (match.flags, matched, -sum(distances))
            if best is None or rank > best[0]:
                best = (rank, match)
        return best[1] if best else None

    def record(self, verdict: Verdict, hashes: VideoHashes, frames: Sequence[Frame]) -> None:
        """Index a fresh fake or real verdict of this worker (never a reused or cached one)."""
        if self.index is None or verdict.label not in (LABEL_FAKE, LABEL_REAL) or verdict.cached:
            return
        if verdict.near_duplicate and verdict.near_duplicate.get("reused"):
            return
        usable = hashes.usable(self.min_quality)
        if not usable or self._in_outage():
            return
        hashes.faces = hash_faces(frames, verdict.faces)
        summary = {
            "request_id": verdict.request_id,
            "label": verdict.label,
            "score": verdict.score,
            "model_sha256": verdict.model.sha256 if verdict.model else None,
            "created_at": verdict.created_at,
            "grid": [[h.frame_index, h.hex, h.quality] for h in hashes.frames],
            "faces": [[h.frame_index, h.hex, h.quality] for h in hashes.faces],
        }
        try:
            self.index.add(verdict.request_id, summary, indexed_hashes(hashes, self.min_quality))
        except redis.RedisError as exc:
            self._outage()
            log.warning("neardup_record_failed", request_id=verdict.request_id, error=str(exc))

    def _in_outage(self) -> bool:
        return self._backoff.active()

    def _outage(self) -> None:
        self._backoff.failed()


# -- making banks -----------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m worker.pipeline.neardup VIDEO...`: print the PDQ hashes of each video as bank
    lines (`hex quality  # file`), what the worker indexes of it: its usable grid frames and
    their centre crops."""
    import argparse
    import sys

    from worker.types import ScanError

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("videos", nargs="+", type=Path)
    args = ap.parse_args(argv)
    if not available():
        print("pdqhash is not installed: pip install '.[neardup]'", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    failed = 0
    for path in args.videos:
        try:
            hashes, _ = hash_video(path, settings)
        except ScanError as exc:
            print(f"{path}: {exc.reason}", file=sys.stderr)
            failed += 1
            continue
        for h, crop in zip(hashes.frames, hashes.crops):
            if h.quality >= settings.neardup_min_quality:
                print(f"{h.hex} {h.quality}  # {path.name} grid {h.frame_index}")
                if crop is not None:
                    print(f"{crop.hex()}  # {path.name} grid {h.frame_index}, centre crop")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
