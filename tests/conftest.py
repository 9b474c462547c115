"""Shared fixtures: real audio trees in each dataset's layout, one Ray session, tiny prepared data.

The fixtures live in ``fixtures/`` by concern (``audio``, ``trees``, ``servers``, ``cluster``,
``models``);
this file sets the environment before Ray is imported anywhere and makes them visible to every
test. Trees are session-scoped (built once, read-only for tests); a test that needs to change
files copies a tree first.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Train worker groups that cannot start (e.g. CPU deadlock on 2 cores) fail in 30 s, not 60.
os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "30")
# Ray starts workers at nice 15; next to other busy processes they then barely run and tests
# crawl or time out. Nice 0 gives them a fair share of the CPU.
os.environ.setdefault("RAY_worker_niceness", "0")
# s3:// tests talk to a local moto server; fake credentials (inherited by Ray workers, which
# start with the session) keep the AWS SDK from looking anywhere else for them.
for _key, _value in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_key, _value)

from fixtures.audio import audio_folder, hostile_folder  # noqa: E402, F401
from fixtures.cluster import ray_session, tiny_feature, tiny_prepared  # noqa: E402, F401
from fixtures.models import registered, tiny_bundle  # noqa: E402, F401
from fixtures.servers import mlflow_auth_server, mlflow_server, s3_uri  # noqa: E402, F401
from fixtures.trees import fma_tree, gtzan_tree, melon_tree  # noqa: E402, F401
