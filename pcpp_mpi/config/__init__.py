"""The job configuration: schema (frozen dataclasses), YAML loading and validation.

Importing this package has no side effects: no MPI, no torch, no GPU.
"""

from pcpp_mpi.config.loader import (
    ConfigError,
    check_ranks,
    job_from_dict,
    job_to_dict,
    job_to_yaml,
    load_job,
    validate_job,
)
from pcpp_mpi.config.schema import (
    DISPLACED_MODES,
    MODES,
    GenerationConfig,
    JobConfig,
    ModelConfig,
    OutputConfig,
    ParallelConfig,
    RuntimeConfig,
)

__all__ = [
    "DISPLACED_MODES",
    "MODES",
    "ConfigError",
    "GenerationConfig",
    "JobConfig",
    "ModelConfig",
    "OutputConfig",
    "ParallelConfig",
    "RuntimeConfig",
    "check_ranks",
    "job_from_dict",
    "job_to_dict",
    "job_to_yaml",
    "load_job",
    "validate_job",
]
