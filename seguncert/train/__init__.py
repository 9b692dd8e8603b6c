"""seguncert.train: the training room: a whole run (:func:`seguncert.train.fit.fit`, built by
:mod:`.setup`), one epoch (:mod:`.loop`), validation (:mod:`.validate`), its time budget
(:mod:`.budget`), optimiser and schedule (:mod:`.optim`), resume state (:mod:`.state`),
loaders (:mod:`.loader`) and logs (:mod:`.log`)."""
