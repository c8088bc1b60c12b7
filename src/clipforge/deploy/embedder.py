"""``Embedder``: an exported model's image and text embeddings and zero-shot scores, with onnxruntime and numpy.

The numbers are the PyTorch model's: images are preprocessed as its eval transform does (``preprocess.py``), text
goes through the very tokenizer or renderer clipforge trains with (``processor.numpy(texts)``), embeddings are
L2-normalised as ``F.normalize`` does, and label probabilities follow the model's scoring (``EvalModel.probabilities``:
a softmax over labels for CLIP and CLIPPO, ``σ(scale · cos + bias)`` per label for SigLIP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clipforge.deploy.manifest import ExportInfo, build_text_processor, read_export
from clipforge.deploy.preprocess import ImageInput, ImagePreprocessor, normalize
from clipforge.text import TextProcessor

INSTALL_HINT = "pip install 'clipforge[onnx]'"
DEFAULT_TEMPLATE = "a photo of a {}."  # the classify verb's default prompt
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
              "tensor(int32)": np.int32}


def _onnxruntime() -> Any:
    """The ``onnxruntime`` module, imported on first use (an optional dependency: the ``onnx`` extra)."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"clipforge.deploy runs exported models with onnxruntime: {INSTALL_HINT}") from e
    return onnxruntime


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (at least ``eps``), as ``torch.nn.functional.normalize``."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def fill(template: str, label: str) -> str:
    """``fill("a photo of a {}.", "dog")`` → ``"a photo of a dog."`` (``{c}`` works too), as clipforge's eval."""
    return template.replace("{c}", label).replace("{}", label)


