"""``npyfeed bench``: measure an epoch of real files and advise on the loader's settings (see ``run``)."""
