#!/usr/bin/env python3
"""Static checks of the deployment artifacts under deploy/ (run by conformance/deploy/run).

Prints one line per check: "ok   NAME", "FAIL NAME" (followed by indented details) or
"skip NAME: reason". Needs PyYAML; TOML checks use tomllib (Python 3.11+) and are skipped
without it.

  check_deploy.py --root REPO --out DIR

writes into DIR, for the shell runner to hand to other tools:
  grafana_rules.yml        every Grafana PromQL expression as a recording rule (promtool check rules)
  configmap-ferrobus.toml  the TOML embedded in deploy/kubernetes/configmap.yaml (ferrobus --check-config)
"""

import argparse
import fnmatch
import json
import os
import re
import sys

import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None

# The broker's metric names (Prometheus exposition). Histograms also expose _bucket/_sum/_count.
METRICS = {
    "ferrobus_connections",
    "ferrobus_connections_total",
    "ferrobus_sessions",
    "ferrobus_links",
    "ferrobus_auth_failures_total",
    "ferrobus_messages_received_total",
    "ferrobus_received_bytes_total",
    "ferrobus_messages_delivered_total",
    "ferrobus_delivered_bytes_total",
    "ferrobus_messages_settled_total",
    "ferrobus_messages_expired_total",
    "ferrobus_entity_messages",
    "ferrobus_entity_bytes",
    "ferrobus_end_to_end_latency_seconds",
    "ferrobus_store_commit_duration_seconds",
    "ferrobus_store_commit_requests",
    "ferrobus_store_write_errors_total",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
}
HISTOGRAMS = {
    "ferrobus_end_to_end_latency_seconds",
    "ferrobus_store_commit_duration_seconds",
    "ferrobus_store_commit_requests",
}
METRIC_RE = re.compile(r"\b(?:ferrobus|process)_[a-z_]+")

# Configuration keys the broker accepts beyond those in deploy/ferrobus.toml (being added
# there by the lead): unknown keys are a startup error.
EXTRA_CONFIG_KEYS = {"tls.amqps_listen", "tls.cert", "tls.key", "log.format", "log.level"}

PORTS = {"amqp": 5672, "amqps": 5671, "http": 5300}


class Report:
    def __init__(self):
        self.failed = 0

    def ok(self, name):
        print(f"ok   {name}")

    def fail(self, name, details):
        self.failed += 1
        print(f"FAIL {name}")
        for d in details:
            print(f"       {d}")

    def skip(self, name, why):
        print(f"skip {name}: {why}")

    def check(self, name, problems):
        if problems:
            self.fail(name, problems)
        else:
            self.ok(name)


def unknown_metrics(expr):
    """Metric names in a PromQL expression that the broker does not expose."""
    bad = []
    for name in METRIC_RE.findall(expr):
        if name in METRICS:
            continue
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if base != name and base in HISTOGRAMS:
            continue
        bad.append(name)
    return bad


def flatten_toml(d, prefix=""):
    """Dotted key paths of a TOML document; arrays of tables as `name[]`."""
    keys = set()
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            keys |= flatten_toml(v, path + ".")
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for x in v:
                keys |= flatten_toml(x, path + "[].")
        else:
            keys.add(path)
    return keys


def allowed_config_keys(root):
    with open(os.path.join(root, "deploy/ferrobus.toml"), "rb") as f:
        return flatten_toml(tomllib.load(f)) | EXTRA_CONFIG_KEYS


