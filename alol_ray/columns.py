"""Column names of the canonical row and of the scored table: the one place they are spelled.

A canonical row is one (prompt, response) pair. Several rows share a ``prompt_id`` when a prompt has
several candidate responses; ``rank`` orders them (0 = best within its prompt).
"""

# -- canonical rows (written by alol_ray.data loaders) --------------------------------------------
PROMPT_ID = "prompt_id"  # str: identifies the prompt; all rows of one prompt share it
PROMPT = "prompt"  # str: the rendered prompt text the policy conditions on
RESPONSE = "response"  # str: one candidate response
RANK = "rank"  # int: 0 = best response of its prompt, 1 = next, ...
SPLIT = "split"  # str: one of SPLITS
REWARD = "reward"  # float: total reward (weighted sum of components); may be absent before scoring
REWARD_PREFIX = "reward/"  # float columns "reward/<component>"
# float: the total reward before transforms (weighted sum of the components' raw scores, or the raw value the
# data carried): the reward model's own scale, e.g. logits where ``reward`` holds sigmoid(logit). PRO ranks by it.
REWARD_RAW = "reward_raw"
SOURCE = "source"  # str: which input source (file stem / dataset name) the row came from

SPLITS = ("train", "val", "test")
CANONICAL = (PROMPT_ID, PROMPT, RESPONSE, RANK, SPLIT)

# -- scoring columns (written by alol_ray.scoring and alol_ray.value) ------------------------------
REF_LOGP = "ref_logp"  # float: sum of the reference policy's log-probs of the response tokens (incl. EOS)
REF_TOKEN_LOGPS = "ref_token_logps"  # list[float]: per-token reference log-probs of the response tokens
VALUE = "value"  # float: V(x), the value head's estimate for the prompt
ADVANTAGE = "advantage"  # float: reward - value
ROW_KEY = "row_key"  # str: content hash of a row (prompt, response), the scoring cache key


def reward_column(component: str) -> str:
    """The column that holds one named reward component."""
    return f"{REWARD_PREFIX}{component}"


def reward_components(columns) -> list[str]:
    """Names of the reward components present among ``columns``."""
    return [c[len(REWARD_PREFIX):] for c in columns if c.startswith(REWARD_PREFIX)]
