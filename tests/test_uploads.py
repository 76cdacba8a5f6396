"""models/uploads.py: user images (uploads, files on the command line) -> arrays for the model.

First what good files become (prepare_image: modes, alpha, EXIF, crop or letterbox), then
hostile uploads through the app's upload path (prepare_upload, as pick_image calls it): each
file converts to a 28x28 uint8 gray image or is refused with an ImageInputError that says why;
no other exception escapes, and decompression bombs are refused before they allocate.

Every file is generated here (Pillow / numpy / a few patched bytes): no binaries in the repo.
The long run is ``python -m tools.fuzz_uploads --cases 10000`` (see that module).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from models.tokens import Geometry
from models.uploads import MAX_IMAGE_PIXELS, ImageInputError, prepare_image, prepare_upload
from tools import fuzz_uploads as fz
from tools.memory import current_rss, peak_rss, reset_peak_rss

GEOM = Geometry(28, 28, 1)  # the shipped models' geometry
# Pillow warns ("Corrupt EXIF data", ...) on many of these files; the outcome is what we check.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
MiB = 2**20


def upload(data: bytes, fit: str = "crop", geometry: Geometry = GEOM):
    """Exactly the call pick_image makes for an upload (black background)."""
    return prepare_upload(data, geometry, fit=fit, background=(0, 0, 0))


def enc(img: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **params)
    return buf.getvalue()


def check_converted(out, geometry: Geometry = GEOM) -> np.ndarray:
    assert out.image.dtype == np.uint8
    assert out.image.shape == (geometry.height, geometry.width, geometry.channels)
    assert out.image.flags.c_contiguous
    return out.image[:, :, 0]


def measured(fn: Callable[[], object]) -> tuple[object, int]:
    """(fn's result or the exception it raised, growth of peak RSS in bytes while it ran)."""
    if not reset_peak_rss():
        pytest.skip("peak RSS cannot be reset here (/proc/self/clear_refs is Linux-only)")
    before = current_rss()
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - returned for the caller to assert on
        result = e
    return result, peak_rss() - before


# -----------------------------------------------------------------------------
# good files: what prepare_image makes of them

rng = np.random.default_rng(0)


def random_image(h: int, w: int, c: int) -> np.ndarray:
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_prepare_gray_and_rgb_png():
    gray = random_image(28, 28, 1)
    out = prepare_image(enc(Image.fromarray(gray[:, :, 0])), Geometry(28, 28, 1))
    assert out.dtype == np.uint8 and out.shape == (28, 28, 1)
    np.testing.assert_array_equal(out, gray)  # same size: no resampling
    rgb = random_image(32, 32, 3)
    out = prepare_image(enc(Image.fromarray(rgb)), Geometry(32, 32, 3))
    np.testing.assert_array_equal(out, rgb)
    # RGB into a gray geometry and gray into an RGB geometry, with resizing
    out = prepare_image(enc(Image.fromarray(rgb)), Geometry(16, 16, 1))
    assert out.shape == (16, 16, 1) and out.dtype == np.uint8
    out = prepare_image(enc(Image.fromarray(gray[:, :, 0])), Geometry(10, 12, 3))
    assert out.shape == (10, 12, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_prepare_alpha_composited_onto_background():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 0] = 255  # red, fully transparent everywhere
    bg = (0, 128, 255)
    out = prepare_image(enc(Image.fromarray(rgba, "RGBA")), Geometry(8, 8, 3), background=bg)
    assert (out == np.array(bg, dtype=np.uint8)).all()
    rgba[..., 3] = 255  # now opaque
    out = prepare_image(enc(Image.fromarray(rgba, "RGBA")), Geometry(8, 8, 3))
    assert (out == [255, 0, 0]).all()
    la = Image.fromarray(np.zeros((8, 8, 2), dtype=np.uint8), "LA")  # black, transparent
    out = prepare_image(enc(la), Geometry(8, 8, 1), background=(255, 255, 255))
    assert (out == 255).all()


def test_prepare_palette_with_transparency():
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * (3 * 254))
    pal.paste(1, (0, 0, 4, 8))  # left half index 1 (opaque red-ish), right half index 0
    raw = enc(pal, transparency=0)
    out = prepare_image(raw, Geometry(8, 8, 3), background=(0, 255, 0))
    assert (out[:, :4] == [200, 10, 10]).all()
    assert (out[:, 4:] == [0, 255, 0]).all()


