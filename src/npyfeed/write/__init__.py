"""Writing ``.npy`` files: :class:`~npyfeed.write.writer.NpyWriter` (right or absent) and ``convert``."""