def check_broker_toml(rep, name, text, allowed, data_dir=None):
    try:
        cfg = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001
        rep.fail(name, [f"does not parse: {e}"])
        return None
    problems = [f"unknown key {k} (the broker refuses unknown keys)"
                for k in sorted(flatten_toml(cfg) - allowed)]
    server = cfg.get("server", {})
    for key, port in (("amqp_listen", 5672), ("http_listen", 5300)):
        want = f"0.0.0.0:{port}"
        if server.get(key) != want:
            problems.append(f"server.{key} is {server.get(key)!r}, want {want!r} (reachable from outside)")
    tls = cfg.get("tls", {})
    if tls.get("amqps_listen") not in (None, "0.0.0.0:5671"):
        problems.append(f"tls.amqps_listen is {tls.get('amqps_listen')!r}, want '0.0.0.0:5671'")
    if data_dir and server.get("data_dir") != data_dir:
        problems.append(f"server.data_dir is {server.get('data_dir')!r}, want {data_dir!r}")
    if cfg.get("log", {}).get("format") not in (None, "pretty", "json"):
        problems.append("log.format must be \"pretty\" or \"json\"")
    rep.check(name, problems)
    return cfg


def yaml_files(root):
    out = []
    for dirpath, _, files in os.walk(os.path.join(root, "deploy")):
        for f in files:
            if f.endswith((".yml", ".yaml")):
                out.append(os.path.join(dirpath, f))
    return sorted(out)


# ---- .dockerignore matching (enough of Docker's rules for an allow-list) --------------------

def dockerignore_patterns(path):
    pats = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            neg = line.startswith("!")
            pat = line[1:] if neg else line
            pats.append((neg, os.path.normpath(pat.strip("/"))))
    return pats


def _pattern_matches(pat, path):
    # A pattern matches the path itself or any parent directory of it.
    parts = path.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        if pat.startswith("**/"):
            tail = pat[3:]
            for j in range(i):
                if fnmatch.fnmatchcase("/".join(parts[j:i]), tail):
                    return True
        elif fnmatch.fnmatchcase(prefix, pat) and prefix.count("/") == pat.count("/"):
            return True
    return False


def in_context(pats, path):
    included = True
    for neg, pat in pats:
        if _pattern_matches(pat, path):
            included = neg
    return included


# ---- checks ---------------------------------------------------------------------------------

def check_yaml_parses(rep, root):
    docs = {}
    problems = []
    for path in yaml_files(root):
        rel = os.path.relpath(path, root)
        try:
            with open(path) as f:
                docs[rel] = [d for d in yaml.safe_load_all(f) if d is not None]
            if not docs[rel]:
                problems.append(f"{rel}: empty")
        except yaml.YAMLError as e:
            problems.append(f"{rel}: {e}")
    rep.check(f"YAML parses ({len(docs)} files under deploy/)", problems)
    return docs


def check_compose(rep, root, docs):
    name = "docker-compose.yml: one ferrobus service mapping 5672 and 5300, data volume, healthcheck"
    d = (docs.get("deploy/docker-compose.yml") or [None])[0]
    if not isinstance(d, dict):
        rep.fail(name, ["deploy/docker-compose.yml missing or not a mapping"])
        return
    problems = []
    services = d.get("services") or {}
    if list(services) != ["ferrobus"]:
        problems.append(f"services are {list(services)}, want exactly ['ferrobus']")
    svc = services.get("ferrobus") or {}
    mapped = set()
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            mapped.add((str(p.get("published")), str(p.get("target"))))
        else:
            parts = str(p).split("/")[0].split(":")
            if len(parts) >= 2:
                mapped.add((parts[-2], parts[-1]))
    for port in ("5672", "5300"):
        if (port, port) not in mapped:
            problems.append(f"port {port}:{port} not mapped (got {sorted(mapped)})")
    volumes = d.get("volumes") or {}
    mounts = [str(v) if not isinstance(v, dict) else f"{v.get('source')}:{v.get('target')}"
              for v in svc.get("volumes") or []]
    if not any(m.split(":")[0] in volumes and m.split(":")[1] == "/var/lib/ferrobus" for m in mounts):
        problems.append("no named volume mounted at /var/lib/ferrobus")
    hc = svc.get("healthcheck") or {}
    if not hc.get("test"):
        problems.append("no healthcheck.test")
    build = svc.get("build") or {}
    if build:
        ctx = os.path.normpath(os.path.join(root, "deploy", build.get("context", ".")))
        dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            problems.append(f"build.dockerfile {dockerfile} does not exist")
        if ctx != os.path.normpath(root):
            problems.append(f"build.context is {ctx}, want the repository root")
    rep.check(name, problems)


