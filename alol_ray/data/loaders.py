"""Turn every configured source into canonical rows (alol_ray.columns), validating every row.

Strict by default: any invalid row raises ``DataError`` listing file:line: field for each problem (the
CLI prints it and exits 2). With ``skip_invalid`` the good rows are kept and the drops are counted by
reason in the ``LoadReport``: nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import pandas as pd

from alol_ray import columns as C
from alol_ray.atomic import write_json, write_parquet
from alol_ray.config import DataConfig, SourceConfig
from alol_ray.data import conversations
from alol_ray.data.formats import FieldError, Row, convert_record, detect_format, record_prompt
from alol_ray.data.readers import Record, read_records, storage_kind
from alol_ray.errors import DataError, RowProblem, UserError
from alol_ray.tasks import builtin

log = logging.getLogger("alol")


@dataclass
class LoadReport:
    """What loading did: counts, drops by reason, filters applied."""

    records: int = 0
    rows: int = 0
    prompts: int = 0
    invalid: Counter = field(default_factory=Counter)  # reason -> rows dropped as invalid
    filtered: Counter = field(default_factory=Counter)  # filter -> rows removed by a data filter
    filtered_prompts: Counter = field(default_factory=Counter)
    problems: list[RowProblem] = field(default_factory=list)

    def merge(self, other: "LoadReport") -> None:
        self.records += other.records
        self.invalid.update(other.invalid)
        self.filtered.update(other.filtered)
        self.filtered_prompts.update(other.filtered_prompts)
        self.problems += other.problems


def _stable_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def source_label(src: SourceConfig) -> str:
    if src.format == "builtin":
        return "builtin"
    base = os.path.basename(os.path.normpath(src.path))
    return os.path.splitext(base)[0] or base


def _group_problems(rows: list[Row], label: str) -> tuple[list[Row], list[RowProblem]]:
    """Duplicate ids and prompt groups whose rows disagree on the prompt text."""
    problems: list[RowProblem] = []
    bad: set[int] = set()
    seen_ids: dict[str, str] = {}
    for i, row in enumerate(rows):
        if row.row_id is None:
            continue
        if row.row_id in seen_ids:
            problems.append(RowProblem(label, row.location, "id", "duplicate_id",
                                       f"duplicate id {row.row_id!r} (first at {seen_ids[row.row_id]})"))
            bad.add(i)
        else:
            seen_ids[row.row_id] = row.location
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.prompt_id is not None:
            groups[row.prompt_id].append(i)
    for pid, members in groups.items():
        first = rows[members[0]]
        ranks: dict[int, str] = {}
        for i in members:
            row = rows[i]
            if row.prompt != first.prompt:
                problems.append(RowProblem(label, row.location, "prompt", "inconsistent_prompt",
                                           f"prompt differs from the prompt of the same prompt_id {pid!r} at {first.location}"))
                bad.add(i)
            elif row.rank is not None and row.rank in ranks:
                problems.append(RowProblem(label, row.location, "rank", "duplicate_id",
                                           f"duplicate (prompt_id {pid!r}, rank {row.rank}) (first at {ranks[row.rank]})"))
                bad.add(i)
            elif row.rank is not None:
                ranks[row.rank] = row.location
    return [r for i, r in enumerate(rows) if i not in bad], problems


def _assign_ranks(frame: pd.DataFrame) -> pd.DataFrame:
    """Ranks 0..k-1 within each prompt: given ranks keep their order, else reward (desc), else file order."""
    order_key = np.where(frame["_rank"].notna(), frame["_rank"].fillna(0), np.nan)
    reward = frame[C.REWARD] if C.REWARD in frame else pd.Series(np.nan, index=frame.index)
    frame = frame.assign(_k1=np.where(np.isnan(order_key), -reward.fillna(0).to_numpy(), order_key))
    frame = frame.sort_values([C.PROMPT_ID, "_k1", "_order"], kind="stable")
    frame[C.RANK] = frame.groupby(C.PROMPT_ID, sort=False).cumcount().astype("int64")
    return frame.sort_values("_order", kind="stable").drop(columns=["_k1", "_rank", "_order"])


def record_format(values: dict[str, Any], fields) -> str:
    """A record's format, detected: conversational (``messages``, ``chat_pairs``) where its fields hold message
    lists, else ``rows``, ``pairs``, ``hh_rlhf`` or ``hh_pro`` from its keys."""
    return conversations.detect(values, fields) or detect_format(values, fields)


def mixed_format(fmt: str, item: Record, fields, shown: str) -> Optional[RowProblem]:
    """A record of a detected file whose kind (chat messages or text) is not the file's: one problem line."""
    conversational = conversations.detect(item.values, fields)
    if (conversational is None) == (fmt not in conversations.FORMATS):
        return None
    found = f"holds chat messages (format {conversational})" if conversational else "holds text, not chat messages"
    return RowProblem(shown, item.location, "<record>", "mixed_formats",
                      f"this record {found}, and the file's first record is format {fmt}: one format per file")


