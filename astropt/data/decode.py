"""Reading one image: decode, check, crop, augment and scale, per sample, in a worker.

Every source (parquet rows, folder files, the on-the-fly simulator) hands its
raw payload to the functions here and gets back a ``(C, H, W)`` array, or a
:class:`SkipSample` naming a reason. The reasons a sample is skipped (counted
by :meth:`astropt.data.TokenLoader.skipped`) are the keys of :data:`REASONS`.

Value scaling (documented once, here):

* unsigned integer images (8-bit JPEG/PNG, 16-bit PNG) are divided by their
  type's maximum, so pixels lie in ``[0, 1]`` (uint8 / 255);
* float images (FITS, ``.npy``, float columns, simulator fluxes) go through
  ``asinh(x / softening)`` by default (``DataConfig.float_scaling="asinh"``,
  ``asinh_softening`` in the data's own units, 0.01 by default: about the
  per-pixel sky noise of DESI Legacy Survey grz stamps in nanomaggies). The
  transform is linear for faint pixels and logarithmic for bright ones, the
  same stretch survey colour cutouts use, so a galaxy's outskirts and its core
  both reach the per-patch normalisation with useful dynamic range;
  ``float_scaling="linear"`` keeps float values as they are. Signed integer
  data counts as float data.

Layouts: JPEG/PNG decode to ``(H, W, C)`` and are read as ``(C, H, W)``;
``.npy`` arrays are ``(C, H, W)`` (the project convention) or ``(H, W)``; an
``(H, W, C)`` array with ``C <= 4 < H`` is recognised and transposed. FITS
files hold a ``(C, H, W)`` cube or a ``(H, W)`` single band (the first HDU with
image data is read); one-file-per-band sets are stacked by the folder source.

Legacy Survey cutout-service files (:func:`cutout_bands`): FITS planes come
back in g, r, z order whatever order the header names, in nanomaggies, with
pixels that no exposure covers (NaN) set to 0, the service's own zero-weight
value; the service's JPEGs render z, r, g into R, G, B and are read as decoded
(R, G, B), the convention of ``Smith42/galaxies`` and AstroPT's weights.

Resizing (``DataConfig.resize``, :func:`resize_image`) runs after the centre
crop and before augmentation and value scaling. A JPEG that will be shrunk is
decoded at a reduced scale first (``DataConfig.jpeg_reduce``, on by default):
libjpeg-turbo computes the image at 1/2, 1/4 or 1/8 of its side straight from
the DCT blocks, skipping most of the inverse transform and colour conversion.
:func:`jpeg_reduction` picks the strongest reduction that divides the image
exactly and still leaves at least the output side inside the crop
(:func:`decode_min_side`); the anti-aliased resize finishes the job. A crop
fraction is then cut as an exact (sub-pixel) centred box, so the stamp shows the
same sky whichever scale it was decoded at.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass

import numpy as np

from astropt.errors import UserError

#: Why a sample can be skipped, with a description for the run summary.
REASONS: dict[str, str] = {
    "corrupt": "file or bytes could not be decoded (corrupt, truncated or unknown format)",
    "missing": "listed (in the catalogue or as a band) but the file does not exist",
    "nonfinite": "NaN or infinite pixel values",
    "wrong_channels": "channel count differs from the other samples",
    "wrong_size": "image size differs from the other samples or is smaller than the crop",
    "oversize": "more pixels than data.max_image_pixels (a decompression bomb or a wrong file)",
    "duplicate": "a catalogue row repeats an id or a file already used (the first row is kept)",
    "bad_id": "a catalogue row has a blank id",
    "external_path": "the image names a local file outside the dataset (data.allow_external_paths)",
}

#: Default cap on pixels per image (per plane): 16k x 16k stamps pass, bombs do not.
MAX_IMAGE_PIXELS = 1 << 28

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz", ".fits.fz")
NPY_SUFFIXES = (".npy",)


class BadSampleError(UserError, ValueError):
    """Raised with ``strict=True``: the message names the file (or row) and the reason."""


class DataError(UserError, RuntimeError):
    """The source as a whole cannot produce batches (for example every sample fails)."""


class SkipSample(Exception):  # noqa: N818 (a signal caught per sample, not an error)
    """A sample that cannot be used; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def file_suffix(path: str) -> str:
    """Lower-case suffix including compound FITS suffixes such as ``.fits.gz``."""
    name = os.path.basename(path).lower()
    for suffix in FITS_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return os.path.splitext(name)[1]


