//! A real Prometheus scraping `oomlab serve` (#13): after OOM kills in two containers of the
//! test's own containerd (CRI labels of two pods), `sum by (namespace, pod, container)
//! (oomlab_oom_kills_total)` over Prometheus' HTTP API equals each container cgroup's
//! `oom_kill`, and Prometheus ingested every sample of the exposition (the scrape is `up`, and
//! the oomlab series it holds are as many as the samples it scraped).

mod common;

use std::{collections::BTreeMap, fs, path::Path, time::Duration};

use common::{
    guard::TempPath,
    need_root,
    prometheus::Prometheus,
    runtime::{have_runtimes, rootfs, Containerd},
    serve::{metric_sum, Serve},
    wait_until,
};

const LIMIT: u64 = 128 << 20;

fn oom_kills(rel: &str) -> u64 {
    fs::read_to_string(
        Path::new("/sys/fs/cgroup/memory")
            .join(rel.trim_start_matches('/'))
            .join("memory.oom_control"),
    )
    .expect("memory.oom_control")
    .lines()
    .find_map(|l| l.strip_prefix("oom_kill "))
    .and_then(|v| v.trim().parse().ok())
    .unwrap_or(0)
}

fn labels(
    ns: &'static str,
    pod: &'static str,
    c: &'static str,
) -> [(&'static str, &'static str); 3] {
    [
        ("io.kubernetes.pod.namespace", ns),
        ("io.kubernetes.pod.name", pod),
        ("io.kubernetes.container.name", c),
    ]
}

#[test]
fn prometheus_counts_kills_per_pod_and_container() {
    if !need_root("prometheus_counts_kills_per_pod_and_container")
        || !have_runtimes(
            "prometheus_counts_kills_per_pod_and_container",
            &["containerd", "ctr", "runc", "prometheus"],
        )
    {
        return;
    }
    let tmp = TempPath::dir("prom");
    let root = rootfs(tmp.path());
    let mut ctd = Containerd::start(tmp.path());
    let web = common::unique("web");
    let db = common::unique("db");
    ctd.run(
        &web,
        &root,
        LIMIT,
        &labels("shop", "web-0", "app"),
        &["/bin/sleep", "600"],
    );
    ctd.run(
        &db,
        &root,
        LIMIT,
        &labels("shop", "db-0", "pg"),
        &["/bin/sleep", "600"],
    );
    let serve = Serve::start(&format!(
        "events = [\"oom\"]\n[runtime]\ncontainerd_socket = \"{}\"\n",
        ctd.socket.display()
    ));
    let prom = Prometheus::start(tmp.path(), serve.port);
    let mut events = common::serve::events(serve.port);

    let plan = [(&web, 2), (&db, 1)];
    for (id, n) in plan {
        for i in 0..n {
            let out = ctd.ctr_raw(&[
                "task",
                "exec",
                "--exec-id",
                &format!("blow-{i}"),
                id,
                "/bin/dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=200M",
                "count=1",
            ]);
            assert_eq!(
                out.status.code(),
                Some(137),
                "exec in {id} should be OOM-killed"
            );
        }
    }
    let kernel: BTreeMap<(String, String, String), f64> = [
        (("shop", "web-0", "app"), oom_kills(&ctd.cgroup(&web))),
        (("shop", "db-0", "pg"), oom_kills(&ctd.cgroup(&db))),
    ]
    .into_iter()
    .map(|((ns, p, c), n)| ((ns.into(), p.into(), c.into()), n as f64))
    .collect();
    assert_eq!(
        kernel.values().sum::<f64>(),
        3.0,
        "the kernel's counts: {kernel:?}"
    );

    // oomlab counts a kill when its episode closes; then Prometheus' next scrape has it.
    let counted = wait_until(Duration::from_secs(15), || {
        let (_, text) = serve.get("/metrics");
        metric_sum(&text, "oomlab_oom_kills_total{", "namespace=\"shop\"") >= 3.0
    });
    assert!(
        counted,
        "oomlab serve did not count 3 kills: {}",
        serve.get("/metrics").1
    );
    let promql = "sum by (namespace, pod, container) (oomlab_oom_kills_total)";
    let mut seen = BTreeMap::new();
    let agreed = wait_until(Duration::from_secs(20), || {
        seen = prom
            .query(promql)
            .iter()
            .filter(|r| r["metric"]["namespace"] == "shop")
            .filter_map(|r| {
                let m = &r["metric"];
                let key = (
                    m["namespace"].as_str()?.to_string(),
                    m["pod"].as_str()?.to_string(),
                    m["container"].as_str()?.to_string(),
                );
                Some((key, r["value"][1].as_str()?.parse::<f64>().ok()?))
            })
            .collect();
        seen == kernel
    });
    eprintln!("PromQL {promql}: {seen:?}; kernel oom_kill: {kernel:?}");
    assert!(agreed, "Prometheus {seen:?} != kernel {kernel:?}");

    // Every sample of the exposition became a series: the same scrape's count on both sides.
    assert_eq!(prom.value("up{job=\"oomlab\"}"), Some(1.0));
    let ingested = wait_until(Duration::from_secs(10), || {
        let scraped = prom.value("scrape_samples_scraped{job=\"oomlab\"}");
        let series = prom.value("count({job=\"oomlab\", __name__=~\"oomlab_.*\"})");
        eprintln!("scrape_samples_scraped {scraped:?}, oomlab series {series:?}");
        scraped.is_some() && scraped == series
    });
    assert!(
        ingested,
        "Prometheus did not ingest every sample it scraped"
    );

    // /events streamed the same victims, each named.
    events.rest(Duration::from_millis(500));
    let named: Vec<(String, String, String)> = events
        .seen
        .iter()
        .filter(|v| v["type"] == "oom_victim")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
            (s("namespace"), s("pod"), s("container_name"))
        })
        .collect();
    eprintln!("/events victims: {named:?}");
    let mut want = vec![
        ("shop".to_string(), "db-0".to_string(), "pg".to_string()),
        ("shop".into(), "web-0".into(), "app".into()),
        ("shop".into(), "web-0".into(), "app".into()),
    ];
    let mut got = named.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "/events victims");
}
