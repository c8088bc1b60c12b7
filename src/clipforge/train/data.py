"""Training batches for the loop: one batch format ``(images, texts, info)`` over every data source.

``info`` is a small dict the loop hands to :class:`TrainData`: ``size`` (pairs in the batch), ``skipped``
(samples met and skipped while building it, by reason: see ``clipforge.data.decode``) and, for tar
shards, ``worker`` and ``position`` (where that reader stands) plus the sample ``keys``. It travels
with the batch out of the DataLoader workers, so counts and positions reflect exactly the batches the
loop consumed, never the ones prefetched.

**Indexable sources** (synthetic world, CSV/TSV/parquet tables, image folders): batch ``step`` is a pure
function of ``(seed, step, rank)`` (:class:`StepBatches`), so resuming is restarting at the step. Global
position ``p = step · batch_size + j`` maps to sample ``order(epoch)[p mod n]``, where ``order`` is a
permutation seeded by ``(seed, epoch)``; the crop and caption of each sample come from an rng seeded by
``(seed, p)``. Rank ``r`` of ``W`` takes positions ``j ∈ [r · B/W, (r + 1) · B/W)`` of each global batch,
so the union over ranks is exactly the single-process batch. A bad sample at position ``p`` is counted
and replaced by a sample drawn by an rng seeded by ``(seed, p, attempt)``: still a pure function.

**Tar shards** stream (:class:`ShardBatches`, ``clipforge.data.shards``): DataLoader worker ``w`` of a
run that starts at ``start`` builds the batches of steps ``start + w, start + w + N, ...`` and plays
*logical* worker ``step mod N``, so step ``s`` always comes from the same reader, across resumes. The
checkpoint holds each logical worker's position after the last batch the loop consumed; in epoch mode a
resumed run continues with exactly the next unseen samples (the same keys, captions and crops as an
uninterrupted run); on another number of readers it finishes the interrupted epoch, each of its samples
read once over both runs (``clipforge.data.shards.reshard``). In resampled mode the position is not
needed: readers are reseeded with the resume step, giving fresh draws from the same distribution. With
``gpu_decode`` the workers hand over checked JPEG bytes and crop boxes, and :class:`TrainData` decodes
them on the device as batches arrive.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from PIL import Image

from clipforge.config import ConfigError
from clipforge.data import build_source
from clipforge.data.augment import AugmentTransform, SampleRecipe, batch_extras
from clipforge.data.config import DataConfig, SyntheticDataConfig
from clipforge.data.decode import DEFAULT_LIMITS, as_bad_sample, decode_image, decode_text, pick_caption
from clipforge.data.device_decode import DeviceJPEGDecoder, device_decode_unavailable, jpeg_size
from clipforge.data.shards import ShardSource, check_readers, reshard, warn
from clipforge.data.sources import is_labelled
from clipforge.data.text_pairs import pair_source, rendered_images
from clipforge.data.webdataset import ShardStats
from clipforge.train.classify import ClassifierConfig, labels_to_tensor
from clipforge.train.config import TextPairsConfig
from clipforge.train.distributed import Runtime, gather_objects
from clipforge.train.flyp import class_prompts

Batch = tuple[torch.Tensor, torch.Tensor, dict[str, Any]]
MAX_ATTEMPTS = 64  # replacements tried for one position of an indexable source before giving up
_PAIR_STREAM = 1 << 32  # seeds the text pairs' order apart from the image–caption order
MAX_BAD_IN_A_ROW = 10_000  # unusable shard samples in a row before a reader gives up (fail, never spin)


def world_config(config: SyntheticDataConfig, image_size: int) -> Any:
    """The ``WorldConfig`` of a synthetic data config (rendered at ``image_size`` unless it names one)."""
    return config.world_config(image_size)


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` is ``(images (b, 3, H, W), text (b, T), info)``: this rank's share of global batch ``step``.

    Args:
        source: Indexable ``(PIL image, caption text)`` pairs; an item may raise ``BadSample``. A source with a
            ``group_size`` attribute > 1 (the synthetic world's contrast groups) has its runs of that many
            consecutive items shuffled as units, so a group lands in one batch (when the batch's image slots
            are a multiple of the group size), from global batch ``group_start`` on; earlier batches draw its
            items one by one.
        transform: Image transform; called as ``transform(image, rng)`` when ``augment``.
        text_processor: ``texts -> Tensor``.
        batch_size: The global batch size.
        seed: Seeds the per-epoch order, the crops, caption picks and replacements of bad samples.
        rank: This process's rank.
        world_size: Number of processes.
        augment: Whether ``transform`` takes an rng (random crops).
        pairs: CLIPPO's text/text pairs (``clipforge.data.text_pairs``), or ``None``; ``text_processor`` must
            then be a renderer (with ``render(texts) -> uint8 (N, H, W, 3)``).
        pair_fraction: Share of each global batch given to ``pairs``: position ``j`` is a pair slot when
            ``floor((j + 1) f) > floor(j f)``, which spreads the slots evenly over the batch (and the ranks).
            Image–caption samples fill the other slots in stream order, pairs follow their own order.
        group_start: The first global batch that keeps a source's groups together (see ``source``).
        recipe: The small-data recipes' per-sample augmentation and extra views (``clipforge.data.augment``), used
            in place of ``transform`` (and ``augment``) when given.
    """

    def __init__(self, source: Sequence[tuple[Image.Image, Any]], transform: Callable, text_processor: Callable,
                 batch_size: int, seed: int, rank: int = 0, world_size: int = 1, augment: bool = True,
                 pairs: Sequence[tuple[str, str]] | None = None, pair_fraction: float = 0.0, group_start: int = 0,
                 recipe: SampleRecipe | None = None):
        self.source, self.transform, self.text_processor = source, transform, text_processor
        self.recipe = recipe
        self.group_start = group_start
        self.batch_size, self.seed, self.augment = batch_size, seed, augment
        local = batch_size // world_size
        self.positions = range(rank * local, (rank + 1) * local)
        self.pairs, self.pair_fraction = pairs, (pair_fraction if pairs is not None else 0.0)
        self.pairs_per_batch = sum(self.is_pair_slot(j) for j in range(batch_size))

    def is_pair_slot(self, j: int) -> bool:
        """Whether position ``j`` of every global batch holds a text/text pair."""
        f = self.pair_fraction
        return math.floor((j + 1) * f) > math.floor(j * f)

    def pair_at(self, step: int, j: int) -> tuple[str, str]:
        """The text pair in slot ``j`` (a pair slot) of global batch ``step``."""
        assert self.pairs is not None
        n = len(self.pairs)
        q = step * self.pairs_per_batch + math.floor(j * self.pair_fraction)
        return self.pairs[int(_order(self.seed + _PAIR_STREAM, q // n, n)[q % n])]

    def __len__(self) -> int:
        return 2**62  # indexed by step; the sampler decides which steps are drawn

    def __getitem__(self, step: int) -> Batch:
        images, captions, skipped, pair_rows, firsts, extras = [], [], Counter(), [], [], []
        image_slots = self.batch_size - self.pairs_per_batch
        for row, j in enumerate(self.positions):
            if self.is_pair_slot(j):
                first, second = self.pair_at(step, j)
                pair_rows.append(row)
                firsts.append(first)
                images.append(None)
                captions.append(second)
                continue
            p = step * image_slots + j - math.floor((j + 1) * self.pair_fraction)  # the image–caption stream
            rng = random.Random(self.seed * 2**40 + p)
            image, texts = self._sample(p, rng, skipped, grouped=step >= self.group_start)
            if self.recipe is not None:
                tensor, caption, extra = self.recipe(image, texts, rng)
                images.append(tensor)
                extras.append(extra)
            else:
                caption = pick_caption(texts, rng)
                images.append(self.transform(image, rng) if self.augment else self.transform(image))
            captions.append(caption)
        if firsts:
            rendered = rendered_images(self.text_processor.render, firsts, self.transform.mean, self.transform.std)
            for row, image in zip(pair_rows, rendered, strict=True):
                images[row] = image
        texts = self.text_processor(captions)
        info = {"size": len(captions), "skipped": dict(skipped), "text_pairs": len(firsts),
                **batch_extras(extras, self.text_processor, texts)}
        return torch.stack(images), texts, info

    def _sample(self, p: int, rng: random.Random, skipped: Counter,
                grouped: bool = True) -> tuple[Image.Image, list[str]]:
        """The image and captions at global position ``p``, or (counting each bad one) the first good replacement."""
        n, group = len(self.source), getattr(self.source, "group_size", 1) if grouped else 1
        g, member = divmod(p, group)  # sources may declare groups of consecutive items to keep together
        groups = n // group
        index = int(_order(self.seed, g // groups, groups)[g % groups]) * group + member
        limits, last = getattr(self.source, "limits", DEFAULT_LIMITS), ""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                image, text = self.source[index]
                return image, decode_text(text, limits)
            except Exception as e:  # the sample boundary: whatever one sample raises is counted (reason ``error``)
                bad = as_bad_sample(e)
                skipped[bad.reason] += 1
                last = str(bad)
                index = int(np.random.default_rng([self.seed, p, attempt]).integers(n))
        raise RuntimeError(f"{MAX_ATTEMPTS} samples in a row were unusable (at position {p}): {dict(skipped)}; "
                           f"the last: {last}")


@lru_cache(maxsize=2)
def _order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The sample order of one pass over ``n`` samples."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class ShardBatches(torch.utils.data.IterableDataset):
    """This rank's batches of steps ``start .. stop - 1`` from tar shards, each worker a reader (module docstring).

    Args:
        source: The shards (``build_source`` of a shards config, decoding towards the model's input side).
        transform: Image transform; called as ``transform(image, rng)`` when the config's ``augment``.
        text_processor: ``texts -> Tensor``.
        batch_size: The global batch size.
        seed: Seeds shard order, source choice, caption picks and crops.
        rank: This process's rank.
        world_size: Number of processes.
        recipe: The small-data recipes' per-sample augmentation (as in ``StepBatches``).

    Raises:
        ValueError: in epoch mode, a source with fewer shards than readers (ranks × workers).
    """

    def __init__(self, source: ShardSource, transform: Callable, text_processor: Callable, batch_size: int,
                 seed: int, rank: int, world_size: int, recipe: SampleRecipe | None = None):
        self.source, self.config = source, source.config
        self.recipe = recipe
        self.transform, self.text_processor = transform, text_processor
        self.local, self.seed, self.rank, self.world_size = batch_size // world_size, seed, rank, world_size
        self.sources = source.sources
        self.start, self.stop, self.positions = 0, 0, {}
        self.encoded = False  # True: leave JPEG decoding to a DeviceJPEGDecoder in the main process
        check_readers([len(shards) for shards in self.sources], world_size * max(self.config.num_workers, 1),
                      self.config.resampled)  # here, in the main process, before any work

    def steps(self, start: int, stop: int, positions: dict[int, dict[str, Any]]) -> ShardBatches:
        """A copy that yields steps ``start .. stop - 1``, readers continuing from ``positions`` (by logical worker)."""
        batches = copy.copy(self)
        batches.start, batches.stop, batches.positions = start, stop, positions
        return batches

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        logical = (self.start + worker) % workers
        slot, slots = self.rank * workers + logical, self.world_size * workers
        salt = self.start if self.config.resampled else 0
        stats = ShardStats()
        stream = self.source.stream(slot=slot, slots=slots, seed=self.seed, stats=stats,
                                    state=self.positions.get(logical), salt=salt)
        for _ in range(self.start + worker, self.stop, workers):
            yield self._batch(stream, stats, f"{self.seed}/{slot}/{salt}", logical)

    def _batch(self, stream: Iterator[tuple[int, dict[str, Any]]], stats: ShardStats, key: str,
               logical: int) -> Batch:
        """The next ``local`` usable samples of ``stream``, transformed, with their ``info``."""
        c = self.config
        images, boxes, captions, keys, skipped, extras = [], [], [], [], Counter(), []
        bad_shards, holes, bad_in_a_row = len(stats.bad_shards), stats.damaged_regions, 0
        while len(images) < self.local:
            index, sample = next(stream)
            rng = random.Random(f"{key}/{index}")  # the sample's own rng: replayed exactly on resume
            try:
                data, texts = self.source.parts(sample)
                if self.recipe is not None:
                    image, caption, extra = self.recipe(self.source.decode(data), texts, rng)
                    extras.append(extra)
                elif self.encoded:
                    caption = pick_caption(texts, rng)
                    image, box = self._encoded(data, rng)
                    boxes.append(box)
                else:
                    caption = pick_caption(texts, rng)
                    image = self.source.decode(data)
                    image = self.transform(image, rng) if c.augment else self.transform(image)
            except Exception as e:  # the sample boundary: whatever one sample raises is counted (reason ``error``)
                bad = as_bad_sample(e)
                skipped[bad.reason] += 1
                bad_in_a_row += 1
                if bad_in_a_row >= MAX_BAD_IN_A_ROW:
                    raise RuntimeError(f"{bad_in_a_row} shard samples in a row unusable: {dict(skipped)}; "
                                       f"the last: {bad}") from None
                continue
            bad_in_a_row = 0
            images.append(image)
            captions.append(caption)
            keys.append(f"{sample['__url__']}#{sample['__key__']}")
        for url, reason in stats.bad_shards[bad_shards:]:
            warn(f"damaged shard {url}: {reason}")
        if len(stats.bad_shards) > bad_shards:
            skipped["shard_errors"] = len(stats.bad_shards) - bad_shards
        if stats.damaged_regions > holes:
            skipped["tar_holes"] = stats.damaged_regions - holes
        texts = self.text_processor(captions)
        info = {"size": len(captions), "skipped": dict(skipped), "worker": logical, "position": stream.state(),
                "keys": keys, **batch_extras(extras, self.text_processor, texts)}
        if self.encoded:
            info["boxes"] = boxes if c.augment else None
            return images, texts, info  # type: ignore[return-value]
        return torch.stack(images), texts, info

    def _encoded(self, data: bytes, rng: random.Random) -> tuple[bytes, tuple[int, int, int, int] | None]:
        """A checked JPEG for the device decoder, and its crop box (drawn here, on the CPU).

        A PNG or WebP is decoded here and handed on re-encoded as a JPEG (img2dataset shards are JPEG).
        """
        from clipforge.data.writer import encode_jpeg

        size = jpeg_size(data, self.config.decode)
        if size is None:
            image = decode_image(data, self.config.decode)
            data, size = encode_jpeg(image), image.size
        box = self.transform.crop_box(*size, rng) if self.config.augment else None
        return data, box


class TrainData:
    """The loop's data: builds the batches, counts what the loop consumed, saves and restores the position.

    Args:
        config: The data config.
        transform: The image transform (train or eval, as ``config.augment`` says).
        text_processor: ``texts -> Tensor``.
        batch_size: The global batch size.
        seed: The run's seed.
        runtime: Rank and world size.
        image_size: The model's input side.
        text_pairs: CLIPPO's text/text pairs (a ``TextPairsConfig``); used when its ``fraction`` is > 0.
        classifier: A ``classifier`` run's head config: the batches' second item is then the class indices
            (``long``), not tokens; ``classnames`` holds the class order.
        recipe: The small-data recipes' per-sample augmentation and extra views (``clipforge.data.augment``); its
            backgrounds, stroke weights and fills need transparent images as RGBA, so the source then decodes with
            ``alpha="keep"``.

    Raises:
        ConfigError: what ``config`` names on disk is missing (``clipforge.data.check_source``), or it names
            class labels rather than captions without ``captions_from_labels`` or ``classifier``, or its templates
            or class names do not fit (``clipforge.train.flyp``); before any work.
    """

    def __init__(self, config: DataConfig, transform: Callable, text_processor: Callable, batch_size: int,
                 seed: int, runtime: Runtime, image_size: int, text_pairs: TextPairsConfig | None = None,
                 classifier: ClassifierConfig | None = None, recipe: SampleRecipe | None = None):
        prompts = getattr(config, "captions_from_labels", None)
        if is_labelled(config) and prompts is None and classifier is None:
            raise ConfigError("data: training needs captions; data.label_key and data.layout=classes name class "
                              "labels: set data.captions_from_labels to caption them with class prompts (FLYP), "
                              "or train a classifier head on them with classifier: (cross-entropy)")
        self.config, self.runtime, self.batch_size, self.seed = config, runtime, batch_size, seed
        self.batches: StepBatches | ShardBatches
        if recipe is not None and isinstance(recipe.transform, AugmentTransform) and hasattr(config, "decode") \
                and recipe.transform.config.needs_alpha:  # the transform composites transparent images itself
            config = dataclasses.replace(config, decode=dataclasses.replace(config.decode, alpha="keep"))
        source = build_source(config, image_size)  # checks what config names on disk first, before any work
        if classifier is not None:  # batches carry class indices where captions go (``clipforge.train.classify``)
            source = class_prompts(classifier, source, getattr(config, "path", ""), "classifier", as_labels=True)
            text_processor = labels_to_tensor
        elif prompts is not None:
            source = class_prompts(prompts, source, getattr(config, "path", ""))  # StepBatches picks a template
        self.classnames: list[str] | None = getattr(source, "classnames", None)  # labelled data: the class order
        self.class_templates: list[str] | None = getattr(source, "templates", None)
        if isinstance(source, ShardSource):
            self.batches = ShardBatches(source, transform, text_processor, batch_size, seed, runtime.rank,
                                        runtime.world_size, recipe)
        else:
            pairs = None
            if text_pairs is not None and text_pairs.fraction:
                pairs = pair_source(text_pairs, getattr(source, "world", None))
            self.batches = StepBatches(source, transform, text_processor, batch_size, seed, runtime.rank,
                                       runtime.world_size, augment=config.augment, pairs=pairs,
                                       pair_fraction=text_pairs.fraction if pairs is not None else 0.0,
                                       group_start=getattr(config, "contrast_start", 0), recipe=recipe)
        self.used, self.skipped = 0, Counter()
        self.positions: dict[int, dict[str, Any]] = {}
        self.decoder = self._device_decoder(transform, runtime) if getattr(config, "gpu_decode", False) else None

    def _device_decoder(self, transform: Any, runtime: Runtime) -> DeviceJPEGDecoder | None:
        """The nvJPEG decoder on ``runtime.device``, or ``None`` (and a message) when it cannot run there."""
        reason = device_decode_unavailable(runtime.device)
        if reason is not None:
            if runtime.is_main:
                warn(f"data.gpu_decode: {reason}; decoding on the CPU in the loader")
            return None
        self.batches.encoded = True  # type: ignore[union-attr]
        return DeviceJPEGDecoder(transform.size, transform.mean, transform.std, runtime.device, self.config.decode)

    def loader(self, start: int, stop: int, pin_memory: bool = False) -> Iterable[Batch]:
        """Batches of steps ``start .. stop - 1`` in order, prepared by ``config.num_workers`` processes."""
        workers = self.config.num_workers
        if isinstance(self.batches, ShardBatches):
            dataset: Any = self.batches.steps(start, stop, self.positions)
            sampler = None
        else:
            dataset, sampler = self.batches, range(start, stop)
        # Its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, which shifts
        # the model's random ops (dropout, patch dropout) in a resumed run against the uninterrupted one.
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=sampler, num_workers=workers,
                                             generator=torch.Generator().manual_seed(self.seed + start),
                                             pin_memory=pin_memory and self.decoder is None,
                                             persistent_workers=False, prefetch_factor=4 if workers else None)
        return loader if self.decoder is None else _decode_on_device(loader, self.decoder)

    def consume(self, info: dict[str, Any]) -> None:
        """Records a batch the loop took: its counts and (shards) its reader's position. No device work."""
        self.used += info["size"]
        self.skipped.update(info["skipped"])
        if "position" in info:
            self.positions[int(info["worker"])] = info["position"]

    def metrics(self) -> dict[str, int]:
        """Pairs used and samples skipped (total and by reason) over all ranks since the run began (collective)."""
        used, skipped = 0, Counter()
        for rank_used, rank_skipped in gather_objects((self.used, dict(self.skipped)), self.runtime):
            used += rank_used
            skipped.update(rank_skipped)
        shard_events = {"shard_errors", "tar_holes"}
        out = {"data/used": used, "data/skipped": sum(n for r, n in skipped.items() if r not in shard_events)}
        out.update({f"data/skipped/{reason}": n for reason, n in sorted(skipped.items())})
        return out

    def state(self, step: int) -> dict[str, Any]:
        """The checkpoint's data entry: every rank's counts and reader positions (collective)."""
        ranks = gather_objects({"used": self.used, "skipped": dict(self.skipped),
                                "positions": copy.deepcopy(self.positions)}, self.runtime)
        return {"step": step, "samples_seen": step * self.batch_size, "kind": self.config.kind,
                "world_size": self.runtime.world_size, "num_workers": self.config.num_workers, "ranks": ranks}

    def restore(self, saved: dict[str, Any] | None) -> None:
        """Continues from a checkpoint's data entry (written by :meth:`state`).

        Counts always carry over. Reader positions do when the readers are the same (kind, ranks,
        workers). Otherwise epoch mode continues the interrupted epoch: its unread shards (partly read
        ones at their offsets) are dealt out to the new readers (:func:`clipforge.data.shards.reshard`),
        so each of its samples is read exactly once over both runs; samples that readers already in a
        later epoch had read are read again there. Rank 0 warns with the counts.
        """
        if not saved or "ranks" not in saved:
            return
        if len(saved["ranks"]) == self.runtime.world_size:
            mine = saved["ranks"][self.runtime.rank]
        elif self.runtime.is_main:  # another number of ranks: rank 0 carries the totals, so the logged sums continue
            mine = {"used": sum(r["used"] for r in saved["ranks"]), "positions": {},
                    "skipped": dict(sum((Counter(r["skipped"]) for r in saved["ranks"]), Counter()))}
        else:
            mine = {"used": 0, "skipped": {}, "positions": {}}
        self.used, self.skipped = mine["used"], Counter(mine["skipped"])
        workers = max(self.config.num_workers, 1)  # 0 workers read as 1: the same single reader per rank
        same_readers = (saved.get("kind") == self.config.kind and saved["world_size"] == self.runtime.world_size
                        and max(saved["num_workers"], 1) == workers)
        if same_readers or not isinstance(self.batches, ShardBatches) or self.config.resampled:
            self.positions = {int(k): v for k, v in mine["positions"].items()}
            return
        how = (f"the data position was saved for {saved.get('kind')} data read by {saved['world_size']} rank(s) × "
               f"{saved['num_workers']} worker(s); this run reads {self.config.kind} by {self.runtime.world_size} × "
               f"{self.config.num_workers}")
        if saved.get("kind") != self.config.kind:
            if self.runtime.is_main:
                warn(f"{how}: starting every reader at the beginning")
            self.positions = {}
            return
        old_workers = max(saved["num_workers"], 1)
        states = [{int(k): v for k, v in r["positions"].items()}.get(w) for r in saved["ranks"]
                  for w in range(old_workers)]  # by old slot: rank · workers + worker
        positions, dealt = reshard(states, self.batches.sources, self.seed, self.runtime.world_size * workers)
        if self.runtime.is_main:
            warn(f"{how}: " + "; ".join(_resharded(i, d) for i, d in enumerate(dealt)))
        first = self.runtime.rank * workers
        self.positions = {w: positions[first + w] for w in range(workers)}


def _resharded(source: int, dealt: dict[str, int]) -> str:
    """What :func:`clipforge.data.shards.reshard_source` did with one source, in words."""
    text = (f"source {source}: the rest of epoch {dealt['epoch']} ({dealt['shards']} shard(s), {dealt['partly']} "
            f"partly read) is dealt out to the new readers")
    again = dealt["again_partly"] + dealt["again_finished"]
    if again:
        text += (f", and {again} shard(s) that readers ahead had begun in later epochs are read again there "
                 f"({dealt['again_finished']} finished, {dealt['again_partly']} partly read with "
                 f"{dealt['again_samples']} sample(s) taken)")
    return text


def _decode_on_device(loader: Iterable[Batch], decoder: DeviceJPEGDecoder) -> Iterator[Batch]:
    """Batches of encoded JPEGs decoded by ``decoder``; an image it cannot decode is counted and its slot
    filled with another pair of the batch, so every rank's batch keeps its size."""
    for jpegs, texts, info in loader:
        images, bad = decoder(jpegs, info.pop("boxes"), checked=True)
        if bad:
            good = [i for i in range(len(jpegs)) if i not in bad]
            if not good:
                raise RuntimeError(f"no image of a batch could be decoded on the device: {bad}")
            source = [i if i not in bad else good[i % len(good)] for i in range(len(jpegs))]
            row = {i: r for r, i in enumerate(good)}
            images, texts = images[[row[i] for i in source]], texts[source]
            info = {**info, "size": info["size"] - len(bad),
                    "skipped": dict(Counter(info["skipped"]) + Counter(bad.values()))}
        yield images, texts, info
