"""Request and response models of the ``semcorr serve`` JSON API (they make its OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict

__all__ = [
    "ErrorResponse",
    "ImageInfo",
    "MatchRequest",
    "MatchResponse",
    "PairRequest",
    "PairResponse",
    "SamplesResponse",
]

#: A coordinate: a JSON number only (``true`` and ``"1"`` are refused, as on the command line).
Coordinate = Annotated[float, Strict()]
Point = tuple[Coordinate, Coordinate]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImageInfo(BaseModel):
    """An image held by the server."""

    id: str = Field(description="opaque id to use in match and heat map requests")
    name: str = Field(description="display name (never a path)")
    width: int
    height: int


class SamplesResponse(BaseModel):
    """The bundled sample images and the named points of the source (``images[0]``)."""

    images: list[ImageInfo]
    points: list[Point] = Field(description="suggested source points, (x, y) in pixels")
    point_names: list[str]


class PairRequest(_Strict):
    """A (source, target) pair whose features to compute now."""

    source: str = Field(max_length=64, description="source image id")
    target: str = Field(max_length=64, description="target image id")


class PairResponse(BaseModel):
    """The pair is ready; the pose alignment's choice and distances."""

    source: str
    target: str
    aligned_pose: str = Field(description="pose of the source chosen by pose alignment")
    pose_distances: dict[str, float]


class MatchRequest(PairRequest):
    """Source points to find in the target."""

    points: list[Point] = Field(
        max_length=4096,
        description="(x, y) in source pixels, (0, 0) = centre of the top-left pixel",
    )
    pose_align: bool = Field(True, description="use the pose chosen by pose alignment")
    refine: str = Field("window", max_length=32, description="refinement rule")


class MatchResponse(BaseModel):
    """Where the points land in the target."""

    points: list[Point] = Field(description="(x, y) in target pixels, one per source point")
    scores: list[float] = Field(description="best cosine similarity of each point, in [-1, 1]")
    pose: str = Field(description="pose of the source used")
    pose_distances: dict[str, float]


class ErrorResponse(BaseModel):
    """A 4xx answer."""

    detail: str
