"""seguncert.io: everything that touches files: atomic writes (:mod:`.atomic`), tensor files
(:mod:`.tensorfile`), checkpoints (:mod:`.checkpoint`), resume state (:mod:`.resume`), video and
image input (:mod:`.video_reader`) and output (:mod:`.video_writer`)."""
