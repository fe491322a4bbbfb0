"""The Lightning plugin: what a user adds to their own Trainer and LightningModule.

* `search.QuantizationSearch`, the one search callback, and its presets `presets.BayesianBits`, `presets.BitPruning`;
* `mixin.CostRegularizerMixin` for the LightningModule;
* `finetune.FixedGateFinetune`, fine-tuning the fixed model a search found;
* `guard.NonFiniteGuard`, added automatically by the search callback;
* the pieces they share: `state` (what a wrapped module carries), `schedule` (warm-up / ramp / fine-tune epochs and
  the learning rate of each quantizer group), `param_groups` (the optimizer groups), `export_hook`, `monitor`
  (logging and plots), `distributed`.

The plugin never imports the ready-made application (`bb_lightning.app`).
"""

from .finetune import FixedGateFinetune as FixedGateFinetune
from .guard import NonFiniteGuard as NonFiniteGuard
from .mixin import CostRegularizerMixin as CostRegularizerMixin
from .presets import BayesianBits as BayesianBits
from .presets import BitPruning as BitPruning
from .search import QuantizationSearch as QuantizationSearch

__all__ = [
    "BayesianBits",
    "BitPruning",
    "CostRegularizerMixin",
    "FixedGateFinetune",
    "NonFiniteGuard",
    "QuantizationSearch",
]
