"""Model families: what each kind of network provides to run band-parallel (:mod:`.base`)."""
