"""Partition functions on the real catalog: site merges, IID balance, Dirichlet skew."""

import numpy as np
import pytest

from cpsc2018.catalog import scan
from federated.partition import partition, partition_by_site, partition_dirichlet, partition_iid


@pytest.fixture(scope="module")
def entries(twelve_lead_entries):
    return twelve_lead_entries


def test_site_partition_matches_decisions(entries):
    clients, log = partition_by_site(entries)
    sizes = {k: len(v) for k, v in clients.items()}
    # The fixed subset: PTB-XL 452 (400 + 22 challenge records + 30 of ptbxl_extra), CPSC2018 129,
    # Chapman/Ningbo 71, Georgia 24; CPSC-Extra 8 + PTB 8 merge into "other" (DECISIONS: sites under 20)
    assert sizes == {"PTB-XL": 452, "CPSC2018": 129, "Chapman/Ningbo": 71, "Georgia": 24, "other": 16}
    assert any("CPSC-Extra (8)" in line and "PTB (8)" in line for line in log)


def test_site_partition_merges_smallest_until_n(entries):
    clients, log = partition_by_site(entries, n_clients=3)
    assert len(clients) == 3
    assert sum(len(v) for v in clients.values()) == len(entries)
    assert len(log) == 3  # the 'other' merge and two size merges, each stated


def test_site_partition_rejects_more_clients_than_sites(entries):
    with pytest.raises(ValueError, match="more than the 6 sites found"):
        partition_by_site(entries, n_clients=7)


def test_iid_balanced_and_patient_disjoint(entries):
    clients, _ = partition_iid(entries, 4, seed=1)
    sizes = [len(v) for v in clients.values()]
    assert max(sizes) - min(sizes) <= 5
    owners = {}
    for name, es in clients.items():
        for e in es:
            assert owners.setdefault(e.patient_id, name) == name


def test_dirichlet_small_alpha_skews_labels(entries):
    skewed, _ = partition_dirichlet(entries, 4, alpha=0.1, seed=0)
    even, _ = partition_dirichlet(entries, 4, alpha=100.0, seed=0)

    def spread(clients):
        frac = np.array([np.mean([e.targets() for e in v], axis=0) for v in clients.values()])
        return float(np.mean(frac.std(axis=0)))

    assert spread(skewed) > 2 * spread(even)
    assert partition(entries, "dirichlet", n_clients=4, alpha=0.1, seed=0)[0].keys() == skewed.keys()


def test_partition_needs_clients_for_iid(entries):
    with pytest.raises(ValueError, match="needs --clients"):
        partition(entries, "iid", n_clients=None)
