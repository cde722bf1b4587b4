"""The hostile-input corpus: every file generated here, in memory (no third-party images committed).

Each `Case` is one request and the exact answer the service must give: status and error code (or 200
and a check on the returned image). `CASES` is the table `test_hostile_inputs.py` runs.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from tests.service.conftest import encode, gradient

BOUNDARY = "reliabilityboundary"
MAX_BODY = 1_000_000
MAX_INPUT = 512 * 512
MAX_OUTPUT = 512 * 512


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb is this plus a big IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png_with_chunk(kind: bytes, payload: bytes, w: int = 24, h: int = 16) -> bytes:
    """A valid small PNG with one extra ancillary chunk inserted after IHDR."""
    data = encode(gradient(w, h))
    return data[:33] + chunk(kind, payload) + data[33:]


def multipart(*parts: tuple[str, bytes, str | None]) -> tuple[bytes, dict[str, str]]:
    """(body, headers) for (field name, bytes, filename or None for a plain field) parts."""
    out = io.BytesIO()
    for name, data, filename in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out.write(f"--{BOUNDARY}\r\nContent-Disposition: {disp}\r\n".encode())
        if filename:
            out.write(b"Content-Type: application/octet-stream\r\n")
        out.write(b"\r\n" + data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue(), {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def raw(data: bytes, content_type: str = "image/png", **headers: str) -> tuple[bytes, dict[str, str]]:
    return data, {"content-type": content_type, **headers}


# --- generated files of formats outside the allow-list -------------------------------------------------------------
def zip_file() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a.png", encode(gradient(8, 8)))
    return buf.getvalue()


def pillow_file(fmt: str, im: Image.Image | None = None) -> bytes:
    return encode(im or gradient(32, 32), fmt)


def psd_file() -> bytes:
    # Photoshop header: signature, version 1, 6 reserved bytes, 3 channels, 16 x 16, depth 8, RGB (3).
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3)
    return header + struct.pack(">I", 0) * 3 + struct.pack(">H", 0) + b"\0" * (16 * 16 * 3)


def fits_file() -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                   16",
        "NAXIS2  =                   16",
        "END",
    ]
    header = "".join(c.ljust(80) for c in cards).ljust(2880).encode()
    return header + bytes(16 * 16).ljust(2880, b"\0")


SVG = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="9999" height="9999"><rect/></svg>'
HTML = b"<!doctype html><html><body><script>alert(1)</script><img src=x></body></html>"
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\nnewpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n"


# --- animated / multi-page ------------------------------------------------------------------------------------------
def frames(n: int = 3) -> list[Image.Image]:
    return [gradient(24, 16).rotate(30 * i) for i in range(n)]


def animated(fmt: str) -> bytes:
    first, *rest = frames()
    buf = io.BytesIO()
    if fmt == "TIFF":
        first.save(buf, "TIFF", save_all=True, append_images=rest)
    else:
        first.save(buf, fmt, save_all=True, append_images=rest, duration=100, loop=0)
    return buf.getvalue()


# --- modes ----------------------------------------------------------------------------------------------------------
def palette_transparent() -> bytes:
    im = gradient(24, 16).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encode(im, "PNG", transparency=0)


def mode_file(mode: str, fmt: str = "PNG") -> bytes:
    g = np.asarray(gradient(24, 16).convert("L"), dtype=np.float64)
    if mode == "I;16":
        return encode(Image.fromarray((g * 257).astype(np.uint16)), fmt)
    if mode == "I":
        return encode(Image.fromarray((g * 300 - 5000).astype(np.int32)), fmt)  # out of range on purpose: clipped
    if mode == "F":
        return encode(Image.fromarray((g / 200 - 0.1).astype(np.float32)), fmt)
    return encode(gradient(24, 16).convert(mode), fmt)


def exif_jpeg(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(gradient(24, 16), "JPEG", exif=exif.tobytes())


# --- oversized metadata ---------------------------------------------------------------------------------------------
def big_exif_png() -> bytes:
    rng = np.random.default_rng(1)
    return png_with_chunk(b"eXIf", b"MM\x00*" + rng.integers(0, 256, 900_000, dtype=np.uint8).tobytes())


def big_text_png() -> bytes:
    return png_with_chunk(b"tEXt", b"Comment\x00" + b"A" * 900_000)


def ztxt_bomb_png() -> bytes:
    """A compressed text chunk of ~100 kB that inflates to 100 MB: refused, not inflated."""
    return png_with_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\0" * 100_000_000, 9))


def icc_bomb_png() -> bytes:
    return png_with_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\0" * 100_000_000, 9))


def big_icc_jpeg() -> bytes:
    """A JPEG with a 600 kB (garbage) ICC profile split over APP2 segments: accepted, the profile carried."""
    return encode(gradient(24, 16), "JPEG", icc_profile=bytes(range(256)) * 2400)


def noise_image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(2).integers(0, 256, (96, 96, 3), dtype=np.uint8))


def truncated(im: Image.Image, fmt: str) -> bytes:
    data = encode(im, fmt)
    assert len(data) > 2000
    return data[: len(data) // 2]


def bad_crc_png() -> bytes:
    data = bytearray(encode(gradient(24, 16)))
    data[29] ^= 0xFF  # the last byte of IHDR's CRC
    return bytes(data)


def many_parts(n: int) -> tuple[bytes, dict[str, str]]:
    return multipart(*[("image" if i == 0 else f"f{i}", b"x", None) for i in range(n)])


async def chunked(data: bytes, size: int = 65536):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def mask_of(size: tuple[int, int], mode: str, value: int | tuple) -> bytes:
    return encode(Image.new(mode, size, value))


# --- findings of the request-path review: files that lied, crashed or cost too much -----------------------------------
def tiff16_leading_axis() -> bytes:
    """16-bit RGB stored with a leading axis of one, (1, 8, 8, 3): a valid 8 x 8 image (was a 500)."""
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, np.full((1, 8, 8, 3), 30000, np.uint16), photometric="rgb")
    return buf.getvalue()


def apng_understating_frames() -> bytes:
    """An APNG whose `acTL` says 1 frame but whose chunks hold 2 (was a 200 with the first frame)."""
    first, second = frames(2)
    buf = io.BytesIO()
    first.save(buf, "PNG", save_all=True, append_images=[second], duration=100, loop=0)
    data = buf.getvalue()
    at = data.index(b"acTL") - 4
    (length,) = struct.unpack(">I", data[at : at + 4])
    payload = struct.pack(">II", 1, 0)
    return data[:at] + chunk(b"acTL", payload) + data[at + 12 + length :]


def tiff_chained_ifds(count: int) -> bytes:
    """A TIFF whose first IFD chains `count` empty IFDs (Pillow counts them quadratically: 10 s at 40,000)."""
    data = bytearray(encode(gradient(8, 8), "TIFF"))
    (first,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, first)
    pointer = first + 2 + 12 * entries
    start = len(data)
    struct.pack_into("<I", data, pointer, start)
    for i in range(count):
        following = start + 6 * (i + 1) if i < count - 1 else 0
        data += struct.pack("<HI", 0, following)
    return bytes(data)


def unterminated_multipart() -> tuple[bytes, dict[str, str]]:
    """A multipart body cut before its closing delimiter (was 422 missing_image)."""
    body, headers = multipart(("image", IMG, "a.png"))
    return body[: body.rindex(f"--{BOUNDARY}--".encode())], headers


def lossless_webp(side: int) -> bytes:
    """A flat lossless WebP: a few hundred bytes that decode to side x side RGB."""
    return encode(Image.new("RGB", (side, side), (255, 255, 255)), "WEBP", lossless=True)


# --- the table ------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    group: str
    task: str
    body: Callable[[], tuple[object, dict[str, str]]]
    status: int
    code: str | None = None
    """The error code for 4xx/5xx answers (None for 200)."""
    query: dict[str, str] = field(default_factory=dict)
    check: Callable[[Image.Image], bool] | None = None
    """For 200 answers: a predicate on the decoded output image."""
    no_decoder: bool = False
    """Must be refused before Pillow opens anything."""


def size_is(w: int, h: int) -> Callable[[Image.Image], bool]:
    return lambda im: im.size == (w, h)


def image(data: bytes, name: str = "a.png") -> tuple[bytes, dict[str, str]]:
    return multipart(("image", data, name))


IMG = encode(gradient(24, 16))
INPAINT_SIZE = (24, 16)
RANGE = str(2**63)

CASES: list[Case] = [
    # bodies and forms
    Case("empty raw body", "form", "deblur", lambda: raw(b""), 422, "missing_image"),
    Case("empty multipart (no parts)", "form", "deblur", lambda: multipart(), 422, "missing_image"),
    Case("no content type", "form", "deblur", lambda: (IMG, {}), 415, "unsupported_media_type"),
    Case("text/plain body", "form", "deblur", lambda: raw(IMG, "text/plain"), 415, "unsupported_media_type"),
    Case("multipart without boundary", "form", "deblur", lambda: raw(IMG, "multipart/form-data"), 400, "bad_multipart"),
    Case(
        "garbage multipart (no parsable part)",
        "form",
        "deblur",
        lambda: (b"--x\r\nnonsense", {"content-type": "multipart/form-data; boundary=x"}),
        400,
        "bad_multipart",  # no closing delimiter: malformed, not an empty form
    ),
    Case(
        "missing image part (mask only)",
        "form",
        "inpaint",
        lambda: multipart(("mask", IMG, "m.png")),
        422,
        "missing_image",
    ),
    Case("image as a plain field", "form", "deblur", lambda: multipart(("image", IMG, None)), 422, "missing_image"),
    Case("empty image part", "form", "deblur", lambda: multipart(("image", b"", "a.png")), 422, "missing_image"),
    Case(
        "duplicated image part",
        "form",
        "deblur",
        lambda: multipart(("image", IMG, "a.png"), ("image", IMG, "b.png")),
        422,
        "duplicate_part",
    ),
    Case(
        "wrong field name `file`", "form", "deblur", lambda: multipart(("file", IMG, "a.png")), 422, "unexpected_field"
    ),
    Case(
        "mask sent to deblur",
        "form",
        "deblur",
        lambda: multipart(("image", IMG, "a.png"), ("mask", IMG, "m.png")),
        422,
        "unexpected_field",
    ),
    Case("3000 parts", "form", "deblur", lambda: many_parts(3000), 400, "bad_multipart"),
    Case("9 parts (over the limit of 8)", "form", "deblur", lambda: many_parts(9), 400, "bad_multipart"),
    # size caps
    Case(
        "body over the cap, with Content-Length",
        "caps",
        "deblur",
        lambda: raw(b"\x89PNG" + bytes(MAX_BODY)),
        413,
        "body_too_large",
    ),
    Case(
        "body over the cap, chunked (no Content-Length)",
        "caps",
        "deblur",
        lambda: raw(chunked(b"\x89PNG" + bytes(MAX_BODY))),
        413,
        "body_too_large",
    ),
    Case(
        "2 MB chunked body of zeros", "caps", "deblur", lambda: raw(chunked(bytes(2 * MAX_BODY))), 413, "body_too_large"
    ),
    Case(
        "gzip body inflating past the cap",
        "caps",
        "deblur",
        lambda: raw(gzip.compress(bytes(20 * MAX_BODY)), **{"content-encoding": "gzip"}),
        415,
        "unsupported_encoding",
    ),
    Case(
        "gzip multipart",
        "caps",
        "deblur",
        lambda: (gzip.compress(image(IMG)[0]), {**image(IMG)[1], "content-encoding": "gzip"}),
        415,
        "unsupported_encoding",
    ),
    Case(
        "deflate body",
        "caps",
        "deblur",
        lambda: raw(zlib.compress(IMG), **{"content-encoding": "deflate"}),
        415,
        "unsupported_encoding",
    ),
    Case(
        "bomb: 50,000 x 50,000 declared",
        "caps",
        "deblur",
        lambda: raw(png_declaring(50_000, 50_000)),
        413,
        "too_many_pixels",
    ),
    Case("bomb as multipart", "caps", "deblur", lambda: image(png_declaring(50_000, 50_000)), 413, "too_many_pixels"),
    Case(
        "just over the input cap (513 x 512)",
        "caps",
        "deblur",
        lambda: raw(png_declaring(513, 512)),
        413,
        "too_many_pixels",
    ),
    Case(
        "sr-x4: under the input cap, x4 over the output cap",
        "caps",
        "sr-x4",
        lambda: raw(encode(gradient(200, 120))),
        413,
        "output_too_large",
    ),
    # degenerate sizes
    Case("1 x 1", "sizes", "deblur", lambda: raw(encode(gradient(1, 1))), 200, check=size_is(1, 1)),
    Case("1 x 8000", "sizes", "deblur", lambda: raw(encode(gradient(1, 8000))), 200, check=size_is(1, 8000)),
    Case("8000 x 1", "sizes", "deblur", lambda: raw(encode(gradient(8000, 1))), 200, check=size_is(8000, 1)),
    # padded to 8 px across, a 1-px strip of 10000 does 7.4x a square's work: refused up front
    Case("1 x 10000", "sizes", "deblur", lambda: raw(encode(gradient(1, 10000))), 422, "shape_too_costly"),
    Case("10000 x 1", "sizes", "deblur", lambda: raw(encode(gradient(10000, 1))), 422, "shape_too_costly"),
    Case("sr-x4 1 x 1", "sizes", "sr-x4", lambda: raw(encode(gradient(1, 1))), 200, check=size_is(4, 4)),
    # formats outside the allow-list: refused from the signature, no decoder runs
    *[
        Case(
            f"{name} sent as image/png",
            "formats",
            "deblur",
            (lambda d=data: raw(d)),
            415,
            "unsupported_format",
            no_decoder=True,
        )
        for name, data in (
            ("random bytes", np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
            ("HTML", HTML),
            ("ZIP", zip_file()),
            ("PDF", pillow_file("PDF")),
            ("EPS", EPS),
            ("PSD", psd_file()),
            ("ICO", pillow_file("ICO")),
            ("SVG", SVG),
            ("FITS", fits_file()),
            ("GIF (still)", pillow_file("GIF")),
            ("TGA", pillow_file("TGA")),
            ("JPEG 2000", pillow_file("JPEG2000")),
        )
    ],
    Case(
        "SVG as a multipart image",
        "formats",
        "deblur",
        lambda: image(SVG, "a.svg"),
        415,
        "unsupported_format",
        no_decoder=True,
    ),
    # corrupt files
    Case("truncated PNG", "corrupt", "deblur", lambda: raw(truncated(noise_image(), "PNG")), 422, "undecodable_image"),
    Case(
        "truncated JPEG",
        "corrupt",
        "deblur",
        lambda: raw(truncated(noise_image(), "JPEG"), "image/jpeg"),
        422,
        "undecodable_image",
    ),
    Case("PNG signature only", "corrupt", "deblur", lambda: raw(b"\x89PNG\r\n\x1a\n"), 422, "undecodable_image"),
    Case("PNG with a bad CRC", "corrupt", "deblur", lambda: raw(bad_crc_png()), 422, "undecodable_image"),
    Case(
        "JPEG SOI marker only",
        "corrupt",
        "deblur",
        lambda: raw(b"\xff\xd8\xff\xe0" + bytes(16)),
        422,
        "undecodable_image",
    ),
    # animated / multi-page: refused, never silently cut to one frame (GIF is outside the allow-list)
    Case(
        "animated GIF",
        "frames",
        "deblur",
        lambda: raw(animated("GIF"), "image/gif"),
        415,
        "unsupported_format",
        no_decoder=True,
    ),
    Case("APNG", "frames", "deblur", lambda: raw(animated("PNG")), 422, "multi_frame_image"),
    Case("animated WebP", "frames", "deblur", lambda: raw(animated("WEBP"), "image/webp"), 422, "multi_frame_image"),
    Case("multi-page TIFF", "frames", "deblur", lambda: raw(animated("TIFF"), "image/tiff"), 422, "multi_frame_image"),
    # modes
    Case(
        "palette with transparency",
        "modes",
        "deblur",
        lambda: raw(palette_transparent()),
        200,
        check=lambda im: im.mode == "RGBA",
    ),
    Case("LA", "modes", "deblur", lambda: raw(mode_file("LA")), 200, check=lambda im: im.mode == "LA"),
    Case("I;16", "modes", "deblur", lambda: raw(mode_file("I;16")), 200, check=lambda im: im.mode.startswith("I")),
    Case(
        "I (TIFF, out of range)",
        "modes",
        "deblur",
        lambda: raw(mode_file("I", "TIFF"), "image/tiff"),
        200,
        check=lambda im: im.mode.startswith("I"),
    ),
    Case(
        "F (TIFF)",
        "modes",
        "deblur",
        lambda: raw(mode_file("F", "TIFF"), "image/tiff"),
        200,
        check=lambda im: im.mode.startswith("I"),
    ),
    Case(
        "CMYK JPEG",
        "modes",
        "deblur",
        lambda: raw(mode_file("CMYK", "JPEG"), "image/jpeg"),
        200,
        check=lambda im: im.mode == "RGB",
    ),
    Case(
        "CMYK TIFF",
        "modes",
        "deblur",
        lambda: raw(mode_file("CMYK", "TIFF"), "image/tiff"),
        200,
        check=lambda im: im.mode == "RGB",
    ),
    Case("1-bit", "modes", "deblur", lambda: raw(mode_file("1")), 200, check=lambda im: im.mode == "L"),
    Case(
        "1-bit BMP",
        "modes",
        "deblur",
        lambda: raw(mode_file("1", "BMP"), "image/bmp"),
        200,
        check=lambda im: im.mode == "L",
    ),
    # EXIF orientation: 5-8 swap width and height
    *[
        Case(
            f"EXIF orientation {o}",
            "exif",
            "deblur",
            (lambda o=o: raw(exif_jpeg(o), "image/jpeg")),
            200,
            check=size_is(*((16, 24) if o >= 5 else (24, 16))),
        )
        for o in range(2, 9)
    ],
    # oversized metadata
    Case("900 kB eXIf chunk", "metadata", "deblur", lambda: raw(big_exif_png()), 200, check=size_is(24, 16)),
    Case("900 kB tEXt chunk", "metadata", "deblur", lambda: raw(big_text_png()), 200, check=size_is(24, 16)),
    Case("zTXt inflating to 100 MB", "metadata", "deblur", lambda: raw(ztxt_bomb_png()), 422, "undecodable_image"),
    Case("iCCP inflating to 100 MB", "metadata", "deblur", lambda: raw(icc_bomb_png()), 422, "undecodable_image"),
    Case(
        "600 kB ICC profile in JPEG",
        "metadata",
        "deblur",
        lambda: raw(big_icc_jpeg(), "image/jpeg"),
        200,
        check=lambda im: len(im.info.get("icc_profile", b"")) == 614400,
    ),
    # inpaint masks
    Case("mask missing", "masks", "inpaint", lambda: image(IMG), 422, "missing_mask"),
    Case("mask missing (raw body)", "masks", "inpaint", lambda: raw(IMG), 422, "missing_mask"),
    Case(
        "mask empty",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", b"", "m.png")),
        422,
        "missing_mask",
    ),
    Case(
        "mask of another size",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", mask_of((23, 16), "L", 255), "m.png")),
        422,
        "bad_mask",
    ),
    Case(
        "mask undecodable",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", b"\x89PNG\r\n\x1a\nxx", "m.png")),
        422,
        "bad_mask",
    ),
    Case(
        "mask not an image",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", HTML, "m.png")),
        422,
        "bad_mask",
    ),
    Case(
        "mask a bomb",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", png_declaring(50_000, 50_000), "m.png")),
        413,
        "too_many_pixels",
    ),
    Case(
        "colour mask",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", mask_of(INPAINT_SIZE, "RGB", (255, 0, 255)), "m.png")),
        200,
        check=size_is(*INPAINT_SIZE),
    ),
    Case(
        "all-zero mask",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", mask_of(INPAINT_SIZE, "L", 0), "m.png")),
        200,
        check=lambda im: np.array_equal(np.asarray(im.convert("RGB")), np.asarray(gradient(24, 16))),
    ),
    Case(
        "all-one mask",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", mask_of(INPAINT_SIZE, "L", 255), "m.png")),
        200,
        check=size_is(*INPAINT_SIZE),
    ),
    Case(
        "mask with alpha (LA)",
        "masks",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", mask_of(INPAINT_SIZE, "LA", (255, 0)), "m.png")),
        200,
        check=lambda im: np.array_equal(np.asarray(im.convert("RGB")), np.asarray(gradient(24, 16))),
    ),
    Case(
        "mask with alpha (RGBA)",
        "masks",
        "inpaint",
        lambda: multipart(
            ("image", IMG, "a.png"), ("mask", mask_of(INPAINT_SIZE, "RGBA", (255, 255, 255, 255)), "m.png")
        ),
        200,
        check=size_is(*INPAINT_SIZE),
    ),
    # tasks and query values
    Case("unknown task", "query", "colorize", lambda: raw(IMG), 404, "unknown_task"),
    Case("task name with odd characters", "query", "deblur%00x", lambda: raw(IMG), 404, "unknown_task"),
    Case("seed -1", "query", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"seed": "-1"}),
    Case("seed 2^63 (beyond range)", "query", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"seed": RANGE}),
    Case("seed -2^63 - 1", "query", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"seed": f"-{RANGE}1"}),
    Case("seed not a number", "query", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"seed": "1e3"}),
    Case(
        "seed 2^63 - 1 (largest)",
        "query",
        "deblur",
        lambda: raw(IMG),
        200,
        query={"seed": str(2**63 - 1)},
        check=size_is(24, 16),
    ),
    Case("unknown format gif", "query", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"format": "gif"}),
    Case("format in capitals", "query", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"format": "PNG"}),
    Case(
        "quality 0", "query", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"format": "jpeg", "quality": "0"}
    ),
    Case(
        "quality 101",
        "query",
        "deblur",
        lambda: raw(IMG),
        422,
        "bad_parameter",
        query={"format": "jpeg", "quality": "101"},
    ),
    Case(
        "quality 100 (largest)",
        "query",
        "deblur",
        lambda: raw(IMG),
        200,
        query={"format": "jpeg", "quality": "100"},
        check=lambda im: im.format == "JPEG",
    ),
    Case(
        "webp output wider than WebP allows",
        "query",
        "sr-x4",
        lambda: raw(encode(gradient(4200, 1))),
        422,
        "bad_parameter",
        query={"format": "webp"},
    ),
    # findings of the request-path review (each failed before the pipeline rework)
    Case(
        "16-bit RGB TIFF with a leading axis of one",
        "findings",
        "deblur",
        lambda: raw(tiff16_leading_axis(), "image/tiff"),
        200,
        check=lambda im: im.size == (8, 8) and im.mode in ("RGB", "I;16", "RGBA"),
    ),
    Case(
        "APNG whose acTL understates its frames",
        "findings",
        "deblur",
        lambda: raw(apng_understating_frames()),
        422,
        "multi_frame_image",
    ),
    Case(
        "TIFF chaining 40,000 empty IFDs",
        "findings",
        "deblur",
        lambda: raw(tiff_chained_ifds(40_000), "image/tiff"),
        422,
        "multi_frame_image",
    ),
    Case("multipart without its closing delimiter", "findings", "deblur", unterminated_multipart, 400, "bad_multipart"),
    Case("seed 1.0", "findings", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"seed": "1.0"}),
    Case("seed +5", "findings", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"seed": "+5"}),
    Case("seed 1_000", "findings", "deblur", lambda: raw(IMG), 422, "bad_parameter", query={"seed": "1_000"}),
    Case(
        "unknown task with a bad seed", "findings", "nope", lambda: raw(IMG), 404, "unknown_task", query={"seed": "-1"}
    ),
    Case(
        "512² lossless WebP mask with a 24 x 16 image",
        "findings",
        "inpaint",
        lambda: multipart(("image", IMG, "a.png"), ("mask", lossless_webp(512), "m.webp")),
        422,
        "bad_mask",
    ),
]
