"""slurmctl: embarrassingly parallel batch jobs as Slurm job arrays, coordinated through AWS
(S3, DynamoDB, SQS) or an embedded backend (SQLite + a folder)."""

from slurmctl.errors import PermanentError, SlurmctlError, TransientError, UserError

__version__ = "0.1.0"
__all__ = ["PermanentError", "SlurmctlError", "TransientError", "UserError", "__version__"]
