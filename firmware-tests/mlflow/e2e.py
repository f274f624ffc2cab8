#!/usr/bin/env python3
"""End-to-end check: the official MLflow Python client (mlflow-skinny 3.17) against a tracking
server (fleetml, or a stock `mlflow server` for reference).

Usage:
    MLFLOW_TRACKING_URI=http://127.0.0.1:8080 MLFLOW_TRACKING_TOKEN=... python e2e.py OUT_DIR

What it does, in order (each step prints one "ok:" line; the first failure prints "FAIL:" and
exits 1):
  1. start_run() with no experiment set lands in the default experiment "0".
  2. Trains LogisticRegression on iris (fixed seed); logs a 20-step loss curve, params, metrics,
     tags and a log_batch.
  3. Exports ONNX with skl2onnx (zipmap off, FloatTensorType([None, 4]), no scaler), writes
     model/model.onnx + model/MLmodel, log_artifacts(model_dir, "model"), then list_artifacts and
     download_artifacts and compares bytes.
  4. end_run; get_run / search_runs / get_metric_history assertions.
  5. register_model("runs:/<id>/model"), create_model_version, aliases, searches.
  6. Writes OUT_DIR/result.json with the model name/version, run id, 5 input rows and the
     onnxruntime probabilities/labels for them.
"""

import hashlib
import json
import os
import secrets
import sys
import tempfile
import time
import traceback
import warnings

