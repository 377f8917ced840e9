"""``--env-file`` for every kind of worker: the generation's variables, or a failed boot that says why."""

from __future__ import annotations

from ...config.envfile import EnvFile
from ...errors import ConfigError
from ..generation import BootFailed, Worker

__all__ = ["file_variables"]


def file_variables(env_file: EnvFile, worker: Worker) -> dict[str, str]:
    """The variables of ``env_file`` for ``worker``'s generation; a file that went missing or got a bad
    line fails the boot (a reload rolls back; the old generation keeps its environment)."""
    try:
        return env_file.variables(worker.generation.number)
    except ConfigError as exc:
        raise BootFailed(str(exc), f"hint: {exc.hint}" if exc.hint else "") from None
