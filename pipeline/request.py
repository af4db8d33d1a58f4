"""The request: `job["input"]` as CONTRACT.md section 1 defines it, validated field by field."""
from __future__ import annotations

import re
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import InputError

SHAPE_MODELS = (
    "hunyuan3d-2",
    "hunyuan3d-2-turbo",
    "hunyuan3d-2-fast",
    "hunyuan3d-2mini",
    "hunyuan3d-2mv",
    "silhouette",
)
TEXTURE_MODELS = ("hunyuan3d-paint", "hunyuan3d-paint-turbo", "projection")
MULTIVIEW_MODELS = ("none", "zero123plus-v1.2")
"""View-synthesis backends the worker knows; the multiview stage extends this tuple when it has one."""

API_VERSION = "1.0"
_PREFIX_RE = re.compile(r"^[A-Za-z0-9._/-]{1,200}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ImageRef(_Strict):
    """One extra view: exactly one of `url` or `base64`."""

    url: Optional[str] = None
    base64: Optional[str] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageRef":
        if (self.url is None) == (self.base64 is None):
            raise ValueError("give exactly one of 'url' or 'base64'")
        return self


class Views(_Strict):
    left: Optional[ImageRef] = None
    back: Optional[ImageRef] = None
    right: Optional[ImageRef] = None


class JobRequest(_Strict):
    """A validated request. `texture_model` is resolved to its per-shape-model default after parsing."""

    image_url: Optional[str] = None
    image_base64: Optional[str] = None
    mask_url: Optional[str] = None
    mask_base64: Optional[str] = None
    views: Optional[Views] = None
    shape_model: Literal[SHAPE_MODELS] = "hunyuan3d-2"  # type: ignore[valid-type]
    multiview: str = "none"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    steps: Optional[int] = Field(None, ge=1, le=200)
    guidance_scale: Optional[float] = Field(None, ge=0.0, le=30.0)
    octree_resolution: Optional[int] = Field(None, ge=64, le=1024)
    num_chunks: Optional[int] = Field(None, ge=1_000, le=1_000_000)  # query points per volume-decoding batch
    target_faces: int = Field(40_000, ge=1_000, le=500_000)
    texture: bool = True
    texture_size: Literal[512, 1024, 2048, 4096] = 2048
    texture_model: Optional[Literal[TEXTURE_MODELS]] = None  # type: ignore[valid-type]
    roughness: float = Field(0.8, ge=0.0, le=1.0)
    metallic: float = Field(0.0, ge=0.0, le=1.0)
    remove_background: Union[Literal["auto"], bool] = "auto"
    output_prefix: Optional[str] = None
    api_version: str = API_VERSION

    @field_validator("multiview")
    @classmethod
    def _known_multiview(cls, value: str) -> str:
        if value not in MULTIVIEW_MODELS:
            raise ValueError(f"unknown view-synthesis model {value!r}; this worker has: {', '.join(MULTIVIEW_MODELS)}")
        return value

    @field_validator("remove_background", mode="before")
    @classmethod
    def _auto_or_bool(cls, value: Any) -> Any:
        if value == "auto" or isinstance(value, bool):
            return value
        raise ValueError("must be 'auto', true or false")

    @field_validator("output_prefix")
    @classmethod
    def _safe_prefix(cls, value: Optional[str]) -> Optional[str]:
        if value is None:
            return None
        if not _PREFIX_RE.fullmatch(value):
            raise ValueError("must be 1-200 characters of A-Z a-z 0-9 . _ / -")
        parts = [p for p in value.split("/") if p]
        if not parts:
            raise ValueError("must name at least one folder")
        if any(p in (".", "..") for p in parts):
            raise ValueError("must not contain '.' or '..' path segments")
        return "/".join(parts)

    @field_validator("api_version")
    @classmethod
    def _supported_version(cls, value: str) -> str:
        if value.split(".")[0] != API_VERSION.split(".")[0]:
            raise ValueError(f"version {value!r} is not supported; this worker speaks {API_VERSION}")
        return value

    @model_validator(mode="after")
    def _one_image_and_defaults(self) -> "JobRequest":
        if (self.image_url is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of 'image_url' or 'image_base64'")
        if self.mask_url is not None and self.mask_base64 is not None:
            raise ValueError("give at most one of 'mask_url' or 'mask_base64'")
        if self.texture_model is None:
            default = "projection" if self.shape_model == "silhouette" else "hunyuan3d-paint"
            object.__setattr__(self, "texture_model", default)
        return self

    def resolved(self) -> dict[str, Any]:
        """Every parameter as resolved, without the image payloads (for meta.json)."""
        data = self.model_dump(exclude={"image_base64", "mask_base64"})
        if self.views is not None:
            data["views"] = {
                name: ("url" if ref.url is not None else "base64")
                for name, ref in (("left", self.views.left), ("back", self.views.back), ("right", self.views.right))
                if ref is not None
            }
        return data


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    loc = ".".join(str(p) for p in error.get("loc", ()))
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return loc, "unknown field"
    if kind == "missing":
        return loc, "required"
    message = str(error.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ")
    return loc, message


def parse_request(raw: Any) -> JobRequest:
    """Validate `job["input"]`; raise InputError naming every bad field."""
    if not isinstance(raw, dict):
        raise InputError("input", f"must be a JSON object, got {type(raw).__name__}")
    try:
        return JobRequest.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors(include_url=False, include_input=False)]
        first_field = problems[0][0] or "input"
        text = "; ".join(f"{loc}: {why}" if loc else why for loc, why in problems)
        err = InputError(first_field, text)
        err.args = (f"invalid input: {text}",)
        raise err from None
