"""``univl_fast.metrics.evaluate``, the name scripts rely on (design.md): the metrics live in
``univl_fast.evaluation.metrics``."""

from univl_fast.evaluation.metrics import KEYS, evaluate  # noqa: F401 - the documented path