def file_stem(path: str) -> str:
    """File name without its (possibly compound) suffix."""
    name = os.path.basename(path)
    return name[: len(name) - len(file_suffix(path))]


# ----------------------------------------------------------------------------- decoding


def _check_pixels(height: int, width: int, max_pixels: int) -> None:
    if height * width > max_pixels:
        raise SkipSample(
            "oversize",
            f"{width}x{height} pixels is more than data.max_image_pixels={max_pixels}",
        )


#: Scale reductions libjpeg-turbo decodes cheaply (whole factors), strongest first.
JPEG_REDUCTIONS = (8, 4, 2)


def jpeg_reduction(height: int, width: int, min_side: float | None) -> int:
    """The factor (8, 4, 2, or 1 for none) to decode a ``height x width`` JPEG down by.

    The strongest of :data:`JPEG_REDUCTIONS` that divides both sides exactly
    (so every decoded pixel is the average of a whole ``k x k`` block and the
    image centre stays where it was) and keeps the shorter side at least
    ``min_side`` pixels. ``None``: no reduction.
    """
    if not min_side:
        return 1
    for k in JPEG_REDUCTIONS:
        if height % k == 0 and width % k == 0 and min(height, width) / k >= min_side:
            return k
    return 1


def decode_min_side(cfg) -> float | None:
    """Shorter side a JPEG of data config ``cfg`` may be decoded down to (``None``: full size).

    Only when every image is resized and cropped (if at all) by a fraction of its
    side: ``resize / crop_fraction`` keeps at least ``resize`` pixels inside the
    crop. A crop in pixels (``image_size``) needs the stored pixel scale.
    """
    if not cfg.jpeg_reduce or cfg.resize is None or cfg.image_size is not None:
        return None
    return cfg.resize / (cfg.crop_fraction or 1.0)


