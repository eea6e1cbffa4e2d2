"""The streaming engine: batched scheduler, multi-queue streamer, chunk schedule and joins.

Runs on the parity voice (1-layer decoder with random weights that never emits end-of-audio, small
codec), so every sentence is exactly `max_audio_length` codes long.
"""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
import torch

from llmvox.engine.config import StreamConfig
from llmvox.engine.engine import SpeechEngine, stream_speech
from llmvox.engine.generate import generate_segment
from llmvox.engine.scheduler import DecoderWorker, SegmentJob
from llmvox.errors import LLMVoXError
from llmvox.text.tokenizer import encode_words

MAX_CODES = 40
TEXT = "Hello world, this is a test. Dr. Smith paid $5 for it! Is it 3.5 degrees outside? Yes."


@pytest.fixture(scope="module")
def tts(parity_dir):
    from llmvox.api import LLMVoX

    torch.set_num_threads(1)
    return LLMVoX.from_original(
        str(parity_dir / "llmvox.pt"), str(parity_dir / "byt5_g2p"), str(parity_dir / "wavtokenizer_small.yaml"),
        str(parity_dir / "wavtokenizer.ckpt"), max_audio_length=MAX_CODES,
    )


@pytest.fixture(scope="module")
def engine(tts):
    with SpeechEngine(tts, num_workers=2, threads=1, config=StreamConfig(max_audio_length=MAX_CODES)) as eng:
        yield eng


def expected_codes(tts, words: list[str], max_audio_length: int = MAX_CODES) -> list[int]:
    return [c for _, c, _, eoa in generate_segment(tts.decoder, words, max_audio_length=max_audio_length) if not eoa]


def run_stream(engine, deltas, config: StreamConfig | None = None, delay: float = 0.0):
    stream = engine.open(config)
    for d in deltas:
        stream.feed(d)
        if delay:
            time.sleep(delay)
    stream.end()
    chunks = list(stream.chunks(timeout=60))
    return stream, chunks


def snr_db(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((x - ref).astype(np.float64) ** 2), 1e-30)))


# ---------------------------------------------------------------------------------------------
# scheduler


def test_batched_worker_matches_single_stream_generation(tts):
    """Segments admitted at different times, text fed while running: each gets generate_segment's codes."""
    sentences = [["Hello", "world,", "this", "is", "a", "test."], ["Another", "one!"], ["Short."],
                 ["A", "somewhat", "longer", "sentence", "with", "more", "words", "in", "it."]]
    worker = DecoderWorker(tts.decoder, name="t", max_batch=3)
    try:
        results: dict[int, list[int]] = {i: [] for i in range(len(sentences))}
        finished = threading.Event()
        left = [len(sentences)]
        lock = threading.Lock()

        def on_codes(i):
            def cb(job, codes, done):
                results[i].extend(codes)
                if done:
                    with lock:
                        left[0] -= 1
                        if left[0] == 0:
                            finished.set()
            return cb

        jobs = []
        for i, words in enumerate(sentences):
            ids = encode_words(words)
            job = SegmentJob(on_codes(i), max_audio_length=30 + 7 * i)
            if i % 2:  # half the jobs get their text in pieces while already running
                worker.submit(job)
                for k in range(0, len(ids), 5):
                    job.feed(ids[k:k + 5], last=k + 5 >= len(ids))
                    time.sleep(0.002)
            else:
                job.feed(ids, last=True)
                worker.submit(job)
            jobs.append(job)
        assert finished.wait(60)
        for i, words in enumerate(sentences):
            assert results[i] == expected_codes(tts, words, 30 + 7 * i), f"segment {i}"
        assert worker.active == 0 and worker.queued == 0
    finally:
        worker.close()


def test_cancel_frees_row_at_once(tts):
    worker = DecoderWorker(tts.decoder, name="c", max_batch=4)
    try:
        started = threading.Event()
        job = SegmentJob(lambda j, c, d: started.set(), max_audio_length=500)
        job.feed(encode_words(["A", "long", "one."]), last=True)
        other = SegmentJob(lambda j, c, d: None, max_audio_length=500)
        other.feed(encode_words(["Keep", "going."]), last=True)
        worker.submit(job)
        worker.submit(other)
        assert started.wait(10)
        t0 = time.perf_counter()
        job.cancel()
        while worker.active != 1 and time.perf_counter() - t0 < 1:
            time.sleep(0.001)
        assert worker.active == 1, "cancelled segment still holds its row"
        assert time.perf_counter() - t0 < 0.1
        other.cancel()
    finally:
        worker.close()


