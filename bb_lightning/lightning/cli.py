"""The ``bb-lightning`` console script: LightningCLI over `TimmClassifier` and any LightningDataModule.

``bb-lightning fit --config recipes/digits_bayesian_bits.yaml`` trains, fixes the gates, writes the exported config,
then tests the fixed model and prints the test accuracy, the relative BOPs and the config's path.
"""

from __future__ import annotations

from jsonargparse import lazy_instance
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from .callback import QuantizationCallback
from .data import DigitsDataModule
from . import datasets as _datasets  # noqa: F401  (MNIST, CIFAR-10, ImageNet)
from .finetune import FixedGateFinetune
from .module import TimmClassifier


class BBLightningCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the bundled, offline handwritten digits stay the data when a command gives none
        parser.set_defaults({"data": lazy_instance(DigitsDataModule)})

    def after_fit(self) -> None:
        callbacks = [c for c in self.trainer.callbacks if isinstance(c, QuantizationCallback)]
        results = self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        if not self.trainer.is_global_zero:
            return
        acc = results[0].get("test/acc") if results else None
        print("\n==== bb_lightning result ====")
        if acc is not None:
            print(f"test accuracy : {100 * acc:.2f}%")
        for cb in callbacks:
            if cb.config is not None:
                t = cb.config.totals
                print(f"relative BOPs : {100 * t['relative_bops']:.3f}% of w32a32 ({t['bops'] / 1e9:.4f} GBOPs)")
                print(f"weight memory : {t['weight_memory_bytes'] / 1024:.1f} KiB "
                      f"({t['average_weight_bits']:.2f} bits/param)")
                print(f"config        : {cb.config_path}")
        for ft in self.trainer.callbacks:
            if isinstance(ft, FixedGateFinetune) and ft.config is not None:
                t = ft.config.totals
                print(f"relative BOPs : {100 * t['relative_bops']:.3f}% of w32a32 ({t['bops'] / 1e9:.4f} GBOPs), "
                      "fixed by the search")


def main(args: list[str] | None = None) -> None:
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