def load_source(src: SourceConfig, *, skip_invalid: bool, data_cfg: Optional[DataConfig] = None) -> tuple[pd.DataFrame, LoadReport]:
    """One source -> canonical rows (DataFrame) and its report. Raises DataError in strict mode."""
    report = LoadReport()
    label = source_label(src)
    if src.format == "builtin":
        cfg = data_cfg or DataConfig()
        frame = builtin.build_rows(seed=cfg.builtin_seed, n_train=cfg.builtin_train_prompts,
                                   n_val=cfg.builtin_eval_prompts, n_test=cfg.builtin_eval_prompts)
        frame[C.SOURCE] = label
        report.records = len(frame)
        return frame.reset_index(drop=True), report

    kind = storage_kind(src.path)
    shown = os.path.basename(os.path.normpath(src.path))  # how problems name the file
    fmt = src.format
    detected = fmt in ("auto", "")
    rows: list[Row] = []
    problems: list[RowProblem] = []
    for item in read_records(src.path, kind, src.hf_split, src.limit):
        report.records += 1
        if isinstance(item, RowProblem):
            problems.append(item)
            continue
        assert isinstance(item, Record)
        if fmt in ("auto", ""):
            fmt = record_format(item.values, src.fields)
        elif detected and (mixed := mixed_format(fmt, item, src.fields, shown)):
            problems.append(mixed)
            continue
        got, bad = convert_record(fmt, item.location, shown, item.values, src.fields, src.template)
        rows += got
        problems += bad
    if fmt == "hh_pro":
        # Each record is its own prompt group (the same dialogue may appear on two lines).
        for row in rows:
            row.prompt_id = f"{label}-{row.location.split()[-1]}"
    elif fmt in ("hh_rlhf", "pairs", conversations.FORMAT_CHAT_PAIRS):
        for row in rows:
            row.prompt_id = row.prompt_id or f"{label}-{row.location.split()[-1]}"
    else:
        for row in rows:  # rows of one prompt text form one group unless ids say otherwise
            row.prompt_id = row.prompt_id if row.prompt_id is not None else _stable_hash(row.prompt)
    rows, group_problems = _group_problems(rows, shown)
    problems += group_problems
    if problems and not skip_invalid:
        raise DataError(problems)
    report.problems = problems
    report.invalid.update(p.reason for p in problems)
    if not rows:
        first = f" (all {len(problems)} invalid; the first: {problems[0]})" if problems else ""
        raise UserError(f"{label}: no valid rows{first}")

    frame = pd.DataFrame({
        C.PROMPT_ID: [r.prompt_id for r in rows],
        C.PROMPT: [r.prompt for r in rows],
        C.RESPONSE: [r.response for r in rows],
        "_rank": pd.array([r.rank for r in rows], dtype="Float64").astype("float64"),
        C.SPLIT: [r.split or src.split for r in rows],
        C.SOURCE: label,
        "_order": np.arange(len(rows)),
    })
    rewards = [r.reward for r in rows]
    if any(r is not None for r in rewards):
        frame[C.REWARD] = np.array([np.nan if r is None else r for r in rewards], dtype="float64")
    if src.clean_abrupt:
        # The paper's HH cleaning: a reply that ends with ':' was cut off mid-sentence.
        abrupt = frame[C.RESPONSE].str.rstrip().str.endswith(":")
        bad_prompts = set(frame.loc[abrupt, C.PROMPT_ID])
        drop = frame[C.PROMPT_ID].isin(bad_prompts)
        report.filtered["clean_abrupt"] += int(drop.sum())
        report.filtered_prompts["clean_abrupt"] += len(bad_prompts)
        frame = frame[~drop]
    frame = _assign_ranks(frame)
    return frame.reset_index(drop=True), report


