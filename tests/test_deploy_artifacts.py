"""deploy/: the container image, compose file, Kubernetes manifests, EC2 launch template and IAM
policies are what Mark's code needs, checked here without Docker, a cluster or AWS.

What a tool can check offline, it checks: the Dockerfile with hadolint, compose against the
compose-spec JSON schema vendored in check-jsonschema, the manifests against the Kubernetes
schemas shipped in kubernetes-validate, the launch template against botocore's EC2 model. A
missing validator skips its test with the reason, and fails it in CI (CI=true), as the
PostgreSQL tests do with MARK_REQUIRE_PG. The rest is checked against Mark itself: every MARK_
setting loads with `load_config`, every command parses with the CLI's parser, every route a
probe, a healthcheck or a scrape names is a route of the front end and answers on a running
`mark serve`, and the user data starts a real `mark worker`.
"""

from __future__ import annotations

import ast
import base64
import copy
import functools
import http.server
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.validate import ParamValidator

from mark.apps.cli import build_parser
from mark.core.config import ENV_SHORTCUTS, Config, load_config
from tests.conftest import free_port, start_serve, stop_serve_process

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
SOURCE_PACKAGES = ("mark", "frontend", "provisioner", "predictors", "traces")
# Actions Mark's role needs that no boto3 call names, each with the reason AWS asks for it.
IMPLIED_ACTIONS = {
    "ec2:CreateTags": "TagSpecifications at launch are authorised as CreateTags",
    "iam:PassRole": "IamInstanceProfile gives EC2 the workers' role (cloud.instance_profile_arn)",
    "iam:CreateServiceLinkedRole": "the first spot or EC2 Fleet launch creates AWS's own role",
}
# botocore operation names that IAM authorises under another action name.
# boto3 operations authorised by an IAM action of another name (HeadObject needs s3:GetObject)
IAM_ACTION_OF = {
    "lambda:Invoke": "lambda:InvokeFunction",
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:HeadObject": "s3:GetObject",
}


def unavailable(what: str) -> None:
    """Skip for want of a validator, or fail in CI (CI=true), where it must be installed."""
    reason = f"{what} is not installed (pip install '.[dev]')"
    if os.environ.get("CI") == "true":
        pytest.fail(reason + " (CI=true)")
    pytest.skip(reason)


def require_program(name: str) -> str:
    """A program of this environment's bin directory (pip's console scripts) or of PATH."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        unavailable(name)
    return str(found)


def require_module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(name)


# ---- reading the artefacts ------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def exec_form(args: str) -> list[str]:
    parsed = json.loads(args)
    assert isinstance(parsed, list), f"{args} is not in exec form"
    return [str(a) for a in parsed]


def interpolated(text: str) -> str:
    """Compose's `${NAME}`, `${NAME:-default}` and `${NAME:?error}`: the default when there is
    one, else an example value, as a deployment would fill them in."""

    def value(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        return arg if op == ":-" else f"example-{name.lower()}"

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:[-?])([^}]*))?\}", value, text)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(interpolated((DEPLOY / "compose.yaml").read_text()))
    return loaded


def mark_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in doc["services"].items() if s.get("command", [None])[0] == "serve"}


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind}s"
    return found[0]


def container_env(container: dict[str, Any], secret: dict[str, Any]) -> dict[str, str]:
    """The container's environment, secret references resolved from the Secret manifest."""
    env = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], ref
            env[var["name"]] = secret["stringData"][ref["key"]]
    return env


@functools.cache
def front_end_routes() -> frozenset[str]:
    """The paths the front end serves, from the app `mark serve` builds (nothing is started)."""
    from frontend.app import create_app

    config = load_config(environ={"MARK_ADMIN_TOKEN": "routes-only"})
    app = create_app(config, name=f"deploy_routes_{os.getpid()}")
    return frozenset("/" + route.path for route in app.router.routes)


def parses_as_mark_command(argv: list[str]) -> Any:
    return build_parser().parse_args(argv)


def image_env() -> dict[str, str]:
    """The MARK_ variables the image sets (its ENV), under every container's own."""
    env = dict(dockerfile_instructions(DEPLOY / "Dockerfile"))["ENV"]
    pairs = (word.partition("=") for word in shlex.split(env))
    return {k: v for k, _, v in pairs if k.startswith("MARK_")}


