#!/usr/bin/env bash
# Build the embedded voice with llmvox's own pipeline, stage by stage; every stage resumes.
#   voice/build.sh synth      teacher corpus (hibari-tts): generated sentences, then SmolLM2 answers
#   voice/build.sh semantic   Whisper-base encoder features of the corpus (targets of the codec's semantic loss)
#   voice/build.sh codec      train the small codec, phase A (all of it)   [extra flags pass through]
#   voice/build.sh codec_b    phase B: encoder + codebook frozen (codes fixed), vocoder keeps learning
#   voice/build.sh recodec DIR  a phase-B codec milestone -> voice/milestones/codec and the shipped bundle's codec,
#                             once its codes are shown identical (voice/recodec.py; the decoder is unchanged)
#   voice/build.sh tokenize   encode the corpus once with the (frozen) codec (WORKERS processes, default THREADS)
#   voice/build.sh decoder    train the LLMVoX decoder on the cached codes (--max_codes N: short sentences first;
#                             GUIDED=L.H,... guides those heads to read the text in order; CTC=W weighs the
#                             phoneme CTC target, default 1, CTC=0 turns it off; CTC_AFTER=1 reads only the
#                             steps after the text; FRONTEND=phonemes reads phonemes, not bytes; MAX_ITERS=N,
#                             default 7000)
#   voice/build.sh pack_codes the tokenised corpus -> voice/milestones/corpus_codes.tar.xz (4 MB: a fresh
#                             machine trains the decoder at once, without synth + tokenize, ~30 min)
#   voice/build.sh probe      WER of the decoder's latest checkpoint on the first 40 held-out sentences
#   voice/build.sh milestone  the decoder's latest checkpoint -> voice/milestones/decoder (bf16, committed)
#   voice/build.sh export     write the bundle into llmvox/voices/default (bf16)
#   voice/build.sh eval       WER/CER on the held-out sentences, with teacher and codec references
# Working state lives outside the repository in $VOICE_DIR (default /work/cache/voice).
set -euo pipefail
cd "$(dirname "$0")/.."
VOICE_DIR=${VOICE_DIR:-/work/cache/voice}
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS OPENBLAS_NUM_THREADS=$THREADS
PY=.venv/bin/python
DATA=$VOICE_DIR/data/data.json
CODEC=${CODEC:-$VOICE_DIR/codec_sem}
DEC=${DEC:-$VOICE_DIR/decoder_v3}  # v0.3's run (v0.2's was $VOICE_DIR/decoder)
SEMANTIC=$VOICE_DIR/semantic
CODEC_MILESTONE=${CODEC_MILESTONE:-voice/milestones/codec}  # the evaluated codec that probes and the bundle use
CODES_MILESTONE=voice/milestones/corpus_codes.tar.xz  # the corpus tokenised with that codec
# the working codec when this machine trained one, else the committed milestone (same encoder and codebook)
if [ -f "$CODEC/config.yaml" ]; then
  CODEC_ARGS=(--wav_config_path "$CODEC/config.yaml" --wav_model_path "$CODEC/wavtokenizer.ckpt")
else
  CODEC_ARGS=(--bundle "$CODEC_MILESTONE")
