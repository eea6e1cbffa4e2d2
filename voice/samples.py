"""Model-card samples: copy a few held-out sentences' WAVs out of an `llmvox eval` result and draw the
spectrogram of the first one next to the teacher's (and the codec's resynthesis).

    .venv/bin/python voice/samples.py voice/eval.json llmvox/voices/default/samples [N]

Writes DEST/NN_voice.wav, NN_teacher.wav, NN_codec.wav and DEST/spectrogram.png, and prints a table
of the texts and what Whisper heard, ready to paste into the model card.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import soundfile as sf

from llmvox.bench.spectrogram import spectrogram_figure

# Short and long, a question, numbers: the first sentence is the one drawn.
PICK = (3, 0, 6, 7)  # the bundle keeps the first two (its 40 MB budget)


def main(result_path: str, dest: str, count: int = len(PICK)) -> None:
    result = json.loads(Path(result_path).read_text())
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    systems = [s for s in ("voice", "teacher", "codec") if s in result["systems"]]
    rows = ["| file | text | Whisper base heard |", "| --- | --- | --- |"]
    for n, index in enumerate(PICK[:count]):
        sentence = result["sentences"][index]
        for system in systems:
            name = f"{n:02d}_{system}.wav"
            audio, rate = sf.read(sentence[system]["wav"], dtype="float32")
            sf.write(str(out / name), audio, rate, subtype="PCM_16")  # half the bytes of float WAVs
            rows.append(f"| {name} | {sentence['text']} | {sentence[system]['hypothesis']} |")
    first = result["sentences"][PICK[0]]
    spectrogram_figure({s: first[s]["wav"] for s in systems}, out / "spectrogram.png",
                       title=f"\"{first['text']}\"")

    print("\n".join(rows))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:]))