def load_prompts(src: SourceConfig) -> pd.DataFrame:
    """The distinct prompts of one source, in file order: a (prompt_id, prompt) frame for evaluation
    (``alol eval --prompts``). Records need only a prompt (responses are not read); ids are the records'
    ``prompt_id`` or the prompt's hash, as ``load_source`` gives them. Strict: DataError listing file:line:
    field for every bad record, UserError for a source without a single prompt."""
    return read_prompts(src)[0]


def read_prompts(src: SourceConfig) -> tuple[pd.DataFrame, str]:
    """``load_prompts``'s frame and the format it read the source in (``src.format``, or the one detected from
    the first record when that is ``auto``)."""
    shown = os.path.basename(os.path.normpath(src.path))
    fmt = src.format
    detected = fmt in ("auto", "")
    ids: dict[str, str] = {}  # prompt_id -> where it was first seen
    texts: dict[str, str] = {}  # prompt -> its id, in file order
    problems: list[RowProblem] = []
    for item in read_records(src.path, storage_kind(src.path), src.hf_split, src.limit):
        if isinstance(item, RowProblem):
            problems.append(item)
            continue
        if fmt in ("auto", ""):
            fmt = record_format(item.values, src.fields)
        elif detected and (mixed := mixed_format(fmt, item, src.fields, shown)):
            problems.append(mixed)
            continue
        read_prompt = conversations.record_prompt if fmt in conversations.FORMATS else record_prompt
        try:
            pid, prompt = read_prompt(fmt, item.values, src.fields, src.template)
        except FieldError as err:
            problems.append(RowProblem(shown, item.location, err.field, err.reason, err.message))
            continue
        if prompt in texts:
            continue  # a repeated prompt is evaluated once
        pid = _stable_hash(prompt) if pid is None else pid
        if pid in ids:
            problems.append(RowProblem(shown, item.location, src.fields.prompt_id, "duplicate_id",
                                       f"prompt_id {pid!r} already names another prompt (at {ids[pid]})"))
            continue
        ids[pid] = item.location
        texts[prompt] = pid
    if problems:
        raise DataError(problems, hint="fix them (every prompt of the file is evaluated)")
    if not texts:
        raise UserError(f"{shown}: no prompts (the file holds no records)")
    return pd.DataFrame({C.PROMPT_ID: list(texts.values()), C.PROMPT: list(texts)}), fmt


def _holdout(frame: pd.DataFrame, cfg: DataConfig) -> pd.DataFrame:
    """Move an exact, seeded fraction of prompts of one split into another (e.g. 10% train -> test)."""
    if cfg.holdout_fraction <= 0:
        return frame
    pids = sorted(set(frame.loc[frame[C.SPLIT] == cfg.holdout_from, C.PROMPT_ID]),
                  key=lambda p: _stable_hash(f"{cfg.holdout_seed}:{p}"))
    chosen = set(pids[: int(round(cfg.holdout_fraction * len(pids)))])
    frame = frame.copy()
    frame.loc[frame[C.PROMPT_ID].isin(chosen), C.SPLIT] = cfg.holdout_split
    return frame