def test_prepare_exif_orientation():
    # Stored landscape 40x20: left half red, right half blue. Orientation 6 = rotate 90 CW to
    # display, giving portrait 20 wide x 40 tall with red on top and blue at the bottom.
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = enc(Image.fromarray(arr), "JPEG", exif=exif, quality=95)
    out = prepare_image(raw, Geometry(40, 20, 3), fit="letterbox", background=(0, 255, 0))
    assert out.shape == (40, 20, 3)
    top, bottom = out[2:18].astype(int), out[22:38].astype(int)
    assert (top[..., 0] > 200).all() and (top[..., 2] < 60).all()
    assert (bottom[..., 2] > 200).all() and (bottom[..., 0] < 60).all()
    assert (out[..., 1] < 60).all()  # no green padding: the rotated aspect fits exactly


def test_prepare_crop_vs_letterbox():
    # wide image 60x20: left third black, middle white, right third black
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, 20:40] = 255
    raw = enc(Image.fromarray(arr))
    crop = prepare_image(raw, Geometry(16, 16, 3), fit="crop")
    assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
    assert (crop[:, 2:14] > 240).all()  # centre crop is the white middle square
    box = prepare_image(raw, Geometry(30, 30, 3), fit="letterbox", background=(255, 0, 0))
    assert box.shape == (30, 30, 3)
    assert (box[:5] == [255, 0, 0]).all() and (box[-5:] == [255, 0, 0]).all()  # padding rows
    assert (box[12:18, :5] < 15).all()  # image content (black) spans the full width
    gray_box = prepare_image(raw, Geometry(30, 30, 1), fit="letterbox", background=(255, 255, 255))
    assert gray_box.shape == (30, 30, 1) and (gray_box[:5] == 255).all()
    with pytest.raises(ValueError, match="letterbox"):
        prepare_image(raw, Geometry(16, 16, 3), fit="stretch")
    with pytest.raises(ValueError, match="channels"):
        prepare_image(raw, Geometry(16, 16, 2))


