"""A procedurally rendered image–caption world: clipforge's embedded default dataset.

Each scene holds one to three copies of a single (colour, shape) object, drawn at one size on a
low-contrast grey texture, so every label is unambiguous. Captions come from templates and
paraphrases in English, Russian (with proper case/gender agreement) and Japanese, and may leave out
attributes (size, position, background, and at most one of colour or shape).

Everything is a pure function of ``(seed, split, index)``: a sample draws from
``np.random.default_rng([seed, split_id, index])`` (scene first, then pixels, then the caption), so
any sample can be regenerated anywhere — exact resume and distributed sharding need no state.

A seed-determined set of colour×shape pairs (about ``holdout_fraction`` of all pairs, covering every
colour and every shape when there are enough) never appears in ``"train"``; ``"val"`` and ``"test"``
draw from all pairs, and :meth:`SyntheticWorld.zeroshot_tasks` builds a compositional task from them.

Typical use::

    world = SyntheticWorld(WorldConfig(seed=0, languages=("en", "ru", "ja")))
    train = world.dataset("train", 20_000, transform=train_tf)
    tasks = world.zeroshot_tasks(500, language="en")

Where things live: ``vocab`` (attribute names, languages, splits), ``config`` (``WorldConfig`` and the train
side's ``SyntheticDataConfig``), ``world`` (scenes, held-out pairs, evaluation tasks), ``dataset`` (a split as a
torch dataset), ``drawing`` (shapes, textures, layouts, rendering), ``captions`` (one module per language:
``captions/en.py``, ``ru.py``, ``ja.py``, each with its zero-shot prompts).
"""

from clipforge.data.synthetic.captions import make_caption, task_prompts
from clipforge.data.synthetic.config import SyntheticDataConfig, WorldConfig, WorldFields
from clipforge.data.synthetic.dataset import SyntheticDataset
from clipforge.data.synthetic.vocab import (
    BACKGROUNDS,
    COLOUR_RGB,
    COLOURS,
    COUNTS,
    LANGUAGES,
    POSITIONS,
    SCATTERED,
    SHAPES,
    SIZES,
    SPLITS,
)
from clipforge.data.synthetic.world import Sample, SyntheticWorld, ZeroShotTask

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "COLOUR_RGB",
    "COUNTS",
    "LANGUAGES",
    "POSITIONS",
    "SCATTERED",
    "SHAPES",
    "SIZES",
    "SPLITS",
    "Sample",
    "SyntheticDataConfig",
    "SyntheticDataset",
    "SyntheticWorld",
    "WorldConfig",
    "WorldFields",
    "ZeroShotTask",
    "make_caption",
    "task_prompts",
]
