"""Lightning integration: the callbacks, the LightningModule mixin, the default data, model and CLI.

This is the only subpackage that imports ``lightning``.
"""
