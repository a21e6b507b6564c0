"""Image files as 8-bit RGB: full decoding (a truncated file fails here, not later), a pixel limit
against decompression bombs, and every Pillow mode converted by its range."""

from __future__ import annotations

import os
from typing import Any

from bench.errors import UsageError
from bench.task import CorruptImageError, DatasetError

MAX_IMAGE_PIXELS_ENV = "BENCH_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 178_956_970  # Pillow's own error threshold (2 x its warning limit)
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


def max_image_pixels(explicit: int | None = None) -> int | None:
    """The largest image (width x height) decoded: ``explicit``, else $BENCH_MAX_IMAGE_PIXELS,
    else Pillow's limit. 0 means no limit (for datasets of huge images, on purpose)."""
    from bench.paths import max_image_pixels as from_environment

    value = explicit if explicit is not None else from_environment()
    value = DEFAULT_MAX_IMAGE_PIXELS if value is None else value
    if value < 0:
        shown = f"max_image_pixels={value!r}" if explicit is not None else \
            f"{MAX_IMAGE_PIXELS_ENV}={str(value)!r}"
        raise UsageError(f"{shown} is out of range: it must be an integer >= 0 "
                         "(0: no limit)")
    return value or None


def load_rgb(path: str | os.PathLike, max_pixels: int | None = None) -> Any:
    """Decode an image file fully (truncated files fail here, not later) as 8-bit RGB.

    Images larger than ``max_image_pixels(max_pixels)`` are refused as corrupt (a decompression
    bomb, or set the limit on purpose). Every PIL mode is converted by ``to_rgb``.
    """
    from PIL import Image, UnidentifiedImageError

    limit = max_image_pixels(max_pixels)
    Image.MAX_IMAGE_PIXELS = None  # bench applies ``limit`` itself, naming the file
    try:
        with Image.open(path) as im:
            if limit and im.width * im.height > limit:
                raise CorruptImageError(path, (
                    f"{im.width}x{im.height} = {im.width * im.height:,} pixels exceeds the limit "
                    f"of {limit:,} (a decompression bomb?). To decode large images on purpose, "
                    f"set {MAX_IMAGE_PIXELS_ENV}=N (0: no limit) or the task argument "
                    "max_image_pixels"))
            im.load()
            return to_rgb(upright(im))
    except FileNotFoundError:
        raise DatasetError(f"image file missing: {path}. Run `bench data verify` for the dataset.")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise CorruptImageError(path, str(e)) from e


# How files become pixels; part of every cache key and result identity (bench.features.extract, bench.run.spec),
# so features read before a change to it are never reused. 2: EXIF orientation applied.
IMAGE_READER = "2"


def upright(im: Any) -> Any:
    """The image as a viewer shows it: its EXIF orientation applied (phones store pictures
    sideways with a tag saying so; timm's and torchvision's readers ignore the tag)."""
    from PIL import ImageOps

    return ImageOps.exif_transpose(im) if im.getexif().get(0x0112, 1) != 1 else im


def to_rgb(im: Any) -> Any:
    """8-bit RGB from any PIL mode, scaled by the mode's range rather than clipped.

    - ``I;16*``: 16-bit, divided by 257 (65535 -> 255).
    - ``I`` (32-bit integer): read as 16-bit data, which is what Pillow decodes 16-bit PNG and
      TIFF files into; divided by 257, values outside 0..65535 clipped.
    - ``F`` (float): taken as [0, 1] unless the maximum exceeds 1, then divided by the maximum;
      negatives and NaN become 0.
    - Alpha (``RGBA``, ``RGBa``, ``LA``, ``La``, ``PA``, ``P``/``L``/``RGB`` with a transparency
      colour): composited on white (``BACKGROUND``).
    - ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``RGB``: Pillow's conversion.
    """
    import numpy as np
    from PIL import Image

    if im.mode.startswith("I") or im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        if im.mode == "F":
            values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
            peak = values.max(initial=0.0)
            scaled = values * 255.0 / (peak if peak > 1.0 else 1.0)
        else:
            scaled = values / 257.0
        grey = np.clip(np.round(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "La":
        im = im.convert("LA")  # un-premultiplied first: Pillow converts La only to LA
    if im.mode in ("RGBA", "RGBa", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", im.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return im.convert("RGB")


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff", ".gif")
