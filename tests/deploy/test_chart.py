"""Checks of the Helm chart, the Dockerfile and the container scripts with the real tools.

helm 3 lints and renders the chart with its default values and with each file of
k8s-chart/ci/ (every optional part switched on, keys kept outside the chart, a whole
configuration file); kubernetes-validate checks the manifests against the Kubernetes 1.29
schemas; yamllint, hadolint and shellcheck check the files; then the rendered objects are
read back and their meaning checked (probes, security, keys out of the ConfigMap, ...).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO_ROOT, ChartTools

pytestmark = [pytest.mark.chart, pytest.mark.timeout(120)]

CHART = REPO_ROOT / "k8s-chart"
YAMLLINT_CONFIG = CHART / ".yamllint.yaml"
VALUE_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
VARIANTS = [None, *VALUE_FILES]
VARIANT_IDS = ["defaults", *(f.stem for f in VALUE_FILES)]
ALL_ON = CHART / "ci" / "all-on-values.yaml"
EXISTING = CHART / "ci" / "existing-objects-values.yaml"
CONFIG_FILE = CHART / "ci" / "config-file-values.yaml"
MONITORING = CHART / "ci" / "monitoring-values.yaml"
RELEASE = "gw"
FULLNAME = "gw-apirouter"


def run(cmd: list[str | Path], *, stdin: str | None = None, timeout: float = 60):
    return subprocess.run(
        [str(c) for c in cmd],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def render(tools: ChartTools, values: Path | None = None, *sets: str) -> str:
    cmd: list[str | Path] = [tools.helm, "template", RELEASE, CHART, "--namespace", "ai"]
    if values is not None:
        cmd += ["--values", values]
    for item in sets:
        cmd += ["--set", item]
    done = run(cmd)
    assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
    return done.stdout


def render_error(tools: ChartTools, *sets: str, values: Path | None = None) -> str:
    cmd: list[str | Path] = [tools.helm, "template", RELEASE, CHART]
    if values is not None:
        cmd += ["--values", values]
    for item in sets:
        cmd += ["--set", item]
    done = run(cmd)
    assert done.returncode != 0, f"helm template accepted {sets}"
    return done.stderr


# Kinds of CRDs kubernetes-validate has no schema for (it only knows Kubernetes' own): they
# are left out of its check and checked by the tests of their own below.
CRD_KINDS = ("ServiceMonitor",)


def without_crds(manifests: str) -> str:
    """The rendered documents but those of CRD_KINDS."""
    kept = [d for d in manifests.split("\n---\n")
            if not any(f"\nkind: {kind}\n" in f"\n{d}\n" for kind in CRD_KINDS)]
    return "\n---\n".join(kept)


def load(tools: ChartTools, manifests: str) -> list[dict]:
    """The rendered documents, read by PyYAML from the tools' virtualenv."""
    code = (
        "import json, sys, yaml; "
        "json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)"
    )
    done = run([tools.python, "-c", code], stdin=manifests)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def by_kind(docs: list[dict]) -> dict[str, dict]:
    found: dict[str, dict] = {}
    for doc in docs:
        if doc["kind"] == "Pod":  # the helm test hook
            continue
        assert doc["kind"] not in found, f"two objects of kind {doc['kind']}"
        found[doc["kind"]] = doc
    return found