# ---------------------------------------------------------------------------------------------
# streamer


def test_stream_codes_equal_generate_segment_per_sentence(tts, engine):
    stream, chunks = run_stream(engine, [TEXT])
    assert stream.segments == 4
    assert stream.sentences[1][:3] == ["Doctor", "Smith", "paid"]  # normalised: "Dr." is not a sentence end
    for i, words in enumerate(stream.sentences):
        assert stream.segment_codes(i) == expected_codes(tts, words), f"sentence {i}: {words}"
    audio = np.concatenate([c.samples for c in chunks])
    assert len(audio) == len(stream.codes) * 320 >= 4 * MAX_CODES * 320  # long sentences: one code per text id
    assert [c.segment for c in chunks] == sorted(c.segment for c in chunks)  # sentence order
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0


def test_subword_deltas_give_the_same_audio(engine):
    _, whole = run_stream(engine, [TEXT])
    pieces = [TEXT[i:i + 3] for i in range(0, len(TEXT), 3)]  # an LLM's sub-word deltas
    stream, parts = run_stream(engine, pieces, delay=0.001)
    a = np.concatenate([c.samples for c in whole])
    b = np.concatenate([c.samples for c in parts])
    assert np.array_equal(a, b)


def test_concurrent_streams_do_not_change_each_other(engine):
    texts = ["First text here. It has two sentences.", "Second one! Quite different?", TEXT,
             "Numbers: 12 apples and 7 pears."]
    alone = [np.concatenate([c.samples for c in run_stream(engine, [t])[1]]) for t in texts]
    results: dict[int, np.ndarray] = {}

    def go(i):
        results[i] = np.concatenate([c.samples for c in run_stream(engine, [texts[i % 4]])[1]])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    # a stream cancelled midway runs beside them too
    victim = engine.open()
    victim.feed("This one is cancelled soon. " * 5)
    for t in threads:
        t.start()
    time.sleep(0.05)
    victim.cancel()
    for t in threads:
        t.join(60)
    for i in range(8):
        assert np.array_equal(results[i], alone[i % 4]), f"stream {i}"


def test_original_mode_reproduces_the_original_server(parity_ref, engine):
    """The original streamed codes 0-9 and 10-39 each decoded alone (its first two dumps)."""
    stream, chunks = run_stream(engine, ["Hello world, this is a test."],
                                StreamConfig(chunk_join="original", max_audio_length=120, normalize=False))
    assert stream.codes == parity_ref["gpt_codes"].tolist()
    lens = parity_ref["gpt_stream_chunk_lens"].tolist()
    assert [len(c.samples) for c in chunks[:2]] == lens
    got = np.concatenate([c.samples for c in chunks[:2]])
    ref = parity_ref["gpt_stream_audio"]
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 1e-4
    # and the rest of the sentence comes out at its end (the original would have waited for a 90-code dump)
    assert sum(len(c.samples) for c in chunks) == 120 * 320


