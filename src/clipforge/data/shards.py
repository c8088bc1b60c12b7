"""Streaming training data from webdataset tar shards (img2dataset's layout), with an exact data position.

**Sources.** ``"a/{00000..00099}.tar::b/{0..3}.tar"`` names two sources (``::`` separates them, as in
OpenCLIP); each is a brace range, a glob, a folder of ``*.tar`` or a file (:func:`expand_shards`). A list
of strings is one source per item; an item that is itself a list is one source made of those shards.
Shards may be remote: fsspec URLs (``s3://``, ``gs://``, ``hf://``, ``memory://``) or ``pipe:CMD`` commands
(:mod:`clipforge.fs`); one that is missing or whose command fails is skipped and counted like a damaged shard.
Each sample is drawn from source ``i`` with probability ``weights[i] / sum(weights)`` (uniform without
weights), by a seeded draw that is a pure function of the sample's position in the stream.

**Readers.** Every DataLoader worker of every rank is one *slot* (``slot = rank · workers + worker`` of
``slots = world_size · workers``). A slot reads ``interleave`` shards of each source at once, taking the
next sample from one of them at random; there is no shuffle buffer, so a slot's position is a few
numbers and resuming re-reads at most ``interleave`` partly read shards per source (without decoding).

- *Epoch mode* (``resampled=False``): epoch ``e`` of source ``i`` shuffles its shards with a generator
  seeded by ``(seed, i, e)`` and gives slot ``s`` the shards ``s, s + slots, s + 2·slots, ...`` of that
  order, so slots never share a shard and, over one epoch, every sample is read exactly once. When a
  slot has read its share it starts its share of the next epoch (slots drift apart by at most a shard
  or so; each source counts its own epochs).
- *Resampled mode* (``resampled=True``): each slot draws shards with replacement from a generator
  seeded by ``(seed, i, slot, salt)``; training passes the resume step as ``salt``, so a resumed run
  draws a fresh stream (statistically the same data, not the same samples).

**Position.** :meth:`MixedStream.state` is the slot's position: per source the epoch, how many shards of
the slot's share were opened, and the open shards with the samples taken from each. A stream built from
that state continues with exactly the next sample the original would have given, including which
caption and crop it draws (those rngs are seeded by the sample's position too).

**Other readers** (:func:`reshard`). Positions saved by one number of slots are carried to another by
continuing the interrupted epoch ``E`` (per source, the lowest epoch a saved slot is in): its partly read
shards (with the samples taken) and then its unopened shards, in the epoch's order, are dealt out to the
new slots, new slot ``s`` taking items ``s, s + slots, ...``; each new position holds that explicit
``share`` for epoch ``E`` only, and from ``E + 1`` on the usual rule applies. Every sample of epoch ``E`` is
read exactly once over the two runs; samples that slots already in a later epoch had read are read again
in that epoch.
"""

from __future__ import annotations

import copy
import os
import random
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from clipforge.data.decode import IMAGE_FIELDS, DecodeLimits, as_bad_sample, decode_image, decode_pair, sample_parts
from clipforge.data.webdataset import Sample, ShardStats, expand_shards, iter_shard, iter_tar_samples

if TYPE_CHECKING:
    from PIL import Image

    from clipforge.data.config import ShardsDataConfig

SourceSpec = str | Sequence[str | Sequence[str]]


def split_sources(urls: SourceSpec) -> list[Any]:
    """The sources ``urls`` names, one spec each, unexpanded (no file is looked at).

    Raises:
        ValueError: no source.
    """
    if isinstance(urls, str | os.PathLike):
        specs: list[Any] = [u for u in os.fspath(urls).split("::") if u.strip()]
    else:
        specs = list(urls)
    if not specs:
        raise ValueError("no shard source given")
    return specs


def parse_sources(urls: SourceSpec) -> list[list[str]]:
    """The shard paths of each source named by ``urls`` (see the module docstring).

    Raises:
        ValueError: no source, or a source that names no shard.
        FileNotFoundError: a source matches no file.
    """
    return [expand_shards(spec) for spec in split_sources(urls)]


