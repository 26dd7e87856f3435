"""Fault injection for tests, outside the user's config: ``ALOL_FAULTS`` names points where the process
dies hard, as a crash, a lost worker or ``kill -9`` would leave it.

    ALOL_FAULTS="train.step=3"           a training worker exits at step 3
    ALOL_FAULTS="score.part=2,publish"   the driver dies after the 2nd cached scoring part, or while publishing

``ALOL_FAULTS="@/path/file"`` reads the list from that file at each point instead (a test that shares one
Ray instance arms and disarms faults for workers started long after the variable was set).
With ``ALOL_FAULTS_DIR`` set, each fault fires once (a marker file there records it), so the rerun or the
restarted worker goes on; without it, it fires every time. Code calls ``hit(point, value)`` at the point.
"""

from __future__ import annotations

import os

FAULTS_ENV = "ALOL_FAULTS"
FAULTS_DIR_ENV = "ALOL_FAULTS_DIR"


def _armed(point: str, value: object):
    """The spec item that arms this point at this value (``name`` or ``name=value``), or None."""
    spec = os.environ.get(FAULTS_ENV, "")
    if spec.startswith("@"):
        try:
            with open(spec[1:], encoding="utf-8") as fh:
                spec = fh.read()
        except OSError:
            return None
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, at = item.partition("=")
        if name == point and (not at or at == str(value)):
            return item
    return None


def hit(point: str, value: object = "") -> None:
    """Die here (``os._exit(1)``, no cleanup) when ``ALOL_FAULTS`` arms this point (at this value)."""
    if FAULTS_ENV not in os.environ:
        return
    item = _armed(point, value)
    if item is None:
        return
    folder = os.environ.get(FAULTS_DIR_ENV)
    if folder:
        marker = os.path.join(folder, item.replace("/", "_") + ".fired")  # once per armed item
        if os.path.exists(marker):
            return
        os.makedirs(folder, exist_ok=True)
        with open(marker, "w", encoding="utf-8") as fh:
            fh.write(str(os.getpid()))
    os._exit(1)
