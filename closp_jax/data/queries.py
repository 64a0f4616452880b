"""Evaluation queries and relevance judgments stored with the prepared dataset.

The builder copies the release's `queries.jsonl` and `qrels/` next to the ArrayRecord files
(`builder.data_dir`). Queries: one JSON object per line with `query_id` (or `_id`/`id`),
`text` and optionally `type`. Qrels: every file in `qrels/`, either TREC lines
`qid 0 docid rel` or BEIR-style tab-separated `query-id corpus-id score` with a header.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from closp_jax.errors import UserError

QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
BEIR_HEADER = ("query-id", "corpus-id", "score")
_ID_FIELDS = ("query_id", "_id", "id", "qid")


def _folder(builder_or_dir) -> Path:
  data_dir = getattr(builder_or_dir, "data_dir", builder_or_dir)
  return Path(os.fspath(data_dir))


def load_queries(builder_or_dir) -> list[dict]:
  """[{query_id, text, type}] in file order, from a prepared builder or a folder."""
  path = _folder(builder_or_dir) / QUERIES_FILE
  if not path.is_file():
    raise FileNotFoundError(
      f"{path} not found: prepare the crisis_landmark dataset (it copies "
      f"{QUERIES_FILE} from the release), or pass the release folder"
    )
  queries, seen = [], set()
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{line_no}: not a JSON object ({err})") from err
      qid = next((obj[k] for k in _ID_FIELDS if k in obj), None)
      if qid is None or not isinstance(obj.get("text"), str):
        raise ValueError(f"{path}:{line_no}: expected fields query_id (or _id) and text, found {sorted(obj)}")
      qid = str(qid)
      if qid in seen:
        raise ValueError(f"{path}:{line_no}: query_id {qid!r} appears twice")
      seen.add(qid)
      queries.append({"query_id": qid, "text": obj["text"], "type": str(obj.get("type", ""))})
  return queries


class QrelsError(UserError, ValueError):
  """A qrels file does not hold judgments in a layout or with grades the evaluation can use."""


class QrelsNotFound(UserError, FileNotFoundError):
  """No qrels file where one was expected."""


def _grade(text: str, path: Path, line_no: int) -> int:
  """A relevance grade: an integer, also written as a float with no fraction ('1.0')."""
  try:
    value = float(text)
  except ValueError:
    raise QrelsError(f"{path}:{line_no}: grade {text!r} is not a number") from None
  if not value.is_integer():
    raise QrelsError(f"{path}:{line_no}: grade {text!r} is not a whole number (grades are 0, 1, 2, ...)")
  return int(value)


def _read_qrels_file(path: Path, into: dict[str, dict[str, int]]) -> None:
  with open(path, encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) == 4:
        qid, _, doc, grade = parts
      elif len(parts) == 3:
        qid, doc, grade = parts
        if line_no == 1 and tuple(parts) == BEIR_HEADER:
          continue
      else:
        raise QrelsError(
          f"{path}:{line_no}: expected 'qid 0 docid grade' (TREC) or 'query-id corpus-id score' "
          f"(BEIR), got {line.strip()!r}"
        )
      rel = _grade(grade, path, line_no)
      judged = into.setdefault(qid, {})
      if doc in judged and judged[doc] != rel:
        raise QrelsError(f"{path}:{line_no}: ({qid}, {doc}) judged {rel} here and {judged[doc]} before")
      judged[doc] = rel


def read_qrels(path, name: str | None = None) -> dict[str, dict[str, int]]:
  """{query_id: {doc id: grade}} from a TREC or BEIR qrels file, or from every such file in a folder
  (only the file `name` or `name`.* with `name`). The one qrels reader of the project: the dataset's
  judgments, a user's --qrels and the evaluations' TREC files all go through it."""
  path = Path(path)
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    if name is not None:
      files = [p for p in files if p.name == name or p.stem == name]
    if not files:
      raise QrelsNotFound(f"{path} holds no qrels file" + (f" named {name!r}" if name else ""))
  elif path.is_file():
    files = [path]
  else:
    raise QrelsNotFound(f"qrels {path} not found (a TREC/BEIR file or a folder of them)")
  qrels: dict[str, dict[str, int]] = {}
  for p in files:
    _read_qrels_file(p, qrels)
  return qrels


def load_qrels(builder_or_dir, name: str | None = None) -> dict[str, dict[str, int]]:
  """{query_id: {sample key: relevance}} from every file in the dataset's qrels/ (or only `name`)."""
  folder = _folder(builder_or_dir) / QRELS_DIR
  if not folder.is_dir():
    raise QrelsNotFound(
      f"{folder} not found: prepare the crisis_landmark dataset (it copies "
      f"{QRELS_DIR}/ from the release), or pass the release folder"
    )
  return read_qrels(folder, name=name)