def effective_config(env: dict[str, str], path: Path | None = None) -> Config:
    """The config `mark serve` in the container loads. load_config ignores MARK_ names of
    sections it does not know (they may be other tools'), so a misspelt one would pass
    silently: here each must name a section (or be one of the short names)."""
    sections = set(Config.model_fields)
    for name in env:
        if name.startswith("MARK_") and name not in ENV_SHORTCUTS:
            section, sep, _ = name[len("MARK_") :].lower().partition("__")
            assert sep and section in sections, f"{name} names no config section"
    return load_config(path, environ={**image_env(), **env})


def assert_elects_its_planner(config: Config, where: str) -> None:
    """A front end that runs the control loop only while it holds the database lease, on
    PostgreSQL (the lease and the shared counts live there), on EC2 (the local cloud's workers
    belong to one host)."""
    assert config.control.enabled and config.control.leader_election, where
    assert config.database.url.startswith("postgresql+asyncpg://"), where
    assert config.cloud.provider == "ec2", where


# ---- the image ------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require_program("hadolint")
    run = subprocess.run(
        [hadolint, "--failure-threshold", "info", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_dockerfiles_copy_the_package_and_only_what_dockerignore_sends() -> None:
    """Both images build from the repository root: every COPY source exists, is sent by the
    allow-list in .dockerignore, and the image holds every package pyproject.toml installs."""
    allowed = [
        line[1:]
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert "*" in (ROOT / ".dockerignore").read_text().splitlines()
    for dockerfile in (DEPLOY / "Dockerfile", DEPLOY / "lambda" / "Dockerfile"):
        sources: list[str] = []
        for word, args in dockerfile_instructions(dockerfile):
            if word == "COPY" and not args.startswith("--from"):
                sources += shlex.split(args)[:-1]
        assert sources, dockerfile
        for source in sources:
            assert (ROOT / source).exists(), (dockerfile, source)
            assert any(source == a or source.startswith(a + "/") for a in allowed), source
        assert set(SOURCE_PACKAGES) <= set(sources), (dockerfile, sources)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {i.rstrip("*") for i in includes} == set(SOURCE_PACKAGES)


def test_dockerfile_runs_mark_as_non_root_with_a_healthcheck_on_a_real_route() -> None:
    instructions = dict(dockerfile_instructions(DEPLOY / "Dockerfile"))
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    entrypoint = exec_form(instructions["ENTRYPOINT"])
    assert entrypoint == ["mark"] and "mark" in pyproject["project"]["scripts"]
    assert parses_as_mark_command(exec_form(instructions["CMD"])).command == "serve"
    assert instructions["USER"].isdigit() and int(instructions["USER"]) != 0
    assert f"--uid {instructions['USER']}" in instructions["RUN"]
    healthcheck = healthcheck_argv()
    path = re.search(r"'(/v2/[a-z/]+)'", healthcheck[-1])
    assert path is not None and path.group(1) in front_end_routes()
    assert "MARK_SERVER__HOST=0.0.0.0" in instructions["ENV"]


def healthcheck_argv() -> list[str]:
    args = dict(dockerfile_instructions(DEPLOY / "Dockerfile"))["HEALTHCHECK"]
    return exec_form(args[args.index("CMD") + len("CMD") :].strip())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real `mark serve` (SQLite, no fleet) for the probes, healthcheck and scrape."""
    workdir = tmp_path_factory.mktemp("serve")
    config = '[control]\nenabled = false\n[serverless]\nprovider = "none"\n'
    serve = start_serve(workdir, f"sqlite+aiosqlite:///{workdir / 'mark.db'}", config_text=config)
    try:
        yield serve.base_url
    finally:
        stop_serve_process(serve.process)


def test_healthcheck_command_passes_on_a_running_front_end_and_fails_without_one(
    served: str,
) -> None:
    argv = [sys.executable if a == "python" else a for a in healthcheck_argv()]
    port = served.rsplit(":", 1)[1]
    up = subprocess.run(argv, env={**os.environ, "MARK_SERVER__PORT": port}, capture_output=True)
    assert up.returncode == 0, up.stderr
    nothing = str(free_port())
    down = subprocess.run(
        argv, env={**os.environ, "MARK_SERVER__PORT": nothing}, capture_output=True
    )
    assert down.returncode != 0


def test_probe_and_scrape_paths_answer_on_a_running_front_end(served: str) -> None:
    docs = manifests()
    paths = {one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["path"]}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                paths.add(container[probe]["httpGet"]["path"])
    assert paths == {"/v2/health/live", "/v2/health/ready", "/metrics"}
    for path in sorted(paths):
        with urllib.request.urlopen(served + path, timeout=10) as answer:
            assert answer.status == 200, path
            if path == "/metrics":
                assert b"mark_" in answer.read()


# ---- compose --------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    require_module("check_jsonschema")
    argv = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec"]
    run = subprocess.run([*argv, str(DEPLOY / "compose.yaml")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    broken = tmp_path / "compose.yaml"  # the schema is really applied: a typo fails it
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("restart:", "restrat:"))
    assert subprocess.run([*argv, str(broken)], capture_output=True).returncode != 0


def test_compose_runs_two_front_ends_that_elect_one_planner_on_one_database() -> None:
    doc = compose()
    services = mark_services(doc)
    assert len(services) == 2
    configs = {}
    for name, service in services.items():
        env = {k: "" if v is None else str(v) for k, v in service["environment"].items()}
        configs[name] = effective_config(env)
        port = configs[name].server.port
        assert configs[name].server.host == "0.0.0.0"
        assert {p.rsplit(":", 1)[1] for p in service["ports"]} == {str(port)}
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).exists()
        parses_as_mark_command(service["command"])
        assert_elects_its_planner(configs[name], name)
        # they start together: migrations take turns under an advisory lock (Database.open)
        assert set(service["depends_on"]) == {"postgres"}, name
    # the same but for the host port: either may lead
    first, second = ({k: v for k, v in s.items() if k != "ports"} for s in services.values())
    assert first == second
    assert len({p for s in services.values() for p in s["ports"]}) == 2
    postgres = doc["services"]["postgres"]["environment"]
    (url,) = {c.database.url for c in configs.values()}  # one database, shared
    assert url == (
        f"postgresql+asyncpg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )


def bind_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts (relative to deploy/)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), volume
            out[target] = source
    return out


def test_compose_prometheus_scrapes_every_front_end_and_grafana_provisions_the_dashboard() -> None:
    doc = compose()
    prometheus = doc["services"]["prometheus"]
    mounts = bind_mounts(prometheus)
    config = yaml.safe_load((DEPLOY / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    targets = {t for c in config["scrape_configs"][0]["static_configs"] for t in c["targets"]}
    assert targets == {f"{name}:8000" for name in mark_services(doc)}
    assert set(config["rule_files"]) <= set(mounts)

    grafana = doc["services"]["grafana"]
    mounts = bind_mounts(grafana)
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/mark.yml").read_text())
    dashboards = mounts[provider["providers"][0]["options"]["path"]]
    assert list((DEPLOY / dashboards).glob("*.json"))
    source = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in prometheus["ports"]


# ---- Kubernetes -----------------------------------------------------------------------------


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    kubernetes_validate = require_module("kubernetes_validate")
    version = kubernetes_validate.latest_version()
    checked = []
    for doc in manifests():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: no schema ships; test_service_monitor_* checks its structure
        kubernetes_validate.validate(doc, version, strict=True)  # raises on any error
        checked.append(doc["kind"])
    assert sorted(checked) == sorted(
        ["ConfigMap", "Deployment", "PodDisruptionBudget", "Secret", "Service", "ServiceAccount"]
    )
    broken = copy.deepcopy(one(manifests(), "PodDisruptionBudget"))
    broken["spec"]["maxUnavailabel"] = 1  # the schemas are really applied: a typo fails
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, version, strict=True)


def k8s_front_ends() -> tuple[dict[str, dict[str, Any]], dict[str, Config]]:
    """The Deployments by name, and each one's effective config: the ConfigMap's file under
    the container's environment, as `mark serve --config` in the pod would load it."""
    docs = manifests()
    config_map, secret = one(docs, "ConfigMap"), one(docs, "Secret")
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    configs = {}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        args = parses_as_mark_command(container["args"])
        assert args.command == "serve"
        mount = next(m for m in container["volumeMounts"] if args.config.startswith(m["mountPath"]))
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert volume["configMap"]["name"] == config_map["metadata"]["name"]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(args.config).name
            path.write_text(config_map["data"][path.name])
            configs[name] = effective_config(container_env(container, secret), path)
        assert configs[name].server.host == "0.0.0.0"
        assert [p["containerPort"] for p in container["ports"]] == [configs[name].server.port]
    return deployments, configs


def test_k8s_runs_two_replicas_that_elect_one_planner_on_one_database() -> None:
    deployments, configs = k8s_front_ends()
    assert set(deployments) == {"mark"}  # one template: the replicas differ in nothing
    spec = deployments["mark"]["spec"]
    assert spec["replicas"] == 2
    # the lease, not the rollout, keeps an old and a new pod from planning at once
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert_elects_its_planner(configs["mark"], "mark")
    assert configs["mark"].server.admin_token
    secret = one(manifests(), "Secret")
    assert configs["mark"].database.url == secret["stringData"]["database-url"]
    pdb = one(manifests(), "PodDisruptionBudget")["spec"]
    # a drain takes one pod at a time and never blocks: one replica always serves
    assert set(pdb) == {"maxUnavailable", "selector"}
    assert 1 <= pdb["maxUnavailable"] < spec["replicas"]
    assert pdb["selector"] == spec["selector"]


def test_k8s_pods_run_the_image_user_with_probes_on_the_v2_health_routes() -> None:
    deployments, _ = k8s_front_ends()
    uid = int(dict(dockerfile_instructions(DEPLOY / "Dockerfile"))["USER"])
    for deployment in deployments.values():
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == uid
        (container,) = pod["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/var/lib/mark"}


def test_service_pdb_and_service_monitor_select_the_front_ends() -> None:
    docs = manifests()
    service, pdb, monitor = (
        one(docs, k) for k in ("Service", "PodDisruptionBudget", "ServiceMonitor")
    )
    pods = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] == "Deployment"
    }

    def selects(selector: dict[str, str]) -> set[str]:
        return {n for n, labels in pods.items() if selector.items() <= labels.items()}

    assert selects(service["spec"]["selector"]) == {"mark"}
    (port,) = service["spec"]["ports"]
    container_ports = {
        p["name"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
        for p in c["ports"]
    }
    assert port["targetPort"] in container_ports
    assert selects(pdb["spec"]["selector"]["matchLabels"]) == {"mark"}

    # ServiceMonitor (monitoring.coreos.com/v1), checked by hand: no schema ships for CRDs
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] in front_end_routes()
    assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


# ---- EC2 ------------------------------------------------------------------------------------


def launch_template_request() -> dict[str, Any]:
    """deploy/ec2/launch-template.json with the user data filled in, as the README's command
    builds it for `aws ec2 create-launch-template --cli-input-json`."""
    request: dict[str, Any] = json.loads((DEPLOY / "ec2/launch-template.json").read_text())
    user_data = base64.b64encode((DEPLOY / "ec2/user-data.sh").read_bytes()).decode()
    request["LaunchTemplateData"]["UserData"] = user_data
    return request


def test_launch_template_is_a_valid_create_launch_template_request() -> None:
    request = launch_template_request()
    ec2 = boto3.session.Session().client("ec2", region_name="us-east-1")
    shape = ec2.meta.service_model.operation_model("CreateLaunchTemplate").input_shape
    report = ParamValidator().validate(request, shape)
    assert not report.has_errors(), report.generate_report()
    assert len(request["LaunchTemplateData"]["UserData"]) <= 16 * 1024  # EC2's user data limit
    options = request["LaunchTemplateData"]["MetadataOptions"]
    assert options["InstanceMetadataTags"] == "enabled"  # the user data reads mark:models
    assert options["HttpTokens"] == "required"
    _, configs = k8s_front_ends()  # the name Mark's config launches from
    assert {c.cloud.launch_template for c in configs.values()} == {request["LaunchTemplateName"]}
    assert configs["mark"].cloud.worker_port == 8080  # the user data's default port
    role = json.loads((DEPLOY / "iam/mark-ec2-policy.json").read_text())
    passed = next(s for s in role["Statement"] if s["Action"] == "iam:PassRole")["Resource"]
    assert passed.endswith("/" + request["LaunchTemplateData"]["IamInstanceProfile"]["Name"])


class _Metadata(http.server.BaseHTTPRequestHandler):
    """A stand-in for the instance metadata service (IMDSv2): a token, then the tags."""

    token = "imds-token"
    tags = {"mark:models": "demo,second"}

    def do_PUT(self) -> None:
        ok = (
            self.path == "/latest/api/token"
            and self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        )
        self._answer(200 if ok else 400, self.token)

    def do_GET(self) -> None:
        prefix = "/latest/meta-data/tags/instance/"
        if self.headers["X-aws-ec2-metadata-token"] != self.token:
            self._answer(401, "")
        elif self.path.startswith(prefix) and self.path[len(prefix) :] in self.tags:
            self._answer(200, self.tags[self.path[len(prefix) :]])
        else:
            self._answer(404, "")

    def _answer(self, status: int, body: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the test reads the worker's answers, not the stand-in's access log."""


@pytest.fixture
def metadata_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_user_data_starts_mark_worker_with_the_models_tagged_on_the_instance(
    metadata_url: str, tmp_path: Path
) -> None:
    mark = require_program("mark")
    require_program("curl")
    artifacts = tmp_path / "artifacts"
    artifacts.write_text("demo=builtin:mlp\nsecond=builtin:mlp\nunused=onnx:/nowhere.onnx\n")
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(mark).parent}{os.pathsep}{os.environ['PATH']}",
        "MARK_IMDS_URL": metadata_url,
        "MARK_ARTIFACTS_FILE": str(artifacts),
        "MARK_WORKER_PORT": str(port),
    }
    log = tmp_path / "user-data.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(DEPLOY / "ec2/user-data.sh")], env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 120.0
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.3)
        for model in ("demo", "second"):
            url = f"http://127.0.0.1:{port}/v2/models/{model}/ready"
            with urllib.request.urlopen(url, timeout=5) as answer:
                assert answer.status == 200
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/unused/ready", timeout=5)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# ---- IAM ------------------------------------------------------------------------------------


def boto3_calls() -> dict[str, set[str]]:
    """IAM actions of every AWS operation Mark's code calls, by module.

    A module that builds a boto3 client (`....client("ec2", ...)`) calls the operations whose
    client method names appear in it, as an attribute (`self.client.invoke`) or as a string
    (`self._call("run_instances", ...)`); botocore's own model says which names are operations.
    """
    found: dict[str, set[str]] = {}
    for package in SOURCE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            services = {
                node.args[0].value
                for node in ast.walk(tree)
                if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "client"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            }
            if not services:  # a client built some other way would escape this scan
                assert "import boto3" not in path.read_text(), path
                continue
            assert len(services) == 1, (path, services)  # one client per module: unambiguous
            (service,) = services
            client = boto3.session.Session().client(service, region_name="us-east-1")
            operations = client.meta.method_to_api_mapping
            prefix = client.meta.service_model.signing_name
            names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
            names |= {
                n.value
                for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
            }
            actions = {f"{prefix}:{operations[n]}" for n in names & operations.keys()}
            found[str(path.relative_to(ROOT))] = {IAM_ACTION_OF.get(a, a) for a in actions}
    return found


def test_iam_policies_grant_every_boto3_call_of_the_code_and_nothing_else() -> None:
    calls = boto3_calls()
    assert set(calls) == {
        "provisioner/adapters/ec2/cloud.py",
        "provisioner/adapters/serverless/lambda_pool.py",
        "mark/adapters/model_store/s3.py",
    }
    assert {"ec2:RunInstances", "ec2:TerminateInstances"} <= calls[
        "provisioner/adapters/ec2/cloud.py"
    ]
    assert calls["provisioner/adapters/serverless/lambda_pool.py"] == {"lambda:InvokeFunction"}
    assert calls["mark/adapters/model_store/s3.py"] == {"s3:ListBucket", "s3:GetObject"}
    granted: set[str] = set()
    policies = (
        "mark-ec2-policy.json",
        "mark-lambda-invoke-policy.json",
        "mark-model-store-policy.json",
    )
    for policy in policies:
        for statement in json.loads((DEPLOY / "iam" / policy).read_text())["Statement"]:
            assert statement["Effect"] == "Allow"
            listed = statement["Action"]
            granted |= {listed} if isinstance(listed, str) else set(listed)
    called = set().union(*calls.values())
    assert called - granted == set(), "called but not granted"
    assert granted - called - IMPLIED_ACTIONS.keys() == set(), "granted but never called"
    assert IMPLIED_ACTIONS.keys() <= granted


# ---- the README -----------------------------------------------------------------------------


def test_readme_says_how_to_run_in_production() -> None:
    """The section operators start from names each way to run Mark, its AWS permissions and
    what to look at when the SLO burns; the files, alerts and metrics it names exist."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Running in production") :]
    for needed in (
        "docker compose -f deploy/compose.yaml up -d",
        "kubectl apply -f deploy/k8s/",
        "**AWS permissions**",
        "control.leader_election = true",
        "### When the SLO burns",
    ):
        assert needed in section, needed
    for path in re.findall(r"`((?:deploy|docs)/[\w./-]+)`", section):
        assert (ROOT / path).exists(), path
    for alert in re.findall(r"`(Mark[A-Za-z]+)`", section):
        assert f"alert: {alert}\n" in (DEPLOY / "prometheus/mark-rules.yml").read_text(), alert
    documented = (ROOT / "docs/metrics.md").read_text()
    for metric in set(re.findall(r"`(mark_[a-z_]+)", section)):
        assert f"`{metric}`" in documented, metric
