//! The deployment files in `deploy/` hold together: every manifest parses
//! and has the kinds and settings a rollout relies on, the configs they
//! carry pass `stickylb check`, and the systemd unit and Dockerfile have
//! what they promise.

use std::path::Path;
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

fn yaml(path: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(docs.len(), 1, "{path}: one document");
    docs.remove(0)
}

/// `stickylb check` on `text`; its exit code and output.
fn check(text: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stickylb"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn seconds(text: &str, key: &str) -> u64 {
    let config = stickylb::config::from_toml_str(text, "configmap").unwrap();
    match key {
        "shutdown_delay" => config.timeouts.shutdown_delay.as_secs(),
        _ => config.timeouts.shutdown_grace.as_secs(),
    }
}

#[test]
fn kubernetes_manifests_parse_and_fit_together() {
    let configmap = yaml("deploy/kubernetes/configmap.yaml");
    let deployment = yaml("deploy/kubernetes/deployment.yaml");
    let service = yaml("deploy/kubernetes/service.yaml");
    let pdb = yaml("deploy/kubernetes/poddisruptionbudget.yaml");
    for (doc, kind) in [
        (&configmap, "ConfigMap"),
        (&deployment, "Deployment"),
        (&service, "Service"),
        (&pdb, "PodDisruptionBudget"),
    ] {
        assert_eq!(doc["kind"].as_str(), Some(kind));
        assert_eq!(doc["metadata"]["name"].as_str(), Some("stickylb"), "{kind}");
    }

    // The ConfigMap's config passes `stickylb check`.
    let config = configmap["data"]["config.toml"]
        .as_str()
        .expect("config.toml in the ConfigMap");
    let (code, out) = check(config);
    assert_eq!(code, Some(0), "{out}");

    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"].as_i64(), Some(3));
    let pod = &spec["template"]["spec"];
    let container = &pod["containers"][0];
    let probe = &container["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"].as_str(), Some("/healthz"));
    // The drain fits in the grace period Kubernetes gives.
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
    let needed = seconds(config, "shutdown_delay") + seconds(config, "shutdown_grace");
    assert!(
        grace >= needed,
        "terminationGracePeriodSeconds {grace} < {needed}"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    assert!(!container["resources"]["requests"].is_badvalue());
    // The config is mounted as a directory from the ConfigMap (a subPath
    // mount never sees updates), at the path the args name.
    let mount = &container["volumeMounts"][0];
    assert!(mount["subPath"].is_badvalue(), "no subPath");
    let dir = mount["mountPath"].as_str().unwrap();
    let args: Vec<&str> = container["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        args.contains(&format!("{dir}/config.toml").as_str()),
        "{args:?}"
    );
    let volume = &pod["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["configMap"]["name"].as_str(), Some("stickylb"));
    // Scraped by Prometheus on the admin port.
    let annotations = &spec["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));

    // The Service and the budget select the Deployment's pods.
    let labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(&service["spec"]["selector"], labels);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], labels);
}

#[test]
fn the_container_image_recipe_and_its_config() {
    let dockerfile = read("deploy/Dockerfile");
    assert_eq!(
        dockerfile
            .lines()
            .filter(|l| l.starts_with("FROM "))
            .count(),
        2,
        "multi-stage"
    );
    for needed in [
        "USER 10001",
        "EXPOSE 8080 9090",
        "HEALTHCHECK",
        "/healthz",
        "/etc/stickylb/config.toml",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed}");
    }
    let (code, out) = check(&read("deploy/config.toml"));
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn the_systemd_unit_reloads_with_sighup_and_is_sandboxed() {
    let unit = read("deploy/systemd/stickylb.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {key}= in the unit"))
    };
    assert!(value("ExecReload").contains("-HUP $MAINPID"));
    assert!(value("ExecStart").contains("stickylb run --config /etc/stickylb/config.toml"));
    assert!(value("LimitNOFILE").parse::<u64>().unwrap() >= 65_536);
    for key in [
        "NoNewPrivileges",
        "ProtectSystem",
        "PrivateTmp",
        "DynamicUser",
    ] {
        assert!(!value(key).is_empty(), "{key}");
    }
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.contains(section), "{section}");
    }
}
