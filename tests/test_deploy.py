"""deploy/: Kubernetes manifests validated offline, helm values exercised, Dockerfile checked.

There is no Docker engine, helm or cluster here: manifests go through
``kubernetes-validate --strict`` (bundled API schemas), the gateway options
block of the helm values is executed and the pods it asks for are validated,
and the Dockerfile is read statically.
"""

from __future__ import annotations

import datetime as dt
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CRONJOB = DEPLOY / "k8s" / "casm-update-cronjob.yaml"
GATEWAY_VALUES = DEPLOY / "helm" / "dask-gateway-values.yaml"
HUB_VALUES = DEPLOY / "helm" / "jupyterhub-values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
K8S_VERSION = "1.35.0"
_SECRET_WORDS = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|PRIVATE|_KEY\b|APIKEY)",
                           re.IGNORECASE)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_kind(path: Path) -> dict[str, dict]:
    return {d["kind"]: d for d in _docs(path)}


# --------------------------------------------------------------------------- CronJob
def test_manifests_pass_kubernetes_validate_strict():
    exe = Path(sys.executable).parent / "kubernetes-validate"
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        out = subprocess.run([str(exe), "-k", K8S_VERSION, "--strict", str(path)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "passed" in out.stdout + out.stderr


def test_strict_validation_catches_a_misspelt_field(tmp_path):
    """The check can fail: a typo in the CronJob is rejected."""
    import kubernetes_validate

    cron = _by_kind(CRONJOB)["CronJob"]
    cron["spec"]["concurencyPolicy"] = cron["spec"].pop("concurrencyPolicy")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(cron, K8S_VERSION, strict=True)


def test_cronjob_runs_the_monthly_update_on_the_gateway():
    kinds = _by_kind(CRONJOB)
    cron = kinds["CronJob"]["spec"]
    assert cron["concurrencyPolicy"] == "Forbid"
    minute, hour, day, month, weekday = cron["schedule"].split()
    assert month == "*" and weekday == "*" and day.isdigit()  # once a month
    pod = cron["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    script = container["args"][0]
    words = shlex.split(script.split("--until")[0])
    assert words[:2] == ["exec", "casm-cloud"]
    assert words[words.index("update") + 1] == "/etc/casm/recipe.yaml"
    assert words[words.index("--cluster") + 1] == "gateway"
    # The recipe file is the ConfigMap's key, mounted where the command reads it.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "recipe")
    volume = next(v for v in pod["volumes"] if v["name"] == "recipe")
    assert mount["mountPath"] == "/etc/casm"
    assert volume["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    assert "recipe.yaml" in kinds["ConfigMap"]["data"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DASK_GATEWAY__ADDRESS"]["value"].startswith("http")
    # Non-root, no literal secrets.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for name, e in env.items():
        if _SECRET_WORDS.search(name):
            assert "value" not in e and "secretKeyRef" in e["valueFrom"], name


def test_until_date_is_the_last_day_of_the_previous_month():
    script = _by_kind(CRONJOB)["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"][
        "containers"][0]["args"][0]
    expr = re.search(r'--until "(\$\(date .*\))"', script).group(1)
    out = subprocess.run(["sh", "-c", f'echo "{expr}"'], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "TZ": "UTC"})
    today = dt.datetime.now(dt.UTC).date()
    want = today.replace(day=1) - dt.timedelta(days=1)
    assert out.stdout.strip() in (str(want), str((today + dt.timedelta(days=1)).replace(day=1)
                                                 - dt.timedelta(days=1)))


def test_deployed_recipe_is_a_valid_recipe():
    config = pytest.importorskip("casm_cloud.config")
    raw = yaml.safe_load(_by_kind(CRONJOB)["ConfigMap"]["data"]["recipe.yaml"])
    recipe = config.recipe_from_dict(raw)
    assert recipe.cluster.kind == "gateway"
    assert recipe.run_root.startswith("gs://")
    # Its gateway options are ones the deployed gateway offers.
    offered = {f.field for f in _gateway_options()[0].fields}
    assert set(recipe.cluster.gateway) <= offered


# --------------------------------------------------------------------------- helm values
def _gateway_options():
    """Execute the deployed options block; return (Options, traitlets config)."""
    pytest.importorskip("dask_gateway_server")
    from traitlets.config import Config

    c = Config()
    block = yaml.safe_load(GATEWAY_VALUES.read_text())["gateway"]["extraConfig"]["casm-options"]
    exec(compile(block, str(GATEWAY_VALUES), "exec"), {"c": c})
    return c.Backend.cluster_options, c


def _overrides(options, **values) -> dict:
    parsed = options.parse_options(values)
    return options.get_configuration(parsed, user=None)


def test_gateway_commands_and_gpu_profile():
    options, c = _gateway_options()
    assert c.ClusterConfig.scheduler_cmd == ["dask", "scheduler"]
    assert c.ClusterConfig.worker_cmd == ["dask", "worker"]
    cpu = _overrides(options)
    assert cpu["worker_cmd"] == ["dask", "worker"]
    assert "worker_extra_container_config" not in cpu
    gpu = _overrides(options, worker_gpus=1, worker_cores=4, worker_memory=16)
    assert gpu["worker_cmd"] == ["dask", "worker", "--resources", "GPU=1"]
    assert gpu["worker_memory"] == 16 * 2**30 and gpu["worker_cores"] == 4
    assert gpu["worker_extra_container_config"]["resources"]["limits"] == {"nvidia.com/gpu": 1}
    with pytest.raises(ValueError):
        _overrides(options, worker_gpus=2)


def test_gpu_worker_pod_is_valid_kubernetes():
    """The pod the GPU profile asks for, as dask-gateway's controller would build it."""
    import kubernetes_validate

    options, _ = _gateway_options()
    gpu = _overrides(options, worker_gpus=1)
    container = {"name": "dask-worker", "image": gpu["image"],
                 "args": [*gpu["worker_cmd"], "tls://scheduler:8786"],
                 **gpu["worker_extra_container_config"]}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dask-worker-gpu"},
           "spec": {"containers": [container], **gpu["worker_extra_pod_config"]}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_jupyterhub_profiles_set_offered_gateway_options():
    options, _ = _gateway_options()
    offered = {f.field for f in options.fields}
    values = yaml.safe_load(HUB_VALUES.read_text())
    profiles = {p["display_name"]: p for p in values["singleuser"]["profileList"]}
    assert any("GPU" in name for name in profiles) and any("CPU" in name for name in profiles)
    prefix = "DASK_GATEWAY__CLUSTER__OPTIONS__"
    for name, profile in profiles.items():
        env = profile["kubespawner_override"]["environment"]
        chosen = {k.removeprefix(prefix).lower(): v for k, v in env.items() if k.startswith(prefix)}
        assert chosen and set(chosen) <= offered, name
        # What the client would send is accepted by the server's options.
        _overrides(options, **{k: yaml.safe_load(v) for k, v in chosen.items()})
        assert (int(chosen["worker_gpus"]) > 0) == ("GPU" in name)
    assert values["singleuser"]["extraEnv"]["DASK_GATEWAY__AUTH__TYPE"] == "jupyterhub"
    assert values["hub"]["services"]["dask-gateway"]["apiToken"] is None  # given at install


# --------------------------------------------------------------------------- Dockerfile
def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_installs_torch_first_and_runs_as_non_root():
    ins = _instructions(DOCKERFILE)
    froms = [a for k, a in ins if k == "FROM"]
    assert froms and all(":" in f and not f.endswith(":latest") for f in froms)
    runs = [(i, a) for i, (k, a) in enumerate(ins) if k == "RUN"]
    torch_at = next(i for i, a in runs if re.search(r"pip install .*torch==", a))
    package_at = next(i for i, a in runs if "/opt/casm-cloud[" in a)
    assert torch_at < package_at
    assert "-c /opt/casm-cloud/constraints.txt" in ins[package_at][1]
    args = dict(a.split("=", 1) for k, a in ins if k == "ARG" and "=" in a)
    makefile_pin = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text()).group(1)
    assert args["TORCH_VERSION"] == makefile_pin
    assert args["TORCH_INDEX_URL"].endswith("/cpu")  # never the multi-GB CUDA default
    users = [(i, a) for i, (k, a) in enumerate(ins) if k == "USER"]
    assert users, "no USER instruction"
    last_user = users[-1][1].split(":")[0]
    assert last_user not in ("root", "0")
    entry = max(i for i, (k, _) in enumerate(ins) if k in ("CMD", "ENTRYPOINT"))
    assert users[-1][0] < entry


def test_dockerfile_holds_no_secrets_and_copies_only_what_exists():
    ins = _instructions(DOCKERFILE)
    for k, a in ins:
        if k in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", a) or [a.split()[0]]
            for name in names:
                assert not _SECRET_WORDS.search(name), f"{k} {name}"
    text = DOCKERFILE.read_text()
    assert not re.search(r"(AKIA[0-9A-Z]{16}|-----BEGIN|GOOGLE_APPLICATION_CREDENTIALS)", text)
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for k, a in ins:
        if k == "COPY":
            *sources, _ = a.split()
            for src in sources:
                assert (REPO / src).exists(), src
                assert f"!{src}" in ignore or f"!{src}/**" in ignore, f"{src} is not in the context"
    assert ignore[0] == "**"  # a whitelist: .venv, .git, data and keys stay out
