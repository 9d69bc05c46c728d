"""Dataset loaders, one module per on-disk format; the same code reads the real datasets and the tiny ones.

Modules: ``images`` (the one image-decoding helper), ``imagenet`` (folder and list forms), ``inat18``,
``places205``, ``voc`` (devkit layout shared by) ``voc_cls`` / ``voc_det`` / ``voc_seg``, ``coco``,
``cityscapes``. The expected layout of each dataset under ``--data-root`` is in ``docs/DATASETS.md``.

Every loader fails loudly on bad data with a :class:`DatasetError` whose message names the file and the problem.
The few documented skips (e.g. VOC images with no objects when training a detector) are counted on the dataset
object and logged; none of them can change a label.
"""


class DatasetError(ValueError):
    """Bad or missing dataset files; the message names the file and the problem."""