class ShardSource:
    """The tar shards a ``ShardsDataConfig`` names (``clipforge.data.build_source``): streamed by training
    (:meth:`stream`), or read once, in order, by evaluation and inspection (iterating it).

    Args:
        config: The shards config (fields, decode limits).
        min_size: Decode at least this shorter side (reduce-on-decode); ``None``: full size.

    Attributes:
        sources: The shard paths of each source.
        stats: Tar-level events met while iterating (bad shards, damaged regions).
    """

    def __init__(self, config: ShardsDataConfig, min_size: int | None = None):
        self.config, self.min_size = config, min_size
        self.sources = config.sources()
        self.stats = ShardStats()

    def __iter__(self) -> Iterator[Sample]:
        """Every sample of every shard once, source after source (``stats`` restarts)."""
        self.stats = ShardStats()
        return iter_tar_samples([path for shards in self.sources for path in shards], self.stats)

    def stream(self, *, slot: int, slots: int, seed: int, stats: ShardStats, state: dict[str, Any] | None = None,
               salt: int = 0) -> MixedStream:
        """One reader's endless mixed stream (:func:`open_stream` with the config's weights and modes)."""
        c = self.config
        return open_stream(self.sources, c.weights, slot=slot, slots=slots, seed=seed, resampled=c.resampled,
                           interleave=c.interleave, stats=stats, state=state, salt=salt)

    def parts(self, sample: Sample) -> tuple[bytes, list[str]]:
        """A sample's encoded image and captions (:func:`sample_parts` with the config's fields)."""
        return sample_parts(sample, self.config.image_fields, self.config.caption_field, self.config.decode)

    def decode(self, data: bytes) -> Image.Image:
        """An encoded image decoded under the config's limits (:func:`decode_image`)."""
        return decode_image(data, self.config.decode, self.min_size)


def epoch_share(shards: Sequence[str], source: int, seed: int, epoch: int, slot: int, slots: int) -> list[str]:
    """Slot ``slot`` of ``slots``'s shards of source ``source`` in ``epoch``: the epoch's order, strided."""
    order = np.random.default_rng([seed, source, epoch]).permutation(len(shards))
    return [shards[i] for i in order[slot::slots]]


class _Uniforms:
    """Uniform draws in [0, 1) as a pure function of their index: block ``b`` of 4096 comes from rng ``(*key, b)``."""

    BLOCK = 4096

    def __init__(self, *key: int):
        self.key, self.block, self.values = key, -1, np.empty(0)

    def __call__(self, index: int) -> float:
        block, offset = divmod(index, self.BLOCK)
        if block != self.block:
            self.block, self.values = block, np.random.default_rng([*self.key, block]).random(self.BLOCK)
        return float(self.values[offset])


