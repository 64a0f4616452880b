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

QUERIES_FILE = "queries.jsonl"
QRELS_DIR = "qrels"
_ID_FIELDS = ("query_id", "_id", "id", "qid")


def _folder(builder_or_dir) -> Path:
  data_dir = getattr(builder_or_dir, "data_dir", builder_or_dir)
  return Path(os.fspath(data_dir))


def load_queries(builder_or_dir) -> list[dict]:
  """[{query_id, text, type}] in file order, from a prepared builder or a folder."""
  path = _folder(builder_or_dir) / QUERIES_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: prepare the crisis_landmark dataset (it copies "
                            f"{QUERIES_FILE} from the release), or pass the release folder")
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
        raise ValueError(f"{path}:{line_no}: expected fields query_id (or _id) and text, "
                         f"found {sorted(obj)}")
      qid = str(qid)
      if qid in seen:
        raise ValueError(f"{path}:{line_no}: query_id {qid!r} appears twice")
      seen.add(qid)
      queries.append({"query_id": qid, "text": obj["text"], "type": str(obj.get("type", ""))})
  return queries


def _parse_qrels_line(parts: list[str], path: Path, line_no: int) -> tuple[str, str, int] | None:
  if len(parts) == 4:
    qid, _, doc, rel = parts
  elif len(parts) == 3:
    qid, doc, rel = parts
  else:
    raise ValueError(f"{path}:{line_no}: expected 'qid 0 docid rel' (TREC) or "
                     f"'qid<TAB>docid<TAB>rel' (BEIR), got {len(parts)} fields")
  try:
    return qid, doc, int(float(rel))
  except ValueError:
    if line_no == 1:
      return None  # header line
    raise ValueError(f"{path}:{line_no}: relevance {rel!r} is not a number") from None


def load_qrels(builder_or_dir, name: str | None = None) -> dict[str, dict[str, int]]:
  """{query_id: {sample key: relevance}} from every file in qrels/ (or only `name`)."""
  folder = _folder(builder_or_dir) / QRELS_DIR
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} not found: prepare the crisis_landmark dataset (it copies "
                            f"{QRELS_DIR}/ from the release), or pass the release folder")
  files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
  if name is not None:
    files = [p for p in files if p.name == name or p.stem == name]
  if not files:
    raise FileNotFoundError(f"{folder} holds no qrels file" + (f" named {name!r}" if name else ""))
  qrels: dict[str, dict[str, int]] = {}
  for path in files:
    with open(path, encoding="utf-8") as f:
      for line_no, line in enumerate(f, 1):
        parts = line.split()
        if not parts:
          continue
        parsed = _parse_qrels_line(parts, path, line_no)
        if parsed is None:
          continue
        qid, doc, rel = parsed
        previous = qrels.setdefault(qid, {}).get(doc)
        if previous is not None and previous != rel:
          raise ValueError(f"{path}:{line_no}: ({qid}, {doc}) judged {rel} here and {previous} "
                           "before")
        qrels[qid][doc] = rel
  return qrels
