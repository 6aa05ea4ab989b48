"""8- and 16-bit grayscale PNG in and out.

* ``codec``: the documented mapping of values to units, decode and encode, and the codec of
  ``app.imaging.codec``;
* ``reader``: the fast path for single-filter files (OpenCV reads every other);
* ``writer``: Up-filtered rows deflated by ISA-L.

The names other layers use are here: ``from app.imaging import png``, then ``png.decode``.
"""

from __future__ import annotations

from app.imaging.png.codec import CODEC, MEDIA_TYPE, PNG_SIGNATURE, PngMeta, decode, default_rescale, encode

__all__ = ["CODEC", "MEDIA_TYPE", "PNG_SIGNATURE", "PngMeta", "decode", "default_rescale", "encode"]