STEP = ["setup"]


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
    print(f"--- {name}", flush=True)


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    if len(sys.argv) != 2:
        print("usage: e2e.py OUT_DIR  (env: MLFLOW_TRACKING_URI, MLFLOW_TRACKING_TOKEN)")
        sys.exit(2)
    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        fail(f"MLFLOW_TRACKING_URI must be an http(s) URL, got {uri!r}")
    if not os.environ.get("MLFLOW_TRACKING_TOKEN"):
        print("note: MLFLOW_TRACKING_TOKEN is not set; requests go without Authorization")
    # Make sure nothing outside this script picks the experiment.
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID"):
        os.environ.pop(var, None)
    # Fail fast instead of retrying 5xx for minutes (the client default is 7 retries w/ backoff).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    # No usage telemetry to outside hosts.
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DO_NOT_TRACK"] = "true"

    import numpy as np
    import onnx
    import onnxruntime as ort
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_iris
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, log_loss

    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    ok(f"mlflow {mlflow.__version__} -> {uri}")

    # ------------------------------------------------------------------ default experiment
    step("default experiment 0")
    with mlflow.start_run() as r0:
        check(r0.info.experiment_id == "0",
              f"start_run() without set_experiment must use experiment '0', got {r0.info.experiment_id!r}")
        check(r0.info.run_id, "run_id missing from runs/create response")
        check(r0.info.status == "RUNNING", f"new run status must be RUNNING, got {r0.info.status!r}")
    r0b = client.get_run(r0.info.run_id)
    check(r0b.info.status == "FINISHED", f"run after end_run must be FINISHED, got {r0b.info.status!r}")
    ok(f"run {r0.info.run_id} created in experiment 0 and finished")

    # ------------------------------------------------------------------ training
    step("train")
    seed = 42
    np.random.seed(seed)
    iris = load_iris()
    X = iris.data.astype(np.float32)
    y = iris.target
    params = {"model": "LogisticRegression", "solver": "lbfgs", "C": 1.0, "max_iter": 200,
              "seed": seed}
    losses = []
    clf = LogisticRegression(C=1.0, solver="lbfgs", max_iter=1, warm_start=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(20):
            clf.fit(X, y)
            losses.append(float(log_loss(y, clf.predict_proba(X))))
    clf.set_params(max_iter=200)
    clf.fit(X, y)
    acc = float(accuracy_score(y, clf.predict(X)))
    final_loss = float(log_loss(y, clf.predict_proba(X)))
    check(acc > 0.9, f"training accuracy unexpectedly low: {acc}")
    ok(f"trained, accuracy={acc:.4f} final_loss={final_loss:.4f}")

    # ------------------------------------------------------------------ experiment
    step("set_experiment")
    exp_name = f"fleetml-e2e-{secrets.token_hex(4)}"
    check(client.get_experiment_by_name(exp_name) is None,
          "get_experiment_by_name of a fresh name must be None")
    exp = mlflow.set_experiment(exp_name)
    check(exp.name == exp_name, f"experiment name mismatch: {exp.name!r}")
    check(exp.lifecycle_stage == "active", f"lifecycle_stage must be 'active', got {exp.lifecycle_stage!r}")
    exp_id = exp.experiment_id
    exp2 = client.get_experiment_by_name(exp_name)
    check(exp2 is not None and exp2.experiment_id == exp_id, "get_experiment_by_name mismatch")
    exp3 = mlflow.set_experiment(exp_name)  # second call: existing experiment path
    check(exp3.experiment_id == exp_id, "set_experiment on existing name returned another id")
    ok(f"experiment {exp_name!r} id={exp_id}")

    # ------------------------------------------------------------------ run + logging
    step("start_run / logging")
    tags = {"team": "fleetml", "purpose": "e2e"}
    with tempfile.TemporaryDirectory() as tmp:
        run = mlflow.start_run(run_name="e2e-run")
        run_id = run.info.run_id
        check(run.info.experiment_id == exp_id, "run in wrong experiment")
        check(run.info.run_name == "e2e-run", f"run_name not echoed: {run.info.run_name!r}")
        check(run.info.artifact_uri, "run has no artifact_uri")
        ok(f"run {run_id} artifact_uri={run.info.artifact_uri}")

        mlflow.log_params(params)
        mlflow.log_param("dataset", "iris")
        ok("log_params/log_param")
        for i, v in enumerate(losses):
            mlflow.log_metric("loss", v, step=i)
        ok("log_metric loss x20 (steps 0..19)")
        mlflow.log_metrics({"accuracy": acc, "final_loss": final_loss}, step=20)
        ok("log_metrics")
        mlflow.set_tags(tags)
        mlflow.set_tag("stage", "test")
        ok("set_tags/set_tag")
        now_ms = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric("batch_metric", 0.5, now_ms, 0), Metric("batch_metric", 0.25, now_ms, 1)],
            params=[Param("batch_param", "x")],
            tags=[RunTag("batch_tag", "y")],
        )
        ok("log_batch")

        # -------------------------------------------------------------- ONNX export + artifacts
        step("onnx export + artifacts")
        onx = convert_sklearn(
            clf,
            initial_types=[("input", FloatTensorType([None, 4]))],
            options={id(clf): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
        model_dir = os.path.join(tmp, "model")
        os.makedirs(model_dir)
        onnx_path = os.path.join(model_dir, "model.onnx")
        with open(onnx_path, "wb") as f:
            f.write(onx.SerializeToString())
        with open(os.path.join(model_dir, "MLmodel"), "w") as f:
            f.write(
                "artifact_path: model\n"
                "flavors:\n"
                "  onnx:\n"
                f"    onnx_version: {onnx.__version__}\n"
                "    data: model.onnx\n"
            )
        local = {n: (os.path.getsize(os.path.join(model_dir, n)), sha256(os.path.join(model_dir, n)))
                 for n in ("MLmodel", "model.onnx")}
        mlflow.log_artifacts(model_dir, "model")
        ok("log_artifacts(model_dir, 'model')")

        root = client.list_artifacts(run_id)
        check([(f.path, f.is_dir) for f in root] == [("model", True)],
              f"root listing must be exactly [model/ (dir)], got {[(f.path, f.is_dir, f.file_size) for f in root]}")
        listed = client.list_artifacts(run_id, "model")
        got = {f.path: (f.is_dir, f.file_size) for f in listed}
        want = {f"model/{n}": (False, s) for n, (s, _) in local.items()}
        check(got == want, f"list_artifacts(run, 'model') = {got}, want {want}")
        ok(f"list_artifacts: {sorted(got)}")

        dl = os.path.join(tmp, "dl")
        os.makedirs(dl)
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="model", dst_path=dl)
        for n, (s, h) in local.items():
            p = os.path.join(path, n)
            check(os.path.isfile(p), f"downloaded tree lacks {n} (under {path})")
            check(sha256(p) == h, f"downloaded {n} differs from uploaded bytes")
        one = client.download_artifacts(run_id, "model/model.onnx", dl)
        check(sha256(one) == local["model.onnx"][1], "single-file download differs")
        ok("download_artifacts round trip (dir + single file) byte-identical")

        # -------------------------------------------------------------- inference reference
        sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        rows = [0, 50, 100, 25, 125]
        inputs = X[rows]
        outs = sess.run(None, {sess.get_inputs()[0].name: inputs})
        by_name = dict(zip([o.name for o in sess.get_outputs()], outs))
        labels = [int(v) for v in by_name["label"]]
        probs = [[float(p) for p in row] for row in by_name["probabilities"]]
        check(labels == [int(v) for v in clf.predict(inputs)], "onnxruntime labels != sklearn labels")
        check(np.allclose(probs, clf.predict_proba(inputs), atol=1e-5), "onnxruntime probs != sklearn")
        ok(f"onnxruntime labels {labels}")

        step("end_run")
        mlflow.end_run()
        ok("end_run")

    # ------------------------------------------------------------------ read back
    step("get_run")
    r = client.get_run(run_id)
    check(r.info.status == "FINISHED", f"status {r.info.status!r} != FINISHED")
    check(r.info.end_time and r.info.end_time >= r.info.start_time, "end_time missing or < start_time")
    check(r.info.lifecycle_stage == "active", f"lifecycle_stage {r.info.lifecycle_stage!r}")
    want_params = {k: str(v) for k, v in params.items()}
    want_params.update({"dataset": "iris", "batch_param": "x"})
    check(r.data.params == want_params, f"params {r.data.params} != {want_params}")
    want_metrics = {"loss": losses[-1], "accuracy": acc, "final_loss": final_loss, "batch_metric": 0.25}
    check(r.data.metrics == want_metrics, f"latest metrics {r.data.metrics} != {want_metrics}")
    for k, v in {**tags, "stage": "test", "batch_tag": "y", "mlflow.runName": "e2e-run"}.items():
        check(r.data.tags.get(k) == v, f"tag {k!r}={r.data.tags.get(k)!r}, want {v!r}")
    ok("get_run: status, params, latest metrics, tags")

    step("get_metric_history")
    hist = client.get_metric_history(run_id, "loss")
    check(len(hist) == 20, f"loss history has {len(hist)} points, want 20")
    hist = sorted(hist, key=lambda m: m.step)
    check([m.step for m in hist] == list(range(20)), f"steps {[m.step for m in hist]}")
    check([m.value for m in hist] == losses, "loss values differ from what was logged")
    check(all(isinstance(m.timestamp, int) and m.timestamp > 1_600_000_000_000 for m in hist),
          "metric timestamps must be int64 epoch milliseconds")
    ok("get_metric_history: 20 points, exact values")

    step("search_runs")
    runs = client.search_runs([exp_id])
    check([x.info.run_id for x in runs] == [run_id], f"search_runs([exp]) -> {[x.info.run_id for x in runs]}")
    check(runs[0].data.params == want_params, "search_runs params differ from get_run")
    runs = client.search_runs([exp_id], filter_string="metrics.accuracy > 0.9")
    check([x.info.run_id for x in runs] == [run_id], "filter metrics.accuracy > 0.9 did not match")
    runs = client.search_runs([exp_id], filter_string="params.solver = 'lbfgs'")
    check([x.info.run_id for x in runs] == [run_id], "filter params.solver = 'lbfgs' did not match")
    runs = client.search_runs([exp_id], filter_string="tags.team = 'nobody'")
    check(runs == [], "filter tags.team = 'nobody' must match nothing")
    runs = client.search_runs([exp_id], filter_string="attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=10)
    check([x.info.run_id for x in runs] == [run_id], "filter attributes.status = 'FINISHED' did not match")
    ok("search_runs: unfiltered, metrics/params/tags/attributes filters")

    # ------------------------------------------------------------------ registry
    step("register_model")
    name = f"fleetml-e2e-model-{secrets.token_hex(4)}"
    mv = mlflow.register_model(f"runs:/{run_id}/model", name)
    check(isinstance(mv.version, str) and mv.version.isdigit(), f"version must be a digit string, got {mv.version!r}")
    version = mv.version
    check(version == "1", f"first version of a new model should be '1', got {version!r}")
    check(mv.name == name, f"name {mv.name!r}")
    check(mv.run_id == run_id, f"model version run_id {mv.run_id!r} != {run_id!r}")
    check(mv.source == f"{r.info.artifact_uri}/model", f"source {mv.source!r}, want {r.info.artifact_uri}/model")
    ok(f"register_model -> {name} v{version} source={mv.source}")

    mv = client.get_model_version(name, version)
    check(mv.status == "READY", f"status {mv.status!r} != READY")
    check(isinstance(mv.creation_timestamp, int) and mv.creation_timestamp > 1_600_000_000_000,
          f"creation_timestamp {mv.creation_timestamp!r} must be int64 ms")
    ok("get_model_version: READY")

    rm = client.get_registered_model(name)
    check(rm.name == name, "get_registered_model name")
    ok("get_registered_model")

    mv2 = client.create_model_version(name, f"{r.info.artifact_uri}/model", run_id=run_id)
    check(mv2.version == "2", f"second version should be '2', got {mv2.version!r}")
    check(mv2.status == "READY", f"v2 status {mv2.status!r}")
    ok("create_model_version -> v2")

    step("aliases")
    client.set_registered_model_alias(name, "champion", version)
    by_alias = client.get_model_version_by_alias(name, "champion")
    check(by_alias.version == version, f"alias champion -> {by_alias.version!r}, want {version!r}")
    check("champion" in by_alias.aliases, f"model version aliases {by_alias.aliases}")
    client.set_registered_model_alias(name, "staging", "2")
    rm = client.get_registered_model(name)
    check(rm.aliases == {"champion": version, "staging": "2"}, f"registered model aliases {rm.aliases}")
    client.delete_registered_model_alias(name, "staging")
    rm = client.get_registered_model(name)
    check(rm.aliases == {"champion": version}, f"after delete alias: {rm.aliases}")
    try:
        client.get_model_version_by_alias(name, "staging")
        fail("get_model_version_by_alias of a deleted alias must raise")
    except MlflowException as e:
        # Stock mlflow 3.17 answers 400 INVALID_PARAMETER_VALUE "Registered model alias X not
        # found."; RESOURCE_DOES_NOT_EXIST (404) is accepted too.
        check(e.error_code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST"),
              f"deleted alias lookup error_code {e.error_code}")
    ok("set/get/delete alias")

    step("searches")
    mvs = client.search_model_versions(f"name='{name}'")
    check(sorted(m.version for m in mvs) == ["1", "2"], f"search_model_versions -> {[m.version for m in mvs]}")
    check(all(m.name == name for m in mvs), "search_model_versions returned other models")
    mvs = client.search_model_versions(f"run_id='{run_id}'")
    check(sorted(m.version for m in mvs) == ["1", "2"], f"search by run_id -> {[m.version for m in mvs]}")
    rms = client.search_registered_models()
    check(name in [m.name for m in rms], "search_registered_models() lacks the model")
    rms = client.search_registered_models(filter_string=f"name = '{name}'")
    check([m.name for m in rms] == [name], f"search_registered_models(name=) -> {[m.name for m in rms]}")
    rms = client.search_registered_models(filter_string="name LIKE 'fleetml-e2e-model-%'")
    check(name in [m.name for m in rms], "search_registered_models(LIKE) lacks the model")
    ok("search_model_versions / search_registered_models")

    # ------------------------------------------------------------------ result
    result = {
        "model": name,
        "version": int(version),
        "run_id": run_id,
        "experiment_id": exp_id,
        "inputs": [[float(v) for v in row] for row in inputs],
        "onnxruntime_probabilities": probs,
        "onnxruntime_labels": labels,
        "onnx_sha256": local["model.onnx"][1],
    }
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {os.path.join(out_dir, 'result.json')}")
    print("e2e: all checks passed")


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        code = getattr(e, "error_code", None)
        fail(f"unexpected {type(e).__name__}{f' ({code})' if code else ''}: {e}")
