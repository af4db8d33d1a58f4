"""Import hy3dgen's shape code on machines without torchvision.

`hy3dgen.shapegen.models.conditioner` does `from torchvision import transforms` and uses four tensor
transforms (Compose, Resize, CenterCrop, Normalize). No torchvision wheel exists for the CPU torch the
worker runs with in CI and on development machines, and the CUDA wheel fails to import with CPU torch.

`import_shapegen()` imports `hy3dgen.shapegen` for real. When torchvision is installed it is used as is.
When it is absent, a module providing exactly those transforms (written with torch ops, tested against
torchvision's definitions in tests/test_shape_hunyuan.py) stands in for it *only while hy3dgen is being
imported*: the conditioner keeps its reference, and the stand-in is removed from `sys.modules` afterwards,
so transformers' "is torchvision available?" probes keep answering no.
"""
from __future__ import annotations

import enum
import importlib
import importlib.machinery
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_IMPORT_LOCK = threading.Lock()


class InterpolationMode(enum.Enum):
    """The subset of torchvision.transforms.InterpolationMode hy3dgen uses (values as torchvision's)."""

    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        for transform in self.transforms:
            image = transform(image)
        return image


def resized_size(height: int, width: int, size: int | Sequence[int]) -> tuple[int, int]:
    """torchvision's rule: an int resizes the shorter edge to `size` and the longer one to
    int(size * long / short); a pair is (height, width)."""
    if not isinstance(size, int):
        if len(size) == 1:
            size = int(size[0])
        else:
            return int(size[0]), int(size[1])
    short, long = (height, width) if height <= width else (width, height)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if height <= width else (new_long, new_short)


class Resize:
    """Resize a [..., C, H, W] float tensor like torchvision.transforms.Resize on tensors."""

    def __init__(
        self,
        size: int | Sequence[int],
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
        antialias: bool | None = True,
    ) -> None:
        self.size = size
        self.interpolation = InterpolationMode(interpolation.value)
        self.antialias = bool(antialias) and self.interpolation != InterpolationMode.NEAREST

    def __call__(self, image: torch.Tensor) -> torch.Tensor:  # [..., C, H, W] float
        height, width = image.shape[-2:]
        out_h, out_w = resized_size(height, width, self.size)
        if (out_h, out_w) == (height, width):
            return image
        lead = image.shape[:-3]
        flat = image.reshape(-1, *image.shape[-3:])
        if flat.device.type == "cpu" and flat.dtype in (torch.float16, torch.bfloat16):
            flat = flat.float()  # CPU has no half-precision antialiased resize; the result is cast back
        mode = self.interpolation.value
        align = None if mode == "nearest" else False
        out = F.interpolate(flat, size=(out_h, out_w), mode=mode, align_corners=align, antialias=self.antialias)
        return out.to(image.dtype).reshape(*lead, *out.shape[-3:])


class CenterCrop:
    """Crop the centre (zero-padding first when the image is smaller), like torchvision's CenterCrop."""

    def __init__(self, size: int | Sequence[int]) -> None:
        if isinstance(size, int):
            self.size = (size, size)
        elif len(size) == 1:
            self.size = (int(size[0]), int(size[0]))
        else:
            self.size = (int(size[0]), int(size[1]))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:  # [..., C, H, W]
        crop_h, crop_w = self.size
        height, width = image.shape[-2:]
        if crop_h > height or crop_w > width:
            pad_h, pad_w = max(crop_h - height, 0), max(crop_w - width, 0)
            # torchvision pads left/top with floor(pad / 2) and right/bottom with the rest
            image = F.pad(image, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            height, width = image.shape[-2:]
        top = int(round((height - crop_h) / 2.0))
        left = int(round((width - crop_w) / 2.0))
        return image[..., top : top + crop_h, left : left + crop_w]


class Normalize:
    """(image - mean) / std per channel of a [..., C, H, W] float tensor."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = list(mean)
        self.std = list(std)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return (image - mean) / std


def torchvision_installed() -> bool:
    return "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None


def _stand_in_modules() -> dict[str, types.ModuleType]:
    package = types.ModuleType("torchvision")
    package.__spec__ = importlib.machinery.ModuleSpec("torchvision", loader=None, is_package=True)
    package.__path__ = []
    transforms = types.ModuleType("torchvision.transforms")
    transforms.__spec__ = importlib.machinery.ModuleSpec("torchvision.transforms", loader=None)
    for item in (Compose, Resize, CenterCrop, Normalize, InterpolationMode):
        setattr(transforms, item.__name__, item)
    package.transforms = transforms
    return {"torchvision": package, "torchvision.transforms": transforms}


@contextmanager
def _torchvision_stand_in() -> Iterator[None]:
    """Provide the stand-in while the body runs, then take it away again."""
    modules = _stand_in_modules()
    sys.modules.update(modules)
    try:
        yield
    finally:
        for name, module in modules.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


def import_shapegen() -> types.ModuleType:
    """Import and return `hy3dgen.shapegen`, with torchvision or without it."""
    with _IMPORT_LOCK:
        if "hy3dgen.shapegen" in sys.modules:
            return sys.modules["hy3dgen.shapegen"]
        if torchvision_installed():
            return importlib.import_module("hy3dgen.shapegen")
        # transformers decides once whether torchvision exists; let it decide before the stand-in appears.
        importlib.import_module("transformers")
        with _torchvision_stand_in():
            return importlib.import_module("hy3dgen.shapegen")
