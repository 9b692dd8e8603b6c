"""seguncert.inference: checkpoints on camera frames (:mod:`.frames`) and whole videos into
overlays (:mod:`.video`). Drawing the panels is :mod:`seguncert.viz`."""
