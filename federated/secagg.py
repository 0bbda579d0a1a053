"""Secure aggregation with Flower's SecAgg+ (``--secagg``): the server learns only the sum of the updates.

Flower 1.41 ships SecAgg+ as a legacy workflow (``SecAggPlusWorkflow`` inside ``DefaultWorkflow`` with a
``flwr.server.strategy`` strategy) and a client mod (``secaggplus_mod``). This module joins them to the
project's apps:

- client: ``optional_secaggplus`` runs ``secaggplus_mod`` only for messages of the SecAgg+ protocol,
  so the same ClientApp serves plain and secure runs; the train handler answers the legacy ``FitIns``
  with the *change* of the weights (local minus global). SecAgg+ clips every value to
  ``[-clipping_range, clipping_range]`` before quantizing it, and trained weights (BatchNorm running
  variances reach 20 and more) would be clipped; a round's change stays small.
- server: ``run_secagg_rounds`` runs the workflow with a FedAvg that adds the securely averaged change
  to the global weights; after each round the nodes score the new global model (plain evaluate
  messages, as in the plain path), and the same ``RoundKeeper`` keeps checkpoints and history.

Quantization (2**22 levels over the clipping range, default 8) makes the aggregate differ from plain
FedAvg by about ``clipping_range / 2**22`` per value and node (about 2e-6 at the default).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, RecordDict

log = logging.getLogger("federated")

# SecAgg+ settings. Clipping range of the per-round weight change; quantization and modulus as Flower's defaults.
CLIPPING_RANGE = 8.0


def optional_secaggplus(msg: Message, ctxt: Context, call_next):
    """Client mod: SecAgg+ for messages that carry its configuration, a pass-through otherwise."""
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.has_content() and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def is_legacy_fit(msg: Message) -> bool:
    return "arrays" not in msg.content.array_records


def legacy_train_reply(msg: Message, node, train_local, model_keys: list[str]) -> Message:
    """Answer a legacy FitIns (the SecAgg+ workflow's format) with the weight change, node name and loss."""
    from flwr.app import ConfigRecord
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = ConfigRecord({**dict(fitins.config), "update-dtype": "float32"})
    before = parameters_to_ndarrays(fitins.parameters)
    arrays = ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in zip(model_keys, before, strict=True)})
    new, loss = train_local(node, config, arrays)
    after = [new[k].numpy() for k in model_keys]
    delta = [(a.astype(np.float64) - b).astype(np.float32) for a, b in zip(after, before, strict=True)]
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(delta), len(node.train), {"train_loss": loss, "name": node.name})
    return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)


def run_secagg_rounds(grid, keeper) -> None:
    """The rounds of a SecAgg+ run (simulation or deployment engine); ``keeper`` is a RoundKeeper."""
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    from federated.deployment import NODE_NAMES
    from federated.flower_apps import SKIP_KEYS

    if keeper.cfg.strategy != "fedavg":
        raise ValueError(f"--secagg works with --strategy fedavg (SecAgg+ reveals only the sum); got {keeper.cfg.strategy}")
    if keeper.remaining <= 0:
        log.info("all %d rounds already done", keeper.cfg.rounds)
        return
    keys = [k for k in keeper.model.state_dict() if not k.endswith(SKIP_KEYS)]
    box = {"global": [keeper.model.state_dict()[k].detach().cpu().numpy().copy() for k in keys]}
    n_min = keeper.opts.min_nodes

    def to_record(nds) -> ArrayRecord:
        return ArrayRecord({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in zip(keys, nds, strict=True)})

    class DeltaFedAvg(LegacyFedAvg):
        """FedAvg over the nodes' weight changes, added to the global weights."""

        def configure_fit(self, server_round, parameters, client_manager):
            keeper.start_round()
            instructions = super().configure_fit(server_round, parameters, client_manager)
            box["sampled"] = [int(proxy.node_id) for proxy, _ in instructions]
            return instructions

        def aggregate_fit(self, server_round, results, failures):
            for proxy, res in results:
                NODE_NAMES[int(proxy.node_id)] = str(res.metrics.get("name", proxy.node_id))
            answered = {int(proxy.node_id) for proxy, _ in results}
            silent = sorted(NODE_NAMES.get(n, f"node {n}") for n in box.get("sampled", []) if n not in answered)
            reasons = [str(f) for f in failures]
            keeper.end_train(
                server_round, [NODE_NAMES[int(p.node_id)] for p, _ in results],
                {n: (reasons[i] if i < len(reasons) else "no reply") for i, n in enumerate(silent)},
            )
            losses = [(res.num_examples, float(res.metrics.get("train_loss", math.nan))) for _, res in results]
            keeper.round["train_loss"] = sum(n * v for n, v in losses) / max(sum(n for n, _ in losses), 1)
            params, metrics = super().aggregate_fit(server_round, results, failures)
            if params is None:
                raise RuntimeError(f"SecAgg+ round {server_round}: no aggregate ({len(failures)} failures)")
            delta = parameters_to_ndarrays(params)
            box["global"] = [(g + d).astype(g.dtype) for g, d in zip(box["global"], delta, strict=True)]
            return ndarrays_to_parameters(box["global"]), metrics

    def evaluate_fn(server_round: int, ndarrays, config):
        if server_round == 0:
            return None
        if keeper.round.get("round") != keeper.offset + server_round:
            raise RuntimeError(f"SecAgg+ round {server_round} produced no aggregate (too few nodes completed the protocol; see the log above)")
        arrays = to_record(ndarrays)
        replies = keeper.evaluate_on_nodes(arrays, "val", server_round)
        agg = keeper.end_evaluate(arrays, replies)
        return float(agg.get("val_loss", math.nan)), {}

    strategy = DeltaFedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=n_min, min_available_clients=n_min,
        initial_parameters=ndarrays_to_parameters(box["global"]), evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda rnd: {**keeper.train_config, "server-round": rnd},
    )
    class SecAggPlus(SecAggPlusWorkflow):
        """Flower's workflow, tolerant of a node that is gone before the key exchange (one killed between
        rounds, which the SuperLink still lists): Flower keeps such a node among the sampled ones and
        then finds no key shares for it (\"Not enough shares\"). It never shared keys, so no mask
        involves it: drop it from the sampled set after the setup stage."""

        def setup_stage(self, grid_, context_, state) -> bool:
            ok = super().setup_stage(grid_, context_, state)
            gone = state.sampled_node_ids - state.active_node_ids
            if gone:
                log.warning("SecAgg+: %d sampled node(s) did not answer the setup; the round goes on without them", len(gone))
            state.sampled_node_ids = set(state.active_node_ids)
            return ok

    n_nodes = max(n_min, len(list(grid.get_node_ids())))
    # Every node shares its key with all others; any n-1 of them can rebuild a dropped node's mask.
    workflow = DefaultWorkflow(fit_workflow=SecAggPlus(
        num_shares=n_nodes, reconstruction_threshold=max(2, n_nodes - 1), clipping_range=CLIPPING_RANGE,
        timeout=keeper.opts.round_timeout,
    ))
    # The legacy workflow keeps its parameters in a Context of its own.
    context = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=keeper.remaining, round_timeout=keeper.opts.round_timeout), strategy=strategy)
    workflow(grid, legacy)
