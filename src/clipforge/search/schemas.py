"""The JSON bodies of ``clipforge serve``'s routes (``/openapi.json`` is generated from them).

Request bodies are strict: unknown fields, a string where a number belongs (``"k": "10"``) or a float for an
integer are errors, not silently converted.
"""

from __future__ import annotations

from typing import Any

try:
    from pydantic import BaseModel, ConfigDict, Field, model_validator
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("clipforge serve needs FastAPI and uvicorn: pip install 'clipforge[server]'") from None

DEFAULT_TEMPLATE = "a photo of a {}."  # the classify verb's default prompt


class SearchRequest(BaseModel):
    """Exactly one of ``text``, ``image`` and ``embedding``, and how many results."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = Field(None, description="a text query (the collection's model embeds it)")
    image: str | None = Field(None, description="an image query: base64 of its file (a data: URL is accepted)")
    embedding: list[float] | None = Field(None, description="a query vector of the collection's dimension")
    k: int = Field(10, ge=1, description="how many results (at most the server's max_k)")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        given = [name for name in ("text", "image", "embedding") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of text, image, embedding (got {', '.join(given) or 'none'})")
        return self


class SearchResult(BaseModel):
    """One collection item."""

    id: int
    score: float = Field(description="cosine similarity with the query")
    path: str
    caption: str


class SearchResponse(BaseModel):
    """Results, best first."""

    results: list[SearchResult]


class ClassifyRequest(BaseModel):
    """An image and the labels to choose from."""

    model_config = ConfigDict(extra="forbid", strict=True)
    image: str = Field(description="base64 of the image file (a data: URL is accepted)")
    labels: list[str] = Field(min_length=1, description="the labels, e.g. ['a cat', 'a dog']")
    templates: list[str] | None = Field(None, min_length=1,
                                        description=f"prompt templates with {{}} for the label (default: "
                                                    f"[{DEFAULT_TEMPLATE!r}]); several are averaged")


class LabelProbability(BaseModel):
    """One label's score."""

    label: str
    probability: float = Field(description="softmax over the labels (CLIP) or this label's sigmoid (SigLIP)")
    similarity: float = Field(description="cosine similarity of the image with the label's prompts")


class ClassifyResponse(BaseModel):
    """Labels, most probable first."""

    scoring: str = Field(description="softmax (probabilities sum to one) or sigmoid (each label on its own)")
    results: list[LabelProbability]


class HealthResponse(BaseModel):
    """The service is up; what it serves."""

    status: str
    model: str
    family: str
    scoring: str
    backend: str
    size: int
    dim: int
    auth: bool
    batching: dict[str, dict[str, Any]]


class ErrorResponse(BaseModel):
    """What was wrong with a request."""

    error: str
    errors: list[dict[str, Any]] | None = None


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (401, 404, 413, 422)}
