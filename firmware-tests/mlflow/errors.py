#!/usr/bin/env python3
"""Error-path checks: the official MLflow client (3.17) must see the same error codes from fleetml
that it sees from a stock `mlflow server`.

Usage:
    MLFLOW_TRACKING_URI=http://127.0.0.1:8080 MLFLOW_TRACKING_TOKEN=... python errors.py

Env:
    MLFLOW_REFERENCE_SERVER=1   running against stock `mlflow server`: the one check where fleetml
                                deliberately differs (unknown endpoint answers JSON, stock answers
                                an HTML 404) is reported instead of failing.
    FLEETML_EXPECT_AUTH=1       also check that a wrong bearer token is refused with a JSON error
                                (401 UNAUTHENTICATED or 403 PERMISSION_DENIED). Off by default
                                (stock mlflow has no auth).

Prints one "ok:" line per check; the first failure prints "FAIL:" and exits 1.

Codes stock mlflow 3.17.2 uses (captured from a real server, see /work/mlflow-spec.md):
  get-by-name missing experiment   404 RESOURCE_DOES_NOT_EXIST  (client maps it to None)
  log_param same key, new value    400 INVALID_PARAMETER_VALUE  (same value again: 200)
  get_run unknown id               404 RESOURCE_DOES_NOT_EXIST
  set alias -> missing version     404 RESOURCE_DOES_NOT_EXIST
  get alias that is not set        400 INVALID_PARAMETER_VALUE  ("Registered model alias X not found.")
  create_registered_model twice    400 RESOURCE_ALREADY_EXISTS
  create_experiment twice          400 RESOURCE_ALREADY_EXISTS
  malformed JSON body              400 INVALID_PARAMETER_VALUE  (body treated as {} -> "Missing value
                                   for required parameter 'run_id'")
  unknown endpoint                 stock: 404 text/html; fleetml: 404 JSON ENDPOINT_NOT_FOUND
"""

import os
import secrets
import sys
import traceback

STEP = ["setup"]
REFERENCE = os.environ.get("MLFLOW_REFERENCE_SERVER") == "1"


