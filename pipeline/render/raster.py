"""Triangle rasteriser in plain PyTorch: per-pixel triangle id, barycentrics and depth, for cameras and for
UV space. Runs on whatever device the input tensors live on (CPU in tests, CUDA in production).

Fast path: every triangle's pixel bounding box is enumerated as a flat list of candidate pixels (so no
work is wasted on padding between triangles of different sizes), processed in fixed-size chunks; each
candidate's depth and triangle id are packed into one int64 key and resolved with a single
scatter_reduce(amin), so the nearest fragment wins and exact depth ties go to the lowest triangle id.
`rasterize_*_reference` is the slow, obviously-right version the tests compare against.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.render.camera import Camera, project_points

_ID_BITS = 31
_ID_MASK = (1 << _ID_BITS) - 1
_EMPTY = torch.iinfo(torch.int64).max
DEFAULT_CHUNK = 1 << 21  # candidate pixels per step: ~200 MB of temporaries


@dataclass
class Fragments:
    """What each pixel of an H x W image sees. Row 0 is the top of the image."""

    face_id: torch.Tensor  # [H, W] int64, -1 = empty
    bary: torch.Tensor  # [H, W, 3] float32, perspective-correct; 0 where empty
    depth: torch.Tensor  # [H, W] float32, distance in front of the camera; +inf where empty (0 for UV)

    @property
    def mask(self) -> torch.Tensor:  # [H, W] bool
        return self.face_id >= 0


def _screen_coefficients(
    xy: torch.Tensor,  # [V, 2] pixel coordinates
    faces: torch.Tensor,  # [F, 3] int64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Barycentric l_i(p) = A_i qx + B_i qy + C_i with q = p - vertex 0 (local coordinates keep float32
    precise far from the origin). Returns (coef [F, 3, 3] float32, origin [F, 2], valid [F] bool)."""
    tri = xy.double()[faces]  # [F, 3, 2]
    a = tri[:, 0]
    coef = torch.empty(faces.shape[0], 3, 3, dtype=torch.float64, device=xy.device)
    for i in range(3):
        s, t = tri[:, (i + 1) % 3], tri[:, (i + 2) % 3]  # the edge opposite vertex i
        coef[:, i, 0] = -(t[:, 1] - s[:, 1])
        coef[:, i, 1] = t[:, 0] - s[:, 0]
        coef[:, i, 2] = (t[:, 0] - s[:, 0]) * (a[:, 1] - s[:, 1]) - (t[:, 1] - s[:, 1]) * (a[:, 0] - s[:, 0])
    e1, e2 = tri[:, 1] - a, tri[:, 2] - a
    area = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]  # signed: both windings are drawn
    valid = (area.abs() > 1e-12) & torch.isfinite(tri).all(dim=2).all(dim=1)
    coef = coef / torch.where(valid, area, torch.ones_like(area))[:, None, None]
    return coef.float(), a.float(), valid


def _barycentric(
    coef: torch.Tensor,  # [N, 3, 3]
    origin: torch.Tensor,  # [N, 2]
    px: torch.Tensor,  # [N] int64 column
    py: torch.Tensor,  # [N] int64 row
) -> torch.Tensor:  # [N, 3] screen-space barycentrics at the pixel centres
    qx = (px.float() + 0.5 - origin[:, 0])[:, None]
    qy = (py.float() + 0.5 - origin[:, 1])[:, None]
    return coef[:, :, 0] * qx + coef[:, :, 1] * qy + coef[:, :, 2]


