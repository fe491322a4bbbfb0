"""The ``bb-lightning`` console script: LightningCLI over `TimmClassifier` and any LightningDataModule.

``bb-lightning fit --config recipes/digits_bayesian_bits.yaml`` trains, fixes the gates, writes the exported config,
then tests the fixed model, prints the test accuracy, the relative BOPs and the config's path, and writes the test
metrics next to the config (``<config>.metrics.json``). With a ``WandbLogger`` the run's full CLI config goes into the
W&B run config under ``cli``. ``bb-lightning report CONFIG.json ...`` prints and plots exported configs
(`bb_lightning.app.report`). ``bb-lightning export RUN_DIR`` writes the run's ONNX model (`bb_lightning.deploy.cli`).
"""

from __future__ import annotations

import sys

from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger

from .._registry import get_hook
from ..plugin.finetune import FixedGateFinetune
from ..plugin.search import QuantizationSearch
from . import datasets as _datasets  # noqa: F401  (MNIST, CIFAR-10, ImageNet)
from .data import DigitsDataModule
from .module import TimmClassifier
from .report import main as report_main
from .report import write_metrics_sidecar


class BBLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the bundled, offline handwritten digits stay the data when a command gives none
        parser.set_defaults({"data": lazy_instance(DigitsDataModule)})

    def before_fit(self) -> None:
        loggers = [lg for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]
        if loggers and self.trainer.is_global_zero:
            config = self.config[self.subcommand] if self.subcommand else self.config
            for logger in loggers:  # the recipe as run (file + overrides), e.g. the swept strength
                logger.log_hyperparams({"cli": config.as_dict()})

    def after_fit(self) -> None:
        callbacks = [c for c in self.trainer.callbacks if isinstance(c, QuantizationSearch)]
        results = self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        if not self.trainer.is_global_zero:
            return
        acc = results[0].get("test/acc") if results else None
        print("\n==== bb_lightning result ====")
        if acc is not None:
            print(f"test accuracy : {100 * acc:.2f}%")
        for cb in callbacks:
            if cb.config is not None:
                print(f"learned mixed-precision configuration ({cb.method})\n{cb.config.table()}")
                t = cb.config.totals
                print(f"relative BOPs : {100 * t['relative_bops']:.3f}% of w32a32 ({t['bops'] / 1e9:.4f} GBOPs)")
                print(f"weight memory : {t['weight_memory_bytes'] / 1024:.1f} KiB "
                      f"({t['average_weight_bits']:.2f} bits/param)")
                print(f"config        : {cb.config_path}")
                if results and cb.config_path is not None:
                    metrics = {k: float(v) for k, v in results[0].items()}
                    print(f"test metrics  : {write_metrics_sidecar(cb.config_path, metrics)}")
        for ft in self.trainer.callbacks:
            if isinstance(ft, FixedGateFinetune) and ft.config is not None:
                t = ft.config.totals
                print(f"relative BOPs : {100 * t['relative_bops']:.3f}% of w32a32 ({t['bops'] / 1e9:.4f} GBOPs), "
                      "fixed by the search")


def main(args: list[str] | None = None) -> None:
    """``bb-lightning {fit,validate,test,predict} ...`` (LightningCLI) or ``bb-lightning report CONFIG.json ...``."""
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["report"]:
        report_main(argv[1:])
        return
    if argv[:1] == ["export"]:  # bb-lightning export <run dir | config.json> ... (bb_lightning.deploy.cli)
        get_hook("export_command")(argv[1:])
        return
    BBLightningCLI(
        TimmClassifier,
        LightningDataModule,  # any datamodule by class_path: DigitsDataModule, MNISTDataModule, ImageNetDataModule ...
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
    )


if __name__ == "__main__":
    main()