def test_prepare_bad_inputs():
    with pytest.raises(ImageInputError, match="empty"):
        prepare_image(b"", Geometry(8, 8, 3))
    with pytest.raises(ImageInputError, match="not a recognised image"):
        prepare_image(rng.bytes(1000), Geometry(8, 8, 3))
    png = enc(Image.fromarray(random_image(64, 64, 3)))
    with pytest.raises(ImageInputError, match="truncated"):
        prepare_image(png[: len(png) // 2], Geometry(8, 8, 3))
    assert issubclass(ImageInputError, ValueError)


def test_prepare_decompression_bomb(monkeypatch):
    raw = enc(Image.fromarray(random_image(64, 64, 3)))
    for limit in (3000, 1000):  # warning range (> limit) and error range (> 2 * limit)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ImageInputError, match="too large"):
            prepare_image(raw, Geometry(8, 8, 3))


# -----------------------------------------------------------------------------
# the fixed corpus: refused with a reason


def _png_zero_width() -> bytes:
    return fz.png_claiming(0, 10)


def _truncated(fmt: str, frac: float) -> bytes:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    raw = enc(img, fmt)
    return raw[: int(len(raw) * frac)]


REFUSED = {
    "empty": (lambda: b"", "empty file"),
    "one byte": (lambda: b"\x89", "not a recognised image format"),
    "png signature only": (lambda: b"\x89PNG\r\n\x1a\n", "truncated or corrupt|not a recognised"),
    "png truncated in header": (lambda: _truncated("PNG", 0.02), "truncated or corrupt"),
    "png truncated in data": (lambda: _truncated("PNG", 0.5), "truncated or corrupt"),
    "jpeg truncated in header": (lambda: _truncated("JPEG", 0.05), "truncated or corrupt"),
    "jpeg truncated in data": (lambda: _truncated("JPEG", 0.6), "truncated or corrupt"),
    "gif truncated": (lambda: _truncated("GIF", 0.3), "truncated or corrupt"),
    "webp truncated": (lambda: _truncated("WEBP", 0.5), "truncated or corrupt"),
    "png 0 pixels wide": (_png_zero_width, "no pixels|truncated or corrupt"),
    "svg renamed .png": (lambda: fz.TEXTS["svg"], "SVG text, not a raster image"),
    "svg with BOM and script": (
        lambda: fz.TEXTS["svg with BOM and script"],
        "SVG text, not a raster image",
    ),
    "html renamed .png": (lambda: fz.TEXTS["html"], "HTML/XML text, not a raster image"),
    "eps (would run Ghostscript)": (lambda: fz.TEXTS["eps"], "not a recognised image format"),
    "psd header": (lambda: b"8BPS\x00\x01" + b"\x00" * 40, "not a recognised image format"),
    "ppm claiming 10 gigapixels": (lambda: fz.TEXTS["ppm claiming 10 gigapixels"], "too large"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_hostile_files_are_refused_with_a_reason(name):
    make, message = REFUSED[name]
    with pytest.raises(ImageInputError, match=message):
        upload(make())


BOMBS = {
    "png 100000 x 100000 gray": lambda: fz.png_claiming(100_000, 100_000),
    "png 2^31-1 x 1 rgba": lambda: fz.png_claiming(2**31 - 1, 1, mode_byte=6),
    "png 6000 x 6000 (just over the limit)": lambda: fz.png_claiming(6_000, 6_000),
    "gif 65535 x 65535": lambda: fz.gif_claiming(65_535, 65_535),
    "jpeg 65535 x 65535": lambda: fz.jpeg_claiming(65_535, 65_535),
    "bmp 1000000 x 1000000": lambda: fz.bmp_claiming(1_000_000, 1_000_000),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bombs_are_refused_before_decoding(name):
    data = BOMBS[name]()
    assert len(data) < 10_000  # a small file that claims gigabytes of pixels
    result, growth = measured(lambda: upload(data))
    assert isinstance(result, ImageInputError), result
    assert "too large" in str(result) or "truncated or corrupt" in str(result)
    assert growth < 16 * MiB, f"{name}: peak RSS grew by {growth / MiB:.0f} MiB"


def test_the_pixel_limit_is_ours_and_explained():
    with pytest.raises(ImageInputError) as e:
        upload(enc(Image.new("L", (5_001, 5_000))))
    msg = str(e.value)
    assert "5001x5000" in msg and "megapixels" in msg and "limit is 25" in msg
    assert MAX_IMAGE_PIXELS == 25_000_000


def test_the_largest_allowed_image_converts_in_bounded_memory():
    # 5000 x 5000 RGBA = 25 MP at the limit, ~100 KB as a flat PNG: decodes to 100 MB; the
    # conversion must not keep several full-size copies (about 2 is what it takes)
    data = enc(Image.new("RGBA", (5_000, 5_000), (200, 200, 200, 255)))
    result, growth = measured(lambda: upload(data))
    gray = check_converted(result)
    assert (np.abs(gray.astype(int) - 200) <= 1).all()
    assert growth < 300 * MiB, f"peak RSS grew by {growth / MiB:.0f} MiB"


# -----------------------------------------------------------------------------
# the fixed corpus: converted, correctly


@pytest.mark.parametrize("size", [(1, 1), (1, 300_000), (300_000, 1), (3, 1)])
def test_extreme_dimensions_convert(size):
    for fit in ("crop", "letterbox"):
        gray = check_converted(upload(enc(Image.new("L", size, 77)), fit=fit))
        assert gray.max() == 77  # letterbox pads with the black background
        if fit == "crop" or size == (1, 1):
            assert (gray == 77).all()


def test_16bit_png_is_rescaled_not_clipped():
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    img = Image.fromarray(ramp)
    assert img.mode.startswith("I;16")
    gray = check_converted(upload(enc(img))).astype(int)
    assert gray.min() < 20 and gray.max() > 235  # full range kept, not everything clipped to 255
    dark = check_converted(upload(enc(Image.fromarray(np.full((8, 8), 200, np.uint16)))))
    assert (dark <= 1).all()  # 200 / 65535 is black, not gray 200
    big = check_converted(upload(enc(Image.fromarray(np.full((900, 900), 200, np.uint16)))))
    assert (big <= 1).all()  # the same after the box-reduce of a large image


def test_cmyk_jpeg_converts():
    cyan = enc(Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(cyan)).mode == "CMYK"
    gray = check_converted(upload(cyan))
    # cyan = RGB (0, 255, 255): ITU-R 601 luma 0.587 * 255 + 0.114 * 255 = 179
    assert (np.abs(gray.astype(int) - 179) <= 4).all()


def test_palette_with_transparency_uses_the_background():
    img = Image.new("P", (20, 20), 1)
    img.putpalette([255, 0, 0] + [255, 255, 255] * 255)
    img.paste(0, (0, 0, 10, 20))  # left half: palette index 0, declared transparent
    gray = check_converted(upload(enc(img, transparency=0)))
    assert (gray[:, :10] == 0).all()  # transparent -> the app's black background
    assert (gray[:, 18:] == 255).all()  # (columns near the edge ring a little: LANCZOS)
    gif = check_converted(upload(enc(img, "GIF", transparency=0)))
    assert (gif[:, :10] == 0).all() and (gif[:, 18:] == 255).all()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animated_files_use_the_first_frame_and_say_so(fmt):
    frames = [Image.new("RGB", (30, 30), c) for c in ((255, 255, 255), (0, 0, 0), (0, 0, 0))]
    data = enc(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = upload(data)
    assert (check_converted(out) > 250).all()  # the white first frame
    assert len(out.notes) == 1 and "only the first frame is used" in out.notes[0]
    assert f"animated {fmt}" in out.notes[0]
    assert upload(enc(frames[0], fmt)).notes == ()  # a still image: no note


def test_multipage_tiff_says_so():
    pages = [Image.new("L", (10, 10), v) for v in (255, 0)]
    out = upload(enc(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert (check_converted(out) == 255).all()
    assert out.notes == ("multi-page TIFF: only the first frame is used",)


# Pillow's exif_transpose applies these to the stored pixels; storing the inverse makes the
# displayed image the same for every orientation
INVERSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(orientation, fmt):
    # displayed: 40 wide x 20 tall, left half bright, right half mid-gray
    shown = np.full((20, 40), 100, dtype=np.uint8)
    shown[:, :20] = 250
    stored = Image.fromarray(shown)
    if orientation in INVERSE:
        stored = stored.transpose(INVERSE[orientation])
    exif = fz.exif_with_orientation(orientation)
    gray = check_converted(upload(enc(stored, fmt, exif=exif), fit="letterbox")).astype(int)
    assert (gray[:5] == 0).all() and (gray[-5:] == 0).all()  # wide: padded above and below
    assert gray[14, 2:12].min() > 230 and gray[14, 16:26].max() < 120


# -----------------------------------------------------------------------------
# property-based: any well-formed file converts, any byte string converts or is refused

FORMATS = st.sampled_from(fz.FORMATS)
MODES = st.sampled_from(fz.MODES)
SIDES = st.integers(1, 96) | st.sampled_from([1, 2, 3, 500])
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(FORMATS, MODES, SIDES, SIDES, st.sampled_from(["crop", "letterbox"]), st.integers(0, 2**32))
def test_any_wellformed_file_converts(fmt, mode, w, h, fit, seed):
    rng = np.random.default_rng(seed)
    data = fz.encode(fz.random_pixels(rng, mode, w, h), fmt)
    check_converted(upload(data, fit=fit))


@PROPERTY
@given(
    st.sampled_from(["L", "RGB"]),
    st.sampled_from(["PNG", "BMP", "TIFF", "PPM", "GIF"]),
    SIDES,
    SIDES,
    st.integers(0, 255),
)
def test_a_flat_image_stays_flat(mode, fmt, w, h, value):
    gray = check_converted(upload(enc(Image.new(mode, (w, h), (value,) * len(mode)), fmt)))
    assert (np.abs(gray.astype(int) - value) <= 1).all()


def _outcome(data: bytes) -> str:
    outcome, detail = fz.check_upload(data, GEOM)
    assert outcome != "crash", detail
    return outcome


@PROPERTY
@given(st.binary(max_size=4096))
def test_any_bytes_convert_or_are_refused(data):
    _outcome(data)


@PROPERTY
@given(st.sampled_from(fz.MAGIC), st.binary(max_size=2048))
def test_a_valid_signature_with_garbage_is_refused_or_converts(magic, rest):
    _outcome(magic + rest)


@PROPERTY
@given(st.integers(0, 2**32), st.integers(0, 2**32))
def test_damaged_valid_files_convert_or_are_refused(file_seed, damage_seed):
    _, raw = fz.random_valid_file(np.random.default_rng(file_seed))
    _, data = fz.mutate(np.random.default_rng(damage_seed), raw)
    _outcome(data)


@PROPERTY
@given(st.binary(min_size=1, max_size=64), st.integers(0, 2**32))
def test_png_chunks_with_valid_crcs_and_random_payloads(payload, seed):
    # past the CRC check, straight into the chunk parsers (IHDR, PLTE, tRNS, iCCP, ...)
    rng = np.random.default_rng(seed)
    tag = [b"IHDR", b"PLTE", b"tRNS", b"iCCP", b"zTXt", b"acTL", b"fcTL", b"eXIf"][
        int(rng.integers(0, 8))
    ]
    raw = enc(Image.new("P", (8, 8)), "PNG", transparency=0)
    at = raw.index(b"IDAT") - 4
    _outcome(raw[:at] + fz.png_chunk(tag, payload) + raw[at:])


# -----------------------------------------------------------------------------
# the fuzzer itself, a CI-sized sample of the 10,000-case run


def test_fuzz_sample_has_no_crashes():
    report = fz.run(300, seed=0)
    assert report.cases == 300
    assert report.converted > 50 and sum(report.refused.values()) > 50
    assert not report.crashes, report.crashes[0].traceback
    assert any("too large" in reason for reason in report.refused)  # the bombs
    table = fz.format_report(report)
    for row in ("cases", "converted", "refused", "crashes", "peak RSS", "wall time"):
        assert row in table


def test_fuzz_cli_exit_codes(capsys, monkeypatch):
    assert fz.main(["--cases", "20", "--seed", "3"]) == 0
    assert "crashes" in capsys.readouterr().out
    assert fz.main(["--geometry", "28x28"]) == 2
    real = fz.prepare_upload

    def broken(data, geometry, **kw):
        if len(data) % 2:
            raise KeyError("boom")
        return real(data, geometry, **kw)

    monkeypatch.setattr(fz, "prepare_upload", broken)
    assert fz.main(["--cases", "20", "--seed", "3"]) == 1
    assert "KeyError: 'boom'" in capsys.readouterr().err


def test_fuzz_generators_make_what_they_claim():
    assert Image.open(io.BytesIO(fz.png_claiming(7, 9))).size == (7, 9)
    assert Image.open(io.BytesIO(fz.gif_claiming(300, 200))).size == (300, 200)
    assert Image.open(io.BytesIO(fz.jpeg_claiming(300, 200))).size == (300, 200)
    assert Image.open(io.BytesIO(fz.bmp_claiming(300, 200))).size == (300, 200)
    chunk = fz.png_chunk(b"tEXt", b"a\x00b")
    assert struct.unpack(">I", chunk[-4:])[0] == zlib.crc32(b"tEXta\x00b")
