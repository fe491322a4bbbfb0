"""The ready-made application on top of the plugin: `module.TimmClassifier`, the datamodules (`data`, `datasets`),
the paper's optimizers and schedules (`optim`), the ``bb-lightning`` command (`cli`, with ``report``: `report`) and
the paper's toy networks as timm models (`models`).

Nothing in `bb_lightning.plugin` imports it; it is an example of an application, not part of the plugin.
"""
