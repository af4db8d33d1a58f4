"""Background removal: which pixels of a photo are the object.

`remove_background(rgb, method=...)` dispatches to a backend by name: "birefnet-lite", a segmentation model
run by onnxruntime (models/segmentation.py; the caller passes its `session`), and "grabcut", a classical cut
that needs no weights. The multiview stage picks the model when its weights are installed, else GrabCut.

GrabCut here is seeded from the picture's border: the border's colours model the background, pixels that
are close to those colours and connected to the border start as probable background, everything else as
probable object, and only the border pixels that match the background model are fixed as background (so an
object that touches the frame is not cut off). After the cut, at the working size: keep the largest
component (dropping specks), fill small holes (specular highlights often match a white backdrop) and keep
large ones (the gaps of a chair).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage

from models.segmentation import (IMAGENET_MEAN, IMAGENET_STD, INPUT_NAME, OUTPUT_NAME, SEGMENTATION_MODEL, input_side,
                                 load_session, segmentation_model_path)

CheckFn = Callable[[], None]
"""Called between iterations; raises to stop (the job's deadline)."""

WORK_SIDE = 512  # GrabCut runs at most at this size: its cost grows with the pixel count
GRABCUT_ITERATIONS = 5
BORDER_FRACTION = 0.02  # width of the border band that seeds the background model
BACKGROUND_DISTANCE = 0.08  # Lab distance (fraction of the range) under which a pixel looks like backdrop
HOLE_FRACTION = 0.005  # holes smaller than this share of the object's area are filled
MIN_CLUSTER_SHARE = 0.15  # border colour clusters rarer than this are taken as the object, not backdrop


def no_check() -> None:
    """The default `check`: never stops."""


def remove_background(
    rgb: np.ndarray,  # [H, W, 3] uint8
    *,
    method: str,
    check: CheckFn = no_check,
    known_background: np.ndarray | None = None,  # [H, W] bool, pixels already known to be backdrop
    **options: Any,  # backend-specific, e.g. session= for the model backend
) -> np.ndarray:  # [H, W] bool, True = object
    """The object's mask, by the named backend. Raises ValueError for an unknown method."""
    backend = BACKENDS.get(method)
    if backend is None:
        raise ValueError(f"unknown background removal method {method!r}; known: {', '.join(BACKENDS)}")
    return backend(rgb, check=check, known_background=known_background, **options)


def model_mask(
    rgb: np.ndarray,  # [H, W, 3] uint8
    *,
    session: Any,  # onnxruntime.InferenceSession of the BiRefNet export (models.segmentation.load_session)
    check: CheckFn = no_check,
    known_background: np.ndarray | None = None,  # [H, W] bool
) -> np.ndarray:  # [H, W] bool
    """The segmentation model's mask: resize to the graph's input, ImageNet-normalise, sigmoid of the
    logits resized back, cut at 0.5, then the same clean-up as GrabCut (one main component)."""
    height, width = rgb.shape[:2]
    side_h, side_w = input_side(session)
    resized = cv2.resize(rgb, (side_w, side_h), interpolation=cv2.INTER_AREA if side_w < width else cv2.INTER_LINEAR)
    pixels = (resized.astype(np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    batch = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])  # [1, 3, h, w]
    check()
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})  # [1, 1, h, w]
    check()
    matte = 1.0 / (1.0 + np.exp(-np.clip(logits[0, 0].astype(np.float32), -60.0, 60.0)))
    matte = cv2.resize(matte, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = clean_mask(matte >= 0.5)
    if known_background is not None:
        mask &= ~known_background
    return mask


def grabcut_mask(
    rgb: np.ndarray,  # [H, W, 3] uint8
    *,
    check: CheckFn = no_check,
    known_background: np.ndarray | None = None,  # [H, W] bool
) -> np.ndarray:  # [H, W] bool
    """Border-seeded GrabCut and clean-up at a working resolution of at most WORK_SIDE, upsampled."""
    height, width = rgb.shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    small = rgb if scale == 1.0 else cv2.resize(
        rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
    )
    known_small = None
    if known_background is not None:
        known_small = cv2.resize(
            known_background.astype(np.uint8), (small.shape[1], small.shape[0]), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    labels = _seed_labels(small, known_small)
    check()
    if (labels == cv2.GC_PR_FGD).any() and ((labels == cv2.GC_BGD) | (labels == cv2.GC_PR_BGD)).any():
        bgd_model = np.zeros((1, 65), np.float64)
        fgd_model = np.zeros((1, 65), np.float64)
        bgr = np.ascontiguousarray(small[..., ::-1])
        mode = cv2.GC_INIT_WITH_MASK
        for _ in range(GRABCUT_ITERATIONS):  # one iteration per call, so the deadline is checked in between
            cv2.grabCut(bgr, labels, None, bgd_model, fgd_model, 1, mode)
            mode = cv2.GC_EVAL
            check()
    # Clean up at the working size (cheap), then upsample the cut smoothly rather than as blocks.
    mask = clean_mask((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD))
    if scale != 1.0:
        mask = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) >= 0.5
    if known_background is not None:
        mask &= ~known_background
    return mask


def _seed_labels(
    rgb: np.ndarray,  # [h, w, 3] uint8
    known_background: np.ndarray | None,  # [h, w] bool
) -> np.ndarray:  # [h, w] uint8 of cv2.GC_* labels
    height, width = rgb.shape[:2]
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32) / 255.0
    band = max(2, round(BORDER_FRACTION * min(height, width)))
    border = np.zeros((height, width), bool)
    border[:band, :] = border[-band:, :] = border[:, :band] = border[:, -band:] = True
    distance = _distance_to_colours(lab, lab[border])
    backdrop_like = distance < BACKGROUND_DISTANCE
    # Backdrop-coloured regions reachable from the border are probably background; enclosed ones may be
    # the object's own highlights, so they start as object.
    regions, _ = ndimage.label(backdrop_like)
    touching = np.unique(regions[border & backdrop_like])
    probable_bg = np.isin(regions, touching[touching > 0])
    labels = np.full((height, width), cv2.GC_PR_FGD, np.uint8)
    labels[probable_bg] = cv2.GC_PR_BGD
    labels[border & backdrop_like] = cv2.GC_BGD
    if known_background is not None:
        labels[known_background] = cv2.GC_BGD
    return labels


