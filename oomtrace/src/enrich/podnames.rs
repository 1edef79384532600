//! Pod UID → namespace, pod and container names, from the node alone
//! (KERNEL-FACTS §7), with no API server:
//!
//! - `/var/log/pods/<namespace>_<pod>_<pod-uid>/<container>/<restart>.log`
//!   (the kubelet's `podLogsDir`);
//! - `/var/log/containers/<pod>_<namespace>_<container>-<container-id>.log`,
//!   symlinks into the first tree. The kubelet cuts these names at 255 bytes
//!   (`.log` included), which can shorten the container ID or even the
//!   container name; the symlink's target still has the full names.
//!
//! Namespaces, pod names and container names cannot contain `_`, so the
//! fields split unambiguously. A killed pod's directories can vanish right
//! after the kill, so what was resolved is kept for a while after its
//! directory was last seen.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The names of a pod (and of one of its containers).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub pod: String,
    /// `None` when the container ID was not given or not found.
    pub container: Option<String>,
}

/// Errors reading the log directories.
#[derive(Debug, thiserror::Error)]
pub enum PodNamesError {
    #[error(
        "cannot read {}: {source}: mount the host's directory into the oomtrace pod or pass its path",
        path.display()
    )]
    ReadDir { path: PathBuf, source: io::Error },
}

#[derive(Clone, Debug)]
struct PodEntry {
    namespace: String,
    pod: String,
    last_seen: Instant,
}

#[derive(Clone, Debug)]
struct ContainerEntry {
    pod_uid: String,
    /// `None` when the truncated symlink name lost it and the target was unreadable.
    container: Option<String>,
    last_seen: Instant,
}

/// Resolves pod UIDs to names from the kubelet's log directories, with a cache.
#[derive(Debug)]
pub struct PodNames {
    pods_dir: PathBuf,
    containers_dir: PathBuf,
    retention: Duration,
    min_refresh: Duration,
    last_refresh: Option<Instant>,
    last_error: Option<String>,
    pods: HashMap<String, PodEntry>,
    /// Key: the container ID as the symlink name has it (possibly a truncated prefix).
    containers: HashMap<String, ContainerEntry>,
}

impl Default for PodNames {
    fn default() -> Self {
        Self::new()
    }
}

impl PodNames {
    /// The kubelet's defaults: `/var/log/pods` and `/var/log/containers`;
    /// keeps names 10 minutes after their directory disappears; rescans on a
    /// miss at most once per second.
    pub fn new() -> Self {
        Self {
            pods_dir: PathBuf::from("/var/log/pods"),
            containers_dir: PathBuf::from("/var/log/containers"),
            retention: Duration::from_secs(600),
            min_refresh: Duration::from_secs(1),
            last_refresh: None,
            last_error: None,
            pods: HashMap::new(),
            containers: HashMap::new(),
        }
    }

