"""The RewardScorer as an autoscaled Ray Serve deployment, for online use (PPO rollouts, evaluation, clients).

One replica holds one ``RewardScorer`` (every configured reward component); ``@serve.batch`` groups
concurrent requests into one scorer call, and Serve's autoscaler adds replicas (``serve.min_replicas``
.. ``serve.max_replicas``) when ongoing requests per replica exceed ``serve.target_ongoing_requests``.

HTTP (bound to ``serve.host``, 127.0.0.1 by default)::

    POST http://127.0.0.1:8000/rewards  {"prompt": "...", "response": "..."}
      -> {"reward": 1.25, "reward/builtin": 1.25}            (and reward_raw/<c> for transformed components)

Python (from any driver connected to the cluster)::

    client = RewardClient.connect(cfg.serve.app_name)
    columns = client.rewards(prompts, responses)            # {"reward": array [N], "reward/<c>": array [N]}

The scores are exactly ``RewardScorer(components).rewards(prompts, responses)``: every scorer here scores
a row independently of its batch mates.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Optional

import numpy as np
from ray import serve
from starlette.responses import JSONResponse

from alol_ray.config import RunConfig
from alol_ray.ray_utils import init_ray
from alol_ray.scoring.reward import check_components, run_scorer

DEPLOYMENT_NAME = "RewardScorer"


class BadRequest(ValueError):
    """A request body that is not {"prompt": str, "response": str}."""


def parse_request(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {"prompt": ..., "response": ...}')
    missing = [k for k in ("prompt", "response") if k not in body]
    if missing:
        raise BadRequest(f"missing field(s) {missing}")
    wrong = [k for k in ("prompt", "response") if not isinstance(body[k], str)]
    if wrong:
        raise BadRequest(f"field(s) {wrong} must be strings")
    return body["prompt"], body["response"]


@serve.deployment(name=DEPLOYMENT_NAME)
class RewardDeployment:
    """One replica: a RewardScorer behind a batching queue. Options (replicas, resources) come from
    ``deployment_options(cfg.serve)``."""

    def __init__(self, reward_cfg, *, max_batch_size: int, batch_wait_timeout_s: float, serve_cfg,
                 stats: Optional[dict[str, tuple[float, float]]] = None):
        self.scorer = run_scorer(reward_cfg, pool=serve_cfg, stats=stats)
        self.score_batch.set_max_batch_size(max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        self.batch_sizes: list[int] = []  # observed batch sizes (how much batching happened), for tests/metrics

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def score_batch(self, pairs: list[tuple[str, str]]) -> list[dict[str, float]]:
        prompts = [p for p, _ in pairs]
        responses = [r for _, r in pairs]
        # In a thread: a GPU reward model takes a while, and the replica must keep answering Serve's
        # health checks and metrics meanwhile.
        columns = await asyncio.to_thread(self.scorer.rewards, prompts, responses)
        self.batch_sizes.append(len(pairs))
        return [{name: float(values[i]) for name, values in columns.items()} for i in range(len(pairs))]

    async def score(self, prompt: str, response: str) -> dict[str, float]:
        """Handle API: the reward columns of one (prompt, response)."""
        return await self.score_batch((prompt, response))

    def stats(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "batches": len(self.batch_sizes),
                "max_batch": max(self.batch_sizes, default=0), "requests": int(sum(self.batch_sizes))}

    async def __call__(self, request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "body is not JSON"}, status_code=400)
        try:
            prompt, response = parse_request(body)
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return await self.score_batch((prompt, response))


def deployment_options(sc) -> dict:
    """Serve deployment options from ``ServeConfig``: autoscaling, per-replica resources, queue bound."""
    return {
        "autoscaling_config": {
            "min_replicas": sc.min_replicas,
            "initial_replicas": max(sc.min_replicas, 1),
            "max_replicas": sc.max_replicas,
            "target_ongoing_requests": sc.target_ongoing_requests,
            "upscale_delay_s": sc.upscale_delay_s,
            "downscale_delay_s": sc.downscale_delay_s,
            "look_back_period_s": sc.look_back_period_s,
        },
        "logging_config": {"enable_access_log": sc.access_log},
        "max_ongoing_requests": sc.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": sc.num_cpus, "num_gpus": sc.num_gpus},
    }


def build_app(cfg: RunConfig, stats: Optional[dict] = None):
    """The Serve application of the run's reward (``cfg.reward``) with ``cfg.serve``'s options; ``stats``:
    the scored table's statistics for standardised components (``scoring.table.reward_stats``)."""
    check_components(list(cfg.reward.components))
    sc = cfg.serve
    return RewardDeployment.options(**deployment_options(sc)).bind(
        cfg.reward, max_batch_size=sc.max_batch_size, batch_wait_timeout_s=sc.batch_wait_timeout_s, serve_cfg=sc,
        stats=stats or {})


def start(cfg: RunConfig, *, stats: Optional[dict] = None, blocking: bool = False):
    """Start (or update) the reward service on the Ray that ``cfg.ray`` / RAY_ADDRESS names; returns its
    DeploymentHandle. The HTTP proxy binds ``serve.host:serve.port`` (a Serve instance already running
    on the cluster keeps its own HTTP options)."""
    init_ray(cfg.ray)
    sc = cfg.serve
    serve.start(http_options={"host": sc.host, "port": sc.port})
    return serve.run(build_app(cfg, stats), name=sc.app_name, route_prefix=sc.route_prefix, blocking=blocking)


def url(cfg: RunConfig) -> str:
    return f"http://{cfg.serve.host}:{cfg.serve.port}{cfg.serve.route_prefix}"


def replica_states(app_name: str) -> dict[str, int]:
    """{"RUNNING": n, "STARTING": m, ...} of the reward deployment (empty if it is not deployed)."""
    app = serve.status().applications.get(app_name)
    if app is None or DEPLOYMENT_NAME not in app.deployments:
        return {}
    return {str(k): int(v) for k, v in app.deployments[DEPLOYMENT_NAME].replica_states.items()}


class RewardClient:
    """Python client of the deployment for PPO and evaluation: one request per row, so Serve spreads
    the rows over replicas and each replica batches what it gets."""

    def __init__(self, handle):
        self.handle = handle

    @classmethod
    def connect(cls, app_name: str = "alol-rewards") -> "RewardClient":
        return cls(serve.get_app_handle(app_name))

    def rewards(self, prompts: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        """The reward columns for each (prompt, response): name -> float64 [N] (RewardScorer.rewards' layout)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        pending = [self.handle.score.remote(p, r) for p, r in zip(prompts, responses)]
        rows = [ref.result() for ref in pending]
        if not rows:
            return {}
        return {name: np.array([row[name] for row in rows], dtype=np.float64) for name in rows[0]}