def fail(msg):
    print(f"FAIL [{STEP[0]}]: {msg}", flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def ok(msg):
    print(f"ok: {msg}", flush=True)


def step(name):
    STEP[0] = name


def expect_code(label, fn, codes):
    """Run fn, require an MlflowException whose error_code is in codes."""
    from mlflow.exceptions import MlflowException

    step(label)
    codes = (codes,) if isinstance(codes, str) else tuple(codes)
    try:
        got = fn()
    except MlflowException as e:
        check(e.error_code in codes, f"{label}: error_code {e.error_code!r}, want one of {codes}; message: {e.message}")
        ok(f"{label}: {e.error_code}")
        return e
    fail(f"{label}: expected MlflowException {codes}, call returned {got!r}")


def raw(method, path, **kw):
    import requests

    base = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    headers = kw.pop("headers", {})
    tok = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if tok and "Authorization" not in headers:
        headers["Authorization"] = f"Bearer {tok}"
    return requests.request(method, base + path, headers=headers, timeout=30, **kw)


def json_error(resp, label):
    ctype = resp.headers.get("Content-Type", "")
    try:
        body = resp.json()
    except ValueError:
        fail(f"{label}: HTTP {resp.status_code} body is not JSON (Content-Type {ctype!r}): {resp.text[:200]!r}")
    check(isinstance(body, dict) and isinstance(body.get("error_code"), str),
          f"{label}: JSON body lacks a string error_code: {body!r}")
    check(isinstance(body.get("message"), str), f"{label}: JSON body lacks a string message: {body!r}")
    return body


def main():
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        fail(f"MLFLOW_TRACKING_URI must be an http(s) URL, got {uri!r}")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # No usage telemetry to outside hosts.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        os.environ.pop(var, None)

    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    sfx = secrets.token_hex(4)
    print(f"mlflow {mlflow.__version__} -> {uri}{' (reference mode)' if REFERENCE else ''}")

    # 1. get_experiment_by_name of a missing name -> None (server: 404 RESOURCE_DOES_NOT_EXIST)
    step("get_experiment_by_name missing")
    missing = f"fleetml-errors-missing-{sfx}"
    check(client.get_experiment_by_name(missing) is None, "get_experiment_by_name(missing) must return None")
    r = raw("GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": missing})
    body = json_error(r, "get-by-name raw")
    check(r.status_code == 404 and body["error_code"] == "RESOURCE_DOES_NOT_EXIST",
          f"get-by-name raw: HTTP {r.status_code} {body['error_code']}, want 404 RESOURCE_DOES_NOT_EXIST")
    ok("get_experiment_by_name(missing) is None; raw: 404 RESOURCE_DOES_NOT_EXIST")

    # 2. create_experiment twice -> RESOURCE_ALREADY_EXISTS (set_experiment relies on it in a race)
    exp_name = f"fleetml-errors-{sfx}"
    exp_id = client.create_experiment(exp_name)
    expect_code("create_experiment twice", lambda: client.create_experiment(exp_name), "RESOURCE_ALREADY_EXISTS")

    # 3. log_param twice: same value OK, different value INVALID_PARAMETER_VALUE
    run = client.create_run(exp_id)
    rid = run.info.run_id
    step("log_param same value twice")
    client.log_param(rid, "lr", "0.1")
    client.log_param(rid, "lr", "0.1")
    ok("log_param same key+value twice is accepted")
    expect_code("log_param different value", lambda: client.log_param(rid, "lr", "0.2"), "INVALID_PARAMETER_VALUE")
    from mlflow.entities import Param

    expect_code("log_batch param different value",
                lambda: client.log_batch(rid, params=[Param("lr", "0.3")]), "INVALID_PARAMETER_VALUE")
    step("param unchanged")
    check(client.get_run(rid).data.params.get("lr") == "0.1", "rejected param change must not change the value")
    ok("param value kept at first value")

    # 4. get_run of an unknown id -> RESOURCE_DOES_NOT_EXIST
    unknown = secrets.token_hex(16)
    expect_code("get_run unknown id", lambda: client.get_run(unknown), "RESOURCE_DOES_NOT_EXIST")
    expect_code("log_metric unknown run", lambda: client.log_metric(unknown, "m", 1.0), "RESOURCE_DOES_NOT_EXIST")
    r = raw("GET", "/api/2.0/mlflow/runs/get", params={"run_id": unknown})
    body = json_error(r, "runs/get raw")
    check(r.status_code == 404, f"runs/get unknown: HTTP {r.status_code}, want 404")
    ok("runs/get unknown raw: 404 JSON")

    # 5. registry
    name = f"fleetml-errors-model-{sfx}"
    client.create_registered_model(name)
    expect_code("create_registered_model twice", lambda: client.create_registered_model(name), "RESOURCE_ALREADY_EXISTS")
    r = raw("POST", "/api/2.0/mlflow/registered-models/create", json={"name": name})
    body = json_error(r, "registered-models/create dup raw")
    check(r.status_code == 400 and body["error_code"] == "RESOURCE_ALREADY_EXISTS",
          f"dup registered model raw: HTTP {r.status_code} {body['error_code']}, want 400 RESOURCE_ALREADY_EXISTS")
    ok("registered-models/create dup raw: 400 RESOURCE_ALREADY_EXISTS")
    expect_code("get_registered_model missing",
                lambda: client.get_registered_model(f"nope-{name}"), "RESOURCE_DOES_NOT_EXIST")
    # mlflow itself: 404 RESOURCE_DOES_NOT_EXIST "Model Version (name=..., version=7) not found"
    expect_code("set_registered_model_alias missing version",
                lambda: client.set_registered_model_alias(name, "champion", "7"), "RESOURCE_DOES_NOT_EXIST")
    expect_code("get_model_version missing", lambda: client.get_model_version(name, "9"), "RESOURCE_DOES_NOT_EXIST")
    # mlflow itself: 400 INVALID_PARAMETER_VALUE "Registered model alias ghost not found."
    expect_code("get_model_version_by_alias unset alias",
                lambda: client.get_model_version_by_alias(name, "ghost"),
                ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"))
    # register_model on an existing name must go on to create a version (client swallows
    # RESOURCE_ALREADY_EXISTS from registered-models/create); do it without artifacts via the
    # low-level call so this script needs no artifact store.
    step("create_model_version on existing model")
    mv = client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=rid)
    check(mv.version == "1" and mv.status == "READY", f"create_model_version -> {mv.version!r} {mv.status!r}")
    ok("create_model_version -> '1' READY")

    # 6. unknown endpoint -> JSON error
    step("unknown endpoint")
    r = raw("GET", "/api/2.0/mlflow/some-unknown-endpoint")
    check(r.status_code == 404, f"unknown endpoint: HTTP {r.status_code}, want 404")
    is_json = r.headers.get("Content-Type", "").startswith("application/json")
    if REFERENCE and not is_json:
        ok(f"unknown endpoint: stock mlflow answers 404 {r.headers.get('Content-Type')!r} (fleetml must answer JSON) - not checked in reference mode")
    else:
        body = json_error(r, "unknown endpoint")
        check(body["error_code"] == "ENDPOINT_NOT_FOUND",
              f"unknown endpoint: error_code {body['error_code']!r}, want ENDPOINT_NOT_FOUND")
        ok("unknown endpoint: 404 JSON ENDPOINT_NOT_FOUND")

    # 7. malformed JSON to runs/log-metric
    step("malformed JSON")
    r = raw("POST", "/api/2.0/mlflow/runs/log-metric", data=b'{"run_id": "' + rid.encode() + b'", "key": ',
            headers={"Content-Type": "application/json"})
    body = json_error(r, "malformed JSON")
    check(r.status_code == 400, f"malformed JSON: HTTP {r.status_code}, want 400")
    check(body["error_code"] in ("INVALID_PARAMETER_VALUE", "MALFORMED_REQUEST"),
          f"malformed JSON: error_code {body['error_code']!r}, want INVALID_PARAMETER_VALUE (mlflow) or MALFORMED_REQUEST")
    ok(f"malformed JSON: 400 {body['error_code']} (stock mlflow: INVALID_PARAMETER_VALUE)")

    step("wrong JSON type")
    r = raw("POST", "/api/2.0/mlflow/runs/log-metric",
            json={"run_id": rid, "key": "k", "value": "abc", "timestamp": 1})
    body = json_error(r, "wrong type")
    check(r.status_code == 400 and body["error_code"] == "INVALID_PARAMETER_VALUE",
          f"value='abc': HTTP {r.status_code} {body['error_code']}, want 400 INVALID_PARAMETER_VALUE")
    ok("log-metric value='abc': 400 INVALID_PARAMETER_VALUE")

    step("int64 as JSON string")
    r = raw("POST", "/api/2.0/mlflow/runs/log-metric",
            json={"run_id": rid, "key": "strint", "value": 1.5, "timestamp": "1700000000000", "step": "3"})
    check(r.status_code == 200, f"proto-JSON int64 as strings must be accepted: HTTP {r.status_code} {r.text[:200]}")
    hist = client.get_metric_history(rid, "strint")
    check([(m.step, m.timestamp, m.value) for m in hist] == [(3, 1700000000000, 1.5)], f"history {hist}")
    ok("log-metric with timestamp/step as strings accepted and stored as int64")

    # 8. optional: auth
    if os.environ.get("FLEETML_EXPECT_AUTH") == "1":
        step("wrong token")
        r = raw("GET", "/api/2.0/mlflow/experiments/get", params={"experiment_id": exp_id},
                headers={"Authorization": "Bearer definitely-wrong"})
        body = json_error(r, "wrong token")
        check(r.status_code in (401, 403), f"wrong token: HTTP {r.status_code}, want 401/403")
        check(body["error_code"] in ("UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"),
              f"wrong token: error_code {body['error_code']!r}")
        ok(f"wrong token: {r.status_code} {body['error_code']}")

    client.set_terminated(rid)
    print("errors: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        code = getattr(e, "error_code", None)
        fail(f"unexpected {type(e).__name__}{f' ({code})' if code else ''}: {e}")