    /// The pod log directory (kubelet `podLogsDir`).
    pub fn with_pods_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.pods_dir = dir.into();
        self
    }

    /// The directory of `<pod>_<namespace>_<container>-<id>.log` symlinks.
    pub fn with_containers_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.containers_dir = dir.into();
        self
    }

    /// How long a name is kept after its directory was last seen.
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// The shortest interval between two rescans caused by misses.
    pub fn with_min_refresh(mut self, interval: Duration) -> Self {
        self.min_refresh = interval;
        self
    }

    /// Why the last rescan could not read a directory, if it could not.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Names of the pod `pod_uid` (with dashes) and, when `container_id` is
    /// given and known, of that container. Rescans on a miss (at most once
    /// per the refresh interval); `None` when the pod is not known.
    pub fn lookup(&mut self, pod_uid: &str, container_id: Option<&str>) -> Option<PodName> {
        self.lookup_at(pod_uid, container_id, Instant::now())
    }

    fn lookup_at(
        &mut self,
        pod_uid: &str,
        container_id: Option<&str>,
        now: Instant,
    ) -> Option<PodName> {
        let hit = self.cached(pod_uid, container_id);
        let complete = hit
            .as_ref()
            .is_some_and(|n| container_id.is_none() || n.container.is_some());
        if complete {
            return hit;
        }
        let due = self
            .last_refresh
            .is_none_or(|last| now.saturating_duration_since(last) >= self.min_refresh);
        if !due {
            return hit;
        }
        if let Err(err) = self.refresh_at(now) {
            tracing::debug!("pod names: {err}");
        }
        self.cached(pod_uid, container_id)
    }

    fn cached(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodName> {
        let pod = self.pods.get(pod_uid)?;
        let container = container_id.and_then(|id| {
            self.containers
                .iter()
                .find(|(key, c)| {
                    c.pod_uid == pod_uid && !key.is_empty() && id.starts_with(key.as_str())
                })
                .and_then(|(_, c)| c.container.clone())
        });
        Some(PodName {
            namespace: pod.namespace.clone(),
            pod: pod.pod.clone(),
            container,
        })
    }

    /// The UIDs of the pod `namespace/pod`, after a rescan: more than one
    /// when a pod of that name was re-created and the old one's log
    /// directory is still there. Sorted; empty when not found (see
    /// [`PodNames::last_error`] for an unreadable directory).
    pub fn uids_of(&mut self, namespace: &str, pod: &str) -> Vec<String> {
        if let Err(err) = self.refresh() {
            tracing::debug!("pod names: {err}");
        }
        let mut uids: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| p.namespace == namespace && p.pod == pod)
            .map(|(uid, _)| uid.clone())
            .collect();
        uids.sort_unstable();
        uids
    }

    /// Rescans both directories now and drops names not seen for longer
    /// than the retention. Reads what it can: an unreadable directory is
    /// reported after the other one was scanned.
    pub fn refresh(&mut self) -> Result<(), PodNamesError> {
        self.refresh_at(Instant::now())
    }

    fn refresh_at(&mut self, now: Instant) -> Result<(), PodNamesError> {
        self.last_refresh = Some(now);
        let pods = self.scan_pods(now);
        let containers = self.scan_containers(now);
        let retention = self.retention;
        self.pods
            .retain(|_, p| now.saturating_duration_since(p.last_seen) <= retention);
        self.containers
            .retain(|_, c| now.saturating_duration_since(c.last_seen) <= retention);
        let result = pods.and(containers);
        self.last_error = result.as_ref().err().map(ToString::to_string);
        result
    }

    fn scan_pods(&mut self, now: Instant) -> Result<(), PodNamesError> {
        for name in read_names(&self.pods_dir)? {
            if let Some((namespace, pod, uid)) = split_pod_dir(&name) {
                self.pods.insert(
                    uid.to_owned(),
                    PodEntry {
                        namespace: namespace.to_owned(),
                        pod: pod.to_owned(),
                        last_seen: now,
                    },
                );
            }
        }
        Ok(())
    }

    fn scan_containers(&mut self, now: Instant) -> Result<(), PodNamesError> {
        for name in read_names(&self.containers_dir)? {
            let Some(stem) = name.strip_suffix(".log") else {
                continue;
            };
            let target = std::fs::read_link(self.containers_dir.join(&name)).ok();
            let from_target = target.as_deref().and_then(split_link_target);
            let Some((id, container_from_name)) = split_container_link(stem) else {
                continue;
            };
            let (pod_uid, container) = match from_target {
                Some((namespace, pod, uid, container)) => {
                    // The symlink also names the pod: learn it even if /var/log/pods is not mounted.
                    self.pods.entry(uid.to_owned()).or_insert_with(|| PodEntry {
                        namespace: namespace.to_owned(),
                        pod: pod.to_owned(),
                        last_seen: now,
                    });
                    if let Some(p) = self.pods.get_mut(uid) {
                        p.last_seen = now;
                    }
                    (uid.to_owned(), Some(container.to_owned()))
                }
                // Without the target, the pod UID is unknown: the entry cannot be keyed.
                None => continue,
            };
            let container = container.or(container_from_name);
            self.containers.insert(
                id.to_owned(),
                ContainerEntry {
                    pod_uid,
                    container,
                    last_seen: now,
                },
            );
        }
        Ok(())
    }
}

