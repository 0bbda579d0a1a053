"""Pure partition functions: who holds which training records in a federated run.

* ``site``: one client per source database (the realistic split: every hospital group keeps its own
  records); sites with fewer than ``min_site_records`` merge into one client "other"; with
  ``n_clients`` the smallest clients merge until that many remain.
* ``iid``: patients shuffled evenly over ``n_clients``.
* ``dirichlet``: label skew; each patient's primary class (first positive target, or "none") is spread
  over clients with proportions drawn from Dirichlet(alpha) (Hsu et al., 2019). Small alpha = strong skew.

Every function returns ``(clients, log)``: client name -> entries (ordered), and the lines that
state each merge or decision, which the training command prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from cpsc2018.catalog import Entry

E = TypeVar("E", bound=Entry)
MIN_SITE_RECORDS = 20


def partition_by_site(
    entries: Sequence[E], n_clients: int | None = None, min_site_records: int = MIN_SITE_RECORDS
) -> tuple[dict[str, list[E]], list[str]]:
    sites: dict[str, list[E]] = {}
    for e in entries:
        sites.setdefault(e.site, []).append(e)
    if n_clients is not None and n_clients > len(sites):
        raise ValueError(f"--clients {n_clients} is more than the {len(sites)} sites found ({', '.join(sorted(sites))})")
    log: list[str] = []
    small = sorted(s for s, es in sites.items() if len(es) < min_site_records)
    clients = {s: list(sites[s]) for s in sorted(sites, key=lambda s: (-len(sites[s]), s)) if s not in small}
    if small:
        clients["other"] = [e for s in small for e in sites[s]]
        log.append(
            f"sites with fewer than {min_site_records} records merged into client 'other': "
            + ", ".join(f"{s} ({len(sites[s])})" for s in small)
        )
    while n_clients is not None and len(clients) > n_clients:
        a, b = sorted(clients, key=lambda c: (len(clients[c]), c))[:2]
        merged = f"{b}+{a}"
        log.append(f"--clients {n_clients}: merged the two smallest clients {a} ({len(clients[a])}) and {b} ({len(clients[b])}) into {merged}")
        clients = {(merged if c == b else c): (v + clients[a] if c == b else v) for c, v in clients.items() if c != a}
    return clients, log


def _patients(entries: Sequence[E], seed: int) -> list[list[E]]:
    groups: dict[str, list[E]] = {}
    for e in entries:
        groups.setdefault(e.patient_id, []).append(e)
    names = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(names))
    return [groups[names[i]] for i in order]


def partition_iid(entries: Sequence[E], n_clients: int, seed: int = 0) -> tuple[dict[str, list[E]], list[str]]:
    if n_clients < 1:
        raise ValueError(f"--clients must be at least 1 for an IID partition, got {n_clients}")
    groups = _patients(entries, seed)
    if n_clients > len(groups):
        raise ValueError(f"--clients {n_clients} is more than the {len(groups)} patients available")
    clients: dict[str, list[E]] = {f"client{i}": [] for i in range(n_clients)}
    names = list(clients)
    for g in sorted(groups, key=len, reverse=True):
        # Largest patients first, each to the currently smallest client: sizes stay even.
        target = min(names, key=lambda c: (len(clients[c]), names.index(c)))
        clients[target].extend(g)
    return clients, [f"IID partition of {len(entries)} records over {n_clients} clients (by patient)"]


def partition_dirichlet(
    entries: Sequence[E], n_clients: int, alpha: float, seed: int = 0, label_set: str = "six", allow_empty: bool = False
) -> tuple[dict[str, list[E]], list[str]]:
    """``allow_empty``: a client may end up without records (its validation part under strong skew)."""
    if n_clients < 1 or alpha <= 0:
        raise ValueError(f"need --clients >= 1 and --alpha > 0, got {n_clients} and {alpha}")
    rng = np.random.default_rng(seed)
    groups = _patients(entries, seed)
    by_class: dict[int, list[list[E]]] = {}
    for g in groups:
        t = np.max([e.targets(label_set) for e in g], axis=0)
        primary = int(np.argmax(t)) if t.any() else -1
        by_class.setdefault(primary, []).append(g)
    clients: dict[str, list[E]] = {f"client{i}": [] for i in range(n_clients)}
    names = list(clients)
    for cls in sorted(by_class):
        gs = by_class[cls]
        p = rng.dirichlet(np.full(n_clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(gs)).round().astype(int)
        for k, part in enumerate(np.split(np.arange(len(gs)), cuts)):
            for i in part:
                clients[names[k]].extend(gs[i])
    log = [f"Dirichlet(alpha={alpha}) label-skew partition over {n_clients} clients"]
    empty = [c for c, v in clients.items() if not v]
    if empty and not allow_empty:
        raise ValueError(f"Dirichlet partition left client(s) {', '.join(empty)} without records; raise --alpha or lower --clients")
    return clients, log


def partition(
    entries: Sequence[E], scheme: str, *, n_clients: int | None, alpha: float = 0.5, seed: int = 0, label_set: str = "six",
    allow_empty: bool = False,
) -> tuple[dict[str, list[E]], list[str]]:
    if scheme == "site":
        return partition_by_site(entries, n_clients)
    if n_clients is None:
        raise ValueError(f"--partition {scheme} needs --clients N")
    if scheme == "iid":
        return partition_iid(entries, n_clients, seed)
    if scheme == "dirichlet":
        return partition_dirichlet(entries, n_clients, alpha, seed, label_set, allow_empty)
    raise ValueError(f"unknown partition {scheme!r}; expected site, iid or dirichlet")
