//! The `deploy` test stage: everything a cluster installs, checked without a
//! cluster.
//!
//! - Renders the kustomize base, every component in `deploy/components/`,
//!   all of them together and the example overlay of README "Deployment"
//!   with `kubectl kustomize`, asserts the least-privilege rules of the
//!   DaemonSet, and validates every rendered object against the Kubernetes
//!   JSON schemas bundled by the PyPI package `kubernetes-validate`.
//! - Checks the image reference (registry/organisation/name, tag = the
//!   workspace version) and that the README overlay's overrides take effect.
//! - Alerts ([`rules`]): `promtool check rules` and `promtool test rules` on
//!   the PrometheusRule's spec. Dashboard ([`dashboard`]): its shape, and
//!   every query parsed by promtool. Both only use the metrics and labels of
//!   [`contract`], and the agent's source registers the metrics they use.
//! - Licences ([`licences`]): `cargo deny check licenses`.
//!
//! Needs `kubectl`, `python3`, `promtool` and `cargo-deny` (setup installs
//! them); the validator is installed on first use into
//! `target/tools/kubernetes-validate-<version>/` (a venv) from PyPI.

mod contract;
mod dashboard;
mod licences;
mod promql;
mod rules;

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

/// Capabilities the base DaemonSet may add (see deploy/daemonset.yaml).
const BASE_CAPABILITIES: &[&str] = &["BPF", "PERFMON", "SYSLOG"];

/// Extra capabilities that an opt-in component may add, by component name.
/// A component not listed here may add none.
const COMPONENT_CAPABILITIES: &[(&str, &[&str])] =
    &[("legacy-kernel", &["SYS_ADMIN", "SYS_RESOURCE"])];

/// Pinned validator, and the Kubernetes versions whose schemas it checks
/// against: the oldest and the newest it bundles.
/// The one host directory the agent may write: its own state
/// (`--state-dir`, what a restart replays from), nothing of the host's.
const STATE_HOST_PATH: &str = "/var/lib/oomtrace";
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const SCHEMA_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];

/// The image the base deploys, without its tag (the tag is the version).
const IMAGE_REPOSITORY: &str = "ghcr.io/oomtrace/oomtrace";

/// The first line of README's example overlay, which the check renders.
const README_OVERLAY_MARKER: &str = "# my-cluster/kustomization.yaml";
/// The path to deploy/ as the README overlay writes it.
const README_OVERLAY_DEPLOY: &str = "../oomtrace/deploy";
/// What the README overlay's overrides must produce.
const README_IMAGE: &str = "registry.example.com/mirror/oomtrace:0.1.0";
const README_MONITORING_NAMESPACE: &str = "observability";
const README_RELEASE_LABEL: &str = "kube-prometheus-stack";

/// A rendered variant: its label and its objects.
struct Rendered {
    label: String,
    objects: Vec<Value>,
}