def _ordered_key(z: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """int64 keys whose order is (z, face id): float32 bits made monotonic, then the id in the low bits."""
    bits = z.float().contiguous().view(torch.int32)
    bits = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    return bits.long() * (1 << _ID_BITS) + face


def rasterize_screen(
    xy: torch.Tensor,  # [V, 2] float32 pixel coordinates (x right, y down; pixel centres at +0.5)
    z: torch.Tensor,  # [V] float32 NDC z: smaller = nearer, fragments outside [-1, 1] dropped
    faces: torch.Tensor,  # [F, 3] int64
    height: int,
    width: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    check: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Screen-space rasterisation. Returns (face_id [H, W] int64 with -1 = empty, bary [H, W, 3])."""
    device = xy.device
    faces = faces.long()
    coef, origin, valid = _screen_coefficients(xy, faces)
    tri = xy[faces]  # [F, 3, 2]
    lo = torch.ceil(tri.amin(dim=1) - 0.5).clamp(min=0).long()  # [F, 2] first pixel whose centre may be inside
    hi = torch.floor(tri.amax(dim=1) - 0.5).long()
    hi[:, 0] = hi[:, 0].clamp(max=width - 1)
    hi[:, 1] = hi[:, 1].clamp(max=height - 1)
    span = (hi - lo + 1).clamp(min=0)  # [F, 2]
    count = torch.where(valid, span[:, 0] * span[:, 1], torch.zeros_like(span[:, 0]))
    ids = torch.nonzero(count > 0).squeeze(1)
    count = count[ids]
    ends = torch.cumsum(count, 0)
    total = int(ends[-1]) if ids.numel() else 0
    zf = z.float()[faces]  # [F, 3]

    # One row per drawn triangle, gathered once per candidate: 9 coefficients, origin, z, first pixel, width.
    table = torch.cat([coef.view(-1, 9), origin, zf, lo.float(), span[:, :1].float()], dim=1)[ids]  # [F', 17]
    keys = torch.full((height * width,), _EMPTY, dtype=torch.int64, device=device)
    for start in range(0, total, chunk):
        if check is not None:
            check()
        flat = torch.arange(start, min(start + chunk, total), device=device)
        slot = torch.searchsorted(ends, flat, right=True)
        row = table.index_select(0, slot)  # [N, 17]
        local = (flat - (ends - count).index_select(0, slot)).double()
        span_x = row[:, 16].double()
        dy = torch.floor((local + 0.5) / span_x)  # row within the box; float64 keeps it exact
        dx = local - dy * span_x
        qx = (dx.float() + row[:, 14] + 0.5 - row[:, 9])[:, None]
        qy = (dy.float() + row[:, 15] + 0.5 - row[:, 10])[:, None]
        c = row[:, :9].view(-1, 3, 3)
        bary = c[:, :, 0] * qx + c[:, :, 1] * qy + c[:, :, 2]
        depth = (bary * row[:, 11:14]).sum(dim=1)
        keep = (bary >= 0).all(dim=1) & (depth >= -1.0) & (depth <= 1.0)
        px = (dx.float() + row[:, 14]).long()[keep]
        py = (dy.float() + row[:, 15]).long()[keep]
        keys.scatter_reduce_(
            0, py * width + px, _ordered_key(depth[keep], ids[slot[keep]]), reduce="amin", include_self=True
        )

    covered = keys != _EMPTY
    face_id = torch.where(covered, keys & _ID_MASK, torch.full_like(keys, -1))
    bary = torch.zeros(height * width, 3, dtype=torch.float32, device=device)
    pixel = torch.nonzero(covered).squeeze(1)
    face = face_id[pixel]
    bary[pixel] = _barycentric(coef[face], origin[face], pixel % width, pixel // width)
    return face_id.view(height, width), bary.view(height, width, 3)


def rasterize_screen_reference(
    xy: torch.Tensor,  # [V, 2] pixel coordinates
    z: torch.Tensor,  # [V]
    faces: torch.Tensor,  # [F, 3]
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow reference: every pixel centre against every triangle in float64, nearest wins, ties to the lower id."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    p = torch.stack([cols.double() + 0.5, rows.double() + 0.5], dim=-1).to(xy.device)  # [H, W, 2]
    best_z = torch.full((height, width), float("inf"), dtype=torch.float64, device=xy.device)
    face_id = torch.full((height, width), -1, dtype=torch.int64, device=xy.device)
    bary = torch.zeros(height, width, 3, dtype=torch.float64, device=xy.device)

    def edge(s: torch.Tensor, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return (t[0] - s[0]) * (q[..., 1] - s[1]) - (t[1] - s[1]) * (q[..., 0] - s[0])

    for f, (i, j, k) in enumerate(faces.long().tolist()):
        a, b, c = xy[i].double(), xy[j].double(), xy[k].double()
        area = edge(a, b, c[None])[0]
        if abs(float(area)) <= 1e-12:
            continue
        lam = torch.stack([edge(b, c, p), edge(c, a, p), edge(a, b, p)], dim=-1) / area
        depth = lam @ z.double()[[i, j, k]]
        hit = (lam >= 0).all(dim=-1) & (depth >= -1) & (depth <= 1) & (depth < best_z)
        best_z[hit] = depth[hit]
        face_id[hit] = f
        bary[hit] = lam[hit]
    return face_id, bary.float()


def _perspective_fragments(
    face_id: torch.Tensor,  # [H, W]
    screen_bary: torch.Tensor,  # [H, W, 3]
    depth: torch.Tensor,  # [V] view depth of each vertex
    faces: torch.Tensor,  # [F, 3]
    orthographic: bool,
) -> Fragments:
    """Turn screen-space barycentrics into perspective-correct ones and interpolate view depth."""
    mask = face_id >= 0
    if faces.shape[0] == 0:  # nothing drawn: gathers below need at least one face
        return Fragments(face_id, screen_bary, torch.full_like(screen_bary[..., 0], float("inf")))
    d = depth.float()[faces.long()[face_id.clamp(min=0)]]  # [H, W, 3]
    bary = screen_bary if orthographic else screen_bary / d
    bary = bary / bary.sum(dim=-1, keepdim=True).where(mask[..., None], torch.ones_like(bary[..., :1]))
    bary = torch.where(mask[..., None], bary, torch.zeros_like(bary))
    frag_depth = torch.where(mask, (bary * d).sum(dim=-1), torch.full_like(d[..., 0], float("inf")))
    return Fragments(face_id=face_id, bary=bary, depth=frag_depth)


def _camera_inputs(
    vertices: torch.Tensor, faces: torch.Tensor, camera: Camera
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project vertices; drop triangles that reach behind a perspective camera (no near-plane clipping)."""
    xy, ndc_z, depth = project_points(vertices.float(), camera)
    faces = faces.long()
    if not camera.orthographic:
        in_front = (depth[faces] > 1e-6).all(dim=1)
        faces = torch.where(in_front[:, None], faces, torch.zeros_like(faces))  # degenerate: never drawn
    return xy, ndc_z, depth, faces


def rasterize(
    vertices: torch.Tensor,  # [V, 3] world positions
    faces: torch.Tensor,  # [F, 3]
    camera: Camera,
    *,
    chunk: int = DEFAULT_CHUNK,
    check: Callable[[], None] | None = None,
) -> Fragments:
    """Rasterise a mesh seen by `camera` (both windings, nearest fragment wins)."""
    xy, ndc_z, depth, drawn = _camera_inputs(vertices, faces, camera)
    face_id, bary = rasterize_screen(xy, ndc_z, drawn, camera.height, camera.width, chunk=chunk, check=check)
    return _perspective_fragments(face_id, bary, depth, drawn, camera.orthographic)


def rasterize_reference(vertices: torch.Tensor, faces: torch.Tensor, camera: Camera) -> Fragments:
    """`rasterize` through the slow reference (tests only: small images and meshes)."""
    xy, ndc_z, depth, drawn = _camera_inputs(vertices, faces, camera)
    face_id, bary = rasterize_screen_reference(xy, ndc_z, drawn, camera.height, camera.width)
    return _perspective_fragments(face_id, bary, depth, drawn, camera.orthographic)


def _uv_pixels(uvs: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """glTF UVs (u right, v down the image) -> texel coordinates (texel row = v * size) and a flat depth."""
    return uvs.float() * size, torch.zeros(uvs.shape[0], dtype=torch.float32, device=uvs.device)


def _uv_fragments(face_id: torch.Tensor, bary: torch.Tensor) -> Fragments:
    return Fragments(face_id=face_id, bary=bary, depth=torch.zeros_like(bary[..., 0]))


def rasterize_uv(
    uvs: torch.Tensor,  # [V, 2] glTF UVs
    faces: torch.Tensor,  # [F, 3]
    size: int,
    *,
    chunk: int = DEFAULT_CHUNK,
    check: Callable[[], None] | None = None,
) -> Fragments:
    """Which triangle covers each texel of a size x size map (overlaps go to the lower triangle id)."""
    xy, z = _uv_pixels(uvs, size)
    face_id, bary = rasterize_screen(xy, z, faces, size, size, chunk=chunk, check=check)
    return _uv_fragments(face_id, bary)


def rasterize_uv_reference(uvs: torch.Tensor, faces: torch.Tensor, size: int) -> Fragments:
    """`rasterize_uv` through the slow reference."""
    xy, z = _uv_pixels(uvs, size)
    return _uv_fragments(*rasterize_screen_reference(xy, z, faces, size, size))


def interpolate(
    attributes: torch.Tensor,  # [V, C] per-vertex values
    faces: torch.Tensor,  # [F, 3]
    fragments: Fragments,
) -> torch.Tensor:  # [H, W, C], 0 where empty
    """Barycentric interpolation of per-vertex attributes (positions, normals, UVs, ...)."""
    if faces.shape[0] == 0:
        shape = (*fragments.face_id.shape, attributes.shape[1])
        return torch.zeros(shape, dtype=attributes.dtype, device=attributes.device)
    corner = attributes[faces.long()[fragments.face_id.clamp(min=0)]]  # [H, W, 3, C]
    values = (fragments.bary.to(attributes.dtype)[..., None] * corner).sum(dim=-2)
    return torch.where(fragments.mask[..., None], values, torch.zeros_like(values))