class SourceStream:
    """One slot's endless stream of raw samples from one source (module docstring: epoch/resampled modes).

    Args:
        shards: The source's shard paths.
        source: The source's index (seeds its shuffles).
        slot: This reader's slot; ``slots``: how many readers share the source.
        seed: The run's seed.
        resampled: Draw shards with replacement instead of epoch by epoch.
        interleave: Shards read at once.
        stats: Tar-level events (bad shards, damaged regions) are counted here.
        state: A position from :meth:`state` to continue from (epoch mode).
        salt: Extra seed for resampled mode (the resume step).

    In epoch mode there must be at least ``slots`` shards (:func:`check_readers`).
    """

    def __init__(self, shards: Sequence[str], source: int, slot: int, slots: int, seed: int, resampled: bool,
                 interleave: int, stats: ShardStats, state: dict[str, Any] | None = None, salt: int = 0):
        self.shards, self.source, self.slot, self.slots = list(shards), source, slot, slots
        self.seed, self.resampled, self.interleave, self.stats = seed, resampled, interleave, stats
        mode_key = (salt, 1) if resampled else (0, 0)
        self._pick = _Uniforms(seed, source, slot, *mode_key)
        self._draw = np.random.default_rng([seed, source, slot, salt, 2])
        self.position: dict[str, Any] = {"epoch": 0, "opened": 0, "draws": 0, "open": []}
        self._open: list[Iterator[Sample]] = []
        self._empty_run = 0  # shards opened in a row that gave nothing: bounded, so a dead source fails, never hangs
        self._share: tuple[int, list[str]] = (-1, [])
        if state is not None and not resampled:
            self.position = copy.deepcopy(state)
            self._open = [iter_shard(path, stats, skip=taken) for path, taken in self.position["open"]]

    def share(self, epoch: int) -> list[str]:
        """This slot's shards in ``epoch`` (epoch mode), in reading order: the position's explicit ``share``
        for its own epoch when it has one (:func:`reshard`), else slot ``slot`` of the epoch's order."""
        if "share" in self.position and epoch == self.position["epoch"]:
            return self.position["share"]
        if self._share[0] != epoch:
            self._share = (epoch, epoch_share(self.shards, self.source, self.seed, epoch, self.slot, self.slots))
        return self._share[1]

    def _next_shard(self) -> str | None:
        if self.resampled:
            return self.shards[int(self._draw.integers(len(self.shards)))]
        share = self.share(self.position["epoch"])
        if self.position["opened"] == len(share):
            return None
        self.position["opened"] += 1
        return share[self.position["opened"] - 1]

    def __iter__(self) -> Iterator[Sample]:
        return self

    def __next__(self) -> Sample:
        p = self.position
        while True:
            while len(self._open) < self.interleave and (path := self._next_shard()) is not None:
                self._open.append(iter_shard(path, self.stats))
                p["open"].append([path, 0])
            if not self._open:  # this slot's share of the epoch is read: on to the next epoch
                p["epoch"], p["opened"] = p["epoch"] + 1, 0
                p.pop("share", None)  # an explicit share (:func:`reshard`) was for that epoch only
                continue
            i = int(self._pick(p["draws"]) * len(self._open))
            p["draws"] += 1
            sample = next(self._open[i], None)
            if sample is None:
                self._finish(i, empty=p["open"][i][1] == 0)
                continue
            p["open"][i][1] += 1
            self._empty_run = 0
            return sample

    def _finish(self, i: int, empty: bool) -> None:
        """Closes open shard ``i``; raises when so many shards in a row were empty that the source is dead."""
        del self._open[i], self.position["open"][i]
        self._empty_run = self._empty_run + 1 if empty else 0
        if self._empty_run > 2 * len(self.shards) + self.interleave:
            raise RuntimeError(f"source {self.source}: {self._empty_run} shards in a row gave no sample; "
                               f"last errors: {self.stats.bad_shards[-3:]}")

    def state(self) -> dict[str, Any]:
        """The position (a small JSON-ready dict) from which a new stream continues exactly."""
        share = self.position.get("share")
        if share is None:
            return copy.deepcopy(self.position)
        state = copy.deepcopy({k: v for k, v in self.position.items() if k != "share"})
        state["share"] = share  # never changed in place, so shared, not copied batch after batch
        return state


class MixedStream:
    """Samples from several sources, source ``i`` chosen with probability ``weights[i]``, as a pure function
    of the sample's index in the stream (so a restored stream makes the same choices).

    Args:
        streams: One stream per source.
        weights: Relative weights (``None``: uniform).
        key: Seeds the choices (e.g. ``(seed, slot, salt)``).
        emitted: Samples already taken (when continuing from a position).
    """

    def __init__(self, streams: Sequence[SourceStream], weights: Sequence[float] | None, key: tuple[int, ...],
                 emitted: int = 0):
        w = np.asarray(weights if weights is not None else [1.0] * len(streams), dtype=np.float64)
        if len(w) != len(streams) or (w <= 0).any():
            raise ValueError(f"need one positive weight per source ({len(streams)}), got {list(w)}")
        self.streams, self.cumulative = list(streams), np.cumsum(w / w.sum())
        self.cumulative[-1] = 1.0
        self._choose, self.emitted = _Uniforms(*key, 3), emitted

    def __iter__(self) -> Iterator[tuple[int, Sample]]:
        return self

    def __next__(self) -> tuple[int, Sample]:
        """``(index of the sample in this stream, sample)``."""
        source = int(np.searchsorted(self.cumulative, self._choose(self.emitted), side="right"))
        index, self.emitted = self.emitted, self.emitted + 1
        return index, next(self.streams[min(source, len(self.streams) - 1)])

    def state(self) -> dict[str, Any]:
        """The position of every source stream and the number of samples taken."""
        return {"emitted": self.emitted, "sources": [s.state() for s in self.streams]}


