"""Sizes of a WavTokenizer codec, read from the original YAML schema.

The original project builds its model from a Lightning CLI YAML (`model.init_args.feature_extractor /
backbone / head`) and hard-codes the encoder sizes in Python. `CodecConfig` keeps every size in one
place: the YAML supplies what it has, the encoder sizes default to the values the original fixes in
code, so a smaller codec of our own can change them and still round-trip through JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from llmvox.errors import LLMVoXError

# The class paths the original YAML names for the parts we implement.
_FEATURE_EXTRACTOR = "EncodecFeatures"
_BACKBONE = "VocosBackbone"
_HEAD = "ISTFTHead"


SAMPLE_RATE = 24000  # LLMVoX's WavTokenizer: 24 kHz audio, 75 codes a second at hop 320


@dataclass
class CodecConfig:
    """Every size that shapes a WavTokenizer model (encoder, codebook, backbone, ISTFT head)."""

    sample_rate: int = SAMPLE_RATE
    # Encoder (SEANet + LSTM); the original fixes all but the ratios in code.
    downsample_ratios: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    encoder_filters: int = 32
    encoder_dimension: int = 512
    encoder_lstm_layers: int = 2
    encoder_residual_layers: int = 1
    # Quantizer: one codebook (the original inference path uses only the first).
    codebook_size: int = 4096
    num_quantizers: int = 1
    bandwidths: list[float] = field(default_factory=lambda: [6.6, 6.6, 6.6, 6.6])
    vq_kmeans: int = 200
    # Vocos backbone.
    backbone_dim: int = 768
    backbone_intermediate_dim: int = 2304
    backbone_layers: int = 12
    adanorm_num_embeddings: int | None = 4
    layer_scale_init_value: float | None = None
    # ISTFT head.
    n_fft: int = 1280
    hop_length: int = 320
    padding: str = "same"

    def __post_init__(self) -> None:
        self.downsample_ratios = [int(r) for r in self.downsample_ratios]
        self.bandwidths = [float(b) for b in self.bandwidths]
        self.validate()

    @property
    def encoder_hop(self) -> int:
        """Audio samples per code frame produced by the encoder."""
        return math.prod(self.downsample_ratios)

    def validate(self) -> None:
        """Reject combinations the model cannot run, with a message naming the fields."""
        positive = {
            "sample_rate": self.sample_rate,
            "encoder_filters": self.encoder_filters,
            "encoder_dimension": self.encoder_dimension,
            "codebook_size": self.codebook_size,
            "backbone_dim": self.backbone_dim,
            "backbone_intermediate_dim": self.backbone_intermediate_dim,
            "backbone_layers": self.backbone_layers,
            "n_fft": self.n_fft,
            "hop_length": self.hop_length,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise LLMVoXError(f"codec config: {name} must be a positive integer, got {value!r}")
        if not self.downsample_ratios or any(r <= 0 for r in self.downsample_ratios):
            raise LLMVoXError(f"codec config: bad downsample ratios {self.downsample_ratios}")
        if self.num_quantizers != 1:
            raise LLMVoXError(
                f"codec config: num_quantizers is {self.num_quantizers}; only single-codebook "
                "WavTokenizer models (num_quantizers: 1) are supported"
            )
        if self.encoder_hop != self.hop_length:
            raise LLMVoXError(
                f"codec config: the encoder downsamples by {self.encoder_hop} "
                f"(product of {self.downsample_ratios}) but the head hop_length is {self.hop_length}; "
                "they must be equal so that one code is one hop of audio"
            )
        if self.backbone_dim % 32:
            raise LLMVoXError(
                f"codec config: backbone dim {self.backbone_dim} must be a multiple of 32 "
                "(the pos-net uses GroupNorm with 32 groups)"
            )
        if self.padding not in ("same", "center"):
            raise LLMVoXError(f"codec config: head padding must be 'same' or 'center', got {self.padding!r}")
        if self.padding == "same" and (self.n_fft - self.hop_length) < 2:
            raise LLMVoXError("codec config: 'same' padding needs n_fft >= hop_length + 2")
        if self.adanorm_num_embeddings is not None and self.adanorm_num_embeddings <= 0:
            raise LLMVoXError("codec config: adanorm_num_embeddings must be positive or null")

    # --- JSON (our bundle) -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LLMVoXError(f"codec config: unknown fields {unknown}")
        return cls(**data)

    # --- the original YAML schema ----------------------------------------------------------

    @classmethod
    def from_yaml_dict(cls, config: dict[str, Any]) -> CodecConfig:
        """Read the `model.init_args` part of an original WavTokenizer YAML config."""
        try:
            init = config["model"]["init_args"]
            fe = _section(init, "feature_extractor", _FEATURE_EXTRACTOR)
            bb = _section(init, "backbone", _BACKBONE)
            hd = _section(init, "head", _HEAD)
        except (KeyError, TypeError) as exc:
            raise LLMVoXError(
                "codec config: expected the original WavTokenizer layout "
                "model.init_args.{feature_extractor,backbone,head}; missing " + str(exc)
            ) from None
        encodec_model = fe.get("encodec_model", "encodec_24khz")
        if encodec_model != "encodec_24khz":
            raise LLMVoXError(f"codec config: unsupported encodec_model {encodec_model!r}")
        head_dim = int(hd["dim"])
        if head_dim != int(bb["dim"]):
            raise LLMVoXError(f"codec config: head dim {head_dim} differs from backbone dim {bb['dim']}")
        values: dict[str, Any] = {
            "sample_rate": int(init.get("sample_rate", 24000)),
            "downsample_ratios": list(fe.get("dowmsamples", [6, 5, 5, 4])),
            "codebook_size": int(fe.get("vq_bins", 16384)),
            "num_quantizers": int(fe.get("num_quantizers", 1)),
            "bandwidths": list(fe.get("bandwidths", [1.5, 3.0, 6.0, 12.0])),
            "vq_kmeans": int(fe.get("vq_kmeans", 800)),
            "backbone_dim": int(bb["dim"]),
            "backbone_intermediate_dim": int(bb["intermediate_dim"]),
            "backbone_layers": int(bb["num_layers"]),
            "adanorm_num_embeddings": _opt_int(bb.get("adanorm_num_embeddings")),
            "layer_scale_init_value": _opt_float(bb.get("layer_scale_init_value")),
            "n_fft": int(hd["n_fft"]),
            "hop_length": int(hd["hop_length"]),
            "padding": str(hd.get("padding", "same")),
        }
        # Our own extension: encoder sizes the original fixes in code may be given explicitly.
        for key in ("encoder_filters", "encoder_dimension", "encoder_lstm_layers", "encoder_residual_layers"):
            if key in fe:
                values[key] = int(fe[key])
        input_channels = int(bb.get("input_channels", values.get("encoder_dimension", 512)))
        cfg = cls(**values)
        if input_channels != cfg.encoder_dimension:
            raise LLMVoXError(
                f"codec config: backbone input_channels {input_channels} differs from the encoder "
                f"dimension {cfg.encoder_dimension}"
            )
        return cfg

    def to_yaml_dict(self) -> dict[str, Any]:
        """The original YAML layout (model part only) describing this config."""
        fe: dict[str, Any] = {
            "encodec_model": "encodec_24khz",
            "bandwidths": list(self.bandwidths),
            "train_codebooks": True,
            "num_quantizers": self.num_quantizers,
            "dowmsamples": list(self.downsample_ratios),
            "vq_bins": self.codebook_size,
            "vq_kmeans": self.vq_kmeans,
        }
        defaults = CodecConfig.__dataclass_fields__
        for key in ("encoder_filters", "encoder_dimension", "encoder_lstm_layers", "encoder_residual_layers"):
            if getattr(self, key) != defaults[key].default:
                fe[key] = getattr(self, key)
        bb: dict[str, Any] = {
            "input_channels": self.encoder_dimension,
            "dim": self.backbone_dim,
            "intermediate_dim": self.backbone_intermediate_dim,
            "num_layers": self.backbone_layers,
            "adanorm_num_embeddings": self.adanorm_num_embeddings,
        }
        if self.layer_scale_init_value is not None:
            bb["layer_scale_init_value"] = self.layer_scale_init_value
        return {
            "model": {
                "class_path": "decoder.experiment.WavTokenizer",
                "init_args": {
                    "sample_rate": self.sample_rate,
                    "feature_extractor": {
                        "class_path": "decoder.feature_extractors.EncodecFeatures",
                        "init_args": fe,
                    },
                    "backbone": {"class_path": "decoder.models.VocosBackbone", "init_args": bb},
                    "head": {
                        "class_path": "decoder.heads.ISTFTHead",
                        "init_args": {
                            "dim": self.backbone_dim,
                            "n_fft": self.n_fft,
                            "hop_length": self.hop_length,
                            "padding": self.padding,
                        },
                    },
                },
            }
        }

    @classmethod
    def from_yaml(cls, path: str | Path) -> CodecConfig:
        """Load an original WavTokenizer YAML file."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise LLMVoXError(f"codec config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise LLMVoXError(f"codec config {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise LLMVoXError(f"codec config {path} is not a WavTokenizer YAML mapping")
        try:
            return cls.from_yaml_dict(data)
        except LLMVoXError as exc:
            raise LLMVoXError(f"{path}: {exc}") from None


def _section(init: dict[str, Any], name: str, expected_class: str) -> dict[str, Any]:
    part = init[name]
    class_path = str(part.get("class_path", expected_class))
    if class_path.rsplit(".", 1)[-1] != expected_class:
        raise LLMVoXError(f"codec config: {name} class {class_path!r} is not supported (need {expected_class})")
    return dict(part.get("init_args") or {})


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
