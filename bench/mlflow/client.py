"""Run the peer bench script (/work/shared/peers/mlflow_client_bench.py) unchanged, with one
addition: every requests.Session starts with `Authorization: Bearer $MLFLOW_TRACKING_TOKEN`.

Why: the MLflow client sends MLFLOW_TRACKING_TOKEN itself, but the peer script's two raw
`requests` tests do not, and fleetml's tracking API refuses requests without a bearer token
(401). The stock MLflow server (no auth app) ignores the header, so run.sh sets the token for
every server and the three servers see identical requests.

usage: python client.py PEER_SCRIPT TRACKING_URI TAG N
"""
import os
import runpy
import sys

import requests

token = os.environ.get("MLFLOW_TRACKING_TOKEN")
if token:
    _init = requests.Session.__init__

    def _init_with_token(self, *args, **kwargs):
        _init(self, *args, **kwargs)
        self.headers.setdefault("Authorization", f"Bearer {token}")

    requests.Session.__init__ = _init_with_token

# Import the client before the peer script does and say so on stdout, so measure.py can start its
# first interval after the (slow, CPU-heavy) imports rather than at process start.
import mlflow  # noqa: E402,F401
from mlflow import MlflowClient  # noqa: E402,F401
from mlflow.entities import Metric  # noqa: E402,F401

print("#imported", flush=True)
peer = sys.argv[1]
sys.argv = [peer] + sys.argv[2:]
runpy.run_path(peer, run_name="__main__")
