"""seguncert.runtime: where the work runs: device choice (:mod:`.device`), mixed precision
(:mod:`.amp`) and torchrun process groups (:mod:`.distributed`)."""