def _decode_jpeg_fast(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, min_side: float | None = None
) -> np.ndarray | None:
    """RGB or grey baseline JPEG through libjpeg-turbo's ``simplejpeg`` binding, as ``(H, W, C)``.

    About twice Pillow's speed on 256x256 stamps (no PIL image object, no
    extra copy) and the same pixels (both run libjpeg-turbo's default
    IDCT and upsampling). ``min_side``: decode at the reduced scale
    :func:`jpeg_reduction` allows. ``None`` when simplejpeg is not installed, the bytes
    are not a JPEG it handles (CMYK, unusual markers) or are damaged: Pillow
    then decodes them (at full scale) or names the fault.
    """
    if data[:2] != b"\xff\xd8":
        return None
    try:
        import simplejpeg
    except ImportError:
        return None
    try:
        height, width, colour, _ = simplejpeg.decode_jpeg_header(data)
    except (ValueError, RuntimeError):
        return None
    _check_pixels(height, width, max_pixels)
    try:
        if colour not in ("RGB", "YCbCr", "Gray"):
            return None
        k = jpeg_reduction(height, width, min_side)
        # strict: libjpeg warnings (a truncated file) are errors, so Pillow reports them.
        array = simplejpeg.decode_jpeg(
            data,
            colorspace="GRAY" if colour == "Gray" else "RGB",
            min_height=height // k if k > 1 else 0,
            min_width=width // k if k > 1 else 0,
        )
    except (ValueError, RuntimeError):
        return None
    if array.shape[:2] != (height // k, width // k):  # another scale than asked for: refuse
        return None
    return array


def decode_encoded(
    data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, min_side: float | None = None
) -> np.ndarray:
    """Decode JPEG/PNG (any format Pillow reads) bytes to ``(C, H, W)``.

    8-bit images stay uint8; palette and alpha images become RGB (the alpha
    channel carries no sky signal), grey images have one channel. An image of
    more than ``max_pixels`` pixels is skipped as ``oversize`` before it is
    decoded (Pillow's own decompression-bomb limit also counts as oversize). JPEGs
    go through libjpeg-turbo directly (``simplejpeg``) when it is installed, at a
    reduced scale when ``min_side`` allows (:func:`jpeg_reduction`).
    """
    fast = _decode_jpeg_fast(bytes(data), max_pixels, min_side)
    if fast is not None:
        return fast.transpose(2, 0, 1)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            _check_pixels(img.height, img.width, max_pixels)
            with warnings.catch_warnings():
                # Our own limit decides; Pillow's warning would only repeat it.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img.load()  # forces the full decode so truncation is caught here
            if img.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "1"):
                img = img.convert("L" if img.mode in ("LA", "1") else "RGB")
            array = np.asarray(img)
    except Image.DecompressionBombError as exc:
        raise SkipSample(
            "oversize", f"refused by Pillow's decompression-bomb limit ({exc})"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise SkipSample("corrupt", f"cannot decode image bytes ({exc})") from None
    if array.ndim == 2:
        return array[None]
    return array.transpose(2, 0, 1)


def read_image_file(
    path: str, max_pixels: int = MAX_IMAGE_PIXELS, min_side: float | None = None
) -> np.ndarray:
    """A JPEG/PNG file to ``(C, H, W)``; see :func:`decode_encoded`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        raise SkipSample("missing", f"{path} does not exist") from None
    except OSError as exc:
        raise SkipSample("corrupt", f"cannot read {path} ({exc})") from None
    return decode_encoded(data, max_pixels, min_side)


def read_fits(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The first image HDU of a FITS file as float32 ``(C, H, W)`` (2-D data gets ``C = 1``)."""
    from astropy.io import fits

    if not os.path.exists(path):
        raise SkipSample("missing", f"{path} does not exist")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(path, memmap=False) as hdus:
                for hdu in hdus:
                    # The header gives the shape before any pixel is read.
                    shape = getattr(hdu, "shape", ()) or ()
                    if len(shape) >= 2:
                        _check_pixels(shape[-2], shape[-1], max_pixels)
                hdu = next((h for h in hdus if getattr(h, "data", None) is not None), None)
                data = None if hdu is None else hdu.data
                if data is None or data.ndim not in (2, 3):
                    shape = None if data is None else data.shape
                    raise SkipSample("corrupt", f"{path} holds no 2-D or 3-D image (data {shape})")
                # FITS is big-endian; one conversion to native float32 serves every use.
                array = np.asarray(data, dtype=np.float32)
                bands = cutout_bands(hdu.header, array.shape[0] if array.ndim == 3 else 1)
        except SkipSample:
            raise
        except Exception as exc:  # astropy raises OSError, ValueError, TypeError, ...
            raise SkipSample("corrupt", f"cannot read FITS {path} ({exc})") from None
    for warning in caught:
        if "truncated" in str(warning.message):
            raise SkipSample("corrupt", f"FITS {path} is truncated ({warning.message})")
    array = array if array.ndim == 3 else array[None]
    if bands is not None:
        # A survey cutout: planes in wavelength order (g, r, z), and pixels without
        # data (NaN where no exposure covers them) as the service's zero-weight value, 0.
        order = sorted(range(len(bands)), key=lambda i: WAVELENGTH_ORDER.index(bands[i]))
        array = np.nan_to_num(array[order], nan=0.0, posinf=0.0, neginf=0.0)
    return array


#: Optical/near-infrared bands from blue to red; survey float planes keep this order.
WAVELENGTH_ORDER = "ugrizY"


def cutout_bands(header, planes: int) -> str | None:
    """The bands of a Legacy Survey cutout-service FITS file, one letter per plane, or ``None``.

    The cutout service (``legacysurvey.org/viewer/fits-cutout``) writes one
    primary HDU of shape ``(bands, H, W)`` in nanomaggies with ``BANDS = 'grz'``
    and ``BAND0``, ``BAND1``, ... naming each plane; a file without those
    keywords (or with bands outside ``ugrizY``) is not treated as a cutout.
    """
    letters = [header.get(f"BAND{i}") for i in range(planes)]
    if not all(isinstance(b, str) for b in letters):
        bands = header.get("BANDS")
        if not isinstance(bands, str) or len(bands) != planes:
            return None
        letters = list(bands)
    letters = [b.strip() for b in letters]
    if not all(b in WAVELENGTH_ORDER and len(b) == 1 for b in letters) or len(set(letters)) != len(
        letters
    ):
        return None
    return "".join(letters)


def read_npy(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """A ``.npy`` array as ``(C, H, W)``; see the module docstring for layouts."""
    try:
        # Memory-mapped first, so an oversize array is refused before it is read.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        if mapped.size > max_pixels * 4:
            raise SkipSample(
                "oversize", f"{path}: {mapped.size} values is more than 4 planes of {max_pixels}"
            )
        array = np.array(mapped)
        del mapped
    except FileNotFoundError:
        raise SkipSample("missing", f"{path} does not exist") from None
    except (OSError, ValueError, EOFError) as exc:
        raise SkipSample("corrupt", f"cannot read {path} ({exc})") from None
    return as_chw(array, path)


def as_chw(array: np.ndarray, what: str, channels: int | None = None) -> np.ndarray:
    """Interpret a 1-, 2- or 3-D array as ``(C, H, W)``.

    A flat array of length ``C*S*S`` is a square image: ``C`` is ``channels``
    when given, else 1 when the length is a square and 3 when a third of it is.
    """
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.number) and not np.issubdtype(array.dtype, np.complexfloating)
    ):
        raise SkipSample("corrupt", f"{what}: pixel type {array.dtype} is not a real number")
    if array.ndim == 1:
        length = array.shape[0]
        candidates = (channels,) if channels else (1, 3)
        for chan in candidates:
            side = math.isqrt(length // chan) if length % chan == 0 else 0
            if side and chan * side * side == length:
                return array.reshape(chan, side, side)
        raise SkipSample(
            "wrong_size", f"{what}: a flat array of {length} values is not a square image"
        )
    if array.ndim == 2:
        return array[None]
    if array.ndim == 3:
        if array.shape[-1] <= 4 < array.shape[0]:
            return array.transpose(2, 0, 1)
        return array
    raise SkipSample("wrong_size", f"{what}: array of shape {array.shape} is not an image")


def read_file(
    path: str, max_pixels: int = MAX_IMAGE_PIXELS, min_side: float | None = None
) -> np.ndarray:
    """Any supported file (JPEG, PNG, FITS, ``.npy``) to ``(C, H, W)``.

    ``max_pixels``: images with more pixels per plane are skipped as ``oversize``;
    ``min_side``: a JPEG may be decoded at a reduced scale (:func:`jpeg_reduction`).
    """
    suffix = file_suffix(path)
    if suffix in FITS_SUFFIXES:
        return read_fits(path, max_pixels)
    if suffix in NPY_SUFFIXES:
        return read_npy(path, max_pixels)
    return read_image_file(path, max_pixels, min_side)


def read_band_files(
    paths: tuple[str, ...], max_pixels: int = MAX_IMAGE_PIXELS, min_side: float | None = None
) -> np.ndarray:
    """One single-band file per band, stacked in the given order to ``(C, H, W)``."""
    planes = []
    for path in paths:
        plane = read_file(path, max_pixels, min_side)
        if plane.shape[0] != 1:
            raise SkipSample(
                "wrong_channels", f"band file {path} has {plane.shape[0]} channels, expected 1"
            )
        planes.append(plane[0])
    if len({plane.shape for plane in planes}) != 1:
        shapes = ", ".join(f"{os.path.basename(p)} {q.shape}" for p, q in zip(paths, planes))
        raise SkipSample("wrong_size", f"band files differ in size: {shapes}")
    return np.stack(planes)


# ---------------------------------------------------------------- checks and transforms


@dataclass(frozen=True)
class Prep:
    """How each decoded image is conformed (picklable; travels to the workers).

    ``shape`` is the ``(C, H, W)`` every sample must end with (after band
    selection, crop and resize); ``None`` while the loader is still finding it out.
    ``crop`` is a centre-crop side in pixels, ``crop_fraction`` one as a fraction
    of the shorter side; ``resize`` the side every image is resampled to.
    """

    crop: int | None
    shape: tuple[int, int, int] | None
    bands: tuple[int, ...] | None
    float_scaling: str
    softening: float
    crop_fraction: float | None = None
    resize: int | None = None
    resample: str = "area"

    @classmethod
    def from_config(cls, cfg) -> Prep:
        """The per-sample preparation a :class:`~astropt.data.config.DataConfig` asks for."""
        return cls(
            crop=cfg.image_size,
            shape=None,
            bands=cfg.bands,
            float_scaling=cfg.float_scaling,
            softening=cfg.asinh_softening,
            crop_fraction=cfg.crop_fraction,
            resize=cfg.resize,
            resample=cfg.resample,
        )


def centre_crop(array: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """The central ``height x width`` pixels of ``(C, H, W)`` (offsets rounded down), a view.

    The galaxy at the stamp centre stays at the centre of the patch grid.
    """
    full_h, full_w = array.shape[1:]
    if full_h < height or full_w < width:
        raise SkipSample(
            "wrong_size",
            f"{what}: {full_h}x{full_w} pixels is smaller than the crop {height}x{width}",
        )
    top, left = (full_h - height) // 2, (full_w - width) // 2
    return array[:, top : top + height, left : left + width]


def resize_image(
    array: np.ndarray,
    side: int,
    method: str = "area",
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """Resample ``(C, H, W)`` to ``(C, side, side)`` with anti-aliasing (Pillow's filters).

    ``"area"`` is Pillow's box filter: each output pixel is the mean of the
    input pixels whose centres it covers, so a downscaled image keeps its flux
    per unit area (exactly for whole factors, to a percent or so otherwise: the
    pixels are counted whole) and a source keeps its position; ``"lanczos"`` is Lanczos-3 widened by the
    scale factor when shrinking (anti-aliased), sharper but with small ringing.
    8-bit images stay 8-bit (rounded), other images come back as float32
    (unsigned 16-bit values keep their scale: they are resampled as floats and
    rounded back). Non-square inputs are stretched to the square: centre-crop
    them first to keep the aspect ratio. ``box``: ``(left, top, right, bottom)``
    in pixels (fractions allowed) of the region to resample, default the whole image.
    """
    from PIL import Image

    if box is None and array.shape[1:] == (side, side):
        return array
    resample = {"area": Image.Resampling.BOX, "lanczos": Image.Resampling.LANCZOS}[method]
    if array.dtype == np.uint8 and array.shape[0] == 3:
        # One RGB image: the same filter per band as three planes, in one pass (a
        # decoded JPEG is channels-last in memory, so this view needs no copy).
        img = Image.fromarray(np.ascontiguousarray(array.transpose(1, 2, 0)), mode="RGB")
        return np.asarray(img.resize((side, side), resample, box=box)).transpose(2, 0, 1)
    planes = []
    for plane in array:
        if plane.dtype == np.uint8:
            img = Image.fromarray(np.ascontiguousarray(plane), mode="L")
        else:
            img = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
        planes.append(np.asarray(img.resize((side, side), resample, box=box)))
    out = np.stack(planes)
    if array.dtype.kind == "u" and array.dtype != np.uint8:
        info = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), 0, info.max).astype(array.dtype)
    return out


def conform(array: np.ndarray, prep: Prep, what: str) -> np.ndarray:
    """Select bands, check finiteness, centre-crop, resize, check the shape.

    Returns a view when no resampling is needed. See :func:`centre_crop` and
    :func:`resize_image`.
    """
    if prep.bands is not None:
        if max(prep.bands) >= array.shape[0]:
            raise SkipSample(
                "wrong_channels",
                f"{what}: band {max(prep.bands)} requested of {array.shape[0]} channels",
            )
        array = array[list(prep.bands)]
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int(array.size - np.isfinite(array).sum())
        raise SkipSample("nonfinite", f"{what}: {bad} NaN or infinite pixels")
    chan, height, width = array.shape
    box = None
    if prep.crop is not None:
        array = centre_crop(array, prep.crop, prep.crop, what)
    elif prep.crop_fraction is not None and prep.resize is not None:
        # The exact centred fraction (sub-pixel edges): the same sky at any decoded scale.
        half = min(height, width) * prep.crop_fraction / 2
        box = (width / 2 - half, height / 2 - half, width / 2 + half, height / 2 + half)
    elif prep.crop_fraction is not None:
        side = max(1, round(min(height, width) * prep.crop_fraction))
        array = centre_crop(array, side, side, what)
    if prep.resize is not None:
        array = resize_image(array, prep.resize, prep.resample, box)
    if prep.shape is not None:
        if chan != prep.shape[0]:
            raise SkipSample("wrong_channels", f"{what}: {chan} channels, expected {prep.shape[0]}")
        if array.shape[1:] != prep.shape[1:]:
            raise SkipSample(
                "wrong_size",
                f"{what}: {height}x{width} pixels, expected {prep.shape[1]}x{prep.shape[2]}",
            )
    return array


def augment(array: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 symmetries of the square (``code`` 0-7) as a view of ``(C, H, W)``.

    ``code % 4`` quarter turns anticlockwise, then a left-right flip when
    ``code >= 4``; code 0 is the identity. Pixels are only moved, never changed.
    """
    if code % 4:
        array = np.rot90(array, k=code % 4, axes=(1, 2))
    if code >= 4:
        array = array[:, :, ::-1]
    return array


def scale(array: np.ndarray, prep: Prep) -> np.ndarray:
    """Pixel values to float32 per the module docstring's rules."""
    if array.dtype.kind == "u":
        return array.astype(np.float32) / np.float32(np.iinfo(array.dtype).max)
    array = array.astype(np.float32, copy=False)
    if prep.float_scaling == "asinh":
        return np.arcsinh(array / np.float32(prep.softening))
    return array
