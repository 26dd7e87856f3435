"""The RewardScorer as an autoscaled Ray Serve deployment, for online use (PPO rollouts, evaluation, clients).

One replica holds one ``RewardScorer`` (every configured reward component); ``@serve.batch`` groups
concurrent requests into one scorer call, and Serve's autoscaler adds replicas (``serve.min_replicas``
.. ``serve.max_replicas``) when ongoing requests per replica exceed ``serve.target_ongoing_requests``.

HTTP (bound to ``serve.host``, 127.0.0.1 by default)::

    POST http://127.0.0.1:8000/rewards  {"prompt": "...", "response": "..."}
      -> {"reward": 1.25, "reward/builtin": 1.25}            (and reward_raw/<c> for transformed components)
      -> HTTP 400 {"error": "..."} for a body outside the data contract (``parse_body``: an empty prompt or
         response among others), HTTP 500 {"error": "..."} when a scorer fails; each error is one line

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
from alol_ray.data.formats import check_text
from alol_ray.data.readers import FieldError, parse_json
from alol_ray.errors import UserError
from alol_ray.locations import check_listen
from alol_ray.ray_compat import wrapped_errors
from alol_ray.ray_utils import init_ray, is_local_ray
from alol_ray.scoring.reward import check_components, run_scorer

DEPLOYMENT_NAME = "RewardScorer"


class BadRequest(ValueError):
    """A request body that is not {"prompt": str, "response": str} under the data contract (HTTP 400)."""


def parse_body(raw: bytes) -> tuple[str, str]:
    """An HTTP request body -> (prompt, response), read as a data file's record is (``alol_ray.data``): JSON
    with no key twice, valid Unicode, and both texts with a visible character and no NUL. An empty prompt or
    reply is refused, not scored: the reward models never saw one, and their score would mean nothing."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 (invalid byte at position {exc.start})") from None
    try:
        body = parse_json(text)
    except FieldError as err:
        raise BadRequest(f"{err.field}: {err.message}") from None
    return parse_request(body)


def parse_request(body: Any) -> tuple[str, str]:
    if not isinstance(body, dict):
        raise BadRequest('expected a JSON object {"prompt": ..., "response": ...}')
    missing = [k for k in ("prompt", "response") if k not in body]
    if missing:
        raise BadRequest(f"missing field(s) {missing}")
    wrong = [k for k in ("prompt", "response") if not isinstance(body[k], str)]
    if wrong:
        raise BadRequest(f"field(s) {wrong} must be strings")
    for key in ("prompt", "response"):
        try:
            check_text(body[key], key, f"empty_{key}")
        except FieldError as err:
            raise BadRequest(f"{key}: {err.message}") from None
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
            prompt, response = parse_body(await request.body())
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        try:
            return await self.score_batch((prompt, response))
        except Exception as exc:  # noqa: BLE001 -- a scorer's failure is the client's one line, the replica lives on
            first = (str(exc).splitlines() or [""])[0]
            return JSONResponse({"error": f"scoring failed: {type(exc).__name__}: {first}"}, status_code=500)


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
    sc = cfg.serve
    if is_local_ray(cfg.ray):  # on a cluster the proxy listens on the head node, and may already run there
        check_listen(sc.host, sc.port, "serve.host:serve.port")
    init_ray(cfg.ray)
    try:
        serve.start(http_options={"host": sc.host, "port": sc.port})
        return serve.run(build_app(cfg, stats), name=sc.app_name, route_prefix=sc.route_prefix, blocking=blocking)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 -- Serve's start fails inside its actors: tell the cause in one line
        inner = ([e for e in wrapped_errors(exc) if not type(e).__module__.startswith("ray")] or [exc])[-1]
        first = (str(inner).splitlines() or [type(inner).__name__])[0]
        raise UserError(f"the reward service did not start on {sc.host}:{sc.port}: {type(inner).__name__}: {first}") \
            from None


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
