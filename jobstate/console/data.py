"""What the console page shows, as JSON: shared by `jobstate console` and the status API,
so both serve the same page with the same answers."""

from __future__ import annotations

from typing import Any

from .. import codec
from ..fxrecords import list_effects
from ..items import JobItem, job_item
from ..records import JobView, child_ids_of
from ..schema import job_key
from ..store import JobStore

MAX_CHILDREN = 1000  # the grid shows this many; the page says how many there are


def history_json(store: JobStore, job_id: str) -> dict[str, Any]:
    return {"job_id": job_id, "history": [e.to_dict() for e in store.history(job_id)]}


def effects_json(store: JobStore, job_id: str) -> dict[str, Any]:
    """A job's effect records, results redacted."""
    return {"job_id": job_id, "effects": list_effects(store, job_id)}


def children_json(store: JobStore, view: JobView) -> dict[str, Any]:
    """The children of the job's latest spawn: id, status, progress (BatchGetItem)."""
    ids = child_ids_of(view)
    shown = ids[:MAX_CHILDREN]
    found: dict[str, JobItem] = {}
    for i in range(0, len(shown), 100):  # batch_get pages by 100 keys itself; keep it small
        for raw in store.batch_get([job_key(c) for c in shown[i:i + 100]]):
            item = job_item(raw)
            found[item.job_id] = item
    children = []
    for index, cid in enumerate(shown):
        child = found.get(cid)
        status = child.status.value if child else "PENDING"  # not created yet (queued)
        held = child is not None and child.paused_by and not child.status.terminal
        children.append({
            "job_id": cid, "index": index, "status": status,
            "display_status": "PAUSED" if held else status,
            "step": child.step if child else 0,
            "progress": codec.loads(child.progress, None) if child else None})
    return {"job_id": view.job_id, "total": len(ids), "children": children}