class Tower:
    """One ONNX tower: an onnxruntime session with its single input and output.

    Args:
        path: The ``.onnx`` file.
        input_name: The input it must have (``pixels`` or ``tokens``).
        providers: onnxruntime execution providers.
        threads: Intra-op threads (``None``: onnxruntime's default).
    """

    def __init__(self, path: Path, input_name: str, providers: Sequence[str], threads: int | None):
        ort = _onnxruntime()
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException
            raise ValueError(f"cannot open {path} with onnxruntime: {e}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if input_name not in inputs:
            raise ValueError(f"{path}: expected an input named {input_name!r}, the graph has {sorted(inputs)}")
        self.input = inputs[input_name]
        self.shape = list(self.input.shape)  # ints and axis names (dynamic axes)
        if self.input.type not in _ORT_TYPES:
            raise ValueError(f"{path}: input {input_name!r} is {self.input.type}, expected one of {sorted(_ORT_TYPES)}")
        self.dtype = _ORT_TYPES[self.input.type]
        self.output = self.session.get_outputs()[0].name
        self.path = path

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Features (B, D) as float32 for one batch."""
        return np.asarray(self.session.run([self.output], {self.input.name: x.astype(self.dtype, copy=False)})[0],
                          dtype=np.float32)


class Embedder:
    """An exported model (``clipforge export MODEL OUT --to onnx``) run with onnxruntime: no torch needed.

    Example::

        from clipforge.deploy import Embedder
        embedder = Embedder("exported/")
        images = embedder.embed_images(["cat.jpg", "dog.png"])    # (2, D), L2-normalised
        texts = embedder.embed_texts(["a cat", "a dog"])          # (2, D)
        embedder.classify("cat.jpg", ["cat", "dog", "car"])       # [("cat", 0.93), ("dog", 0.05), ...]

    Args:
        directory: The exported directory (``export.json``, ``image.onnx``, ``text.onnx`` unless CLIPPO, the
            tokenizer's file).
        providers: onnxruntime execution providers, in order of preference (default: the CPU).
        batch_size: Images or texts per onnxruntime call.
        threads: onnxruntime's intra-op threads (default: its own choice).
        alpha: Transparent images: ``white`` (composite on white, as clipforge's readers) or ``drop``.

    Raises:
        ImportError: onnxruntime is not installed (``pip install 'clipforge[onnx]'``).
        FileNotFoundError: the directory lacks a file ``export.json`` names.
        ValueError: ``export.json`` is malformed, or a tower's inputs do not match it.
    """

    def __init__(self, directory: str | Path, providers: Sequence[str] | None = None, batch_size: int = 32,
                 threads: int | None = None, alpha: str = "white"):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.info: ExportInfo = read_export(directory)
        providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self.batch_size = batch_size
        pre = self.info.preprocess
        self.preprocessor = ImagePreprocessor(pre["image_size"], pre["mean"], pre["std"], pre["resize"], alpha)
        image, text = self.info.tower_file("image"), self.info.tower_file("text")
        self.image_tower = Tower(image, "pixels", providers, threads) if image is not None else None
        self.text_tower = Tower(text, "tokens", providers, threads) if text is not None else None
        if self.image_tower is not None:
            self._check_image_shape(self.image_tower)
        self.text_processor = build_text_processor(self.info)
        if self.text_tower is not None:
            self._check_text_shape(self.text_tower)

    def _check_image_shape(self, tower: Tower) -> None:
        size, shape = self.info.preprocess["image_size"], tower.shape
        fixed = [d for d in shape[1:] if isinstance(d, int)]
        if len(shape) != 4 or any(d not in (3, size) for d in fixed):
            raise ValueError(f"{tower.path}: input 'pixels' has shape {shape}, but export.json's "
                             f"preprocess makes (batch, 3, {size}, {size})")

    def _check_text_shape(self, tower: Tower) -> None:
        context, length = getattr(self.text_processor, "context_length", None), tower.shape[-1]
        if len(tower.shape) != 2 or (isinstance(length, int) and length != context):
            raise ValueError(f"{tower.path}: input 'tokens' has shape {tower.shape}, but the text processor makes "
                             f"(batch, {context}) (text_processor.context_length in export.json)")

    def _tower(self, name: str) -> Tower:
        tower = self.image_tower if name == "image" else self.text_tower
        if tower is None:
            raise ValueError(f"{self.info.directory} has no {name} tower (exported with towers=('"
                             f"{'text' if name == 'image' else 'image'}',)): export both to embed {name}s")
        return tower

    @property
    def family(self) -> str:
        """``clip``, ``clippo`` or ``siglip``."""
        return self.info.family

    @property
    def scoring(self) -> str:
        """``softmax`` or ``sigmoid``."""
        return self.info.scoring

    @property
    def logit_scale(self) -> float:
        """The multiplier of cosine similarities (as used: exponentiated, clamped where the model clamps)."""
        return self.info.logit_scale

    @property
    def logit_bias(self) -> float:
        """The bias added after scaling (SigLIP's), 0 for a model without one."""
        return self.info.logit_bias if self.info.logit_bias is not None else 0.0

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Paths or PIL images → the image tower's float32 input (N, 3, H, W), as the eval transform makes it."""
        return self.preprocessor(images)

    def _batched(self, tower: Tower, n: int, make: Callable[[int, int], np.ndarray]) -> np.ndarray:
        """``tower`` over ``make(start, stop)`` batches of at most ``batch_size`` → normalised (n, D)."""
        parts = [tower(make(start, min(start + self.batch_size, n))) for start in range(0, n, self.batch_size)]
        return l2_normalize(np.concatenate(parts))

    def embed_images(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Image paths or PIL images → float32 (N, D), L2-normalised.

        Raises:
            ValueError: no image is given, or a file is not an image.
            FileNotFoundError: a path is not a file.
        """
        items = [images] if isinstance(images, str | Path | Image.Image) else list(images)
        if not items:
            raise ValueError("no images to embed")
        return self._batched(self._tower("image"), len(items), lambda a, b: self.preprocessor(items[a:b]))

    def embed_texts(self, texts: str | Sequence[str]) -> np.ndarray:
        """Strings → float32 (N, D), L2-normalised: tokens through ``text.onnx``, or for CLIPPO rendered text
        through ``image.onnx``.

        Raises:
            ValueError: no text is given.
            TypeError: an item is not a string.
        """
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise ValueError("no texts to embed")
        processor = self.text_processor
        if processor is None:
            raise ValueError(f"{self.info.directory} has no text tower (exported with towers=('image',)): export "
                             "both to embed texts")
        if self.info.text_input == "pixels":  # CLIPPO: rendered uint8 pixels, normalised as CLIPPO.encode_text does
            mean, std = self.info.preprocess["mean"], self.info.preprocess["std"]
            return self._batched(self._tower("image"), len(items),
                                 lambda a, b: normalize(processor.numpy(items[a:b]), mean, std))
        tower = self._tower("text")
        return self._batched(tower, len(items), lambda a, b: self._tokens(processor, items[a:b], tower))

    def _tokens(self, processor: TextProcessor, texts: list[str], tower: Tower) -> np.ndarray:
        """Token ids (B, T): the full context, or, where the exported sequence axis is dynamic and the tower causal
        (CLIP: it pools at end-of-text, which never attends to later positions), cut after the batch's last
        end-of-text."""
        tokens = processor.numpy(texts)
        causal = self.info.model_config.get("text", {}).get("causal") is True
        cut = causal and not isinstance(tower.shape[-1], int)
        eot = getattr(processor, "eot_token_id", None)
        if cut and eot is not None and bool((tokens == eot).any(axis=1).all()):
            last = int((tokens == eot).argmax(axis=1).max())
            tokens = tokens[:, :last + 1]
        return tokens

    def classifier(self, labels: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """Zero-shot weights (L, D): per label, the re-normalised mean of its normalised prompt embeddings, as
        clipforge's ``build_classifier``.

        Raises:
            ValueError: no label or no template is given, or a template has no ``{}``.
        """
        templates = [DEFAULT_TEMPLATE] if templates is None else list(templates)
        labels = list(labels)
        if not labels or not templates:
            raise ValueError("zero-shot needs at least one label and one template")
        bad = [t for t in templates if "{}" not in t and "{c}" not in t]
        if bad:
            raise ValueError(f"template {bad[0]!r} has no {{}} for the label")
        prompts = [fill(t, label) for label in labels for t in templates]
        emb = self.embed_texts(prompts).reshape(len(labels), len(templates), -1).mean(axis=1)  # (L, D)
        return l2_normalize(emb)

    def probabilities(self, similarities: np.ndarray) -> np.ndarray:
        """Cosine similarities (N, L) → label probabilities by the model's scoring (softmax over labels, or a
        sigmoid per label)."""
        logits = self.logit_scale * np.asarray(similarities, dtype=np.float64) + self.logit_bias
        if self.scoring == "sigmoid":
            return 1.0 / (1.0 + np.exp(-logits))
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)

    def classify(self, image: ImageInput, labels: Sequence[str],
                 templates: Sequence[str] | None = None) -> list[tuple[str, float]]:
        """Zero-shot labels for one image: ``(label, probability)`` for every label, most probable first.

        Args:
            image: A path or a PIL image.
            labels: The candidate labels, e.g. ``["cat", "dog"]``.
            templates: Prompt templates with ``{}`` for the label, averaged per label (default
                ``["a photo of a {}."]``).
        """
        labels = list(labels)
        if len(set(labels)) != len(labels):
            raise ValueError(f"repeated label(s): {sorted({s for s in labels if labels.count(s) > 1})}")
        weights = self.classifier(labels, templates)  # (L, D)
        probs = self.probabilities(self.embed_images([image]) @ weights.T)[0]  # (L,)
        order = sorted(range(len(labels)), key=lambda i: -probs[i])
        return [(labels[i], float(probs[i])) for i in order]

    def __repr__(self) -> str:
        return (f"Embedder({str(self.info.directory)!r}, family={self.family!r}, scoring={self.scoring!r}, "
                f"{self.preprocessor!r})")
