"""Where and how code runs, below everything that runs a model: the device (``--device``),
autocast (``--amp``), views per model call (:mod:`.device`), and torchrun's processes:
rank, world, this rank's share of a dataset (:mod:`.distributed`)."""
