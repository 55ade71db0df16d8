"""The planning layer: every fact of a run that follows from the job and the rank count.

Pure arithmetic over plain data: importing any module here loads neither torch nor mpi4py,
and nothing here imports ``engine/``, ``comm/``, ``parallel/`` or ``models/``. The run path
(``comm/``, ``parallel/``, ``engine/``) and ``pcpp-mpi plan`` both read these modules, so a
rule (which mode communicates, which band is a rank's neighbour, how many rows ``pcpp`` shares,
how many bytes a step sends) is derived in one place:

- :mod:`~.schedule`: the step kinds of a mode and what each computes;
- :mod:`~.topology`: a rank's band, CFG group and partner; a band's neighbours and shared rows;
- :mod:`~.inventory`: a model's spatial layers as data (traced by the model's family);
- :mod:`~.layout`: a model's shape, a job's band layout for a rank count and the batch per rank;
- :mod:`~.accounting`: the bytes each rank sends and receives per step;
- :mod:`~.report`: the whole plan of a job, as ``pcpp-mpi plan`` prints it.
"""
