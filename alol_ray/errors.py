"""User-facing errors: each becomes one line on stderr and exit code 2 in the CLI, never a traceback."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error caused by the user's input (data, config, arguments); the CLI prints it and exits 2."""


class ConfigError(UserError):
    """A config file or override that does not fit the typed config."""


class StorageError(UserError):
    """Bucket storage that cannot be reached or written, before or during a run (alol_ray.storage)."""


@dataclass(frozen=True)
class RowProblem:
    """One invalid input row: where it is, which field, and why.

    ``reason`` is a short stable code (``empty_response``, ``malformed_json``...) used to count drops.
    """

    source: str
    location: str  # "line 12" for text files, "row 12" for tables (both 1-based)
    field: str
    reason: str
    message: str

    def __str__(self) -> str:
        # file:line:field in one line, as editors and grep understand it.
        where = self.location.split(" ", 1)[-1]
        return f"{self.source}:{where}: {self.field}: {self.message} [{self.reason}]"


class DataError(UserError):
    """Invalid input rows. Holds every problem found so the user can fix them in one pass.

    ``hint`` replaces the closing advice, which by default is about input data (fix, or ``--skip-invalid``);
    a table written by a stage gets advice about rebuilding it instead.
    """

    max_listed = 20

    def __init__(self, problems: list[RowProblem], hint: Optional[str] = None):
        if isinstance(problems, str):
            raise TypeError("DataError takes RowProblems; raise UserError for a message")
        self.problems = list(problems)
        self.hint = hint
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [str(p) for p in self.problems[: self.max_listed]]
        hidden = len(self.problems) - len(lines)
        if hidden > 0:
            lines.append(f"... and {hidden} more invalid rows")
        advice = self.hint or "fix them or pass --skip-invalid to drop them (counts are reported)"
        lines.append(f"{len(self.problems)} invalid row(s); {advice}")
        return "\n".join(lines)