def load_rows(cfg: DataConfig, *, skip_invalid: Optional[bool] = None) -> tuple[pd.DataFrame, LoadReport]:
    """All sources of a DataConfig -> one canonical table (+ holdout and val-overlap filtering)."""
    skip = cfg.skip_invalid if skip_invalid is None else skip_invalid
    frames, report, problems = [], LoadReport(), []
    for src in cfg.sources:
        try:
            frame, sub = load_source(src, skip_invalid=skip, data_cfg=cfg)
        except DataError as err:  # collect across sources so one run shows every problem
            problems += err.problems
            continue
        frames.append(frame)
        report.merge(sub)
    if problems:
        raise DataError(problems)
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if cfg.drop_val_overlap and (frame[C.SPLIT] == "val").any():
        # Training prompts that also serve as validation prompts would leak model selection. Dropped before
        # the check below: a prompt without an id has its text's hash as id, the same in both sources.
        val_prompts = set(frame.loc[frame[C.SPLIT] == "val", C.PROMPT])
        leak = (frame[C.SPLIT] != "val") & frame[C.PROMPT].isin(val_prompts)
        report.filtered["val_overlap"] += int(leak.sum())
        report.filtered_prompts["val_overlap"] += frame.loc[leak, C.PROMPT_ID].nunique()
        frame = frame[~leak].reset_index(drop=True)
    dup = frame.duplicated([C.PROMPT_ID, C.RANK], keep=False)
    if dup.any():
        first = frame.loc[dup].iloc[0]
        sources = sorted(set(frame.loc[dup & (frame[C.PROMPT_ID] == first[C.PROMPT_ID]), C.SOURCE]))
        if first[C.PROMPT_ID] == _stable_hash(first[C.PROMPT]):  # no id given: the prompt text is the id
            raise UserError(f"the prompt {first[C.PROMPT][:60]!r} occurs in sources {sources}: a prompt's responses "
                            "come from one source; merge them, or give the rows prompt_ids that differ")
        raise UserError(f"prompt_id {first[C.PROMPT_ID]!r} occurs in sources {sources}; give the sources distinct ids")
    frame = _holdout(frame, cfg)
    frame = canonical_order(frame)
    report.rows = len(frame)
    report.prompts = frame[C.PROMPT_ID].nunique()
    return frame, report


def canonical_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical columns first, then reward columns, then anything else."""
    first = [c for c in C.CANONICAL if c in frame] + [c for c in frame if c == C.REWARD]
    rewards = sorted(c for c in frame if c.startswith(C.REWARD_PREFIX))
    return frame[first + rewards + [c for c in frame if c not in first and c not in rewards]]


def summarize(frame: pd.DataFrame, report: LoadReport) -> dict[str, Any]:
    """Counts and reward statistics for `alol data validate`."""
    out: dict[str, Any] = {
        "rows": int(len(frame)),
        "prompts": int(frame[C.PROMPT_ID].nunique()),
        "records_read": report.records,
        "splits": {s: {"rows": int((frame[C.SPLIT] == s).sum()),
                       "prompts": int(frame.loc[frame[C.SPLIT] == s, C.PROMPT_ID].nunique())}
                   for s in sorted(frame[C.SPLIT].unique())},
        "responses_per_prompt": {int(k): int(v) for k, v in frame.groupby(C.PROMPT_ID).size().value_counts().sort_index().items()},
        "dropped_invalid": dict(report.invalid),
        "filtered": dict(report.filtered),
        "filtered_prompts": dict(report.filtered_prompts),
    }
    reward_cols = [c for c in frame.columns if c == C.REWARD or c.startswith(C.REWARD_PREFIX)]
    stats = {}
    for col in reward_cols:
        values = frame[col].dropna().to_numpy(dtype=float)
        if len(values):
            stats[col] = {"count": int(len(values)), "mean": float(values.mean()), "std": float(values.std()),
                          "min": float(values.min()), "p50": float(np.median(values)), "max": float(values.max())}
    out["reward"] = stats
    if C.REWARD in frame and frame[C.REWARD].notna().any():
        by_rank = frame.groupby(C.RANK)[C.REWARD].mean()
        out["reward_by_rank"] = {int(k): float(v) for k, v in by_rank.items()}
    return out


ROWS_FILE = "rows.parquet"
SUMMARY_FILE = "summary.json"


def write_rows(frame: pd.DataFrame, out_dir: str, summary: Optional[dict] = None) -> str:
    """Canonical parquet <out_dir>/rows.parquet (and summary.json), each written whole or not at all."""
    path = write_parquet(os.path.join(out_dir, ROWS_FILE), frame)
    if summary is not None:
        write_json(os.path.join(out_dir, SUMMARY_FILE), summary)
    return path


def build_rows(cfg: DataConfig, out_dir: str) -> dict:
    """The rows stage: every source validated into <out_dir>/rows.parquet + summary.json; returns the
    counts the stage records."""
    frame, report = load_rows(cfg)
    summary = summarize(frame, report)
    write_rows(frame, out_dir, summary)
    if report.invalid:
        log.info(f"[rows] dropped invalid rows: {dict(report.invalid)}")
    return {"rows": summary["rows"], "prompts": summary["prompts"], "splits": summary["splits"]}
