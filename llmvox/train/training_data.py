"""What a decoder run trains on: the codec, the tokenised cache, the held-out split and the data order.

The data order is a pure function of the seed and a cursor (micro-batches consumed), and the split a
pure function of each utterance id, so a resumed or differently-sized DDP run sees the same batches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from llmvox.errors import LLMVoXError
from llmvox.text.frontend import TextFrontend
from llmvox.train.batching import Batch, BucketSampler, fixed_batches, make_batch, sequence_lengths
from llmvox.train.config import TrainConfig
from llmvox.train.distributed import DistEnv
from llmvox.train.text_ids import TEXT_IDS_FILE, FrontendCache


def load_codec_source(wav_config_path: str | None, wav_model_path: str | None, bundle: str | None):
    """The codec named by the original paths or a bundle; None when nothing is given."""
    if bundle:
        if wav_config_path or wav_model_path:
            raise LLMVoXError("give either --bundle or --wav_config_path/--wav_model_path, not both")
        from llmvox.bundle import load_bundle_codec

        return load_bundle_codec(bundle), f"bundle {bundle}"
    if wav_config_path or wav_model_path:
        if not (wav_config_path and wav_model_path):
            raise LLMVoXError("give both --wav_config_path and --wav_model_path")
        from llmvox.codec.checkpoint import load_wavtokenizer

        return load_wavtokenizer(wav_config_path, wav_model_path), f"{wav_config_path} + {wav_model_path}"
    return None, None


def open_code_cache(cfg: TrainConfig, env: DistEnv, codec, codec_source: str | None, out_dir: Path,
                    say: Callable[[str], None]):
    """The tokenised cache of --data_path: a cache folder as is, a dataset JSON tokenised first (by rank 0)."""
    from llmvox.train.cache import CodeCache, codec_fingerprint, is_cache
    from llmvox.train.cache_writer import tokenize_dataset

    data = Path(cfg.data_path)
    if data.is_dir():
        if not is_cache(data):
            raise LLMVoXError(f"--data_path {data} is a folder but not a tokenised cache (no meta.json)")
        cache_dir = data
    elif data.is_file():
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out_dir / "cache"
        if codec is None:
            raise LLMVoXError("training from a dataset JSON tokenises it first: give the codec "
                              "(--wav_config_path and --wav_model_path, or --bundle)")
        if env.master:
            if env.device.type == "cuda":
                codec.to(env.device)
            report = tokenize_dataset(data, cache_dir, codec, codec_source=codec_source or "",
                                      on_error=cfg.on_error, speech_data_folder=cfg.speech_data_folder,
                                      progress=cfg.progress, log_fn=say)
            codec.to("cpu")
            say(f"cache {cache_dir}: {report['utterances']} utterances, {report['hours']} h "
                f"({report['encoded_now']} encoded now, {report['skipped']} skipped)")
        env.barrier()
    else:
        raise LLMVoXError(f"--data_path not found: {data}")
    cache = CodeCache(cache_dir)
    if len(cache) == 0:
        raise LLMVoXError(f"no utterances to train on in {cache_dir}")
    if codec is not None:
        cache.check_codec(codec_fingerprint(codec), f"the codec {codec_source}")
    return cache


def read_with_frontend(cache, frontend: TextFrontend, out_dir: Path, info: Callable[[str], None]):
    """The cache with its texts read by `frontend` (the byt5 ids are the cache's own)."""
    if frontend.kind == "byt5":
        return cache
    start = time.perf_counter()
    cache = FrontendCache(cache, frontend, store=out_dir / TEXT_IDS_FILE)
    info(f"text front-end {frontend.kind}: {float(np.mean(cache.text_lengths)):.0f} ids per "
         f"utterance (read in {time.perf_counter() - start:.1f} s)")
    return cache


def is_validation_id(utt_id: str, fraction: float) -> bool:
    """A stable held-out split by id hash: growing the data set never moves an id between splits."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha1(f"llmvox-val:{utt_id}".encode()).digest()[:8], "big")
    return (h % 1_000_000) < fraction * 1_000_000


class TrainingData:
    """The held-out split, the --max_codes curriculum and the batches each process trains and evaluates on."""

    def __init__(self, cache, cfg: TrainConfig, max_len: int, env: DistEnv, info: Callable[[str], None]):
        self.cache, self.max_len, self.env = cache, max_len, env
        self.accum_local = cfg.gradient_accumulation_steps // env.world_size
        val_mask = np.array([is_validation_id(i, cfg.val_fraction) for i in cache.ids], dtype=bool)
        if val_mask.all():
            val_mask[:] = False
        train_idx, self.val_idx = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
        if len(train_idx) == 0:
            raise LLMVoXError("no training utterances left after the held-out split")
        if cfg.max_codes:
            # short sentences first: the text-audio alignment is learned sooner on short utterances
            train_idx = train_idx[cache.code_lengths[train_idx] <= cfg.max_codes]
            if len(train_idx) == 0:
                raise LLMVoXError(f"no training utterance has at most --max_codes={cfg.max_codes} codes")
            info(f"curriculum: {len(train_idx)} training utterances of at most {cfg.max_codes} codes")
        self.train_idx = train_idx
        lengths = sequence_lengths(cache.code_lengths, max_len)
        self.sampler = BucketSampler(lengths[train_idx], cfg.batch_size, seed=cfg.seed,
                                     bucket_window=cfg.bucket_window)
        self.val_batches = [self.val_idx[b] for b in fixed_batches(lengths[self.val_idx], cfg.batch_size,
                                                                    seed=cfg.seed, limit=cfg.eval_iters or None)
                            ] if len(self.val_idx) else []

    def batch(self, indices: np.ndarray) -> Batch:
        cache = self.cache
        batch = make_batch([cache.codes(int(i)) for i in indices], [cache.text_ids(int(i)) for i in indices],
                           max_len=self.max_len, eoa_id=cache.eoa_id)
        batch.rows = indices
        return batch.to(self.env.device)

    def step_batches(self, cursor: int) -> list[Batch]:
        """This process's micro-batches of the step that starts at `cursor` (its share of the accumulation)."""
        first = cursor + self.env.rank * self.accum_local
        return [self.batch(self.train_idx[self.sampler.micro_batch(first + j)]) for j in range(self.accum_local)]

    def held_out_batches(self) -> Iterator[Batch]:
        """This process's share of the held-out batches (every world_size-th one)."""
        for k, idx in enumerate(self.val_batches):
            if k % self.env.world_size == self.env.rank:
                yield self.batch(idx)
