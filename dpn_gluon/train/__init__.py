"""dpn-train: the authors' training recipe for Dual Path Networks, in MXNet Gluon.

Fine-tune any checkpoint ``dpn-convert`` reads, or train from scratch, on one CPU, several
GPUs or several machines (MXNet's parameter server), and write the authors' checkpoint
format after every epoch, so ``dpn-convert`` and ``dpn-evaluate`` take the result unchanged.

- :mod:`.recipe`: the numbers (augmentation, 1280 / 0.316 and linear scaling, schedules);
- :mod:`.augment`: the recipe's augmentation in numpy (folders, ``.lst``), drawing what
  MXNet's ``ImageRecordIter`` draws for ``.rec``;
- :mod:`.data`: each worker's shard of each global batch, seeded per epoch;
- :mod:`.loop`: the network, the kvstore, SGD, validation and the epoch checkpoints;
- :mod:`.checkpoints`: the files of a run (params, optimizer states, record, log, curves);
- :mod:`.launch`: ``--workers N``: scheduler, server and workers on one machine;
- :mod:`.options`, :mod:`.report`, :mod:`.cli`: settings, curves, the command.

Importing this package imports neither MXNet nor torch.
"""