def check_readers(shard_counts: Sequence[int], readers: int, resampled: bool) -> None:
    """Raises ``ValueError`` when epoch mode would leave one of ``readers`` without a shard of some source."""
    for i, count in enumerate(shard_counts):
        if not resampled and count < readers:
            raise ValueError(f"shard source {i} has {count} shard(s), fewer than the {readers} readers (ranks × "
                             "workers) that epoch mode splits shards among: use more shards, fewer workers "
                             "(data.num_workers), or resampled mode (data.resampled=true)")


def open_stream(sources: Sequence[Sequence[str]], weights: Sequence[float] | None, *, slot: int, slots: int,
                seed: int, resampled: bool, interleave: int, stats: ShardStats, state: dict[str, Any] | None = None,
                salt: int = 0) -> MixedStream:
    """One slot's mixed stream over ``sources``, continuing from ``state`` when given (epoch mode).

    Args:
        sources: Shard paths per source (:func:`parse_sources`).
        weights: Per-source weights, or ``None``.
        slot: This reader's slot; ``slots``: the number of readers.
        seed: The run's seed.
        resampled: Shards with replacement.
        interleave: Shards read at once per source.
        stats: Receives tar-level events.
        state: A :meth:`MixedStream.state` to continue from.
        salt: Seeds resampled mode's fresh stream after a resume.

    Raises:
        ValueError: bad weights, or too few shards for the readers in epoch mode.
    """
    check_readers([len(shards) for shards in sources], slots, resampled)
    saved = state["sources"] if state is not None and not resampled else [None] * len(sources)
    if len(saved) != len(sources):
        raise ValueError(f"the saved data position has {len(saved)} sources, the config {len(sources)}")
    streams = [SourceStream(shards, i, slot, slots, seed, resampled, interleave, stats, saved[i], salt)
               for i, shards in enumerate(sources)]
    emitted = state["emitted"] if state is not None and not resampled else 0
    return MixedStream(streams, weights, (seed, slot, salt if resampled else 0), emitted)


def reshard(states: Sequence[dict[str, Any] | None], sources: Sequence[Sequence[str]], seed: int,
            slots: int) -> tuple[list[dict[str, Any]], list[dict[str, int]]]:
    """Positions for ``slots`` readers that continue the interrupted epoch of readers saved at another count.

    Args:
        states: Each old slot's :meth:`MixedStream.state`, in slot order; ``None``: that reader took nothing.
        sources: Shard paths per source (:func:`parse_sources`).
        seed: The run's seed.
        slots: The new number of readers.

    Returns:
        One :meth:`MixedStream.state` per new slot, and per source what was dealt (:func:`reshard_source`).

    Raises:
        ValueError: a saved position with another number of sources.
    """
    for slot, state in enumerate(states):
        if state is not None and len(state["sources"]) != len(sources):
            raise ValueError(f"the saved data position of reader {slot} has {len(state['sources'])} sources, "
                             f"the config {len(sources)}")
    dealt = [reshard_source([s["sources"][i] if s is not None else None for s in states], shards, i, seed, slots)
             for i, shards in enumerate(sources)]
    # Sample indices past every old reader's keep the new readers' crops and captions fresh, not a replay.
    emitted = max((s["emitted"] for s in states if s is not None), default=0)
    positions = [{"emitted": emitted, "sources": [positions[slot] for positions, _ in dealt]} for slot in range(slots)]
    return positions, [summary for _, summary in dealt]


