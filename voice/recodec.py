"""Give a voice bundle a vocoder trained on frozen codes (codec phase B), keeping its decoder.

Phase B trains only the codec's backbone and head, so the codes, and with them the decoder's training
data, stay valid. Before the bundle's codec.safetensors is replaced this checks that claim three ways:
the encoder + codebook fingerprint of the new codec equals the old one's and the bundle's training
record; a sample of the corpus encoded by both codecs gives the same codes, every one; and (reported)
how many of the sample's codes equal the code cache the decoder was trained on, which shows whether
the re-synthesised corpus is the audio that cache was made from. A report goes to --json.

    .venv/bin/python voice/recodec.py --codec DIR [--bundle llmvox/voices/default] [--sample 300]
        [--data /work/cache/voice/data/data.json] [--cache /work/cache/voice/cache] --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from llmvox.bundle import load_bundle_codec, read_bundle_config, save_bundle_codec
from llmvox.errors import LLMVoXError
from llmvox.train.cache import CodeCache, codec_fingerprint
from llmvox.train.cache_writer import encode_entry
from llmvox.train.dataset import load_dataset_json


def same_codes(old, new, entries, cache: CodeCache | None) -> dict:
    """Encode each entry with both codecs; count utterances and codes that differ (and against the cache)."""
    by_id = {rid: i for i, rid in enumerate(cache.ids)} if cache is not None else {}
    report = {"utterances": 0, "codes": 0, "differ_old_new": 0, "in_cache": 0, "differ_cache": 0,
              "cache_codes_equal": 0, "cache_codes_compared": 0}
    for entry in entries:
        _, a = encode_entry(entry, old)
        _, b = encode_entry(entry, new)
        if a is None or b is None:
            continue
        report["utterances"] += 1
        report["codes"] += len(a[0])
        report["differ_old_new"] += int(len(a[0]) != len(b[0]) or not np.array_equal(a[0], b[0]))
        if entry.id in by_id:
            report["in_cache"] += 1
            cached = np.asarray(cache.codes(by_id[entry.id]))
            report["differ_cache"] += int(len(cached) != len(b[0]) or not np.array_equal(cached, b[0]))
            n = min(len(cached), len(b[0]))
            report["cache_codes_equal"] += int((cached[:n] == b[0][:n]).sum())
            report["cache_codes_compared"] += max(len(cached), len(b[0]))
    return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", required=True, help="phase-B codec milestone folder (the new vocoder)")
    ap.add_argument("--old", default="voice/milestones/codec", help="the codec that tokenised the corpus")
    ap.add_argument("--bundle", default="llmvox/voices/default", help="bundle whose codec is replaced")
    ap.add_argument("--data", default="/work/cache/voice/data/data.json")
    ap.add_argument("--cache", default="/work/cache/voice/cache")
    ap.add_argument("--sample", type=int, default=300, help="corpus utterances encoded by both (every k-th)")
    ap.add_argument("--json", required=True)
    ap.add_argument("--dry_run", action="store_true", help="check only; leave the bundle as it is")
    args = ap.parse_args()
    torch.set_num_threads(1)

    old, new = load_bundle_codec(args.old), load_bundle_codec(args.codec)
    bundle_cfg = read_bundle_config(args.bundle)
    prints = {"old": codec_fingerprint(old), "new": codec_fingerprint(new),
              "bundle_trained_on": bundle_cfg.get("training", {}).get("codec_fingerprint")}
    cache = CodeCache(args.cache, all_records=True) if Path(args.cache).is_dir() else None
    if cache is not None:
        prints["cache"] = cache.fingerprint
    entries, _ = load_dataset_json(args.data, check_audio=False)
    step = max(1, len(entries) // max(1, args.sample))
    t0 = time.perf_counter()
    codes = same_codes(old, new, entries[::step][: args.sample], cache)
    report = {"fingerprints": prints, "sample": codes, "encode_seconds": round(time.perf_counter() - t0, 1),
              "codec": args.codec, "bundle": args.bundle}
    # the gate: same weights and the same codes on the same audio; the cache comparison also shows the
    # re-synthesised corpus is the audio the cache was made from (reported, not needed for the swap)
    ok = len(set(prints.values()) - {None}) == 1 and codes["utterances"] > 0 and codes["differ_old_new"] == 0
    report["codes_identical"] = ok
    if ok and not args.dry_run:
        folder = Path(args.bundle)
        written = save_bundle_codec(folder, new, dtype=getattr(torch, bundle_cfg.get("storage_dtype", "float32")))
        made = read_bundle_config(args.codec)
        bundle_cfg.setdefault("training", {})["vocoder"] = (
            f"codec phase {made.get('phase', '?')}, step {made.get('step', '?')}: backbone and head trained on "
            "the frozen encoder and codebook (same codes)")
        (folder / "config.json").write_text(json.dumps(bundle_cfg, indent=2) + "\n")
        report["written"] = str(written)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except LLMVoXError as exc:  # a missing folder, not a bundle, an unreadable dataset: one line, no traceback
        sys.exit(f"recodec: {exc}")
