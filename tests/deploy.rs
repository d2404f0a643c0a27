//! The deployment recipes under deploy/ stay true to the binary: every flag they pass is a
//! flag of `sticky-cluster`, the systemd unit verifies without a warning, and the Kubernetes
//! manifests parse with the kinds and the wiring the README describes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const UNIT: &str = "deploy/sticky-cluster.service";
const MANIFESTS: [&str; 2] = [
    "deploy/k8s/cluster-per-pod.yaml",
    "deploy/k8s/shared-workers.yaml",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Long flags of `sticky-cluster --help`.
fn known_flags() -> BTreeSet<String> {
    let out = Command::new(common::BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

/// The `--flag`s of an argument list, up to the `--` that starts the worker command.
fn flags_of<'a>(args: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    args.into_iter()
        .take_while(|a| *a != "--")
        .filter(|a| a.starts_with("--"))
        .map(str::to_string)
        .collect()
}

/// The sticky-cluster argument lists of the manifests' containers, through Python's YAML
/// parser (as JSON: one list per container).
fn manifest_args(path: &str) -> Vec<Vec<String>> {
    let script = r#"
import json, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
for d in docs:
    assert "apiVersion" in d and "kind" in d and "metadata" in d, d
out = {"kinds": [d["kind"] for d in docs], "args": []}
for d in docs:
    spec = d.get("spec", {}).get("template", {}).get("spec", {})
    for c in spec.get("containers", []):
        cmd = c.get("command", []) + c.get("args", [])
        if "sticky-cluster" in c.get("image", "") or "sticky-cluster" in cmd:
            out["args"].append(c.get("args", []))
print(json.dumps(out))
"#;
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&full)
        .output()
        .expect("python3 runs (with PyYAML: apt-get install python3-yaml)");
    assert!(
        out.status.success(),
        "{path} parses: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let args: Vec<Vec<String>> = serde_json::from_value(json["args"].clone()).unwrap();
    assert!(!args.is_empty(), "{path} runs sticky-cluster somewhere");
    args
}

#[test]
fn every_flag_the_recipes_pass_is_a_flag_of_the_binary() {
    let known = known_flags();
    let unit = read(UNIT);
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("the unit has ExecStart");
    let mut used = flags_of(exec.split_whitespace());
    for path in MANIFESTS {
        for args in manifest_args(path) {
            used.extend(flags_of(args.iter().map(String::as_str)));
        }
    }
    assert!(used.len() > 10, "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|f| !known.contains(*f)).collect();
    assert!(unknown.is_empty(), "flags not in --help: {unknown:?}");
}

#[test]
fn the_systemd_unit_verifies_without_a_warning() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = read(UNIT).replace("/usr/local/bin/sticky-cluster", common::BIN);
    let path = dir.join("sticky-cluster.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let about_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("sticky-cluster.service"))
        .collect();
    assert!(out.status.success(), "{stderr}");
    assert!(about_unit.is_empty(), "warnings: {about_unit:#?}");
    assert!(read(UNIT).contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
fn the_shared_workers_manifest_wires_proxies_to_redis_and_every_worker() {
    let args = manifest_args(MANIFESTS[1]);
    let proxy = &args[0];
    let value = |flag: &str| -> Vec<&str> {
        proxy
            .windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    };
    assert_eq!(value("--shared-table"), ["redis://redis:6379/0"]);
    assert_eq!(value("--upstream-dns"), ["app-workers:3000"]);
    let yaml = read(MANIFESTS[1]);
    for needed in [
        "replicas: 3",
        "name: app-workers\nspec:\n  clusterIP: None",
        "STICKY_CLUSTER_SECRET",
        "name: redis",
    ] {
        assert!(yaml.contains(needed), "{needed}");
    }
}
