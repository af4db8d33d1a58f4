"""The mesh stage: pick the shape builder the request names and return the reduced + dense meshes."""
from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.context import StageContext
from pipeline.errors import ModelUnavailableError
from pipeline.request import JobRequest
from pipeline.silhouette import build_silhouette_mesh
from pipeline.types import MeshResult, ViewSet

if TYPE_CHECKING:
    from models.manager import ModelManager


def run_mesh_stage(
    request: JobRequest, views: ViewSet, ctx: StageContext, models: "ModelManager | None"
) -> MeshResult:
    """Build the object's mesh from the prepared views with `request.shape_model`."""
    if request.shape_model == "silhouette":
        return build_silhouette_mesh(views.front, target_faces=request.target_faces, ctx=ctx)
    if models is None:
        raise ModelUnavailableError(
            f"shape model {request.shape_model!r} needs model weights, and this worker runs without a model manager",
            stage="mesh",
        )
    # Imported here so a silhouette-only worker never imports hy3dgen.
    from pipeline.shape_hunyuan import generate_hunyuan_mesh

    return generate_hunyuan_mesh(request, views, ctx, models)
