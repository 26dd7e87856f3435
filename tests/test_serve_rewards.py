"""`alol serve-rewards`: the RewardScorer as an autoscaled Ray Serve deployment.

A second process sends a bounded burst of concurrent HTTP requests over loopback; the deployment
scales 1 -> 2 replicas under it and back to 1 after it; every answer equals in-process scoring of the
same (prompt, response). The Serve app runs on the session's in-process Ray (fixture ray_local).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from alol_ray.config import ServeConfig, load_config
from alol_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

# The client process: threads POST pairs round-robin until the stop file appears, a request budget or
# a time budget runs out; one JSON line per answer.
CLIENT = textwrap.dedent("""
    import http.client, json, os, sys, threading, time
    url_host, url_port, route, pairs_path, out_path, stop_path, threads, max_requests, max_seconds = sys.argv[1:]
    pairs = json.load(open(pairs_path))
    lock = threading.Lock()
    counter = [0]
    results = []
    deadline = time.time() + float(max_seconds)

    def worker():
        conn = http.client.HTTPConnection(url_host, int(url_port), timeout=60)
        while time.time() < deadline and not os.path.exists(stop_path):
            with lock:
                i = counter[0]
                if i >= int(max_requests):
                    return
                counter[0] += 1
            prompt, response = pairs[i % len(pairs)]
            try:
                conn.request("POST", route, json.dumps({"prompt": prompt, "response": response}),
                             {"Content-Type": "application/json"})
                r = conn.getresponse()
                body = r.read().decode()
                status = r.status
            except Exception as exc:  # recorded, the test fails on it
                conn.close()
                conn = http.client.HTTPConnection(url_host, int(url_port), timeout=60)
                status, body = -1, repr(exc)
            with lock:
                results.append({"i": i, "status": status, "body": body, "t": time.time()})

    ts = [threading.Thread(target=worker) for _ in range(int(threads))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    with open(out_path, "w") as fh:
        for rec in results:
            fh.write(json.dumps(rec) + "\\n")
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, payload) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_bad_requests_and_detach_without_a_cluster_are_user_errors(alol_cli):
    from alol_ray.scoring.serve import BadRequest, parse_request

    assert parse_request({"prompt": "p", "response": "r"}) == ("p", "r")
    for body, msg in (([1], "JSON object"), ({"prompt": "p"}, "missing"), ({"prompt": "p", "response": 3}, "strings")):
        with pytest.raises(BadRequest, match=msg):
            parse_request(body)
    # The body is read as a data file's record is: empty or invisible text, a key twice, a lone surrogate, not
    # UTF-8 -- each refused with one line (HTTP 400), never scored.
    from alol_ray.scoring.serve import parse_body

    assert parse_body('{"prompt": " hi ", "response": "\u05e9\u05dc\u05d5\u05dd"}'.encode()) == (" hi ", "שלום")
    for raw, msg in ((b'{"prompt": "", "response": "r"}', "prompt: empty text"),
                     (b'{"prompt": "p", "response": "\\u200b\\ufeff"}', "response: empty text: no visible"),
                     (b'{"prompt": "p", "response": "a\\u0000"}', "response: NUL"),
                     (b'{"prompt": "p", "response": "good", "response": "evil"}', "response: the key occurs twice"),
                     (b'{"prompt": "\\ud800", "response": "r"}', "prompt: lone surrogate"),
                     (b'{"prompt": "p", ', "malformed JSON"), (b"\xff", "not UTF-8")):
        with pytest.raises(BadRequest, match=msg) as err:
            parse_body(raw)
        assert "\n" not in str(err.value)
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_ADDRESS"}
    for flag in ("--detach", "--shutdown"):
        out = subprocess.run([*alol_cli, "serve-rewards", "--config", str(REPO / "configs" / "builtin.yaml"), flag],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 2 and flag in out.stderr and "RAY_ADDRESS" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_serve_config_checks():
    with pytest.raises(ConfigError, match="max_ongoing_requests"):
        ServeConfig(max_batch_size=32, max_ongoing_requests=8)
    with pytest.raises(ConfigError, match="min_replicas"):
        ServeConfig(min_replicas=3, max_replicas=2)
    opts = __import__("alol_ray.scoring.serve", fromlist=["x"]).deployment_options(
        ServeConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=3, num_cpus=0.25))
    assert opts["autoscaling_config"]["max_replicas"] == 4 and opts["autoscaling_config"]["target_ongoing_requests"] == 3
    assert opts["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.0}


@pytest.mark.timeout(300)
def test_burst_scales_replicas_up_and_down_and_every_score_is_right(ray_local, builtin_rows, tmp_path):
    from ray import serve

    from alol_ray import columns as C
    from alol_ray.scoring import serve as reward_serve
    from alol_ray.scoring.reward import RewardScorer, component_dicts

    port = free_port()
    app = "alol-rewards-test"
    cfg = load_config(str(REPO / "configs" / "builtin.yaml"), [
        f"serve.port={port}", f"serve.app_name={app}", "serve.min_replicas=1", "serve.max_replicas=2",
        "serve.target_ongoing_requests=1", "serve.upscale_delay_s=1", "serve.downscale_delay_s=2",
        "serve.look_back_period_s=11",
        "serve.num_cpus=0.25", "serve.max_batch_size=8", "serve.max_ongoing_requests=8"])
    url = reward_serve.url(cfg)
    assert url.startswith("http://127.0.0.1:")  # loopback only by default
    pairs = list(zip(builtin_rows[C.PROMPT].tolist()[:300], builtin_rows[C.RESPONSE].tolist()[:300]))
    pairs_path, out_path, stop_path = tmp_path / "pairs.json", tmp_path / "answers.jsonl", tmp_path / "stop"
    pairs_path.write_text(json.dumps(pairs))
    timeline: list[tuple[float, int, int]] = []  # (seconds since the burst began, RUNNING, other states)

    def observe(t0: float) -> tuple[int, int]:
        states = reward_serve.replica_states(app)
        running = states.get("RUNNING", 0)
        other = sum(v for k, v in states.items() if k != "RUNNING")
        if not timeline or timeline[-1][1:] != (running, other):
            timeline.append((round(time.time() - t0, 1), running, other))
        return running, other

    try:
        t_start = time.time()
        handle = reward_serve.start(cfg)
        print(f"serve start: {time.time() - t_start:.1f}s")
        assert reward_serve.replica_states(app) == {"RUNNING": 1}

        # Bad input is a 400 with a message, not a crash of the replica; an empty text is not scored.
        status, body = post(url, {"prompt": "hi"})
        assert status == 400 and "response" in body["error"]
        status, body = post(url, {"prompt": "", "response": "hi"})
        assert status == 400 and body["error"] == "prompt: empty text"

        # The burst, from a second process over loopback: 32 threads, at most 20000 requests / 90 s.
        client = subprocess.Popen([sys.executable, "-c", CLIENT, "127.0.0.1", str(port), cfg.serve.route_prefix,
                                   str(pairs_path), str(out_path), str(stop_path), "32", "20000", "90"])
        t0 = time.time()
        scaled_at = None
        while client.poll() is None:
            running, _ = observe(t0)
            if running >= 2 and scaled_at is None:
                scaled_at = time.time()
            if scaled_at is not None and time.time() - scaled_at > 1.0:  # both replicas served a while
                stop_path.touch()
            time.sleep(0.2)
        assert client.returncode == 0
        burst_s = time.time() - t0
        assert scaled_at is not None, f"never scaled to 2 replicas: {timeline}"

        # After the burst: back down to min_replicas.
        deadline = time.time() + 90
        while time.time() < deadline:
            running, other = observe(t0)
            if running == 1 and other == 0:
                break
            time.sleep(0.5)
        print(f"replica timeline (s, running, starting/stopping): {timeline}; burst {burst_s:.1f}s")
        assert timeline[-1][1:] == (1, 0), f"did not scale back to 1 replica: {timeline}"
        assert max(r for _, r, _ in timeline) == 2

        # Every answer is right: compare with in-process scoring of the same pairs.
        answers = [json.loads(line) for line in out_path.read_text().splitlines()]
        assert len(answers) >= 100 and all(a["status"] == 200 for a in answers), \
            [a for a in answers if a["status"] != 200][:3]
        scorer = RewardScorer(component_dicts(cfg.reward.components))
        idx = [a["i"] % len(pairs) for a in answers]
        expected = scorer.rewards([pairs[i][0] for i in idx], [pairs[i][1] for i in idx])
        got = [json.loads(a["body"]) for a in answers]
        assert set(got[0]) == set(expected)
        for name, values in expected.items():
            np.testing.assert_allclose([g[name] for g in got], values, rtol=0, atol=1e-12, err_msg=name)
        print(f"{len(answers)} answers, all correct")

        # The Python handle API (what PPO uses) gives the same columns.
        client_api = reward_serve.RewardClient(handle)
        some = pairs[:20]
        cols = client_api.rewards([p for p, _ in some], [r for _, r in some])
        ref = scorer.rewards([p for p, _ in some], [r for _, r in some])
        for name in ref:
            np.testing.assert_allclose(cols[name], ref[name], rtol=0, atol=1e-12)
    finally:
        stop_path.touch()
        serve.delete(app)
        serve.shutdown()