def check_dockerfile(rep, root, toml_cfg):
    name = "Dockerfile: stages, non-root user, volume, ports, healthcheck, build context"
    path = os.path.join(root, "deploy/Dockerfile")
    with open(path) as f:
        text = f.read()
    # Join continuation lines.
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()]
    lines = [l for l in lines if l and not l.startswith("#")]
    args = {}
    for l in lines:
        m = re.match(r"ARG\s+(\w+)=(\S+)", l)
        if m:
            args[m.group(1)] = m.group(2)

    def expand(s):
        return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), s)

    problems = []
    froms = [expand(l.split()[1]) for l in lines if l.startswith("FROM ")]
    if not froms or not froms[0].startswith("rust:") or "bookworm" not in froms[0]:
        problems.append(f"first stage is {froms[:1]}, want rust:bookworm")
    if not froms or froms[-1] != "debian:bookworm-slim":
        problems.append(f"runtime stage is {froms[-1:]}, want debian:bookworm-slim")
    if not any("cargo build --release --locked -p ferrobus" in l for l in lines):
        problems.append("no `cargo build --release --locked -p ferrobus`")
    if not any("libclang-dev" in l and "clang" in l for l in lines):
        problems.append("clang / libclang-dev not installed in the builder (rocksdb bindgen)")
    users = [l.split()[1] for l in lines if l.startswith("USER ")]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"final USER is {users[-1:]}, want a non-root user")
    if not any(l.startswith("VOLUME") and "/var/lib/ferrobus" in l for l in lines):
        problems.append("no VOLUME /var/lib/ferrobus")
    exposed = set()
    for l in lines:
        if l.startswith("EXPOSE "):
            exposed |= {p.split("/")[0] for p in l.split()[1:]}
    if exposed != {"5672", "5671", "5300"}:
        problems.append(f"EXPOSE {sorted(exposed)}, want 5672 5671 5300")
    hc = [l for l in lines if l.startswith("HEALTHCHECK")]
    if not hc or "NONE" in hc[0]:
        problems.append("no HEALTHCHECK")
    # COPY sources exist and survive Dockerfile.dockerignore; so does what the build reads.
    ignore = os.path.join(root, "deploy/Dockerfile.dockerignore")
    pats = dockerignore_patterns(ignore) if os.path.isfile(ignore) else []
    copied = {}
    for l in lines:
        if l.startswith("COPY ") and "--from=" not in l:
            parts = [p for p in l.split()[1:] if not p.startswith("--")]
            for src in parts[:-1]:
                copied[src] = parts[-1]
                if src != "." and not os.path.exists(os.path.join(root, src)):
                    problems.append(f"COPY source {src} does not exist")
                elif src != "." and not in_context(pats, os.path.normpath(src)):
                    problems.append(f"COPY source {src} is excluded by Dockerfile.dockerignore")
    needed = ["Cargo.toml", "Cargo.lock", "crates/server/Cargo.toml", "crates/server/src/main.rs"]
    # Files the crates pull in at compile time (include_str!/include_bytes!), e.g. deploy/ferrobus.toml.
    for dirpath, _, files in os.walk(os.path.join(root, "crates")):
        if "/target" in dirpath:
            continue
        for fn in files:
            if fn.endswith(".rs"):
                src = open(os.path.join(dirpath, fn), encoding="utf-8", errors="replace").read()
                for inc in re.findall(r'include_(?:str|bytes)!\(\s*"([^"]+)"', src):
                    needed.append(os.path.relpath(os.path.normpath(os.path.join(dirpath, inc)), root))
    for n in needed:
        if os.path.exists(os.path.join(root, n)) and not in_context(pats, n):
            problems.append(f"{n} is needed by the build but excluded by Dockerfile.dockerignore")
    for n in ("target/release/ferrobus", ".git/HEAD", "conformance/js/node_modules/x"):
        if in_context(pats, n):
            problems.append(f"{n} would be sent in the build context")
    if copied.get("deploy/docker/ferrobus.toml") != "/etc/ferrobus/ferrobus.toml":
        problems.append("deploy/docker/ferrobus.toml is not copied to /etc/ferrobus/ferrobus.toml")
    if toml_cfg is not None:
        dd = toml_cfg.get("server", {}).get("data_dir")
        if dd != "/var/lib/ferrobus":
            problems.append(f"docker/ferrobus.toml data_dir {dd!r} is not the VOLUME")
    rep.check(name, problems)


