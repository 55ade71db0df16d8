"""Model families: what each kind of network needs to run band-parallel (its layer inventory,
how its layers are replaced, how it is called)."""
