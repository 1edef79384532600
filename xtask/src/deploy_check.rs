//! Checks the Kubernetes manifests in `deploy/`: renders the kustomize base
//! and every component in `deploy/components/` with `kubectl kustomize`
//! (offline, no cluster), asserts the least-privilege rules of the DaemonSet,
//! and validates every rendered object against the Kubernetes JSON schemas
//! bundled by the PyPI package `kubernetes-validate` (offline once installed).
//!
//! Needs `kubectl` and `python3` on PATH; the validator is installed on first
//! use into `target/tools/kubernetes-validate-<version>/` (a venv) from PyPI.

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
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";
const SCHEMA_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];

/// Renders and checks `deploy/` and each of its components. Fails with every
/// problem found, one per line.
pub fn check_manifests(repo_root: &Path) -> anyhow::Result<()> {
    let deploy = repo_root.join("deploy");
    let work = repo_root.join("target").join("deploy-check");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;

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
        let dir = overlay(&work, &component, &[component.as_str()])?;
        let mut allowed = BASE_CAPABILITIES.to_vec();
        allowed.extend(&extra);
        all_capabilities.extend(extra);
        variants.push((format!("component {component}"), dir, allowed));
        all_components.push(component);
    }
    if all_components.len() > 1 {
        let names: Vec<&str> = all_components.iter().map(String::as_str).collect();
        let dir = overlay(&work, "all-components", &names)?;
        variants.push(("all components".to_owned(), dir, all_capabilities));
    }

    let validator = ensure_kubernetes_validate(&repo_root.join("target").join("tools"))?;
    let mut failures = Vec::new();
    for (label, dir, allowed) in &variants {
        let rendered = kubectl_kustomize(dir).with_context(|| format!("rendering {label}"))?;
        let file = work.join(format!("{}.yaml", label.replace(' ', "-")));
        fs::write(&file, &rendered).with_context(|| format!("writing {}", file.display()))?;
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
    }
    if !failures.is_empty() {
        bail!(
            "deploy/ manifests break the rules:\n  {}",
            failures.join("\n  ")
        );
    }
    Ok(())
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