def check_kubernetes(rep, root, docs, allowed, out):
    objs = []
    for rel, ds in docs.items():
        if rel.startswith("deploy/kubernetes/"):
            objs += [(rel, d) for d in ds]
    by_kind = {}
    problems = []
    for rel, o in objs:
        if not isinstance(o, dict) or "kind" not in o or "apiVersion" not in o:
            problems.append(f"{rel}: a document without apiVersion/kind")
            continue
        if o["kind"] != "Kustomization" and not (o.get("metadata") or {}).get("name"):
            problems.append(f"{rel}: {o['kind']} without metadata.name")
        by_kind.setdefault(o["kind"], []).append(o)
    for kind in ("StatefulSet", "Service", "ConfigMap", "ServiceMonitor"):
        if kind not in by_kind:
            problems.append(f"no {kind}")
    for k in by_kind.get("Kustomization", []):
        for r in k.get("resources") or []:
            if not os.path.exists(os.path.join(root, "deploy/kubernetes", r)):
                problems.append(f"kustomization resource {r} does not exist")
    rep.check(f"kubernetes: {len(objs)} documents, kinds {sorted(by_kind)}", problems)
    if problems:
        return

    sts = by_kind["StatefulSet"][0]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    c = pod["containers"][0]
    p = []
    if spec.get("replicas") != 1:
        p.append("replicas is not 1")
    labels = spec["template"]["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in spec["selector"]["matchLabels"].items()):
        p.append("selector does not match the pod template labels")
    cports = {x["name"]: x["containerPort"] for x in c.get("ports") or []}
    if cports != PORTS:
        p.append(f"container ports {cports}, want {PORTS}")
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        g = (c.get(probe) or {}).get("httpGet") or {}
        if g.get("path") != path or g.get("port") not in ("http", 5300):
            p.append(f"{probe} is not GET {path} on the http port")
    psc = pod.get("securityContext") or {}
    csc = c.get("securityContext") or {}
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        p.append("runAsNonRoot not set")
    if not csc.get("readOnlyRootFilesystem"):
        p.append("readOnlyRootFilesystem not set")
    if csc.get("allowPrivilegeEscalation") is not False:
        p.append("allowPrivilegeEscalation not false")
    res = c.get("resources") or {}
    if not res.get("requests") or not res.get("limits"):
        p.append("resources.requests/limits missing")
    vcts = {v["metadata"]["name"] for v in spec.get("volumeClaimTemplates") or []}
    if not vcts:
        p.append("no volumeClaimTemplates")
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    for m in mounts:
        if m not in vols and m not in vcts:
            p.append(f"volumeMount {m} has no volume")
    data_dir = next((mounts[v] for v in vcts if v in mounts), None)
    if data_dir is None:
        p.append("the volumeClaimTemplate is not mounted")
    services = {s["metadata"]["name"]: s for s in by_kind["Service"]}
    if spec.get("serviceName") not in services:
        p.append(f"serviceName {spec.get('serviceName')} is not one of the Services")
    elif services[spec["serviceName"]]["spec"].get("clusterIP") != "None":
        p.append("serviceName is not a headless Service")
    cms = {cm["metadata"]["name"]: cm for cm in by_kind["ConfigMap"]}
    cfg_vol = next((v for v in vols.values() if "configMap" in v), None)
    cm = cms.get((cfg_vol or {}).get("configMap", {}).get("name"))
    if cm is None:
        p.append("no volume from the ConfigMap")
    args = " ".join(c.get("args") or [])
    conf_path = None
    m = re.search(r"--config[= ](\S+)", args)
    if m:
        conf_path = m.group(1)
        if cm is not None and cfg_vol is not None:
            key = os.path.basename(conf_path)
            if mounts.get(cfg_vol["name"]) != os.path.dirname(conf_path) or key not in cm.get("data", {}):
                p.append(f"--config {conf_path} is not a key of the mounted ConfigMap")
    else:
        p.append("container args have no --config")
    rep.check("kubernetes StatefulSet: 1 replica, PVC, probes, non-root read-only, resources, config", p)

    # Services and ServiceMonitor
    p = []
    for sname, s in services.items():
        ports = {x.get("name"): x.get("port") for x in s["spec"].get("ports") or []}
        if ports != PORTS:
            p.append(f"Service {sname} ports {ports}, want {PORTS}")
        sel = s["spec"].get("selector") or {}
        if any(labels.get(k) != v for k, v in sel.items()):
            p.append(f"Service {sname} selector does not select the pod")
    for sm in by_kind["ServiceMonitor"]:
        if sm["apiVersion"] != "monitoring.coreos.com/v1":
            p.append(f"ServiceMonitor apiVersion {sm['apiVersion']}")
        want = sm["spec"]["selector"].get("matchLabels") or {}
        picked = [n for n, s in services.items()
                  if all((s["metadata"].get("labels") or {}).get(k) == v for k, v in want.items())]
        if len(picked) != 1:
            p.append(f"ServiceMonitor selects Services {picked}, want exactly one (no double scrape)")
        for ep in sm["spec"].get("endpoints") or []:
            if ep.get("port") != "http" or ep.get("path", "/metrics") != "/metrics":
                p.append(f"ServiceMonitor endpoint {ep} is not http /metrics")
    rep.check("kubernetes Services (5672, 5671, 5300) and ServiceMonitor (/metrics)", p)

    # ConfigMap TOML
    if cm is not None and conf_path:
        text = cm["data"][os.path.basename(conf_path)]
        with open(os.path.join(out, "configmap-ferrobus.toml"), "w") as f:
            f.write(text)
        if tomllib is None:
            rep.skip("kubernetes ConfigMap TOML keys", "no tomllib (Python < 3.11)")
        else:
            cfg = check_broker_toml(rep, "kubernetes ConfigMap TOML: known keys, 0.0.0.0 listeners, data_dir on the PVC",
                                    text, allowed, data_dir=data_dir)
            if cfg is not None:
                grace = pod.get("terminationGracePeriodSeconds", 30)
                sd = cfg.get("server", {}).get("shutdown_timeout_secs", 10)
                rep.check("kubernetes terminationGracePeriodSeconds > server.shutdown_timeout_secs",
                          [] if grace > sd else [f"{grace} <= {sd}"])


def grafana_exprs(node, out):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                out.append(("expr", v))
            elif k == "query" and isinstance(v, str):
                out.append(("query", v))
            else:
                grafana_exprs(v, out)
    elif isinstance(node, list):
        for x in node:
            grafana_exprs(x, out)


def check_grafana(rep, root, out):
    path = os.path.join(root, "deploy/grafana/ferrobus-dashboard.json")
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, ValueError) as e:
        rep.fail("Grafana dashboard JSON parses", [str(e)])
        return
    rep.ok("Grafana dashboard JSON parses")
    exprs = []
    grafana_exprs(dash, exprs)
    promql = [e for kind, e in exprs if kind == "expr"]
    p = []
    if not promql:
        p.append("no PromQL expressions")
    for kind, e in exprs:
        bad = unknown_metrics(e)
        if bad:
            p.append(f"{kind} {e!r}: unknown metric(s) {bad}")
    used = set()
    for _, e in exprs:
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) if re.sub(r"_(bucket|sum|count)$", "", n) in HISTOGRAMS else n
                 for n in METRIC_RE.findall(e)}
    rep.check(f"Grafana: {len(promql)} PromQL expressions use only the broker's metrics", p)
    want = {"ferrobus_messages_received_total", "ferrobus_messages_delivered_total", "ferrobus_entity_messages",
            "ferrobus_end_to_end_latency_seconds", "ferrobus_store_commit_duration_seconds",
            "ferrobus_store_commit_requests", "ferrobus_connections", "ferrobus_links",
            "process_resident_memory_bytes", "process_cpu_seconds_total"}
    rep.check("Grafana: throughput, backlog, latency, commit, connection and process panels present",
              [f"{m} not graphed" for m in sorted(want - used)])
    ids = []

    def walk(panels):
        for pn in panels:
            ids.append(pn.get("id"))
            walk(pn.get("panels") or [])

    walk(dash.get("panels") or [])
    p = []
    if len(ids) != len(set(ids)):
        p.append("duplicate panel ids")
    if not dash.get("uid") or not dash.get("title"):
        p.append("dashboard without uid/title")
    rep.check("Grafana: unique panel ids, uid and title", p)
    # Grafana variables to values promtool can parse.
    rules = []
    for i, e in enumerate(promql):
        s = re.sub(r"\$__(rate_interval|interval|range)\b", "5m", e)
        s = re.sub(r"\$\{?\w+\}?", ".*", s)
        rules.append({"record": f"grafana:expr_{i}", "expr": s})
    with open(os.path.join(out, "grafana_rules.yml"), "w") as f:
        yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}, f, sort_keys=False)