def _distance_to_colours(
    lab: np.ndarray,  # [h, w, 3] float32 in [0, 1]
    samples: np.ndarray,  # [n, 3] float32, the border's colours
    clusters: int = 4,
) -> np.ndarray:  # [h, w] float32, distance to the nearest border colour cluster
    """Distance of each pixel to the border's colour clusters (k-means), so a backdrop with a gradient or
    two tones is modelled as well as a plain one."""
    k = min(clusters, len(samples))
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_MAX_ITER, 20, 1e-3)
    cv2.setRNGSeed(0)  # k-means++ seeding: same picture, same mask
    _, assigned, centres = cv2.kmeans(samples.astype(np.float32), k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    # Rare border colours are the object touching the frame, not backdrop.
    share = np.bincount(assigned.ravel(), minlength=k) / len(samples)
    centres = centres[share >= min(MIN_CLUSTER_SHARE, share.max())]
    flat = lab.reshape(-1, 1, 3)
    nearest = np.min(np.linalg.norm(flat - centres[None, :, :], axis=2), axis=1)
    return nearest.reshape(lab.shape[:2])


def clean_mask(mask: np.ndarray) -> np.ndarray:  # [H, W] bool -> [H, W] bool
    """Largest connected component, with holes under HOLE_FRACTION of its area filled."""
    if not mask.any():
        return mask
    components, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        mask = components == int(np.argmax(sizes))
    holes, count = ndimage.label(~mask)
    if count:
        sizes = np.bincount(holes.ravel())
        # A region that touches the frame is outside the object, not a hole.
        edge = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        small = sizes < HOLE_FRACTION * mask.sum()
        small[0] = False
        small[edge] = False
        mask = mask | small[holes]
    return mask


BACKENDS: dict[str, Callable[..., np.ndarray]] = {SEGMENTATION_MODEL: model_mask, "grabcut": grabcut_mask}
"""Background removal backends by name: fn(rgb [H,W,3] uint8, *, check, known_background, **options) -> [H,W]
bool. Model backends need their loaded model passed as an option (session=)."""


class BackgroundRemover:
    """The backend a job uses: the segmentation model when its weights are under `models_dir` (its session
    loaded on first use, then shared by the process), else GrabCut. `method` names the one that ran."""

    def __init__(self, models_dir: Path | None, device: str = "cpu") -> None:
        self._models_dir = models_dir
        self._device = device
        self._resolved: tuple[str, dict[str, Any]] | None = None

    def _resolve(self) -> tuple[str, dict[str, Any]]:
        if self._resolved is None:
            path = segmentation_model_path(self._models_dir) if self._models_dir is not None else None
            if path is None:
                self._resolved = ("grabcut", {})
            else:
                self._resolved = (SEGMENTATION_MODEL, {"session": load_session(path, self._device)})
        return self._resolved

    @property
    def method(self) -> str:
        return self._resolve()[0]

    @property
    def used(self) -> bool:
        """Whether the backend was picked (it is, on first use)."""
        return self._resolved is not None

    def describe(self) -> dict[str, Any]:
        """What meta.json records about the backend (the model's execution provider when a model ran)."""
        method, options = self._resolve()
        info: dict[str, Any] = {"backend": method}
        if "session" in options:
            info["provider"] = options["session"].get_providers()[0]
        return info

    def __call__(
        self,
        rgb: np.ndarray,  # [H, W, 3] uint8
        *,
        check: CheckFn = no_check,
        known_background: np.ndarray | None = None,  # [H, W] bool
    ) -> np.ndarray:  # [H, W] bool
        method, options = self._resolve()
        return remove_background(rgb, method=method, check=check, known_background=known_background, **options)