def test_chunk_schedule_alternates_lanes_and_grows(engine):
    cfg = StreamConfig(chunk_join="original", max_audio_length=200)
    stream, chunks = run_stream(engine, ["One sentence here. Two sentence here. Three sentence here."], cfg)
    sizes = [(c.segment, len(c.samples) // 320) for c in chunks]
    # lane 0 starts at 10 and grows x3 (10, 30, 90, then the sentence's rest: 70); lane 1 starts at 160;
    # after its first sentence lane 0 is at 270, x9 at the sentence end: its third sentence is one chunk.
    assert sizes == [(0, 10), (0, 30), (0, 90), (0, 70), (1, 160), (1, 40), (2, 200)]


def test_context_join_is_closer_to_one_shot_than_original(tts, engine, record_property):
    """Joined stream vs. a one-shot decode of the same codes.

    The codec's pos-net normalises over time (GroupNorm) and attends globally, so every frame of a
    one-shot decode depends on all later frames; a stream cannot know them. We report three figures:
    the original's independent chunks, our context join, and the best any causal decoder can do
    (each 10-code step decoded with all earlier codes and 8 later ones).
    """
    text = "Hello world, this is a test. Another sentence follows it! And a third one? Then the end."
    cfg = StreamConfig(max_audio_length=100)
    stream, chunks = run_stream(engine, [text], cfg)
    ctx = np.concatenate([c.samples for c in chunks])
    _, orig_chunks = run_stream(engine, [text], replace_cfg(cfg, chunk_join="original"))
    orig = np.concatenate([c.samples for c in orig_chunks])
    codes = torch.tensor(stream.codes)
    one_shot = tts.decode(codes)
    assert len(ctx) == len(orig) == len(one_shot)
    ceiling_parts = []
    with torch.inference_mode():
        for e in range(10, len(codes) + 1, 10):
            a = tts.codec.decode_codes(codes[: min(e + 8, len(codes))][None])[0].numpy()
            ceiling_parts.append(a[(e - 10) * 320: e * 320])
    ceiling = np.concatenate(ceiling_parts)
    s_ctx, s_orig, s_ceiling = snr_db(ctx, one_shot), snr_db(orig, one_shot), snr_db(ceiling, one_shot[: len(ceiling)])
    record_property("snr_context_db", round(s_ctx, 2))
    record_property("snr_original_db", round(s_orig, 2))
    record_property("snr_causal_ceiling_db", round(s_ceiling, 2))
    print(f"SNR vs one-shot: context {s_ctx:.1f} dB, original {s_orig:.1f} dB, causal ceiling {s_ceiling:.1f} dB")
    assert s_ctx > s_orig + 2.0
    assert s_ctx > s_ceiling - 4.0
    # clicks: the jump across each join, relative to the one-shot signal's own jump there
    joins = np.cumsum([len(c.samples) for c in chunks])[:-1]
    orig_joins = np.cumsum([len(c.samples) for c in orig_chunks])[:-1]
    step = np.median(np.abs(np.diff(one_shot))) + 1e-9
    ctx_jump = max(abs(ctx[j] - ctx[j - 1]) for j in joins if 0 < j < len(ctx)) / step
    orig_jump = max(abs(orig[j] - orig[j - 1]) for j in orig_joins if 0 < j < len(orig)) / step
    record_property("join_jump_context", round(float(ctx_jump), 2))
    record_property("join_jump_original", round(float(orig_jump), 2))
    assert ctx_jump < orig_jump


def replace_cfg(cfg: StreamConfig, **kw) -> StreamConfig:
    from dataclasses import replace

    return replace(cfg, **kw)


def test_flush_closes_the_pending_sentence(tts, engine):
    stream = engine.open()
    stream.feed("Hello there my friend")
    n = stream.flush()
    assert n == 1
    stream.feed("and more words.")
    stream.end()
    chunks = list(stream.chunks(timeout=30))
    assert stream.sentences == [["Hello", "there", "my", "friend"], ["and", "more", "words."]]
    assert stream.segment_codes(0) == expected_codes(tts, ["Hello", "there", "my", "friend"])
    assert sum(len(c.samples) for c in chunks) == 2 * MAX_CODES * 320


def test_cancel_ends_the_stream_and_frees_the_workers(engine):
    stream = engine.open(StreamConfig(max_audio_length=400))
    stream.feed("A long sentence to speak. " * 6)
    it = stream.chunks(timeout=30)
    next(it)
    assert len(stream.segment_codes(0)) < 400  # the first audio comes long before the sentence is done
    t0 = time.perf_counter()
    stream.cancel()
    list(it)  # the iterator ends (after whatever was queued before the cancel)
    while any(w.active for w in engine.workers) and time.perf_counter() - t0 < 1:
        time.sleep(0.001)
    assert not any(w.active for w in engine.workers)
    assert time.perf_counter() - t0 < 0.1
    assert engine.active_streams == 0
    with pytest.raises(LLMVoXError):
        stream.feed("more")


def test_python_api_stream(tts):
    deltas = iter(["Hel", "lo wor", "ld. How are", " you?"])
    chunks = list(tts.stream(deltas, max_audio_length=MAX_CODES, num_workers=1))
    assert sum(len(c) for c in chunks) == 2 * MAX_CODES * 320
    assert all(c.dtype == np.float32 for c in chunks)
    with pytest.raises(LLMVoXError, match="unknown stream option"):
        list(stream_speech(tts, ["x."], bogus=1))


def test_text_source_error_ends_the_stream(tts):
    def deltas():
        yield "Hello world. "
        raise RuntimeError("the LLM broke")

    with pytest.raises(LLMVoXError, match="the LLM broke"):
        list(tts.stream(deltas(), max_audio_length=MAX_CODES, num_workers=1))


def test_text_source_llmvox_error_ends_the_stream_too(tts):
    """An LLMVoXError from the text source (e.g. an LLM backend's own error) must not hang the consumer."""
    def deltas():
        yield "Hello world. "
        raise LLMVoXError("the backend gave up")

    with pytest.raises(LLMVoXError, match="the backend gave up"):
        list(tts.stream(deltas(), max_audio_length=MAX_CODES, num_workers=1))


def test_a_phoneme_voice_streams_the_ids_its_front_end_reads(tts):
    """The engine follows the voice's front-end: word-by-word deltas give the codes of the whole sentence
    read by the g2p (the random decoder only needs ids inside its table)."""
    pytest.importorskip("hibari")
    from llmvox.api import LLMVoX
    from llmvox.text.frontend import PhonemeFrontend

    frontend = PhonemeFrontend()
    voice = LLMVoX(tts.decoder, tts.codec, max_audio_length=MAX_CODES, frontend=frontend)
    text = "The apple is red. The dog runs to the park!"
    with SpeechEngine(voice, num_workers=2, threads=1, config=StreamConfig(max_audio_length=MAX_CODES)) as eng:
        stream, chunks = run_stream(eng, [w + " " for w in text.split()], delay=0.002)
    assert stream.segments == 2 and chunks
    for i, words in enumerate(stream.sentences):
        expected = [c for _, c, _, eoa in generate_segment(voice.decoder, words, max_audio_length=MAX_CODES,
                                                           frontend=frontend) if not eoa]
        assert stream.segment_codes(i) == expected, words
        assert expected != expected_codes(tts, words)  # bytes would have said something else
    assert voice.generate(text).codes == stream.codes


def test_a_stream_bounds_its_text_once_spelled_out(engine):
    """`max_spoken_chars` counts the words as the stream normalises them (once): digits that multiply
    past it are a 413 before the rest of the text is read."""
    stream = engine.open(replace_cfg(engine.config, max_spoken_chars=200))
    with pytest.raises(LLMVoXError, match="more than 200 characters once numbers and symbols are spelled out") as err:
        stream.feed("Call 12345678 12345678 12345678 12345678 12345678 12345678 now. ")
    assert err.value.status == 413 and err.value.code == "text_too_long"
    stream.cancel()
    fine = engine.open(replace_cfg(engine.config, max_spoken_chars=200))
    fine.feed("Call 12345678 now.")
    fine.end()
    assert fine.spoken_chars <= 200 and list(fine.chunks(timeout=60))


# ---------------------------------------------------------------------------------------------
# the adaptive chunk policy


class _Worker:
    """A stand-in key for a worker whose measurements streams share (the policy keys them weakly)."""


def simulate_playout(rate: float, policy: str, n_codes: int = 150, codec_fixed: float = 0.004,
                     codec_per_frame: float = 0.00015, streams: int = 1, workers: tuple | None = None,
                     idle: int = 0) -> dict:
    """`streams` 150-code sentences in step through the chunk policy on a simulated clock: the decoder
    gives every stream a code each 1/rate s (one batched step), one codec queue (earliest deadline
    first, one decode at a time) takes `codec_fixed + codec_per_frame * window` per chunk, and each
    listener's `PlayoutClock` (in frames, 75 a second) counts the gaps. The policy, its estimators and
    the clock are the engine's own; only time is simulated. `workers`: (decoder, codec) keys whose
    measurements persist between calls, as a running server's do. `idle`: more streams open on the
    same workers that wait for text all along (an LLM still thinking)."""
    from llmvox.engine.chunk_policy import ChunkPolicy
    from llmvox.engine.playout import PlayoutClock

    cfg = StreamConfig(chunk_policy=policy)
    lanes = [workers or (_Worker(), _Worker())] if streams > 1 or workers else [(None, None)]
    pols = [ChunkPolicy(cfg, 75.0, lanes) for _ in range(streams)]
    waiting = [ChunkPolicy(cfg, 75.0, lanes) for _ in range(idle)]
    clocks = [PlayoutClock(75.0) for _ in range(streams)]
    state = [{"planned": 0, "emitted": 0, "dump": cfg.initial_dump_size_1, "sizes": [], "ready": []}
             for _ in range(streams)]
    queue: list[tuple[float, int, int, int, int, float]] = []  # (deadline, seq, stream, window, frames, submitted)
    codec = {"free": 0.0, "seq": 0}

    def run_codec(until: float) -> None:
        while queue and codec["free"] <= until:
            queue.sort()
            _, _, s, window, frames, submitted = queue.pop(0)
            start = max(codec["free"], submitted)
            took = codec_fixed + codec_per_frame * window
            codec["free"] = start + took
            pols[s].codec_done(0, window, start - submitted, took)
            state[s]["ready"].append((codec["free"], frames))

    def cut(s: int, now: float, end: int, final: bool) -> None:
        st = state[s]
        emit_end = end if final else max(st["emitted"], end - cfg.lookahead_frames)
        window = pols[s].window(end - st["planned"], first=not st["sizes"])
        codec["seq"] += 1
        deadline = clocks[s].due(st["emitted"]) if clocks[s].started else now
        queue.append((deadline, codec["seq"], s, window, emit_end - st["emitted"], now))
        st["sizes"].append(end - st["planned"])
        st["planned"], st["emitted"] = end, emit_end

    t = 0.02  # prefill
    for i in range(1, n_codes + 1):
        t += 1 / rate
        run_codec(t)
        for s, st in enumerate(state):
            while st["ready"] and st["ready"][0][0] <= t:
                when, frames = st["ready"].pop(0)
                clocks[s].heard(frames, when)
        for s, st in enumerate(state):
            if i == n_codes:
                cut(s, t, i, True)
            elif policy == "fixed":
                while i - st["planned"] >= st["dump"]:
                    cut(s, t, st["planned"] + st["dump"], False)
                    st["dump"] = min(3 * st["dump"], cfg.max_dump_size)
            elif pols[s].on_codes(0, 0, 1, t, pending=i - st["planned"], first=not st["sizes"],
                                  dry_at=clocks[s].due(st["emitted"]) if clocks[s].started else None,
                                  last_size=st["sizes"][-1] if st["sizes"] else 0, starved=False):
                cut(s, t, i, False)
    run_codec(math.inf)
    for s, st in enumerate(state):
        for when, frames in st["ready"]:
            clocks[s].heard(frames, when)
    for pol in pols + waiting:
        pol.close()
    first = sorted(c.first for c in clocks)
    return {"first_audio": first[len(first) // 2], "gaps": sum(c.gaps for c in clocks),
            "stall": max(c.stall for c in clocks), "sizes": state[0]["sizes"],
            "decodes": sum(len(st["sizes"]) for st in state)}


def test_adaptive_policy_keeps_a_slow_decoder_gap_free():
    """100 codes/s (a loaded CPU, a full batch): the original schedule's 30-code second chunk cannot be
    made while the first 6 frames play, so it gaps; the adaptive plan cuts the next chunks small, just
    before the buffer runs dry, and grows them with the buffer: the listener hears no gap, and the first
    word comes as early as with the fixed schedule."""
    fixed = simulate_playout(100, "fixed")
    assert fixed["gaps"] >= 1 and fixed["stall"] > 0.3  # the hole after the first word
    adaptive = simulate_playout(100, "adaptive")
    assert adaptive["gaps"] == 0 and adaptive["stall"] == 0
    assert adaptive["sizes"][0] == fixed["sizes"][0] == 10
    assert adaptive["first_audio"] == pytest.approx(fixed["first_audio"])
    assert adaptive["sizes"][1] < 10 and adaptive["sizes"][-2] > 5 * adaptive["sizes"][1]  # they grow
    assert sum(adaptive["sizes"]) == 150


def test_adaptive_policy_keeps_the_first_chunk_small_when_fast():
    fast = simulate_playout(300, "adaptive")
    assert fast["sizes"][0] == StreamConfig().initial_dump_size_1
    assert fast["first_audio"] == pytest.approx(simulate_playout(300, "fixed")["first_audio"])
    assert fast["gaps"] == 0 and len(fast["sizes"]) <= 6


def test_adaptive_policy_below_real_time_gives_few_gaps_and_less_stall():
    """60 codes/s cannot be gap-free without a pre-buffer as long as the deficit; the chunks then grow
    1.5x each, so the listener hears a few gaps, and waits less in all than with the fixed schedule."""
    fixed, adaptive = simulate_playout(60, "fixed"), simulate_playout(60, "adaptive")
    assert 1 <= adaptive["gaps"] <= 4
    assert adaptive["stall"] < fixed["stall"]
    sizes = adaptive["sizes"][:-1]
    assert all(b >= a for a, b in zip(sizes, sizes[1:], strict=False))


def test_adaptive_policy_keeps_sixteen_streams_on_one_codec_gap_free():
    """16 streams in step (one batched decoder, 118 codes/s each: 1.6x real time) share one codec whose
    decode costs 3.5 ms + 0.09 ms a frame (this CPU's embedded codec, one thread). Chunks as small as
    one stream alone could afford re-decode their 64 context frames so often that the codec cannot keep
    up, and a chunk cut at once by all 16 waits for 15 decodes: the policy sizes chunks (the first one
    too) for the codec's share and its queue, so nobody hears a gap, at a later first word."""
    codec = {"codec_fixed": 0.0035, "codec_per_frame": 0.00009}
    workers = (_Worker(), _Worker())
    simulate_playout(300, "adaptive", workers=workers, **codec)  # the server's warm-up request
    many = simulate_playout(118, "adaptive", streams=16, workers=workers, **codec)
    assert many["gaps"] == 0
    solo = simulate_playout(118, "adaptive", workers=workers, **codec)
    assert many["sizes"][0] > StreamConfig().initial_dump_size_1 and min(many["sizes"][:-1]) > 2 * min(solo["sizes"][:-1])
    assert many["first_audio"] < 0.45
    fixed = simulate_playout(118, "fixed", streams=16, **codec)
    assert fixed["gaps"] >= 16  # the original schedule: every stream's second chunk comes late
    # the policy alone, from one stream to many: one stream keeps its small first chunk
    assert solo["sizes"][0] == 10 and solo["gaps"] == 0


def test_streams_waiting_for_text_do_not_take_a_share_of_the_codec():
    """One stream speaking while 15 others are open but wait for their LLM's text: they cut no chunks,
    so the speaking stream keeps the small first chunk and early first word of a stream alone (counted
    from open to finish, they would make it as large as 16 speaking streams need)."""
    codec = {"codec_fixed": 0.0035, "codec_per_frame": 0.00009}
    workers = (_Worker(), _Worker())
    simulate_playout(300, "adaptive", workers=workers, **codec)
    one = simulate_playout(118, "adaptive", workers=workers, idle=15, **codec)
    alone = simulate_playout(118, "adaptive", workers=workers, **codec)
    assert one["sizes"][0] == alone["sizes"][0] == StreamConfig().initial_dump_size_1
    assert one["gaps"] == 0 and one["first_audio"] == pytest.approx(alone["first_audio"])
    many = simulate_playout(118, "adaptive", streams=16, workers=workers, **codec)
    assert many["sizes"][0] > one["sizes"][0]  # 16 speaking streams do share it


def test_engine_streams_waiting_for_text_count_on_no_codec(engine):
    """The same on the real engine: open streams that have no text yet, or whose text is spoken, are
    not counted among their codec's streams; one that is making codes is."""
    cfg = StreamConfig(chunk_policy="adaptive", max_audio_length=MAX_CODES)
    waiting = [engine.open(cfg) for _ in range(3)]
    speaking = engine.open(StreamConfig(chunk_policy="adaptive", max_audio_length=400))
    costs = {id(c): c for s in waiting + [speaking] for c in s._policy.codecs}.values()
    assert sum(c.streams for c in costs) == 0  # counted from open, they would be 4 per lane
    speaking.feed("One sentence to speak, long enough to be making codes when its first audio comes.")
    speaking.end()  # one segment: one lane makes codes (this random model never ends a sentence early)
    it = speaking.chunks(timeout=30)
    next(it)
    assert len(speaking.segment_codes(0)) < 400  # still making codes
    assert sum(c.streams for c in costs) == 1  # the speaking stream only
    speaking.cancel()
    list(it)
    assert sum(c.streams for c in costs) == 0
    for s in waiting:
        s.cancel()


def test_adaptive_policy_with_a_codec_too_slow_for_its_streams_keeps_the_first_word_early():
    """A codec no chunk size can keep up with (1 ms a frame for 16 streams: 16 ms of decoding per 13.3 ms
    code): gaps must come, so the first chunk stays small (no 1 s pre-buffer that still gaps) and
    the later ones are as large as allowed (the fewest decodes)."""
    codec = {"codec_fixed": 0.004, "codec_per_frame": 0.001}
    workers = (_Worker(), _Worker())
    simulate_playout(300, "adaptive", workers=workers, **codec)
    slow = simulate_playout(118, "adaptive", streams=16, workers=workers, **codec)
    assert slow["sizes"][0] == StreamConfig().initial_dump_size_1
    assert len(slow["sizes"]) == 2  # the first chunk, then the rest of the sentence in one


def test_adaptive_stream_speaks_the_same_codes_with_other_joins(engine, record_property):
    """On the real engine: the same codes as the fixed schedule, the audio cut elsewhere (the context
    join cross-fades other samples), and the stream's own playout accounting in its timings."""
    text = "Hello world, this is a test. Another sentence follows it! And a third one?"
    cfg = StreamConfig(max_audio_length=100)
    fixed, fixed_chunks = run_stream(engine, [text], cfg)
    stream, chunks = run_stream(engine, [text], replace_cfg(cfg, chunk_policy="adaptive"))
    assert stream.codes == fixed.codes
    a = np.concatenate([c.samples for c in fixed_chunks])
    b = np.concatenate([c.samples for c in chunks])
    assert len(a) == len(b) == len(stream.codes) * 320
    snr = snr_db(b, a)
    record_property("snr_adaptive_vs_fixed_db", round(snr, 2))
    print(f"adaptive vs fixed schedule, same codes: SNR {snr:.1f} dB; chunks "
          f"{[len(c.samples) // 320 for c in chunks]} vs {[len(c.samples) // 320 for c in fixed_chunks]}")
    assert snr > 12  # the context join itself is ~11 dB from a one-shot decode on this codec
    first = len(chunks[0].samples) // 320
    assert first == 10 - 4  # initial_dump_size_1 codes, less the look-ahead, as the fixed schedule
    timings = stream.timings()
    assert timings["playback_gaps"] == stream.playout.gaps >= 0
    assert timings["stall_seconds"] == stream.playout.stall >= 0
    assert stream.playout.received == len(b)


def test_codec_worker_batches_equal_windows_of_queued_decodes(small_codec):
    """Batchable windows of one model and length that wait together share one codec call; their audio is
    each window's own decode (to float rounding); other lengths and non-batchable ones run alone."""
    import threading as th

    from llmvox.engine.codec_worker import CodecWorker, Decode

    worker = CodecWorker(name="codec-test")
    gate, results, lock = th.Event(), {}, th.Lock()

    def record(name):
        def done(audio, error, waited, took):
            with lock:
                results[name] = (audio, error)
        return done

    try:
        worker.submit(lambda: gate.wait(10), deadline=0.0)  # holds the thread while the rest queue up
        rng = np.random.default_rng(0)
        windows = {f"w{i}": rng.integers(0, small_codec.codebook_size, 12).tolist() for i in range(4)}
        windows["long"] = rng.integers(0, small_codec.codebook_size, 20).tolist()
        windows["alone"] = rng.integers(0, small_codec.codebook_size, 12).tolist()
        for i, (name, codes) in enumerate(windows.items()):
            worker.submit(Decode(small_codec, codes, record(name), batchable=name != "alone"), deadline=1.0 + i)
        gate.set()
        deadline = time.time() + 30
        while len(results) < len(windows) and time.time() < deadline:
            time.sleep(0.01)
    finally:
        worker.close()
    assert worker.batched_decodes == 4  # w0..w3 in one call; "long" and "alone" each on their own
    assert worker.decodes == 1 + len(windows)
    with torch.inference_mode():
        for name, codes in windows.items():
            audio, error = results[name]
            assert error is None
            solo = small_codec.decode_codes(torch.tensor([codes]))[0].numpy()
            assert audio.shape == solo.shape and np.abs(audio - solo).max() < 1e-4