fi
stage=${1:?stage: synth|semantic|codec|codec_b|recodec|tokenize|pack_codes|decoder|probe|milestone|export|eval}
shift || true
case "$stage" in
  synth)
    exec $PY -m llmvox data synth --out_dir "$VOICE_DIR/data" --teacher hibari --seed 0 --threads "$THREADS" \
      --num_sentences 54000 --num_prompts "${NUM_PROMPTS:-1300}" "$@" ;;
  semantic)
    exec $PY -m llmvox codec semantic --data_path "$DATA" --out_dir "$SEMANTIC" --threads "$THREADS" "$@" ;;
  codec|codec_b)
    extra=(); [ "$stage" = codec_b ] && extra=(--freeze_encoder)
    if [ -f "$CODEC/state.pt" ]; then
      exec $PY -m llmvox codec train --resume --data_path "$DATA" --out_dir "$CODEC" --threads "$THREADS" "${extra[@]}" "$@"
    fi
    # A fresh machine continues from the last committed milestone (weights only); from scratch, the
    # first 1,000 steps run unquantised so the encoder learns the Whisper-feature (semantic) targets
    # before k-means fixes the codebook.
    init=(--vq_warmup_steps 1000)
    [ -f voice/milestones/codec/codec.safetensors ] && init=(--init_weights voice/milestones/codec)
    exec $PY -m llmvox codec train --config llmvox/voices/configs/codec_small.yaml --data_path "$DATA" \
      --out_dir "$CODEC" --semantic_dir "$SEMANTIC" --semantic_weight 45 --export_every 500 \
      "${init[@]}" "${extra[@]}" "$@" ;;
  recodec)
    new=${1:?recodec: the phase-B codec milestone folder}
    $PY voice/recodec.py --codec "$new" --data "$DATA" --cache "$VOICE_DIR/cache" --json voice/recodec.json
    cp "$new"/codec.safetensors "$new"/config.json "$new"/config.yaml "$CODEC_MILESTONE"/ ;;
  tokenize)
    exec $PY -m llmvox data tokenize --data_path "$DATA" --cache_dir "$VOICE_DIR/cache" --threads 1 --workers "${WORKERS:-$THREADS}" \
      "${CODEC_ARGS[@]}" "$@" ;;
  pack_codes)
    exec tar -C "$VOICE_DIR" --exclude=.lock -cJf "$CODES_MILESTONE" cache ;;
  decoder)
    # resume the full checkpoint; without one, INIT=llmvox/voices/default warm-starts from the shipped voice
    init=(--init_from=scratch)
    if [ -f "$DEC/ckpt.pt" ]; then init=(--init_from=resume); elif [ -n "${INIT:-}" ]; then init=(--init_from="$INIT"); fi
    # a fresh machine without the corpus trains on the committed tokenised corpus
    if [ ! -f "$DATA" ] && [ ! -d "$VOICE_DIR/cache" ] && [ -f "$CODES_MILESTONE" ]; then
      mkdir -p "$VOICE_DIR" && tar -C "$VOICE_DIR" -xJf "$CODES_MILESTONE"
    fi
    [ -f "$DATA" ] || DATA=$VOICE_DIR/cache
    exec $PY -m llmvox train --data_path "$DATA" --cache_dir "$VOICE_DIR/cache" --out_dir "$DEC" "${CODEC_ARGS[@]}" \
      --n_layer=6 --n_head=6 --n_embd=384 --block_size=1024 --init_text_table=random \
      --batch_size=16 --learning_rate=1e-3 --min_lr=1e-4 --warmup_iters=300 --max_iters="${MAX_ITERS:-7000}" \
      --lr_decay_iters="${MAX_ITERS:-7000}" --dtype=bfloat16 --num_threads="$THREADS" --max_seq_len=1024 \
      --eval_interval=1000 ${GUIDED:+--guided_attn_heads="$GUIDED"} \
      --phoneme_ctc_weight="${CTC:-1}" ${CTC_AFTER:+--phoneme_ctc_after_text=True} --text_frontend="${FRONTEND:-byt5}" \
      "${init[@]}" "$@" ;;
  probe)
    mkdir -p "$VOICE_DIR/probe" voice/probe
    cp "$DEC/ckpt.pt" "$VOICE_DIR/probe/ckpt.pt"  # a snapshot: training may write a new one meanwhile
    step=$($PY -c "import sys, torch; print(torch.load(sys.argv[1], weights_only=True, mmap=True)['iter_num'])" \
      "$VOICE_DIR/probe/ckpt.pt")
    $PY -m llmvox convert --llmvox_checkpoint_path "$VOICE_DIR/probe/ckpt.pt" --codec "$CODEC_MILESTONE" \
      --out "$VOICE_DIR/probe/${PROBE_TAG:-}step_$step" --dtype bfloat16
    exec $PY -m llmvox eval --sentences llmvox/voices/heldout_sentences.txt --limit "${LIMIT:-40}" \
      --bundle "$VOICE_DIR/probe/${PROBE_TAG:-}step_$step" --json "voice/probe/decoder_${PROBE_TAG:-}step_$step.json" \
      --wav_dir "$VOICE_DIR/probe/${PROBE_TAG:-}step_${step}_wavs" --threads "$THREADS" --no_progress "$@" ;;
  milestone)
    # the decoder's latest checkpoint as an inference milestone in the repository (bf16 decoder + config;
    # the codec is voice/milestones/codec): a fresh machine continues with INIT=voice/milestones/decoder
    tmp=$(mktemp -d)
    $PY -m llmvox convert --llmvox_checkpoint_path "$DEC/ckpt.pt" --codec "$CODEC_MILESTONE" --out "$tmp/bundle" \
      --dtype bfloat16 "$@"
    mkdir -p voice/milestones/decoder
    cp "$tmp/bundle/config.json" "$tmp/bundle/decoder.safetensors" voice/milestones/decoder/
    rm -f voice/milestones/decoder/phoneme_ctc.safetensors  # the CTC head, when the run trains one
    [ -f "$tmp/bundle/phoneme_ctc.safetensors" ] && cp "$tmp/bundle/phoneme_ctc.safetensors" voice/milestones/decoder/
    rm -rf "$tmp" ;;
  export)
    # the decoder's latest checkpoint + the committed (evaluated) codec milestone -> the shipped bundle
    exec $PY -m llmvox convert --llmvox_checkpoint_path "$DEC/ckpt.pt" --codec "$CODEC_MILESTONE" \
      --out llmvox/voices/default --name default --dtype bfloat16 "$@" ;;
  eval)
    exec $PY -m llmvox eval --sentences llmvox/voices/heldout_sentences.txt --json voice/eval.json \
      --teacher hibari --codec_resynthesis "$@" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