/// Runs every check of the deploy stage. Fails with every problem found,
/// one per line.
pub fn check(repo_root: &Path) -> anyhow::Result<()> {
    let work = repo_root.join("target").join("deploy-check");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

    let mut failures = Vec::new();
    let rendered = render_and_validate(repo_root, &work, &mut failures)?;
    let find = |label: &str| rendered.iter().find(|r| r.label == label);

    if let Some(base) = find("base") {
        let version = workspace_version(repo_root)?;
        let expected = format!("{IMAGE_REPOSITORY}:{version}");
        for problem in check_image(&base.objects, &expected) {
            failures.push(format!("base: {problem}"));
        }
    }
    if let Some(readme) = find("README overlay") {
        for problem in check_readme_overlay(&readme.objects) {
            failures.push(format!("README overlay: {problem}"));
        }
    }

    // Alerts and dashboard, from the component renders.
    let mut queries = Vec::new();
    match find("component alerts").map(|r| rules::rule_spec(&r.objects)) {
        Some(Ok(spec)) => {
            queries.extend(rules::check_spec(spec, &mut failures));
            let tests = repo_root.join("deploy/components/alerts/rules.test.yaml");
            if let Err(e) = rules::promtool_rules(spec, &tests, &work.join("alerts")) {
                failures.push(format!("alerts: {e:#}"));
            }
        }
        Some(Err(e)) => failures.push(format!("component alerts: {e:#}")),
        None => failures.push("deploy/components/alerts is missing".to_owned()),
    }
    match find("component dashboard") {
        Some(r) => {
            let boards = dashboard::dashboards(&r.objects, &mut failures);
            if boards.is_empty() {
                failures.push(
                    "component dashboard: no ConfigMap labelled grafana_dashboard: \"1\" with a dashboard"
                        .to_owned(),
                );
            }
            let mut board_queries = Vec::new();
            for (at, board) in &boards {
                board_queries.extend(dashboard::check(at, board, &mut failures));
            }
            if let Err(e) = rules::promtool_parse(
                &board_queries,
                &work.join("dashboard"),
                "queries.rules.yaml",
            ) {
                failures.push(format!("dashboard: {e:#}"));
            }
            queries.extend(board_queries);
        }
        None => failures.push("deploy/components/dashboard is missing".to_owned()),
    }
    let (mut used, mut used_labels) = (BTreeSet::new(), BTreeSet::new());
    rules::check_queries(&queries, &mut used, &mut used_labels, &mut failures);
    let registered = contract::registered(&repo_root.join("oomtrace/src"))?;
    failures.extend(contract::check_registered(&used, &registered.metrics));
    failures.extend(contract::check_labels(&used_labels, &registered.labels));
    println!(
        "deploy-check: {} queries use {} metrics: {}; the agent's labels: {}",
        queries.len(),
        used.len(),
        used.iter().cloned().collect::<Vec<_>>().join(", "),
        used_labels.iter().cloned().collect::<Vec<_>>().join(", ")
    );

    if let Err(e) = licences::check(repo_root) {
        failures.push(format!("{e:#}"));
    }

    if !failures.is_empty() {
        bail!(
            "deploy/ manifests, alerts, dashboard or licences break the rules:\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// Renders the base, each component, all components together and the README
/// overlay; applies the workload rules and the schemas to each.
fn render_and_validate(
    repo_root: &Path,
    work: &Path,
    failures: &mut Vec<String>,
) -> anyhow::Result<Vec<Rendered>> {
    let deploy = repo_root.join("deploy");
    let mut variants: Vec<(String, PathBuf, Vec<&str>)> = vec![(
        "base".to_owned(),
        deploy.clone(),
        BASE_CAPABILITIES.to_vec(),
    )];
    let mut all_components = Vec::new();
    let mut all_capabilities = BASE_CAPABILITIES.to_vec();
    for component in components(&deploy)? {
        let extra = COMPONENT_CAPABILITIES
            .iter()
            .find(|(name, _)| *name == component)
            .map(|(_, caps)| caps.to_vec())
            .unwrap_or_default();
        let dir = overlay(work, &component, &[component.as_str()])?;
        let mut allowed = BASE_CAPABILITIES.to_vec();
        allowed.extend(&extra);
        all_capabilities.extend(extra);
        variants.push((format!("component {component}"), dir, allowed));
        all_components.push(component);
    }
    if all_components.len() > 1 {
        let names: Vec<&str> = all_components.iter().map(String::as_str).collect();
        let dir = overlay(work, "all-components", &names)?;
        variants.push(("all components".to_owned(), dir, all_capabilities));
    }
    let readme = fs::read_to_string(repo_root.join("README.md")).context("reading README.md")?;
    match readme_overlay(&readme) {
        Some(text) => {
            let dir = work.join("readme-overlay");
            fs::create_dir_all(&dir)?;
            // work is <repo>/target/deploy-check, so deploy/ is three levels up.
            let text = text.replace(README_OVERLAY_DEPLOY, "../../../deploy");
            fs::write(dir.join("kustomization.yaml"), text)?;
            variants.push(("README overlay".to_owned(), dir, BASE_CAPABILITIES.to_vec()));
        }
        None => failures.push(format!(
            "README.md has no ```yaml block starting with {README_OVERLAY_MARKER:?}"
        )),
    }

    let validator = ensure_kubernetes_validate(&repo_root.join("target").join("tools"))?;
    let mut rendered = Vec::new();
    for (label, dir, allowed) in &variants {
        let text = kubectl_kustomize(dir).with_context(|| format!("rendering {label}"))?;
        let file = work.join(format!("{}.yaml", label.replace(' ', "-")));
        fs::write(&file, &text).with_context(|| format!("writing {}", file.display()))?;
        let objects = to_json(&file).with_context(|| format!("converting {label} to JSON"))?;
        for problem in check_objects(&objects, allowed) {
            failures.push(format!("{label}: {problem}"));
        }
        for version in SCHEMA_VERSIONS {
            if let Err(e) = validate_schema(&validator, &file, version) {
                failures.push(format!("{label}: schema {version}: {e:#}"));
            }
        }
        println!("deploy-check: {label}: {} objects checked", objects.len());
        rendered.push(Rendered {
            label: label.clone(),
            objects,
        });
    }
    Ok(rendered)
}

/// The example overlay in README "Deployment": the ```yaml block whose first
/// line is [`README_OVERLAY_MARKER`].
fn readme_overlay(readme: &str) -> Option<&str> {
    readme.split("```yaml\n").skip(1).find_map(|block| {
        let block = &block[..block.find("```")?];
        block.starts_with(README_OVERLAY_MARKER).then_some(block)
    })
}

/// `version` of `[workspace.package]` in the root Cargo.toml.
fn workspace_version(repo_root: &Path) -> anyhow::Result<String> {
    let text = fs::read_to_string(repo_root.join("Cargo.toml")).context("reading Cargo.toml")?;
    let section = text
        .split("\n[")
        .find(|s| s.starts_with("workspace.package]"))
        .context("Cargo.toml has no [workspace.package]")?;
    section
        .lines()
        .find_map(|l| {
            let value = l.strip_prefix("version")?.trim_start().strip_prefix('=')?;
            Some(value.trim().trim_matches('"').to_owned())
        })
        .context("[workspace.package] has no version")
}

/// The images of every container of every workload.
fn images(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .flat_map(|o| array(&o["spec"]["template"]["spec"]["containers"]).iter())
        .filter_map(|c| c["image"].as_str().map(str::to_owned))
        .collect()
}

/// The base deploys `expected` (a fully qualified, pinned reference).
fn check_image(objects: &[Value], expected: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let images = images(objects);
    if images.is_empty() {
        problems.push("no container image".to_owned());
    }
    for image in images {
        if let Err(e) = qualified(&image) {
            problems.push(format!("image {image}: {e}"));
        } else if image != expected {
            problems.push(format!(
                "image {image} is not {expected} (the workspace version): update deploy/daemonset.yaml"
            ));
        }
    }
    problems
}

/// A reference a node can pull as is: registry host, at least one path
/// component, and a pinned tag (not `latest`) or a digest.
fn qualified(image: &str) -> Result<(), String> {
    let (name, pin) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => match image.rsplit_once(':') {
            Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
            _ => (image, None),
        },
    };
    let parts: Vec<&str> = name.split('/').collect();
    let host = parts[0];
    if parts.len() < 3 || !(host.contains('.') || host.contains(':') || host == "localhost") {
        return Err("name it as <registry host>/<organisation>/<name>".to_owned());
    }
    match pin {
        None | Some("latest") => Err("pin a tag other than latest, or a digest".to_owned()),
        Some(_) => Ok(()),
    }
}

/// The README overlay's three overrides took effect.
fn check_readme_overlay(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let images = images(objects);
    if images != [README_IMAGE] {
        problems.push(format!("images {images:?}, expected [{README_IMAGE:?}]"));
    }
    let policy = objects
        .iter()
        .find(|o| o["kind"].as_str() == Some("NetworkPolicy"));
    let admitted: Vec<&str> = policy
        .map(|p| array(&p["spec"]["ingress"]))
        .unwrap_or(&[])
        .iter()
        .flat_map(|rule| array(&rule["from"]).iter())
        .filter_map(|peer| {
            peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str()
        })
        .collect();
    if admitted != [README_MONITORING_NAMESPACE] {
        problems.push(format!(
            "the NetworkPolicy admits namespaces {admitted:?}, expected [{README_MONITORING_NAMESPACE:?}]"
        ));
    }
    for kind in ["PodMonitor", "PrometheusRule"] {
        let label = objects
            .iter()
            .find(|o| o["kind"].as_str() == Some(kind))
            .and_then(|o| o["metadata"]["labels"]["release"].as_str());
        if label != Some(README_RELEASE_LABEL) {
            problems.push(format!(
                "{kind} has release label {label:?}, expected {README_RELEASE_LABEL:?}"
            ));
        }
    }
    problems
}

/// The names of the kustomize components under `deploy/components/`.
fn components(deploy: &Path) -> anyhow::Result<Vec<String>> {
    let dir = deploy.join("components");
    let mut names = Vec::new();
    if !dir.exists() {
        return Ok(names);
    }
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.path().join("kustomization.yaml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Writes `target/deploy-check/<name>/kustomization.yaml`: the base plus the
/// given components. (An overlay cannot live inside deploy/ itself: kustomize
/// rejects a base that contains its overlay.)
fn overlay(work: &Path, name: &str, components: &[&str]) -> anyhow::Result<PathBuf> {
    let dir = work.join(name);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // work is <repo>/target/deploy-check, so deploy/ is three levels up.
    let mut text = String::from(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
         resources:\n  - ../../../deploy\ncomponents:\n",
    );
    for component in components {
        text.push_str(&format!("  - ../../../deploy/components/{component}\n"));
    }
    fs::write(dir.join("kustomization.yaml"), text)?;
    Ok(dir)
}

fn kubectl_kustomize(dir: &Path) -> anyhow::Result<String> {
    output(Command::new("kubectl").arg("kustomize").arg(dir))
}

/// YAML to JSON without a YAML crate and without a cluster: `kubectl label
/// --local` decodes the file and prints each object as JSON (removing a label
/// that is not there changes nothing). It prints a stream of documents.
fn to_json(file: &Path) -> anyhow::Result<Vec<Value>> {
    let json = output(
        Command::new("kubectl")
            .args([
                "label",
                "--local",
                "--output=json",
                "oomtrace-deploy-check-",
                "-f",
            ])
            .arg(file),
    )?;
    let objects = serde_json::Deserializer::from_str(&json)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .context("parsing kubectl's JSON")?;
    ensure!(!objects.is_empty(), "{} renders no object", file.display());
    Ok(objects)
}

fn output(command: &mut Command) -> anyhow::Result<String> {
    let shown = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {shown} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("{shown} printed non-UTF-8"))
}

/// Installs the pinned `kubernetes-validate` into a venv under `tools` unless
/// it is there already; returns the path of its command. A marker file is
/// written last, so an interrupted install is redone rather than trusted.
fn ensure_kubernetes_validate(tools: &Path) -> anyhow::Result<PathBuf> {
    let venv = tools.join(format!("kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}"));
    let command = venv.join("bin").join("kubernetes-validate");
    let marker = venv.join(".installed");
    if marker.is_file() && command.is_file() {
        return Ok(command);
    }
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    println!(
        "deploy-check: installing kubernetes-validate {KUBERNETES_VALIDATE_VERSION} into {}",
        venv.display()
    );
    output(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    output(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!(
                "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
            )),
    )
    .context("installing kubernetes-validate from PyPI")?;
    ensure!(
        command.is_file(),
        "{} missing after install",
        command.display()
    );
    fs::write(&marker, KUBERNETES_VALIDATE_VERSION)?;
    Ok(command)
}

/// Strict schema validation (unknown fields are errors). Kinds without a
/// bundled schema (the PodMonitor CRD) are reported as warnings, not errors.
fn validate_schema(validator: &Path, file: &Path, version: &str) -> anyhow::Result<()> {
    let out = Command::new(validator)
        .args(["--strict", "--quiet", "--kubernetes-version", version])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", validator.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines().filter(|l| l.starts_with("WARN")) {
        println!("deploy-check: {line}");
    }
    if !out.status.success() {
        bail!("{}", text.trim());
    }
    Ok(())
}

/// The least-privilege rules, applied to every workload in `objects`. Returns
/// one line per broken rule; empty when all hold. `allowed` is the set of
/// capabilities a container may add.
pub fn check_objects(objects: &[Value], allowed: &[&str]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut workloads = 0;
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or("?");
        let name = object["metadata"]["name"].as_str().unwrap_or("?");
        let spec = match kind {
            "Pod" => &object["spec"],
            "DaemonSet" | "Deployment" | "StatefulSet" | "ReplicaSet" | "Job" => {
                &object["spec"]["template"]["spec"]
            }
            "CronJob" => &object["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            _ => continue,
        };
        workloads += 1;
        let at = format!("{}/{name}", kind.to_lowercase());
        check_pod(spec, allowed, kind == "DaemonSet", &mut |p| {
            problems.push(format!("{at}: {p}"))
        });
    }
    if workloads == 0 {
        problems.push("no workload (DaemonSet, Pod, ...) in the rendered manifests".to_owned());
    }
    problems
}

fn check_pod(spec: &Value, allowed: &[&str], daemon: bool, report: &mut dyn FnMut(String)) {
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field].as_bool() == Some(true) {
            report(format!("{field}: true"));
        }
    }
    if daemon {
        // A toleration with operator Exists and no key or effect tolerates
        // every taint: the agent must run on every node.
        let tolerates_all = array(&spec["tolerations"]).iter().any(|t| {
            t["operator"].as_str() == Some("Exists")
                && t["key"].as_str().unwrap_or("").is_empty()
                && t["effect"].as_str().unwrap_or("").is_empty()
        });
        if !tolerates_all {
            report("no toleration {operator: Exists} for every taint".to_owned());
        }
    }
    let host_paths: BTreeSet<&str> = array(&spec["volumes"])
        .iter()
        .filter(|v| v.get("hostPath").is_some())
        .filter(|v| v["hostPath"]["path"].as_str() != Some(STATE_HOST_PATH))
        .filter_map(|v| v["name"].as_str())
        .collect();

    let main = array(&spec["containers"]).iter().map(|c| (c, true));
    let init = array(&spec["initContainers"]).iter().map(|c| (c, false));
    for (container, long_running) in main.chain(init) {
        let name = container["name"].as_str().unwrap_or("?");
        let mut report = |p: String| report(format!("container {name}: {p}"));
        let sc = &container["securityContext"];
        if sc["privileged"].as_bool() == Some(true) {
            report("privileged: true".to_owned());
        }
        if sc["allowPrivilegeEscalation"].as_bool() != Some(false) {
            report("allowPrivilegeEscalation is not false".to_owned());
        }
        if sc["readOnlyRootFilesystem"].as_bool() != Some(true) {
            report("readOnlyRootFilesystem is not true".to_owned());
        }
        let caps = &sc["capabilities"];
        if !array(&caps["drop"])
            .iter()
            .any(|c| c.as_str() == Some("ALL"))
        {
            report("capabilities do not drop ALL".to_owned());
        }
        for cap in array(&caps["add"]) {
            let cap = cap.as_str().unwrap_or("?");
            let bare = cap.strip_prefix("CAP_").unwrap_or(cap);
            if !allowed.contains(&bare) {
                report(format!(
                    "adds capability {cap}, allowed only {}",
                    allowed.join(", ")
                ));
            }
        }
        for mount in array(&container["volumeMounts"]) {
            let volume = mount["name"].as_str().unwrap_or("?");
            if host_paths.contains(volume) && mount["readOnly"].as_bool() != Some(true) {
                let path = mount["mountPath"].as_str().unwrap_or("?");
                report(format!(
                    "hostPath volume {volume} is mounted writable at {path}"
                ));
            }
        }
        for resource in ["cpu", "memory"] {
            let request = container["resources"]["requests"][resource].as_str();
            let limit = container["resources"]["limits"][resource].as_str();
            match (request.and_then(quantity), limit.and_then(quantity)) {
                (Some(r), Some(l)) if r == l => {}
                _ => report(format!(
                    "{resource} request {} != limit {} (not Guaranteed)",
                    request.unwrap_or("unset"),
                    limit.unwrap_or("unset")
                )),
            }
        }
        if !long_running {
            continue;
        }
        for probe in ["livenessProbe", "readinessProbe"] {
            if !container[probe].is_object() {
                report(format!("no {probe}"));
            }
        }
        if daemon {
            let node_name = array(&container["env"]).iter().any(|e| {
                e["name"].as_str() == Some("NODE_NAME")
                    && e["valueFrom"]["fieldRef"]["fieldPath"].as_str() == Some("spec.nodeName")
            });
            if !node_name {
                report(
                    "NODE_NAME is not set from the downward API (fieldRef spec.nodeName)"
                        .to_owned(),
                );
            }
        }
    }
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// A Kubernetes quantity in thousandths of its unit ("100m" -> 100,
/// "128Mi" -> 134217728000), so that "0.1" and "100m" compare equal.
/// Exponent forms ("1e3") are not handled and give `None`.
fn quantity(text: &str) -> Option<i128> {
    // Longest suffixes first; the bare number last.
    const SUFFIXES: &[(&str, i128)] = &[
        ("Ki", 1000 << 10),
        ("Mi", 1000 << 20),
        ("Gi", 1000 << 30),
        ("Ti", 1000 << 40),
        ("Pi", 1000 << 50),
        ("Ei", 1000 << 60),
        ("m", 1),
        ("k", 1_000_000),
        ("M", 1_000_000_000),
        ("G", 1_000_000_000_000),
        ("T", 1_000_000_000_000_000),
        ("P", 1_000_000_000_000_000_000),
        ("", 1000),
    ];
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| Some((text.strip_suffix(suffix)?, *scale)))?;
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    let mut value: i128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    value = value.checked_mul(scale)?;
    let mut divisor = 1;
    for digit in fraction.chars() {
        divisor *= 10;
        value += i128::from(digit.to_digit(10)?) * scale / divisor;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The shape of deploy/daemonset.yaml, reduced to what the rules read.
    fn good() -> Value {
        json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "oomtrace"},
            "spec": {"template": {"spec": {
                "tolerations": [{"operator": "Exists"}],
                "volumes": [
                    {"name": "tracefs", "hostPath": {"path": "/sys/kernel/tracing", "type": "Directory"}},
                    {"name": "kmsg", "hostPath": {"path": "/dev/kmsg", "type": "CharDevice"}},
                    {"name": "scratch", "emptyDir": {}}
                ],
                "containers": [{
                    "name": "oomtrace",
                    "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}},
                    "resources": {
                        "requests": {"cpu": "0.1", "memory": "128Mi"},
                        "limits": {"cpu": "100m", "memory": "128Mi"}
                    },
                    "securityContext": {
                        "privileged": false,
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYSLOG"]}
                    },
                    "volumeMounts": [
                        {"name": "tracefs", "mountPath": "/sys/kernel/tracing", "readOnly": true},
                        {"name": "kmsg", "mountPath": "/dev/kmsg", "readOnly": true},
                        {"name": "scratch", "mountPath": "/tmp"}
                    ]
                }]
            }}}
        })
    }

    #[test]
    fn the_good_manifest_passes() {
        assert_eq!(
            check_objects(&[good()], BASE_CAPABILITIES),
            Vec::<String>::new()
        );
    }

    #[test]
    fn only_the_state_directory_may_be_a_writable_host_path() {
        let mut m = good();
        let pod = &mut m["spec"]["template"]["spec"];
        pod["volumes"].as_array_mut().expect("volumes").push(
            json!({"name": "state", "hostPath": {"path": STATE_HOST_PATH, "type": "DirectoryOrCreate"}}),
        );
        pod["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("volumeMounts")
            .push(json!({"name": "state", "mountPath": STATE_HOST_PATH}));
        assert_eq!(
            check_objects(&[m.clone()], BASE_CAPABILITIES),
            Vec::<String>::new()
        );
        m["spec"]["template"]["spec"]["volumes"][3]["hostPath"]["path"] = json!("/var/lib");
        assert_eq!(
            check_objects(&[m], BASE_CAPABILITIES),
            [
                "daemonset/oomtrace: container oomtrace: hostPath volume state is mounted writable at /var/lib/oomtrace"
            ]
        );
    }

    #[test]
    fn each_broken_rule_is_reported() {
        let mut bad = good();
        let pod = &mut bad["spec"]["template"]["spec"];
        pod["hostPID"] = json!(true);
        pod["tolerations"] =
            json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]);
        let c = &mut pod["containers"][0];
        c["securityContext"]["privileged"] = json!(true);
        c["securityContext"]["readOnlyRootFilesystem"] = json!(false);
        c["securityContext"]["capabilities"] = json!({"add": ["BPF", "CAP_SYS_ADMIN"]});
        c["volumeMounts"][1]["readOnly"] = json!(false);
        c["resources"]["limits"]["memory"] = json!("256Mi");
        c["env"] = json!([{"name": "NODE_NAME", "value": "node-1"}]);
        c.as_object_mut().map(|c| c.remove("livenessProbe"));

        let problems = check_objects(&[bad], BASE_CAPABILITIES);
        let expected = [
            "daemonset/oomtrace: hostPID: true",
            "daemonset/oomtrace: no toleration {operator: Exists} for every taint",
            "daemonset/oomtrace: container oomtrace: privileged: true",
            "daemonset/oomtrace: container oomtrace: readOnlyRootFilesystem is not true",
            "daemonset/oomtrace: container oomtrace: capabilities do not drop ALL",
            "daemonset/oomtrace: container oomtrace: adds capability CAP_SYS_ADMIN, allowed only BPF, PERFMON, SYSLOG",
            "daemonset/oomtrace: container oomtrace: hostPath volume kmsg is mounted writable at /dev/kmsg",
            "daemonset/oomtrace: container oomtrace: memory request 128Mi != limit 256Mi (not Guaranteed)",
            "daemonset/oomtrace: container oomtrace: no livenessProbe",
            "daemonset/oomtrace: container oomtrace: NODE_NAME is not set from the downward API (fieldRef spec.nodeName)",
        ];
        for line in expected {
            assert!(
                problems.iter().any(|p| p == line),
                "{line:?} not reported in {problems:#?}"
            );
        }
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
    }

    #[test]
    fn a_component_may_add_only_its_own_capabilities() {
        let mut legacy = good();
        legacy["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
            json!(["BPF", "PERFMON", "SYSLOG", "SYS_ADMIN", "SYS_RESOURCE"]);
        let allowed = [BASE_CAPABILITIES, COMPONENT_CAPABILITIES[0].1].concat();
        assert!(check_objects(&[legacy.clone()], &allowed).is_empty());
        assert_eq!(check_objects(&[legacy], BASE_CAPABILITIES).len(), 2);
    }

    #[test]
    fn manifests_without_a_workload_fail() {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "oomtrace"}});
        assert_eq!(check_objects(&[ns], BASE_CAPABILITIES).len(), 1);
    }

    #[test]
    fn image_references_must_be_pullable_and_pinned() {
        assert_eq!(qualified("ghcr.io/oomtrace/oomtrace:0.1.0"), Ok(()));
        assert_eq!(qualified("localhost:5000/team/oomtrace:0.1.0"), Ok(()));
        assert_eq!(
            qualified("registry.example.com/a/b/oomtrace@sha256:0123abcd"),
            Ok(())
        );
        // The reference the issue found in the base: no registry.
        assert!(qualified("oomtrace:0.1.0").is_err());
        assert!(qualified("oomtrace/oomtrace:0.1.0").is_err());
        assert!(qualified("ghcr.io/oomtrace:0.1.0").is_err());
        assert!(qualified("ghcr.io/oomtrace/oomtrace").is_err());
        assert!(qualified("ghcr.io/oomtrace/oomtrace:latest").is_err());
        assert!(qualified("localhost:5000/team/oomtrace").is_err());

        let ds = |image: &str| json!({"kind": "DaemonSet", "spec": {"template": {"spec": {"containers": [{"image": image}]}}}});
        let expected = "ghcr.io/oomtrace/oomtrace:0.1.0";
        assert!(check_image(&[ds(expected)], expected).is_empty());
        assert_eq!(
            check_image(&[ds("ghcr.io/oomtrace/oomtrace:0.0.9")], expected),
            [
                "image ghcr.io/oomtrace/oomtrace:0.0.9 is not ghcr.io/oomtrace/oomtrace:0.1.0 (the workspace version): update deploy/daemonset.yaml"
            ]
        );
        assert_eq!(check_image(&[], expected), ["no container image"]);
    }

    #[test]
    fn the_workspace_version_is_read_from_cargo_toml() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let version = workspace_version(&root).expect("reads Cargo.toml");
        assert!(
            version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{version:?}"
        );
    }

    #[test]
    fn the_readme_holds_the_overlay_the_check_renders() {
        let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
        let overlay = readme_overlay(&readme).expect("README has the example overlay");
        for needle in [
            README_OVERLAY_DEPLOY,
            README_IMAGE.split(':').next().unwrap_or_default(),
            README_MONITORING_NAMESPACE,
            README_RELEASE_LABEL,
        ] {
            assert!(overlay.contains(needle), "{needle:?} not in {overlay}");
        }
        assert_eq!(
            readme_overlay(
                "```yaml\nother: 1\n```\n```yaml\n# my-cluster/kustomization.yaml\nk: v\n```"
            ),
            Some("# my-cluster/kustomization.yaml\nk: v\n")
        );
        assert_eq!(readme_overlay("```yaml\nother: 1\n```"), None);
    }

    #[test]
    fn the_readme_overlay_overrides_are_checked() {
        let objects = [
            json!({"kind": "DaemonSet", "spec": {"template": {"spec": {"containers": [{"image": README_IMAGE}]}}}}),
            json!({"kind": "NetworkPolicy", "spec": {"ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": README_MONITORING_NAMESPACE}}}
            ]}]}}),
            json!({"kind": "PodMonitor", "metadata": {"labels": {"release": README_RELEASE_LABEL}}}),
            json!({"kind": "PrometheusRule", "metadata": {"labels": {"release": README_RELEASE_LABEL}}}),
        ];
        assert!(check_readme_overlay(&objects).is_empty());
        let mut unchanged = objects.clone();
        unchanged[0]["spec"]["template"]["spec"]["containers"][0]["image"] =
            json!("ghcr.io/oomtrace/oomtrace:0.1.0");
        unchanged[1]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] =
            json!("monitoring");
        unchanged[3]["metadata"]["labels"] = json!({});
        assert_eq!(check_readme_overlay(&unchanged).len(), 3);
    }

    #[test]
    fn quantities_compare_by_value() {
        assert_eq!(quantity("100m"), quantity("0.1"));
        assert_eq!(quantity("1"), quantity("1000m"));
        assert_eq!(quantity("128Mi"), Some(128 * 1024 * 1024 * 1000));
        assert_eq!(quantity("1Gi"), quantity("1024Mi"));
        assert_eq!(quantity("1G"), quantity("1000M"));
        assert_ne!(quantity("128Mi"), quantity("128M"));
        assert_eq!(quantity("lots"), None);
    }
}