def container_of(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


# --- The tools -------------------------------------------------------------------------


def test_helm_is_version_3(chart_tools: ChartTools) -> None:
    done = run([chart_tools.helm, "version", "--short"])
    assert done.returncode == 0
    assert done.stdout.startswith("v3."), done.stdout


@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_helm_lint_strict(chart_tools: ChartTools, values: Path | None) -> None:
    cmd: list[str | Path] = [chart_tools.helm, "lint", "--strict", CHART]
    if values is not None:
        cmd += ["--values", values]
    done = run(cmd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_manifests_match_kubernetes_1_29_schemas(
    chart_tools: ChartTools, values: Path | None
) -> None:
    manifests = without_crds(render(chart_tools, values))
    done = run(
        [chart_tools.kubernetes_validate, "-k", "1.29", "--strict", "-"],
        stdin=manifests,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    # An unknown kind or version is only a warning: it must not slip through either.
    flagged = [line for line in output.splitlines() if line.startswith(("WARN", "ERROR"))]
    assert not flagged, "\n".join(flagged)
    documents = len(load(chart_tools, manifests))
    assert output.count(" passed for resource ") == documents, output


@pytest.mark.parametrize("values", VARIANTS, ids=VARIANT_IDS)
def test_rendered_manifests_pass_yamllint(
    chart_tools: ChartTools, values: Path | None, tmp_path: Path
) -> None:
    rendered = tmp_path / "manifests.yaml"
    rendered.write_text(render(chart_tools, values))
    done = run([chart_tools.yamllint, "--strict", "-c", YAMLLINT_CONFIG, rendered])
    assert done.returncode == 0, done.stdout + done.stderr


def test_chart_files_pass_yamllint(chart_tools: ChartTools) -> None:
    files = [CHART / "Chart.yaml", CHART / "values.yaml", *VALUE_FILES]
    done = run([chart_tools.yamllint, "--strict", "-c", YAMLLINT_CONFIG, *files])
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_passes_hadolint(chart_tools: ChartTools) -> None:
    done = run([chart_tools.hadolint, REPO_ROOT / "Dockerfile"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_scripts_pass_shellcheck(chart_tools: ChartTools) -> None:
    scripts = sorted((REPO_ROOT / "scripts").glob("*.sh"))
    names = {s.name for s in scripts}
    assert {"build-container.sh", "start-container.sh", "install-ci-tools.sh"} <= names
    done = run([chart_tools.shellcheck, "--severity=style", *scripts])
    assert done.returncode == 0, done.stdout + done.stderr


# --- What the default values deploy -----------------------------------------------------


@pytest.fixture(scope="module")
def default_objects(chart_tools: ChartTools) -> dict[str, dict]:
    return by_kind(load(chart_tools, render(chart_tools)))


@pytest.fixture(scope="module")
def all_on_objects(chart_tools: ChartTools) -> dict[str, dict]:
    return by_kind(load(chart_tools, render(chart_tools, ALL_ON)))


def test_defaults_render_the_core_objects_only(default_objects: dict[str, dict]) -> None:
    assert set(default_objects) == {
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "Service",
        "Deployment",
    }
    assert default_objects["Deployment"]["spec"]["replicas"] == 1


def test_gateway_settings_come_from_values(default_objects: dict[str, dict]) -> None:
    env = env_of(container_of(default_objects["Deployment"]))
    values = {name: e.get("value") for name, e in env.items()}
    assert values["API_GATEWAY_NAME"] == "apirouter"
    assert values["API_GATEWAY_ENV"] == "dev"
    assert values["API_GATEWAY_METRICS_CINTERVAL"] == "60"
    assert values["API_GATEWAY_METRICS_CHISTORY"] == "168"
    assert values["API_GATEWAY_PORT"] == "8000"
    assert values["API_GATEWAY_SHUTDOWN_GRACE"] == "25"
    assert values["API_GATEWAY_ADMIN_PORT"] == "8081"
    # Left to the gateway's own defaults unless given.
    for name in (
        "API_GATEWAY_THREADS",
        "API_GATEWAY_CONNECTION_LIMIT",
        "API_GATEWAY_ADMIN_THREADS",
        "API_GATEWAY_MAX_IN_PROGRESS",
        "API_GATEWAY_REQUEST_READ_TIMEOUT",
        "API_GATEWAY_LOG_FORMAT",
        "API_GATEWAY_CONFIG_WATCH_SECONDS",
        "API_GATEWAY_METRICS_HISTORY_FILE",
    ):
        assert name not in values
    assert values["API_GATEWAY_CONFIG_FILE"] == "/etc/apirouter/api-router-config.json"
    assert values["IMAGE_ID"] == "apirouter:0.1.0"
    # Every value is a string, as Kubernetes requires for env.
    assert all(isinstance(v, str) for v in values.values() if v is not None)


def test_gateway_key_comes_from_the_secret(default_objects: dict[str, dict]) -> None:
    container = container_of(default_objects["Deployment"])
    ref = env_of(container)["API_GATEWAY_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": FULLNAME, "key": "API_GATEWAY_KEY"}
    assert container["envFrom"] == [{"secretRef": {"name": FULLNAME}}]
    secret = default_objects["Secret"]
    generated = base64.b64decode(secret["data"]["API_GATEWAY_KEY"]).decode()
    assert len(generated) >= 32


def test_downward_api_fills_container_info(default_objects: dict[str, dict]) -> None:
    env = env_of(container_of(default_objects["Deployment"]))
    fields = {
        name: env[name]["valueFrom"]["fieldRef"]["fieldPath"]
        for name in ("POD_NAME", "POD_NAMESPACE", "NODE_NAME", "POD_SVC_ACCOUNT")
    }
    assert fields == {
        "POD_NAME": "metadata.name",
        "POD_NAMESPACE": "metadata.namespace",
        "NODE_NAME": "spec.nodeName",
        "POD_SVC_ACCOUNT": "spec.serviceAccountName",
    }


def test_probes_ask_the_health_routes_on_the_admin_port(default_objects: dict[str, dict]
                                                        ) -> None:
    container = container_of(default_objects["Deployment"])
    base = "/api/v1/dev/apirouter"
    assert container["livenessProbe"]["httpGet"] == {"path": f"{base}/healthz", "port": "admin"}
    assert container["startupProbe"]["httpGet"] == {"path": f"{base}/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": f"{base}/readyz", "port": "admin"}
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"},
                                  {"name": "admin", "containerPort": 8081, "protocol": "TCP"}]


def test_without_the_admin_port_the_probes_ask_the_main_port(chart_tools: ChartTools) -> None:
    objects = by_kind(load(chart_tools, render(chart_tools, None, "adminPort=0")))
    container = container_of(objects["Deployment"])
    for probe in ("livenessProbe", "startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    assert [p["name"] for p in container["ports"]] == ["http"]
    assert "API_GATEWAY_ADMIN_PORT" not in env_of(container)


def test_the_admin_port_is_on_no_service_and_no_ingress(all_on_objects: dict[str, dict]
                                                        ) -> None:
    container = container_of(all_on_objects["Deployment"])
    assert {"name": "admin", "containerPort": 9001, "protocol": "TCP"} in container["ports"]
    assert env_of(container)["API_GATEWAY_ADMIN_PORT"]["value"] == "9001"
    # the Service (a LoadBalancer here) would publish any port it names
    assert [p["targetPort"] for p in all_on_objects["Service"]["spec"]["ports"]] == ["http"]
    for rule in all_on_objects["Ingress"]["spec"]["rules"]:
        for path in rule["http"]["paths"]:
            assert path["backend"]["service"]["port"] == {"name": "http"}


def test_pod_is_locked_down(default_objects: dict[str, dict]) -> None:
    pod = default_objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = container_of(default_objects["Deployment"])["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}


def test_config_and_tmp_are_mounted(default_objects: dict[str, dict]) -> None:
    pod = default_objects["Deployment"]["spec"]["template"]["spec"]
    mounts = {m["name"]: m for m in container_of(default_objects["Deployment"])["volumeMounts"]}
    assert mounts["config"] == {
        "name": "config",
        "mountPath": "/etc/apirouter",
        "readOnly": True,
    }
    assert mounts["tmp"]["mountPath"] == "/tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == FULLNAME
    assert volumes["config"]["configMap"]["items"] == [
        {"key": "api-router-config.json", "path": "api-router-config.json"}
    ]
    assert "emptyDir" in volumes["tmp"]
    config = default_objects["ConfigMap"]["data"]["api-router-config.json"]
    assert json.loads(config)["endpoints"][0]["apikeyEnv"] == "AOAI_KEY_0"


def test_termination_grace_exceeds_the_gateway_grace(default_objects: dict[str, dict]) -> None:
    pod = default_objects["Deployment"]["spec"]["template"]["spec"]
    container = container_of(default_objects["Deployment"])
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > 25 + pre_stop


def test_service_targets_the_pods(default_objects: dict[str, dict]) -> None:
    service = default_objects["Service"]
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = default_objects["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def test_rollout_keeps_capacity(default_objects: dict[str, dict]) -> None:
    strategy = default_objects["Deployment"]["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


# --- Configuration changes roll the pods -------------------------------------------------


def checksums(tools: ChartTools, *sets: str) -> dict[str, str]:
    objects = by_kind(load(tools, render(tools, None, "secretKey=fake-gateway-key", *sets)))
    annotations = objects["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    return {k: v for k, v in annotations.items() if k.startswith("checksum/")}


def test_config_change_changes_the_pod_template(chart_tools: ChartTools) -> None:
    before = checksums(chart_tools)
    assert set(before) == {"checksum/config", "checksum/secret"}
    assert checksums(chart_tools) == before  # deterministic
    other = "config.endpoints[0].uri=https://other.openai.azure.com/openai/deployments/x"
    after_config = checksums(chart_tools, other)
    assert after_config["checksum/config"] != before["checksum/config"]
    assert after_config["checksum/secret"] == before["checksum/secret"]
    after_key = checksums(chart_tools, "apiKeys.AOAI_KEY_0=fake-new-backend-key")
    assert after_key["checksum/secret"] != before["checksum/secret"]
    assert after_key["checksum/config"] == before["checksum/config"]


# --- Keys stay out of the ConfigMap -------------------------------------------------------


def decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_inline_keys_move_into_the_secret(all_on_objects: dict[str, dict]) -> None:
    config = json.loads(all_on_objects["ConfigMap"]["data"]["api-router-config.json"])
    assert [e.get("apikeyEnv") for e in config["endpoints"]] == [
        "AOAI_KEY_0",
        "APIROUTER_ENDPOINT_1_KEY",
    ]
    assert all("apikey" not in e for e in config["endpoints"])
    assert config["clientKeys"] == [
        {"name": "chat-app", "keyEnv": "CHAT_APP_KEY"},
        {"name": "billing-app", "keyEnv": "APIROUTER_CLIENT_1_KEY"},
    ]
    assert decoded(all_on_objects["Secret"]) == {
        "API_GATEWAY_KEY": "fake-gateway-key-for-ci",
        "AOAI_KEY_0": "fake-backend-key-0",
        "CHAT_APP_KEY": "fake-client-key-chat",
        "APIROUTER_ENDPOINT_1_KEY": "fake-inline-key-moved-to-secret",
        "APIROUTER_CLIENT_1_KEY": "fake-inline-client-key",
        "APIROUTER_POOL_GPT_4O_1_KEY": "fake-inline-pool-key",
    }
    pool = config["deployments"]["gpt-4o"]
    assert pool["apiVersion"] == "2024-10-21"
    assert [b.get("apikeyEnv") for b in pool["backends"]] == [
        "AOAI_KEY_0",
        "APIROUTER_POOL_GPT_4O_1_KEY",
    ]
    assert all("apikey" not in b for b in pool["backends"])
    assert pool["backends"][1]["weight"] == 2


def test_whole_config_file_keeps_its_fields(chart_tools: ChartTools) -> None:
    objects = by_kind(load(chart_tools, render(chart_tools, CONFIG_FILE)))
    text = objects["ConfigMap"]["data"]["api-router-config.json"]
    assert "fake-inline-key" not in text
    config = json.loads(text)
    assert config["endpoints"][1]["timeout"] == 30
    assert config["endpoints"][0]["uri"].startswith("https://one.openai.azure.com/")
    assert config["clientKeys"] == [{"name": "chat-app", "keyEnv": "APIROUTER_CLIENT_0_KEY"}]
    keys = decoded(objects["Secret"])
    assert keys["APIROUTER_ENDPOINT_0_KEY"] == "fake-inline-key-one"
    assert keys["APIROUTER_ENDPOINT_1_KEY"] == "fake-inline-key-two"
    assert keys["APIROUTER_CLIENT_0_KEY"] == "fake-inline-client-key"


def test_pools_without_endpoints(chart_tools: ChartTools) -> None:
    pool = "config.deployments.gpt-4o.backends[0]"
    sets = ["config.endpoints=null", f"{pool}.endpoint=https://e.openai.azure.com"]
    sets += [f"{pool}.deployment=gpt-4o", f"{pool}.apikeyEnv=AOAI_KEY_0"]
    objects = by_kind(load(chart_tools, render(chart_tools, None, *sets)))
    config = json.loads(objects["ConfigMap"]["data"]["api-router-config.json"])
    assert "endpoints" not in config
    assert config["deployments"]["gpt-4o"]["backends"][0]["apikeyEnv"] == "AOAI_KEY_0"


def test_existing_secret_and_configmap(chart_tools: ChartTools) -> None:
    objects = by_kind(load(chart_tools, render(chart_tools, EXISTING)))
    assert "Secret" not in objects
    assert "ConfigMap" not in objects
    deployment = objects["Deployment"]
    container = container_of(deployment)
    ref = env_of(container)["API_GATEWAY_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "apirouter-keys", "key": "gateway-key"}
    assert container["envFrom"] == [{"secretRef": {"name": "apirouter-keys"}}]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "apirouter-config"
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    assert not [k for k in annotations if k.startswith("checksum/")]
    assert objects["PodDisruptionBudget"]["spec"] == {
        "maxUnavailable": 1,
        "selector": deployment["spec"]["selector"],
    }
    # The metrics history file without a claim: an emptyDir.
    assert volumes["history"]["emptyDir"] == {"sizeLimit": "128Mi"}


# --- Every optional part -----------------------------------------------------------------


def test_all_on_renders_every_optional_object(all_on_objects: dict[str, dict]) -> None:
    assert {"Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(all_on_objects)
    # The autoscaler owns the replica count.
    assert "replicas" not in all_on_objects["Deployment"]["spec"]
    hpa = all_on_objects["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == FULLNAME
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu", "memory"]
    assert all_on_objects["PodDisruptionBudget"]["spec"]["minAvailable"] == 1


def test_ingress_lets_streams_flow(all_on_objects: dict[str, dict]) -> None:
    ingress = all_on_objects["Ingress"]
    annotations = ingress["metadata"]["annotations"]
    prefix = "nginx.ingress.kubernetes.io/"
    assert annotations[prefix + "proxy-buffering"] == "off"
    assert annotations[prefix + "proxy-request-buffering"] == "off"
    assert annotations[prefix + "proxy-read-timeout"] == "900"
    assert annotations[prefix + "proxy-send-timeout"] == "900"
    assert annotations["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": FULLNAME, "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "apirouter-tls"


def test_all_on_settings_reach_the_pod(all_on_objects: dict[str, dict]) -> None:
    deployment = all_on_objects["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(deployment)
    env = {name: e.get("value") for name, e in env_of(container).items()}
    image = "registry.example.com/apirouter@sha256:" + "0123456789abcdef" * 4
    assert container["image"] == image
    assert env["IMAGE_ID"] == image
    assert env["API_GATEWAY_ENV"] == "prod"
    assert env["API_GATEWAY_METRICS_CINTERVAL"] == "0.5"
    assert env["HTTPS_PROXY"] == "http://proxy.example.com:3128"
    assert env["API_GATEWAY_THREADS"] == "128"
    assert env["API_GATEWAY_CONNECTION_LIMIT"] == "500"
    assert env["API_GATEWAY_LOG_FORMAT"] == "json"
    assert env["API_GATEWAY_SHUTDOWN_GRACE"] == "60"
    assert env["API_GATEWAY_CONFIG_WATCH_SECONDS"] == "30"
    assert env["API_GATEWAY_METRICS_HISTORY_FILE_MAX_BYTES"] == "33554432"
    assert env["API_GATEWAY_ADMIN_THREADS"] == "8"
    assert env["API_GATEWAY_MAX_IN_PROGRESS"] == "100"
    assert env["API_GATEWAY_REQUEST_READ_TIMEOUT"] == "30"
    # One history file per pod, on the claim; $(POD_NAME) needs POD_NAME defined before it.
    names = [e["name"] for e in container["env"]]
    assert env["API_GATEWAY_METRICS_HISTORY_FILE"] == "/var/lib/apirouter/history-$(POD_NAME).jsonl"
    assert names.index("POD_NAME") < names.index("API_GATEWAY_METRICS_HISTORY_FILE")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["history"] == "/var/lib/apirouter"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["history"]["persistentVolumeClaim"] == {"claimName": "apirouter-history"}
    assert pod["terminationGracePeriodSeconds"] == 90
    assert pod["serviceAccountName"] == "apirouter-gateway"
    assert pod["priorityClassName"] == "high-priority"
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints"):
        assert pod[key], key
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "platform"
    assert container["readinessProbe"]["httpGet"]["path"] == "/api/v1/prod/apirouter/readyz"


def test_numbers_keep_their_form(chart_tools: ChartTools) -> None:
    # helm --set passes fractions as text and YAML numbers arrive as floats: neither may
    # reach the gateway as "3.3554432e+07".
    sets = ["metricsCInterval=0.25", "metricsHistoryFile.enabled=true"]
    sets += ["metricsHistoryFile.maxBytes=33554432", "threads=10000", "ingress.enabled=true"]
    sets += ["ingress.proxyTimeoutSeconds=3600"]
    objects = by_kind(load(chart_tools, render(chart_tools, None, *sets)))
    env = {e["name"]: e.get("value") for e in container_of(objects["Deployment"])["env"]}
    assert env["API_GATEWAY_METRICS_CINTERVAL"] == "0.25"
    assert env["API_GATEWAY_METRICS_HISTORY_FILE_MAX_BYTES"] == "33554432"
    assert env["API_GATEWAY_THREADS"] == "10000"
    annotations = objects["Ingress"]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"


# --- Mistakes are refused with a clear message --------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["terminationGracePeriodSeconds=20"], "must exceed preStopSleepSeconds + shutdownGrace"),
        (["config.endpoints=null"], "no endpoint and no deployments"),
        (["config.file=not json"], "config.file is not valid JSON"),
        (
            [
                "config.endpoints[0].uri=https://x",
                "config.endpoints[0].apikey=k",
                "existingSecret=s",
            ],
            "existingSecret is set",
        ),
        (["apiKeys.API_GATEWAY_PORT=1"], "is set by the chart itself"),
        (["apiKeys.bad-name=1"], "bad-name"),
        (["metricsCHistory=601"], "metricsCHistory"),
        (["metricsCInterval=0"], "metricsCInterval"),
        (["logLevel=verbose"], "logLevel"),
        (["secretKey=too-short"], "secretKey"),
        (["threads=20000"], "threads"),
        (["adminPort=8000"], "adminPort"),
        (["adminPort=70000"], "adminPort"),
        (["replicaCunt=2"], "replicaCunt"),
        (["autoscaling.enabled=true", "autoscaling.maxReplicas=1"], "maxReplicas"),
    ],
)
def test_bad_values_are_refused(chart_tools: ChartTools, sets: list[str], message: str) -> None:
    assert message in render_error(chart_tools, *sets)


# --- NOTES.txt --------------------------------------------------------------------------


def rendered_notes(tools: ChartTools, tmp_path: Path, values: Path | None = None) -> str:
    """NOTES.txt is only shown by a real install, so render it through a template."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "NOTES.txt").rename(chart / "notes-under-test.txt")
    (chart / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n"
        '  notes: {{ tpl (.Files.Get "notes-under-test.txt") . | quote }}\n'
    )
    cmd: list[str | Path] = [tools.helm, "template", RELEASE, chart]
    cmd += ["--show-only", "templates/zz-notes.yaml"]
    if values is not None:
        cmd += ["--values", values]
    done = run(cmd)
    assert done.returncode == 0, done.stderr
    return load(tools, done.stdout)[0]["data"]["notes"]


def test_notes_show_the_curl_to_try(chart_tools: ChartTools, tmp_path: Path) -> None:
    notes = rendered_notes(chart_tools, tmp_path)
    assert f"port-forward service/{FULLNAME} 8080:80" in notes
    assert "curl -s http://127.0.0.1:8080/api/v1/dev/apirouter/healthz" in notes
    assert "curl -s http://127.0.0.1:8080/api/v1/dev/apirouter/lb" in notes
    assert "apiKeys is empty" in notes
    assert f"port-forward deployment/{FULLNAME} 8081:8081" in notes


def test_notes_with_ingress(chart_tools: ChartTools, tmp_path: Path) -> None:
    notes = rendered_notes(chart_tools, tmp_path, ALL_ON)
    assert "https://apirouter.example.com/api/v1/prod/apirouter/healthz" in notes
    assert "fake-" not in notes  # no key is ever shown


# --- Shared state between replicas ------------------------------------------------------


def test_an_existing_redis_reaches_the_pod_with_its_password_from_a_secret(
        all_on_objects: dict[str, dict]) -> None:
    env = env_of(container_of(all_on_objects["Deployment"]))
    assert env["API_GATEWAY_REDIS_URL"]["value"] == \
        "rediss://apirouter-cache.redis.cache.windows.net:6380/0"
    assert env["API_GATEWAY_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "apirouter-redis", "key": "password"}
    assert env["API_GATEWAY_REDIS_PREFIX"]["value"] == "apirouter:prod:"


def test_without_redis_no_redis_setting_is_rendered(default_objects: dict[str, dict]) -> None:
    env = env_of(container_of(default_objects["Deployment"]))
    assert not [name for name in env if name.startswith("API_GATEWAY_REDIS")]


def test_the_deployed_redis_keeps_nothing_and_the_gateway_points_at_it(
        chart_tools: ChartTools) -> None:
    docs = [d for d in load(chart_tools, render(chart_tools, CHART / "ci" /
                                                "redis-deploy-values.yaml"))
            if d["kind"] != "Pod"]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    redis = deployments.pop(f"{RELEASE}-apirouter-redis")
    [gateway] = deployments.values()
    container = redis["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("docker.io/library/redis:")
    assert container["args"][:5] == ["redis-server", "--save", "", "--appendonly", "no"]
    assert f"{RELEASE}-apirouter-redis" in services
    # the gateway's Service does not select the Redis pod
    gateway_selector = services[f"{RELEASE}-apirouter"]["spec"]["selector"]
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert not gateway_selector.items() <= redis_labels.items()
    env = env_of(container_of(gateway))
    assert env["API_GATEWAY_REDIS_URL"]["value"] == f"redis://{RELEASE}-apirouter-redis:6379/0"


def test_redis_url_and_deploy_together_are_refused(chart_tools: ChartTools) -> None:
    error = render_error(chart_tools, "redis.url=redis://cache:6379/0",
                         "redis.deploy.enabled=true")
    assert "either redis.url" in error


# --- Monitoring: ServiceMonitor and Grafana dashboard ------------------------------------


def test_monitoring_objects_are_off_by_default(default_objects: dict[str, dict]) -> None:
    assert "ServiceMonitor" not in default_objects
    names = [d["metadata"]["name"] for d in default_objects.values()]
    assert not any(name.endswith("-grafana-dashboard") for name in names)


def test_service_monitor_scrapes_the_prometheus_route(chart_tools: ChartTools) -> None:
    docs = load(chart_tools, render(chart_tools, MONITORING))
    monitor = next(d for d in docs if d["kind"] == "ServiceMonitor")
    service = next(d for d in docs if d["kind"] == "Service"
                   and d["metadata"]["name"] == FULLNAME)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ai"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert endpoint["path"] == "/api/v1/prod/apirouter/prometheus"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "10s")
    assert endpoint["authorization"] == {
        "type": "Bearer", "credentials": {"name": "apirouter-scrape", "key": "client-key"}}
    # the CRD's required shape, which kubernetes-validate cannot check
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}


def test_grafana_dashboard_configmap_holds_the_dashboard(chart_tools: ChartTools) -> None:
    docs = load(chart_tools, render(chart_tools, MONITORING))
    (configmap,) = [d for d in docs if d["kind"] == "ConfigMap"
                    and d["metadata"]["name"] == f"{FULLNAME}-grafana-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "AI"}
    shipped = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    assert json.loads(configmap["data"]["apirouter.json"]) == shipped


def test_service_monitor_secret_needs_a_key(chart_tools: ChartTools) -> None:
    message = render_error(chart_tools, "serviceMonitor.enabled=true",
                           "serviceMonitor.authorizationSecret.name=scrape")
    assert "needs both name and key" in message