def reshard_source(positions: Sequence[dict[str, Any] | None], shards: Sequence[str], source: int, seed: int,
                   slots: int) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One source's positions for ``slots`` new readers: the rest of the lowest epoch ``E`` an old reader is
    in (its partly read shards, with their offsets, then its unopened shards in the epoch's order), dealt
    out strided by the new slot, each with its explicit ``share`` of ``E`` (module docstring).

    Args:
        positions: Each old slot's :meth:`SourceStream.state` for this source; ``None``: never read.
        shards: The source's shard paths.
        source: The source's index.
        seed: The run's seed.
        slots: The new number of readers.

    Returns:
        The new positions, and a summary: ``epoch`` (``E``), ``shards`` (left to read in ``E``), ``partly``
        (of those, partly read), and what is read again in later epochs: ``again_partly`` and
        ``again_samples`` (partly read shards and the samples taken from them) and ``again_finished`` (shards
        finished there).
    """
    fresh: dict[str, Any] = {"epoch": 0, "opened": 0, "draws": 0, "open": []}
    # A resampled-mode position has open shards it never counted as opened: no epoch progress to carry.
    old = [p if p is not None and len(p["open"]) <= p["opened"] else fresh for p in positions]
    epoch = min(p["epoch"] for p in old)
    order = np.random.default_rng([seed, source, epoch]).permutation(len(shards))
    rank: dict[str, int] = {}
    for r, i in enumerate(order):
        rank.setdefault(shards[i], r)
    partly: list[list[Any]] = []
    unopened: list[str] = []
    again = Counter[str]()
    for slot, p in enumerate(old):
        if p["epoch"] == epoch:
            share = p["share"] if "share" in p else [shards[i] for i in order[slot::len(old)]]
            partly += [[path, taken] for path, taken in p["open"]]
            unopened += share[p["opened"]:]
        else:  # already past ``epoch``: its share of it is read, and what it read since is read again
            skipped_epochs = p["epoch"] - epoch - 1
            again["again_partly"] += len(p["open"])
            again["again_samples"] += sum(taken for _, taken in p["open"])
            again["again_finished"] += p["opened"] - len(p["open"]) + skipped_epochs * len(range(slot, len(shards),
                                                                                                  len(old)))
    unopened.sort(key=lambda path: rank.get(path, len(shards)))
    work = partly + [[path, None] for path in unopened]  # None: not opened yet
    new: list[dict[str, Any]] = []
    for slot in range(slots):
        mine = work[slot::slots]
        open_ = [[path, taken] for path, taken in mine if taken is not None]
        new.append({"epoch": epoch, "opened": len(open_), "draws": 0, "open": open_,
                    "share": [path for path, _ in mine]})
    summary = {"epoch": epoch, "shards": len(work), "partly": len(partly), "again_partly": 0, "again_samples": 0,
               "again_finished": 0, **again}
    return new, summary


def warn(message: str) -> None:
    """A one-line data warning on stderr (shown from DataLoader workers too)."""
    print(f"clipforge data: {message}", file=sys.stderr, flush=True)


def inspect_shards(urls: SourceSpec, limits: DecodeLimits | None = None, image_fields: Sequence[str] = IMAGE_FIELDS,
                   caption_field: str = "txt", progress: bool = False) -> dict[str, Any]:
    """Reads every sample of the shards ``urls`` names and decodes it as training would.

    Args:
        urls: Shards, as for :func:`parse_sources` (all sources together).
        limits: Image size limits (defaults: ``DecodeLimits()``).
        image_fields: Fields tried for the image.
        caption_field: The caption field.
        progress: Show a tqdm bar.

    Returns:
        ``shards``, ``samples`` (read), ``usable``, ``skipped`` (by reason), ``bad_shards`` (path, error)
        and ``damaged_regions``.
    """
    limits, stats = limits or DecodeLimits(), ShardStats()
    shards = [path for source in parse_sources(urls) for path in source]
    usable, skipped, rng = 0, Counter[str](), random.Random(0)
    for sample in tqdm(iter_tar_samples(shards, stats), desc="samples", disable=not progress, dynamic_ncols=True):
        try:
            decode_pair(sample, limits, None, rng, image_fields, caption_field)
            usable += 1
        except Exception as e:  # the sample boundary: counted by reason (``error`` for the unforeseen)
            skipped[as_bad_sample(e).reason] += 1
    return {"shards": len(shards), "samples": stats.samples, "usable": usable, "skipped": dict(sorted(skipped.items())),
            "bad_shards": [list(b) for b in stats.bad_shards], "damaged_regions": stats.damaged_regions}