def check_alert_metrics(rep, docs):
    d = (docs.get("deploy/prometheus/alerts.yml") or [{}])[0]
    p = []
    names = set()
    for g in d.get("groups") or []:
        for r in g.get("rules") or []:
            names.add(r.get("alert"))
            bad = unknown_metrics(r.get("expr", ""))
            if bad:
                p.append(f"{r.get('alert')}: unknown metric(s) {bad}")
    rep.check("alerts.yml uses only the broker's metrics", p)
    want = {"FerrobusDown", "FerrobusDeadLetterGrowing", "FerrobusBacklogGrowing", "FerrobusStoreCommitSlow",
            "FerrobusAuthFailuresSpike", "FerrobusStoreWriteErrors", "FerrobusHighMemory"}
    rep.check("alerts.yml has the required alerts", [f"missing {a}" for a in sorted(want - names)])
    t = (docs.get("deploy/prometheus/alerts_test.yml") or [{}])[0]
    tested = {a.get("alertname") for tc in t.get("tests") or [] for a in tc.get("alert_rule_test") or []
              if a.get("exp_alerts")}
    rep.check("alerts_test.yml tests at least two alerts firing",
              [] if len(tested & names) >= 2 else [f"firing tests for {sorted(tested)}"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rep = Report()
    docs = check_yaml_parses(rep, a.root)
    allowed = allowed_config_keys(a.root) if tomllib else None
    toml_cfg = None
    if tomllib is None:
        rep.skip("docker/ferrobus.toml keys", "no tomllib (Python < 3.11)")
    else:
        with open(os.path.join(a.root, "deploy/docker/ferrobus.toml")) as f:
            toml_cfg = check_broker_toml(rep, "docker/ferrobus.toml: known keys, 0.0.0.0 listeners, data_dir on the volume",
                                         f.read(), allowed, data_dir="/var/lib/ferrobus")
    check_dockerfile(rep, a.root, toml_cfg)
    check_compose(rep, a.root, docs)
    check_kubernetes(rep, a.root, docs, allowed or set(), a.out)
    check_alert_metrics(rep, docs)
    check_grafana(rep, a.root, a.out)
    return 1 if rep.failed else 0


if __name__ == "__main__":
    sys.exit(main())
