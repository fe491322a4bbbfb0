"""Framework-agnostic maths: hard-concrete gates and fake quantization. Imports nothing from the package."""
