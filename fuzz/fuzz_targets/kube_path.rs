//! Kubelet cgroup paths (cgroupfs and systemd drivers): any path a cgroup event or
//! `/proc/PID/cgroup` names. A pod is found only where `classify` says pod.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stress_user::cgroup::kube::{classify, normalize_uid, parse_path, KubeLevel};

fuzz_target!(|path: &str| {
    let level = classify(path);
    let pod = parse_path(path);
    assert_eq!(
        pod.is_some(),
        matches!(level, Some(KubeLevel::Pod(_))),
        "{path:?}"
    );
    if let Some(r) = pod {
        assert_eq!(
            normalize_uid(&r.pod_uid),
            normalize_uid(&normalize_uid(&r.pod_uid))
        );
    }
});
