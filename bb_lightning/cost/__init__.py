"""The cost model: MACs counted once, BOPs / memory from bit widths, and the regulariser."""