fn read_names(dir: &Path) -> Result<Vec<String>, PodNamesError> {
    let err = |source| PodNamesError::ReadDir {
        path: dir.to_owned(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// `<namespace>_<pod>_<uid>`.
fn split_pod_dir(name: &str) -> Option<(&str, &str, &str)> {
    let mut parts = name.split('_');
    let (namespace, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    (parts.next().is_none() && !namespace.is_empty() && !pod.is_empty() && !uid.is_empty())
        .then_some((namespace, pod, uid))
}

/// `…/<namespace>_<pod>_<uid>/<container>/<restart>.log` → (namespace, pod, uid, container).
fn split_link_target(target: &Path) -> Option<(&str, &str, &str, &str)> {
    let mut comps = target.iter().rev();
    let _log = comps.next()?;
    let container = comps.next()?.to_str()?;
    let (namespace, pod, uid) = split_pod_dir(comps.next()?.to_str()?)?;
    Some((namespace, pod, uid, container))
}

/// `<pod>_<namespace>_<container>-<id>` (without `.log`, possibly cut) →
/// (id or its prefix, container name when the cut left it whole).
fn split_container_link(stem: &str) -> Option<(&str, Option<String>)> {
    let mut parts = stem.splitn(3, '_');
    let (_pod, _namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (container, id) = rest.rsplit_once('-')?;
    let is_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_id {
        return None;
    }
    Some((id, Some(container.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    // Real names: fluent/fluent-operator#855 (a static pod, 32-hex UID) and
    // rancher/rancher#7688 (kube-dns containers).
    const APISERVER_DIR: &str =
        "kube-system_kube-apiserver-pa-drs-cluster_8b1e9057c80f383869339e73f7286d7b";
    const APISERVER_LINK: &str = "kube-apiserver-pa-drs-cluster_kube-system_kube-apiserver-1ba81788e9d8a48998fea25d5fe511c774f9de76eaaca81c50ff44b5960223b2.log";
    const APISERVER_ID: &str = "1ba81788e9d8a48998fea25d5fe511c774f9de76eaaca81c50ff44b5960223b2";

    struct Node {
        _tmp: tempfile::TempDir,
        pods: PathBuf,
        containers: PathBuf,
    }

    fn node() -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pods = tmp.path().join("pods");
        let containers = tmp.path().join("containers");
        fs::create_dir_all(&containers).expect("mkdir");
        fs::create_dir_all(&pods).expect("mkdir");
        Node {
            _tmp: tmp,
            pods,
            containers,
        }
    }

    fn add(node: &Node, pod_dir: &str, container: &str, link: &str) {
        let dir = node.pods.join(pod_dir).join(container);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("0.log"), b"").expect("write");
        symlink(dir.join("0.log"), node.containers.join(link)).expect("symlink");
    }

    fn names(node: &Node) -> PodNames {
        PodNames::new()
            .with_pods_dir(&node.pods)
            .with_containers_dir(&node.containers)
    }

    #[test]
    fn resolves_pod_and_container_from_real_names() {
        let n = node();
        add(&n, APISERVER_DIR, "kube-apiserver", APISERVER_LINK);
        let mut names = names(&n);
        let got = names
            .lookup("8b1e9057c80f383869339e73f7286d7b", Some(APISERVER_ID))
            .expect("found");
        assert_eq!(got.namespace, "kube-system");
        assert_eq!(got.pod, "kube-apiserver-pa-drs-cluster");
        assert_eq!(got.container.as_deref(), Some("kube-apiserver"));
        let pod_only = names
            .lookup("8b1e9057c80f383869339e73f7286d7b", None)
            .expect("found");
        assert_eq!(pod_only.container, None);
        assert_eq!(
            names.lookup("00000000-0000-0000-0000-000000000000", None),
            None
        );
    }

    #[test]
    fn finds_the_uids_of_a_pod_by_namespace_and_name() {
        let n = node();
        add(&n, APISERVER_DIR, "kube-apiserver", APISERVER_LINK);
        // The same name re-created: the old pod's directory is still there.
        fs::create_dir_all(n.pods.join(
            "kube-system_kube-apiserver-pa-drs-cluster_0f2c4d3e-1111-4e6f-9d39-2c1f0a6b8e11",
        ))
        .expect("mkdir");
        let mut names = names(&n);
        assert_eq!(
            names.uids_of("kube-system", "kube-apiserver-pa-drs-cluster"),
            vec![
                "0f2c4d3e-1111-4e6f-9d39-2c1f0a6b8e11".to_owned(),
                "8b1e9057c80f383869339e73f7286d7b".to_owned()
            ]
        );
        assert!(
            names
                .uids_of("default", "kube-apiserver-pa-drs-cluster")
                .is_empty()
        );
        assert!(names.uids_of("kube-system", "kube-apiserver").is_empty());
    }

    #[test]
    fn names_cut_at_255_bytes_still_resolve() {
        let n = node();
        // A long pod name pushes the container ID past 255 bytes, as the kubelet's logSymlink cuts it.
        let pod = format!("{}-7f9c6d8b5-x2x7k", "a".repeat(184));
        let uid = "3e61aa2b-9c1d-4f0e-8a51-2b7c0d1e4f55";
        let full = format!("{pod}_prod_api-{APISERVER_ID}");
        let cut = &full[..255 - ".log".len()];
        assert!(cut.len() + 4 == 255 && !cut.ends_with(APISERVER_ID));
        add(
            &n,
            &format!("prod_{pod}_{uid}"),
            "api",
            &format!("{cut}.log"),
        );
        let mut names = names(&n);
        let got = names.lookup(uid, Some(APISERVER_ID)).expect("found");
        assert_eq!(
            (got.namespace.as_str(), got.pod.as_str()),
            ("prod", pod.as_str())
        );
        assert_eq!(got.container.as_deref(), Some("api"));
        // Another container's ID does not match the cut prefix.
        let other = "0".repeat(64);
        assert_eq!(
            names
                .lookup(uid, Some(&other))
                .expect("pod found")
                .container,
            None
        );
    }

    #[test]
    fn keeps_names_after_the_directories_vanish_then_expires_them() {
        let n = node();
        add(&n, APISERVER_DIR, "kube-apiserver", APISERVER_LINK);
        let mut names = names(&n).with_retention(Duration::from_secs(600));
        let t0 = Instant::now();
        let uid = "8b1e9057c80f383869339e73f7286d7b";
        assert!(names.lookup_at(uid, Some(APISERVER_ID), t0).is_some());
        fs::remove_dir_all(&n.pods).expect("rm");
        fs::remove_dir_all(&n.containers).expect("rm");
        // A miss on another pod forces a rescan that fails to read: the killed pod stays known.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(names.lookup_at("other", None, later), None);
        assert!(
            names
                .last_error()
                .is_some_and(|e| e.contains("cannot read"))
        );
        let got = names
            .lookup_at(uid, Some(APISERVER_ID), later)
            .expect("still cached");
        assert_eq!(got.container.as_deref(), Some("kube-apiserver"));
        // After the retention, a rescan drops it.
        let much_later = t0 + Duration::from_secs(601);
        assert_eq!(names.lookup_at("other", None, much_later), None);
        assert_eq!(names.lookup_at(uid, None, much_later), None);
    }

    #[test]
    fn rescans_on_a_miss_at_most_once_per_interval() {
        let n = node();
        let mut names = names(&n);
        let t0 = Instant::now();
        let uid = "9c470dbf-6ed7-11e7-8f37-02b893ed240a";
        assert_eq!(names.lookup_at(uid, None, t0), None);
        // rancher/rancher#7688: heapster-4285517626-3wlf8 in kube-system.
        add(
            &n,
            &format!("kube-system_heapster-4285517626-3wlf8_{uid}"),
            "heapster",
            "heapster-4285517626-3wlf8_kube-system_heapster-a8a4511ad8ae87731a38acb9ec7d4b671fbd93d8f8bb753c2bb094298f1ecf15.log",
        );
        assert_eq!(
            names.lookup_at(uid, None, t0 + Duration::from_millis(500)),
            None,
            "rate-limited"
        );
        let got = names
            .lookup_at(uid, None, t0 + Duration::from_secs(1))
            .expect("rescanned");
        assert_eq!(got.pod, "heapster-4285517626-3wlf8");
    }

    #[test]
    fn missing_directory_is_an_error_that_says_what_to_do() {
        let mut names = PodNames::new()
            .with_pods_dir("/nonexistent/pods")
            .with_containers_dir("/nonexistent/c");
        let err = names.refresh().expect_err("no such directory");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/pods") && msg.contains("mount"),
            "{msg}"
        );
    }
}
