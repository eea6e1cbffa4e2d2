"""Images from clients: base64 strings, data URLs or uploaded bytes -> RGB PIL images, with limits.

Vision chat takes pictures from strangers, so every image is checked before a model sees it: it must
decode as an image, there may only be so many, and its size (bytes and pixels) is capped, both to keep
the server's memory bounded and to refuse decompression bombs with a clear message.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from llmvox.errors import LLMVoXError
from llmvox.input_errors import InputError, InputTooLarge

INSTALL_PILLOW = "pip install pillow"


@dataclass(frozen=True)
class ImageLimits:
    """Caps for one request; the defaults suit phone photos and screenshots."""

    max_images: int = 4
    max_bytes: int = 20 * 1024 * 1024  # encoded size of one image
    max_pixels: int = 40_000_000  # width x height of one image (a 7,000 x 5,700 photo)


MB = 1024 * 1024  # the unit of --max_image_mb
_SPACE = " \t\r\n\v\f"


def megabytes(size: int) -> str:
    """`size` in the flag's unit (MB = 1024 * 1024 bytes), as short as it is exact: "20", "0.5"."""
    return f"{round(size / MB, 3):g}"


def _payload(data: str, what: str) -> str:
    """The base64 text of a field: surrounding whitespace and a `data:...;base64,` prefix removed."""
    if not isinstance(data, str):
        raise InputError(f"{what} must be a base64 string")
    text = data.strip()
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if ";base64" not in head:
            raise InputError(f"{what}: only base64 data URLs are supported")
    return text


def base64_size(data: str, what: str = "base64") -> int:
    """How many bytes `data` (base64, data URL or not) decodes to, counted from its length without
    decoding it (whitespace and padding not counted), so an oversize string costs nothing to refuse."""
    text = _payload(data, what)
    chars = len(text) - sum(text.count(c) for c in _SPACE)
    tail = text.rstrip(_SPACE)
    return max(0, (chars - (len(tail) - len(tail.rstrip("=")))) * 3 // 4)


def base64_head(data: str, size: int = 9) -> bytes:
    """The first `size` decoded bytes of `data` (enough for a file signature), decoding only those;
    b"" when they are not base64 (the full decode then says what is wrong)."""
    try:
        text = _payload(data, "base64")
    except InputError:
        return b""
    chars = "".join(text[: 4 * size].split())[: 4 * -(-size // 3)]
    try:
        if "-" in chars or "_" in chars:
            return base64.urlsafe_b64decode(chars + "=" * (-len(chars) % 4))[:size]
        return base64.b64decode(chars + "=" * (-len(chars) % 4), validate=True)[:size]
    except (binascii.Error, ValueError):
        return b""


def decode_base64(data: str, what: str = "image_base64", max_bytes: int | None = None) -> bytes:
    """Strict base64 (a `data:...;base64,` prefix and whitespace allowed) -> bytes. With `max_bytes`, a
    string that would decode to more is refused (InputTooLarge) by its length, before it is decoded."""
    text = _payload(data, what)
    if max_bytes is not None and (size := base64_size(text, what)) > max_bytes:
        raise InputTooLarge(f"{what} is {size / MB:.1f} MB; the limit is {megabytes(max_bytes)} MB (--max_image_mb)")
    text = "".join(text.split())
    if not text:
        raise InputError(f"{what} is empty")
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{what} is not valid base64") from None


def load_image(data: bytes | str, *, limits: ImageLimits = ImageLimits(), what: str = "image"):
    """Bytes of an image file, or its base64 text -> an RGB PIL image (LLMVoXError if it is not one)."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise LLMVoXError(f"images need Pillow; run: {INSTALL_PILLOW}") from None
    raw = decode_base64(data, what, limits.max_bytes) if isinstance(data, str) else bytes(data)
    if not raw:
        raise InputError(f"{what} is empty")
    if len(raw) > limits.max_bytes:
        raise InputTooLarge(f"{what} is {len(raw) / MB:.1f} MB; the limit is {megabytes(limits.max_bytes)} MB "
                            "(--max_image_mb)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InputTooLarge(f"{what} is {width}x{height} pixels; the limit is {limits.max_pixels:,} pixels")
            image.load()
    except LLMVoXError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputTooLarge(f"{what} has too many pixels; the limit is {limits.max_pixels:,} pixels") from None
    except UnidentifiedImageError:
        raise InputError(f"{what} is not a readable image") from None
    except (OSError, ValueError, SyntaxError) as exc:
        if _inflates_too_much(exc):  # a compression bomb in its metadata, not damage: 413 as for pixels
            raise InputTooLarge(f"{what} holds metadata that inflates past the image reader's limit") from None
        raise InputError(f"{what} is damaged or truncated ({exc})") from None
    if width < 1 or height < 1:
        raise InputError(f"{what} has no pixels")
    return image.convert("RGB")


def load_images(items: list[bytes | str] | None, *, limits: ImageLimits = ImageLimits()) -> list:
    """Several images (the `image_list` of /multimodalchat); refuses more than `limits.max_images`."""
    items = list(items or [])
    if len(items) > limits.max_images:
        raise InputTooLarge(f"{len(items)} images sent; the limit is {limits.max_images}")
    return [load_image(item, limits=limits, what=f"image {i + 1}") for i, item in enumerate(items)]


def _inflates_too_much(exc: BaseException) -> bool:
    """Pillow's caps on what chunks inflate to (PNG zTXt/iTXt: 1 MB each, 64 MB in all) raise ValueError
    "Decompressed data too large ..." or "Too much memory used in text chunks ..."."""
    text = str(exc).lower()
    return isinstance(exc, ValueError) and ("decompressed data too large" in text or "too much memory" in text)
